package websocket

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/gorilla/websocket"

	"github.com/tributary-io/tributary/bridge"
	"github.com/tributary-io/tributary/mapping"
)

// produceConn is one /socket/in socket. Its reader (the handler goroutine)
// decodes frames and hands records to the shared producer; delivery
// reports and errors queue on out, which its writer drains. Every frame
// owed to the client holds a slot from the moment its client frame is read
// until it is written, so out never overflows and a socket whose slots are
// all taken is not read: that is its backpressure.
//
// The answers (results and errors) go out in the order their frames were
// read, as kafka-websocket-proxy sends them: a client can match them to
// its frames by position, which it must for an error to a frame whose
// messageId could not be read. Kafka acknowledges records of different
// partitions in any order, and an error is known at once, so the writer
// holds an answer back until the answers to every earlier frame are out.
type produceConn struct {
	*sock
	a       *API
	ctx     context.Context
	cancel  context.CancelFunc
	topic   string
	keyType format
	valType format
	slots   chan struct{}
	out     chan outFrame
	limit   *bucket
	enc     []byte       // the writer's frame being encoded
	frame   bytes.Buffer // the reader's frame being decoded
	nextSeq uint64       // the reader's: the seq of the next frame read

	// Only the writer uses these.
	next   uint64              // seq of the next answer to write
	parked map[uint64]outFrame // answers that came before an earlier frame's, by seq
}

type outFrame struct {
	seq uint64 // the frame's place among the socket's frames, from 0
	id  json.RawMessage
	d   bridge.Delivery
	ts  int64
	err *frameError
}

// delivery routes one record's delivery report to its socket. It runs on
// the producer's event goroutine: the send never blocks, because the
// record holds a slot of out's capacity.
type delivery struct {
	c   *produceConn
	seq uint64
	id  json.RawMessage
	ts  int64
}

func (d *delivery) Delivered(r bridge.Delivery) {
	if r.Err == nil {
		// Counted here, not when the result is written: the record is
		// in Kafka even if its client has gone.
		d.c.a.metrics.produced.Inc()
	}
	d.c.out <- outFrame{seq: d.seq, id: d.id, d: r, ts: d.ts}
}

var _ bridge.DeliveryHandler = (*delivery)(nil)

func (a *API) serveProduce(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var problems []string
	clientID := q.Get("clientId")
	if clientID == "" {
		problems = append(problems, "clientId is required")
	} else if why := idProblem("clientId", clientID, "client id"); why != "" {
		problems = append(problems, why)
	}
	topic := q.Get("topic")
	if topic == "" {
		problems = append(problems, "topic is required")
	} else if why := topicProblem(topic, mapping.ProduceTopicProblem); why != "" {
		problems = append(problems, why)
	}
	keyType := queryFormat(q.Get("keyType"), "keyType", &problems)
	valType := queryFormat(q.Get("valType"), "valType", &problems)
	socketPayload(q.Get("socketPayload"), &problems)
	if v := q.Get("transactional"); v != "" {
		// Anything but a false value asks for what Tributary does not do.
		switch t, err := strconv.ParseBool(v); {
		case err != nil:
			problems = append(problems, "transactional "+strconv.Quote(v)+": must be true or false (and true is not supported)")
		case t:
			problems = append(problems, "transactional=true is not supported: Tributary does not produce in Kafka transactions")
		}
	}
	ws, conn, err := a.upgrade(w, r)
	if err != nil {
		return // the upgrader answered with an HTTP error
	}
	if len(problems) > 0 {
		msg := strings.Join(problems, "; ")
		a.refuse(ws, produceError{Error: errorBody{Code: CodeBadRequest, Message: msg}}, msg)
		return
	}
	if !a.cfg.Auth.canProduce(r.Context(), topic) {
		a.cfg.Auth.m.denied.WithLabelValues("produce").Inc()
		msg := "not authorized to produce to topic " + strconv.Quote(topic)
		a.log.Info("WebSocket produce socket refused by the ACLs", "user", userOf(r.Context()).user, "topic", topic, "remote", r.RemoteAddr)
		a.refuse(ws, produceError{Error: errorBody{Code: CodeForbidden, Message: msg}}, msg)
		return
	}
	ctx, cancel := context.WithCancel(a.produceCtx)
	defer cancel()
	c := &produceConn{
		sock:    newSock(ws, conn, a.cfg.MaxFrameBytes, a.cfg.PingInterval),
		a:       a,
		ctx:     ctx,
		cancel:  cancel,
		topic:   topic,
		keyType: keyType,
		valType: valType,
		slots:   make(chan struct{}, a.cfg.MaxInflight),
		out:     make(chan outFrame, a.cfg.MaxInflight),
	}
	if a.cfg.ProduceRate > 0 {
		c.limit = newBucket(a.cfg.ProduceRate, max(1, a.cfg.ProduceRate))
	}
	sess := &session{key: sessionKey("in", r, clientID), stop: c.requestClose, done: make(chan struct{}),
		check: func() string {
			if why := a.cfg.Auth.revoked(r.Context()); why != "" {
				return why
			}
			if !a.cfg.Auth.canProduce(r.Context(), topic) {
				return "the reloaded users file no longer allows producing to topic " + strconv.Quote(topic)
			}
			return ""
		}}
	if !a.register(ctx, sess) {
		a.refuseWith(ws, produceError{Error: errorBody{Code: CodeShuttingDown, Message: "server shutting down"}}, websocket.CloseGoingAway, "server shutting down")
		return
	}
	defer a.unregister(sess)
	a.metrics.connections.WithLabelValues("/socket/in").Inc()
	defer a.metrics.connections.WithLabelValues("/socket/in").Dec()
	log := a.log.With("client_id", clientID, "topic", topic)
	log.Debug("WebSocket produce socket opened", "remote", r.RemoteAddr)

	go c.writer()
	err = c.read()
	if !c.closing.Load() && a.produceCtx.Err() != nil {
		// Drain stops every socket before it ends their contexts; one
		// it did not list closes as shutting down all the same.
		c.requestClose(websocket.CloseGoingAway, "server shutting down")
	}
	if c.closing.Load() {
		// The server asked (shutdown, replacement, revoked credentials):
		// send what Kafka acknowledges for the records already read, then
		// close.
		c.awaitResults(log)
	} else {
		a.readEnded(err, r)
		c.requestClose(closeFor(err, a.cfg.MaxFrameBytes))
	}
	c.stopWriter()
	cancel()
	ws.Close()
	log.Debug("WebSocket produce socket closed", "error", err)
}

// awaitResults waits, as the server closes the socket, until the results
// still due are out, or: at shutdown, until Close says the producer's
// flush is over, or for shutdownWait if Close does not come (the flush,
// under kafka.flush_timeout, decides which records Kafka acknowledged in
// time: giving up sooner would leave the client to resend one Kafka has);
// otherwise for closeWait.
func (c *produceConn) awaitResults(log *slog.Logger) {
	a := c.a
	deadline := time.Now().Add(a.closeWait)
	shutdown := false
	for len(c.slots) > 0 {
		if !shutdown && a.produceCtx.Err() != nil {
			// Drain, maybe while the socket waited for another reason.
			shutdown = true
			deadline = time.Now().Add(a.shutdownWait)
		}
		if !time.Now().Before(deadline) {
			log.Warn("WebSocket produce socket closed without the results of records Kafka had not acknowledged yet", "records", len(c.slots), "shutdown", shutdown)
			return
		}
		select {
		case <-time.After(5 * time.Millisecond):
		case <-a.flushed:
			if left := len(c.slots); left > 0 {
				log.Warn("WebSocket produce socket closed at shutdown without the results of records Kafka did not acknowledge in time", "records", left)
			}
			return
		}
	}
}

// topicProblem says what is wrong with t as a Kafka topic name, naming
// it (its start, when long enough to crowd the close reason out), or ""
// if nothing is. problem is mapping.TopicNameProblem, or for a topic to
// produce to mapping.ProduceTopicProblem.
func topicProblem(t string, problem func(string) string) string {
	why := problem(t)
	if why == "" {
		return ""
	}
	return "topic " + quote(t) + " is not a valid Kafka topic name: " + why
}

// maxKafkaString is the longest string the Kafka protocol carries (an
// int16 length), group and client ids included.
const maxKafkaString = 32767

// idProblem says what keeps v, the value of the query parameter param,
// from being used as a Kafka id (what: "client id", "consumer group id")
// as it is, or returns "" if nothing does. Kafka's ids are protocol
// strings: UTF-8, at most maxKafkaString bytes. librdkafka takes them as C
// strings, which end at the first NUL ("a\x00b" would join group "a"),
// and a control character in an id is a client bug more likely than a
// name anyone chose.
func idProblem(param, v, what string) string {
	var why string
	switch {
	case !utf8.ValidString(v):
		why = fmt.Sprintf("not valid UTF-8 (at byte %d)", invalidUTF8At([]byte(v)))
	case len(v) > maxKafkaString:
		why = fmt.Sprintf("%d bytes long, more than the %d Kafka allows", len(v), maxKafkaString)
	default:
		if i := strings.IndexFunc(v, unicode.IsControl); i >= 0 {
			r, _ := utf8.DecodeRuneInString(v[i:])
			why = fmt.Sprintf("holds the control character %U at byte %d", r, i)
		}
	}
	if why == "" {
		return ""
	}
	return param + " " + quote(v) + " is not usable as a Kafka " + what + ": " + why
}

// socketPayload adds to problems a socketPayload other than json, the
// only payload Tributary speaks.
func socketPayload(v string, problems *[]string) {
	if v != "" && !strings.EqualFold(v, "json") {
		*problems = append(*problems, "socketPayload "+strconv.Quote(v)+": only json is supported")
	}
}

func queryFormat(v, name string, problems *[]string) format {
	if v == "" {
		return formatString
	}
	f, err := parseFormat(v)
	if err != nil {
		*problems = append(*problems, name+": "+err.Error())
	}
	return f
}

// closeFor picks the close frame for a socket whose read ended with err:
// the client's own code when it closed, 1009 for a frame over the limit,
// 1001 when it stopped answering pings.
func closeFor(err error, maxFrame int64) (int, string) {
	var ce *websocket.CloseError
	if errors.As(err, &ce) && ce.Code != websocket.CloseNoStatusReceived {
		return ce.Code, ""
	}
	if errors.Is(err, websocket.ErrReadLimit) {
		return websocket.CloseMessageTooBig, fmt.Sprintf("frame larger than %d bytes (websocket.max_frame_bytes)", maxFrame)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return websocket.CloseGoingAway, "no pong for two ping intervals"
	}
	return websocket.CloseNormalClosure, ""
}

func (c *produceConn) read() error {
	for {
		select {
		case c.slots <- struct{}{}:
		case <-c.ctx.Done():
			return c.ctx.Err()
		case <-c.closed: // waiting for a slot while the server closes the socket
			return nil
		}
		if !c.armRead() {
			<-c.slots
			return nil
		}
		data, err := c.readFrame()
		if err != nil {
			<-c.slots
			return err
		}
		c.handle(data)
	}
}

// maxKeptFrameBuffer is the largest frame buffer a socket keeps between
// frames; a bigger one, left by an unusually large frame, is dropped.
const maxKeptFrameBuffer = 64 << 10

// readFrame reads the next message into the socket's frame buffer, which
// the next call overwrites: a record made from it must have been handed
// to Produce (which copies it), and anything kept longer (the messageId)
// copied, before then. Reusing one buffer instead of allocating a slice
// per frame was most of the bytes /socket/in allocated.
func (c *produceConn) readFrame() ([]byte, error) {
	if c.frame.Cap() > maxKeptFrameBuffer {
		c.frame = bytes.Buffer{}
	}
	c.frame.Reset()
	_, r, err := c.ws.NextReader()
	if err != nil {
		return nil, err
	}
	if _, err := c.frame.ReadFrom(r); err != nil {
		return nil, err
	}
	return c.frame.Bytes(), nil
}

// handle produces one frame's record; the frame's slot passes to what it
// queues on out.
func (c *produceConn) handle(data []byte) {
	seq := c.nextSeq
	c.nextSeq++
	rec, id, ferr := decodeProduceFrame(data, c.topic, c.keyType, c.valType)
	if ferr != nil {
		c.out <- outFrame{seq: seq, id: id, err: ferr}
		return
	}
	if c.limit != nil && !c.limit.allow() {
		c.out <- outFrame{seq: seq, id: id, err: &frameError{code: CodeRateLimited, msg: "rate limited: more than " +
			strconv.FormatFloat(c.a.cfg.ProduceRate, 'g', -1, 64) + " records per second on this socket (websocket.produce_rate)"}}
		return
	}
	now := time.Now()
	rec.Timestamp = now
	if err := c.a.producer.Produce(c.ctx, rec, &delivery{c: c, seq: seq, id: id, ts: now.UnixMilli()}); err != nil {
		c.out <- outFrame{seq: seq, id: id, err: produceFailure(rec.Topic, err)}
	}
}

// produceFailure is the error frame for a record to topic that the
// producer refused or Kafka failed with err.
func produceFailure(topic string, err error) *frameError {
	switch {
	case errors.Is(err, context.Canceled):
		// Drain (the socket's own context ends only after its last
		// read): not produced, and safe to send again.
		return &frameError{code: CodeShuttingDown, msg: "record not produced: the server is shutting down; send it again"}
	case errors.Is(err, bridge.ErrTooManyTopics):
		// Tributary's own limit, which Kafka knows nothing of: blaming
		// Kafka would send the user to the wrong place.
		return &frameError{code: CodeInvalidPayload, msg: "topic " + strconv.Quote(topic) +
			" refused by Tributary, not by Kafka: records already go to as many distinct topics as kafka.max_topics allows; raise kafka.max_topics to allow more"}
	case errors.Is(err, bridge.ErrUnknownTopic):
		return &frameError{code: CodeUnknownTopic, msg: err.Error()}
	case bridge.TopicDeleted(err):
		return &frameError{code: CodeUnknownTopic, msg: "Kafka topic " + strconv.Quote(topic) + ": " + bridge.ErrUnknownTopic.Error() + ": " + err.Error()}
	case errors.Is(err, bridge.ErrRecordTooLarge):
		return &frameError{code: CodeInvalidPayload, msg: err.Error()}
	case bridge.Permanent(err):
		// Sending it again would fail again (too large for the broker,
		// not authorised, ...): not the "try again" of 50002.
		return &frameError{code: CodeInvalidPayload, msg: "Kafka refused the record for good: " + err.Error()}
	}
	return &frameError{code: CodeKafka, msg: err.Error()}
}

func (c *produceConn) writer() {
	defer close(c.writerOut)
	t := time.NewTicker(c.ping)
	defer t.Stop()
	broken := false
	for {
		select {
		case f := <-c.out:
			if broken {
				<-c.slots
				continue
			}
			for first := &f; ; first = nil {
				n, err := c.writeReady(first)
				c.release(n)
				if err != nil {
					// The client is gone: keep draining so slots free
					// up, and stop the reader.
					broken = true
					c.cancel()
					c.requestClose(websocket.CloseGoingAway, "")
					c.release(c.dropParked())
					break
				}
				if n < maxBurstFrames {
					break
				}
			}
		case <-t.C:
			if !broken {
				_ = c.pingNow()
			}
		case <-c.finish:
			if !broken {
				for len(c.out) > 0 {
					c.park(<-c.out)
				}
				c.writeParked()
				c.writeClose()
			}
			return
		}
	}
}

// park keeps f until the answers to the frames before it are out.
func (c *produceConn) park(f outFrame) {
	if f.seq < c.next {
		return // passed over by writeParked: the socket is closing
	}
	if c.parked == nil {
		c.parked = map[uint64]outFrame{}
	}
	c.parked[f.seq] = f
}

// take returns the next answer in order if it has come: parked, or on out
// (where those out of turn are parked).
func (c *produceConn) take() (outFrame, bool) {
	for {
		if f, ok := c.parked[c.next]; ok {
			delete(c.parked, c.next)
			return f, true
		}
		select {
		case f := <-c.out:
			if f.seq == c.next {
				return f, true
			}
			c.park(f)
		default:
			return outFrame{}, false
		}
	}
}

// writeReady writes f (nil for none) and whatever answers have come, as
// far as they are next in order, up to maxBurstFrames in one write. An f
// out of turn is parked. It returns how many it wrote: their slots are
// freed once they are on the socket.
func (c *produceConn) writeReady(f *outFrame) (int, error) {
	var next outFrame
	ok := false
	if f != nil {
		if f.seq == c.next {
			next, ok = *f, true
		} else {
			c.park(*f)
		}
	}
	if !ok {
		next, ok = c.take()
	}
	var err error
	n := 0
	for ok && err == nil {
		if n == 0 {
			c.beginBurst()
		}
		c.next++
		n++
		err = c.writeFrame(next)
		if n == maxBurstFrames {
			break
		}
		next, ok = c.take()
	}
	if n > 0 {
		if ferr := c.endBurst(); err == nil {
			err = ferr
		}
	}
	return n, err
}

// writeParked writes, as the socket closes, the answers that have come,
// even those behind a record whose result has not come and will not be
// sent: the client can match them by messageId, and need not send their
// records again.
func (c *produceConn) writeParked() {
	for len(c.parked) > 0 {
		n, err := c.writeReady(nil)
		c.release(n)
		if err != nil {
			return
		}
		if n == 0 {
			c.next++ // an answer that has not come
		}
	}
}

// dropParked forgets the parked answers, which will not be written, and
// returns how many there were.
func (c *produceConn) dropParked() int {
	n := len(c.parked)
	c.parked = nil
	return n
}

func (c *produceConn) release(n int) {
	for range n {
		<-c.slots
	}
}

func (c *produceConn) writeFrame(f outFrame) error {
	if f.err == nil && f.d.Err != nil {
		f.err = produceFailure(f.d.Topic, f.d.Err)
	}
	if f.err != nil {
		c.a.metrics.errors.WithLabelValues(strconv.Itoa(f.err.code)).Inc()
		return c.writeJSON(produceError{MessageID: f.id, Error: errorBody{Code: f.err.code, Message: f.err.msg}})
	}
	c.enc = appendProduceResult(c.enc[:0], &f.d, f.ts, f.id)
	return c.writeText(c.enc)
}
