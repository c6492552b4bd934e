package websocket

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tributary-io/tributary/bridge"
	"github.com/tributary-io/tributary/mapping"
)

// consumeConn is one /socket/out socket: one member of its consumer group.
// The writer goroutine sends records (and commit acknowledgements and
// errors) in order; the reader (the handler goroutine) takes commits.
type consumeConn struct {
	*sock
	a          *API
	consumer   *bridge.Consumer
	topics     map[string]bool
	keyType    format
	valType    format
	autoCommit bool
	commitAck  bool
	batchSize  int
	limit      *bucket
	ctrl       frameQueue
	// due counts the client's commits not answered yet: passed to the
	// consumer, or covered by one that was. With the control frames
	// waiting, it bounds what the reader takes on: the consumer's Commit
	// returns at once, whatever Kafka's pace.
	due atomic.Int64

	// Only the writer uses these.
	enc  []byte                   // the frame being encoded
	sent []*bridge.ConsumedRecord // records written in the current burst

	mu    sync.Mutex
	parts map[topicPartition]*sentState
}

type topicPartition struct {
	topic     string
	partition int32
}

// sentState is what the socket wrote of one partition under its latest
// assignment. Commits go to that assignment, which refuses offsets from
// before it: those would move the group's offset back over what another
// member committed while it owned the partition.
type sentState struct {
	asg       *bridge.Assignment
	first     int64 // the first offset written under asg
	last      int64 // the last offset written under asg
	committed int64 // the last offset Kafka confirmed committed for the client; -1 for none
	// sent holds the timestamps of the records written that the client
	// has not committed, so that a commit is checked against the record
	// the socket sent, not only its offset.
	sent sentWindow
	// inflight are the client's commits the consumer has not settled, in
	// the order asked, each beyond the one before.
	inflight []inflightCommit
}

// inflightCommit is a client's commit that waits for Kafka, with the ids
// of the commits sent meanwhile that it covers (of the same record or one
// before it): they are answered with it, as they would be after it.
type inflightCommit struct {
	offset  int64
	covered []string
}

// maxSentWindow is how many records of one partition a socket keeps the
// timestamps of, the latest, until the client commits them: 64 KiB at
// most. A commit of one older is refused (a commit of a later record
// commits it too).
const maxSentWindow = 4096

type sentRecord struct{ offset, ts int64 }

// sentWindow is a ring of the latest records written of a partition and
// not committed, oldest first, in offset order. It grows as it fills, up
// to maxSentWindow records, then forgets the oldest.
type sentWindow struct {
	ring  []sentRecord
	start int // the oldest's index in ring
	n     int
}

func (w *sentWindow) at(i int) *sentRecord { return &w.ring[(w.start+i)%len(w.ring)] }

func (w *sentWindow) add(offset, ts int64) {
	if w.n == len(w.ring) {
		if w.n == maxSentWindow {
			w.start = (w.start + 1) % len(w.ring)
			w.n--
		} else {
			grown := make([]sentRecord, min(max(16, 2*len(w.ring)), maxSentWindow))
			for i := range w.n {
				grown[i] = *w.at(i)
			}
			w.ring, w.start = grown, 0
		}
	}
	*w.at(w.n) = sentRecord{offset, ts}
	w.n++
}

// search returns the index of the oldest record at or after offset.
func (w *sentWindow) search(offset int64) int {
	return sort.Search(w.n, func(i int) bool { return w.at(i).offset >= offset })
}

// forget drops the records at or before offset: the client committed them.
func (w *sentWindow) forget(offset int64) {
	if i := w.search(offset + 1); i > 0 {
		w.start = (w.start + i) % len(w.ring)
		w.n -= i
	}
}

// lookup returns the timestamp of the record written at offset, whether
// one was, and whether offset is within what the window holds (false: it
// is before the oldest record kept).
func (w *sentWindow) lookup(offset int64) (ts int64, found, kept bool) {
	if w.n == 0 || offset < w.at(0).offset {
		return 0, false, false
	}
	if i := w.search(offset); i < w.n && w.at(i).offset == offset {
		return w.at(i).ts, true, true
	}
	return 0, false, true
}

// frameQueue holds control frames (commit acknowledgements and errors) for
// the writer. Pushing never blocks, because acknowledgements are pushed
// from the consumer's committer; the reader stops reading while it is long.
type frameQueue struct {
	mu     sync.Mutex
	items  []any
	notify chan struct{}
}

const maxControlFrames = 1024

func (q *frameQueue) push(v any) {
	q.mu.Lock()
	q.items = append(q.items, v)
	q.mu.Unlock()
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

func (q *frameQueue) take() []any {
	q.mu.Lock()
	defer q.mu.Unlock()
	items := q.items
	q.items = nil
	return items
}

func (q *frameQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

func (a *API) serveConsume(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var problems []string
	clientID := q.Get("clientId")
	if clientID == "" {
		problems = append(problems, "clientId is required")
	} else if why := idProblem("clientId", clientID, "client id"); why != "" {
		problems = append(problems, why)
	}
	groupID := q.Get("groupId")
	if groupID == "" {
		groupID = clientID
	} else if why := idProblem("groupId", groupID, "consumer group id"); why != "" {
		problems = append(problems, why)
	}
	var topics []string
	for _, t := range strings.Split(q.Get("topic"), ",") {
		if t = strings.TrimSpace(t); t != "" && !slices.Contains(topics, t) { // librdkafka refuses a list naming a topic twice
			topics = append(topics, t)
			if why := topicProblem(t, mapping.TopicNameProblem); why != "" {
				problems = append(problems, why)
			}
		}
	}
	if len(topics) == 0 {
		problems = append(problems, "topic is required (one topic, or several separated by commas)")
	}
	keyType := queryFormat(q.Get("keyType"), "keyType", &problems)
	valType := queryFormat(q.Get("valType"), "valType", &problems)
	socketPayload(q.Get("socketPayload"), &problems)
	reset := strings.ToLower(q.Get("offsetResetStrategy"))
	switch reset {
	case "":
		reset = "earliest"
	case "earliest", "latest":
	default:
		problems = append(problems, "offsetResetStrategy "+strconv.Quote(reset)+": must be earliest or latest")
	}
	isolation := strings.ReplaceAll(strings.ToLower(q.Get("isolationLevel")), "-", "_")
	switch isolation {
	case "":
		isolation = "read_uncommitted"
	case "read_committed", "read_uncommitted":
	default:
		problems = append(problems, "isolationLevel "+strconv.Quote(q.Get("isolationLevel"))+": must be read_committed or read_uncommitted")
	}
	intParam := func(name string) int {
		v := q.Get(name)
		if v == "" {
			return 0
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			problems = append(problems, name+" "+strconv.Quote(v)+": must be a whole number, 0 or more")
		}
		return n
	}
	boolParam := func(name string, def bool) bool {
		v := q.Get(name)
		if v == "" {
			return def
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			problems = append(problems, name+" "+strconv.Quote(v)+": must be true or false")
		}
		return b
	}
	rate := intParam("rate")
	batchSize := intParam("batchSize")
	autoCommit := boolParam("autoCommit", true)
	ack := boolParam("commitAck", false)

	ws, conn, err := a.upgrade(w, r)
	if err != nil {
		return
	}
	if len(problems) > 0 {
		msg := strings.Join(problems, "; ")
		a.refuse(ws, consumeError{Error: errorBody{Code: CodeBadRequest, Message: msg}}, msg)
		return
	}
	askedGroup, givenGroup := groupID, q.Get("groupId") != ""
	if g, ok := a.cfg.Auth.consumerGroup(r.Context(), askedGroup, clientID, givenGroup); ok {
		groupID = g
	} else {
		a.cfg.Auth.m.denied.WithLabelValues("consume").Inc()
		user := userOf(r.Context()).user
		msg := fmt.Sprintf("not authorized to use consumer group %q: with Kafka topic ACLs a user's groups are named %q or start with %q", groupID, user, user+".")
		a.log.Info("WebSocket consume socket refused: consumer group of another user", "user", user, "group", groupID, "remote", r.RemoteAddr)
		a.refuse(ws, consumeError{Error: errorBody{Code: CodeForbidden, Message: msg}}, msg)
		return
	}
	for _, t := range topics {
		if !a.cfg.Auth.canConsume(r.Context(), t) {
			a.cfg.Auth.m.denied.WithLabelValues("consume").Inc()
			msg := "not authorized to consume topic " + strconv.Quote(t)
			a.log.Info("WebSocket consume socket refused by the ACLs", "user", userOf(r.Context()).user, "topic", t, "remote", r.RemoteAddr)
			a.refuse(ws, consumeError{Error: errorBody{Code: CodeForbidden, Message: msg}}, msg)
			return
		}
	}
	for _, t := range topics {
		if err := a.producer.LookupTopic(r.Context(), t); err != nil {
			code := CodeKafka
			if errors.Is(err, bridge.ErrUnknownTopic) {
				code = CodeUnknownTopic
			}
			a.refuse(ws, consumeError{Error: errorBody{Code: code, Message: err.Error()}}, "topic "+t+": "+err.Error())
			return
		}
	}

	c := &consumeConn{
		sock:       newSock(ws, conn, a.cfg.MaxFrameBytes, a.cfg.PingInterval),
		a:          a,
		topics:     map[string]bool{},
		keyType:    keyType,
		valType:    valType,
		autoCommit: autoCommit,
		commitAck:  ack,
		batchSize:  batchSize,
		ctrl:       frameQueue{notify: make(chan struct{}, 1)},
		parts:      map[topicPartition]*sentState{},
	}
	for _, t := range topics {
		c.topics[t] = true
	}
	if rate > 0 {
		c.limit = newBucket(float64(rate), float64(max(1, batchSize)))
	}
	// Register before joining the group, so a replaced socket has left
	// the group before this one joins: one rebalance instead of two.
	sess := &session{key: sessionKey("out", r, clientID), stop: c.requestClose, done: make(chan struct{}),
		check: func() string {
			if why := a.cfg.Auth.revoked(r.Context()); why != "" {
				return why
			}
			if g, ok := a.cfg.Auth.consumerGroup(r.Context(), askedGroup, clientID, givenGroup); !ok || g != groupID {
				return "the reloaded users file no longer allows consumer group " + strconv.Quote(groupID)
			}
			for _, t := range topics {
				if !a.cfg.Auth.canConsume(r.Context(), t) {
					return "the reloaded users file no longer allows consuming topic " + strconv.Quote(t)
				}
			}
			return ""
		}}
	if !a.register(r.Context(), sess) {
		a.refuseWith(ws, consumeError{Error: errorBody{Code: CodeShuttingDown, Message: "server shutting down"}}, websocket.CloseGoingAway, "server shutting down")
		return
	}
	defer a.unregister(sess)
	cc := a.cfg.Consumer
	cc.GroupID, cc.ClientID, cc.Topics = groupID, clientID, topics
	cc.OffsetReset, cc.IsolationLevel = reset, isolation
	cc.QueueSize = a.cfg.SendQueue
	cc.OnPause = func(paused bool) {
		if paused {
			a.metrics.pauses.Inc()
		}
	}
	cc.OnError = c.consumerError
	log := a.log.With("client_id", clientID, "group", groupID, "topics", topics)
	c.consumer, err = bridge.NewConsumer(cc, log.With("component", "kafka-consumer"))
	if err != nil {
		a.refuse(ws, consumeError{Error: errorBody{Code: CodeKafka, Message: err.Error()}}, "cannot create the Kafka consumer")
		return
	}
	a.metrics.connections.WithLabelValues("/socket/out").Inc()
	defer a.metrics.connections.WithLabelValues("/socket/out").Dec()
	log.Debug("WebSocket consume socket opened", "remote", r.RemoteAddr, "auto_commit", autoCommit)

	go c.writer()
	err = c.read()
	if !c.closing.Load() {
		a.readEnded(err, r)
		c.requestClose(closeFor(err, a.cfg.MaxFrameBytes))
	}
	// Stop writing first: with autoCommit=true, what Close commits is
	// exactly what was written.
	c.stopWriter()
	c.consumer.Close()
	ws.Close()
	log.Debug("WebSocket consume socket closed", "error", err)
}

func (c *consumeConn) read() error {
	for {
		for c.ctrl.len()+int(c.due.Load()) > maxControlFrames && !c.closing.Load() {
			time.Sleep(5 * time.Millisecond)
		}
		if !c.armRead() {
			return nil
		}
		_, data, err := c.ws.ReadMessage()
		if err != nil {
			return err
		}
		c.commit(data)
	}
}

func (c *consumeConn) fail(id string, code int, msg string) {
	c.a.metrics.errors.WithLabelValues(strconv.Itoa(code)).Inc()
	c.ctrl.push(consumeError{ID: id, Error: errorBody{Code: code, Message: msg}})
}

// consumerError tells the client why its consumer cannot read (a topic
// deleted or not readable any more); the consumer calls it from its poll
// goroutine, at most every few seconds for each kind of error.
func (c *consumeConn) consumerError(err error) {
	code := CodeKafka
	switch {
	case errors.Is(err, bridge.ErrNoSuchTopic):
		code = CodeUnknownTopic
	case errors.Is(err, bridge.ErrAccessDenied):
		code = CodeForbidden
	}
	c.fail("", code, err.Error())
}

// commit handles one client frame: {"wsProxyMessageId": "..."}.
func (c *consumeConn) commit(data []byte) {
	var f commitFrame
	err := json.Unmarshal(data, &f)
	if len(f.ID) > maxMessageIDBytes {
		// Not echoed: error frames wait in the control queue, whose
		// length, not size, bounds what a socket holds.
		c.fail("", CodeInvalidPayload, fmt.Sprintf("invalid wsProxyMessageId: %d bytes, longer than any this server sends (at most %d)", len(f.ID), maxMessageIDBytes))
		return
	}
	if err != nil || f.ID == "" {
		c.fail(f.ID, CodeInvalidPayload, `invalid commit message: expected {"wsProxyMessageId": "<id of a record received on this socket>"}`)
		return
	}
	topic, partition, offset, ts, ok := parseMessageID(f.ID)
	if !ok {
		c.fail(f.ID, CodeInvalidPayload, "invalid wsProxyMessageId: expected <topic>-<partition>-<offset>-<timestamp> as the server sent it (numbers in decimal, without a sign or leading zeros)")
		return
	}
	tp := topicPartition{topic, partition}
	id := f.ID
	c.mu.Lock()
	s := c.parts[tp]
	if problem := sentProblem(c.topics[topic], s, tp, offset, ts); problem != "" {
		c.mu.Unlock()
		c.fail(id, CodeUnknownMessage, problem)
		return
	}
	c.due.Add(1)
	if n := len(s.inflight); n > 0 && offset <= s.inflight[n-1].offset {
		// A commit in flight covers it: no second one, and no second
		// acknowledgement as if this one had committed something.
		i := sort.Search(n, func(i int) bool { return s.inflight[i].offset >= offset })
		s.inflight[i].covered = append(s.inflight[i].covered, id)
		c.mu.Unlock()
		return
	}
	s.inflight = append(s.inflight, inflightCommit{offset: offset})
	asg := s.asg
	c.mu.Unlock()
	settle := func(err error) { c.settle(s, tp, offset, id, err) }
	if err := c.consumer.Commit(asg, offset, settle); err != nil {
		settle(err)
	}
}

// settle answers the client's commit of offset of tp, which the consumer
// settled with err, and the commits it covered: with the same error if it
// failed, as already committed if it succeeded.
func (c *consumeConn) settle(s *sentState, tp topicPartition, offset int64, id string, err error) {
	var covered []string
	c.mu.Lock()
	for i, p := range s.inflight {
		if p.offset == offset {
			covered = p.covered
			s.inflight = slices.Delete(s.inflight, i, i+1)
			break
		}
	}
	if err == nil {
		s.committed = max(s.committed, offset)
		s.sent.forget(offset)
	}
	c.mu.Unlock()
	defer c.due.Add(-int64(1 + len(covered))) // once their answers are queued
	code, msg := CodeUnknownMessage, alreadyCommitted
	switch {
	case errors.Is(err, bridge.ErrNotAssigned):
		msg = staleReassigned
		c.fail(id, code, msg)
	case err != nil:
		// Not noted as committed: the client may send it again.
		code, msg = CodeKafka, err.Error()
		c.fail(id, code, msg)
	case c.commitAck:
		c.ctrl.push(commitAck{Committed: committed{Topic: tp.topic, Partition: tp.partition, Offset: offset}})
	}
	for _, cid := range covered {
		c.fail(cid, code, msg)
	}
}

// alreadyCommitted answers a commit of a record at or before one the
// socket committed.
const alreadyCommitted = "stale wsProxyMessageId: this record is already committed"

// sentProblem says why a commit of the record at offset of tp with
// timestamp ts names no record the socket may commit, given what it wrote
// of tp (s; nil for nothing), or returns "". read is whether the socket
// reads tp's topic. A record from before s's assignment is left to the
// consumer, which refuses it as reassigned. c.mu is held.
func sentProblem(read bool, s *sentState, tp topicPartition, offset, ts int64) string {
	const unknown = "unknown wsProxyMessageId: no such record was sent on this socket"
	switch {
	case !read || s == nil || offset > s.last:
		return unknown
	case offset <= s.committed:
		return alreadyCommitted
	case offset < s.first:
		return ""
	}
	switch sentTS, found, kept := s.sent.lookup(offset); {
	case !kept:
		return fmt.Sprintf("wsProxyMessageId too old to check: more than %d records of %s[%d] were sent after it, and none of them committed; commit a later record, which commits this one too", maxSentWindow, tp.topic, tp.partition)
	case !found:
		return unknown
	case sentTS != ts:
		return fmt.Sprintf("unknown wsProxyMessageId: the record sent at offset %d of %s[%d] has timestamp %d, not %d", offset, tp.topic, tp.partition, sentTS, ts)
	}
	return ""
}

// staleReassigned answers a commit of a record whose partition a rebalance
// took away after it was sent, even if one has given it back since.
const staleReassigned = "stale wsProxyMessageId: its partition was reassigned by a rebalance since the record was sent (another member of the group may have read it and committed past it)"

func (c *consumeConn) writer() {
	defer close(c.writerOut)
	ping := time.NewTicker(c.ping)
	defer ping.Stop()
	recs := c.consumer.Records()
	var batch []*bridge.ConsumedRecord // reused; while waitC is set, the batch the rate limit holds back
	var wait *time.Timer
	var waitC <-chan time.Time
	broken := false
	fail := func() {
		broken = true
		c.requestClose(websocket.CloseGoingAway, "")
	}
	send := func() {
		held, d, err := c.writeBurst(batch, recs)
		if err != nil {
			fail()
			return
		}
		if held != nil {
			batch = held
			wait = time.NewTimer(d)
			waitC = wait.C
			return
		}
		clear(batch[:cap(batch)]) // let the records go
		batch = batch[:0]
	}
	for {
		in := recs
		if waitC != nil || broken {
			in = nil
		}
		select {
		case r, ok := <-in:
			if !ok {
				recs = nil
				c.requestClose(websocket.CloseInternalServerErr, "Kafka consumer stopped")
				continue
			}
			batch = c.fill(append(batch[:0], r), recs)
			if d := c.reserve(len(batch)); d > 0 {
				wait = time.NewTimer(d)
				waitC = wait.C
				continue
			}
			send()
		case <-waitC:
			waitC = nil
			send()
		case <-c.ctrl.notify:
			if frames := c.ctrl.take(); !broken && c.writeFrames(frames) != nil {
				fail()
			}
		case <-ping.C:
			if !broken {
				_ = c.pingNow()
			}
		case <-c.finish:
			if wait != nil {
				wait.Stop()
			}
			if !broken {
				_ = c.writeFrames(c.ctrl.take())
				c.writeClose()
			}
			return
		}
	}
}

// fill adds to batch the records already waiting, up to a frame's worth.
func (c *consumeConn) fill(batch []*bridge.ConsumedRecord, recs <-chan *bridge.ConsumedRecord) []*bridge.ConsumedRecord {
	for len(batch) < max(1, c.batchSize) {
		select {
		case r, ok := <-recs:
			if ok {
				batch = append(batch, r)
				continue
			}
		default:
		}
		break
	}
	return batch
}

// reserve takes n records' worth of the rate limit, returning how long to
// wait before sending them.
func (c *consumeConn) reserve(n int) time.Duration {
	if c.limit == nil {
		return 0
	}
	return c.limit.reserve(float64(n))
}

// writeBurst writes batch as a frame and, while more records are waiting
// and the rate limit allows, the frames after it, up to maxBurstFrames;
// then it flushes them in one write. A batch the rate limit holds back is
// returned, with how long it must wait; batch's array holds the batches
// after the first. Only once the flush succeeded are the records marked
// sent: only then may autoCommit commit them.
func (c *consumeConn) writeBurst(batch []*bridge.ConsumedRecord, recs <-chan *bridge.ConsumedRecord) (held []*bridge.ConsumedRecord, wait time.Duration, err error) {
	c.sent = c.sent[:0]
	c.beginBurst()
	for frames := 1; ; frames++ {
		// A short batch means the queue was empty a moment ago.
		short := len(batch) < max(1, c.batchSize)
		if batch, err = c.writeBatch(batch); err != nil {
			break
		}
		c.sent = append(c.sent, batch...)
		if frames == maxBurstFrames || short {
			break
		}
		if batch = c.fill(batch[:0], recs); len(batch) == 0 {
			break
		}
		if d := c.reserve(len(batch)); d > 0 {
			held, wait = batch, d
			break
		}
	}
	if ferr := c.endBurst(); err == nil {
		err = ferr
	}
	if err != nil {
		return nil, 0, err
	}
	c.a.metrics.sent.Add(float64(len(c.sent)))
	if c.autoCommit {
		c.consumer.Store(c.sent)
	}
	clear(c.sent) // let the records go
	return held, wait, nil
}

// writeBatch writes one frame: a record, or an array of them when
// batchSize > 1. The frame may wait in the burst: it is only on the socket
// once endBurst succeeded. Records fetched under an assignment a rebalance
// has ended are dropped: their partition's new owner reads them too, and
// storing them could commit the group's offset back. It returns the
// records it wrote, in batch's array.
func (c *consumeConn) writeBatch(batch []*bridge.ConsumedRecord) ([]*bridge.ConsumedRecord, error) {
	// Noted as written before the frame goes out: a client may commit a
	// record the moment it arrives, before the burst has been flushed here.
	// autoCommit still stores only after the flush succeeded.
	n := 0
	c.mu.Lock()
	for _, r := range batch {
		if !r.Assignment.Current() {
			continue
		}
		tp := topicPartition{r.Topic, r.Partition}
		s := c.parts[tp]
		if s == nil || s.asg != r.Assignment {
			s = &sentState{asg: r.Assignment, first: r.Offset, committed: -1}
			c.parts[tp] = s
		}
		s.last = r.Offset
		s.sent.add(r.Offset, r.Timestamp.UnixMilli())
		batch[n] = r
		n++
	}
	c.mu.Unlock()
	clear(batch[n:])
	if batch = batch[:n]; n == 0 {
		return batch, nil
	}
	if c.batchSize > 1 {
		c.enc = appendRecords(c.enc[:0], batch, c.keyType, c.valType)
	} else {
		c.enc = appendRecord(c.enc[:0], batch[0], c.keyType, c.valType)
	}
	err := c.writeText(c.enc)
	if cap(c.enc) > maxBurstBytes {
		c.enc = nil // a rare large frame need not hold its memory for the socket's life
	}
	return batch, err
}

// writeFrames writes control frames (commit acknowledgements, errors) in
// one burst.
func (c *consumeConn) writeFrames(frames []any) error {
	if len(frames) == 0 {
		return nil
	}
	c.beginBurst()
	var err error
	for _, f := range frames {
		if err = c.writeJSON(f); err != nil {
			break
		}
	}
	if ferr := c.endBurst(); err == nil {
		err = ferr
	}
	return err
}
