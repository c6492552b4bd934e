package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/gorilla/websocket"
)

// The WebSocket scenarios compare Tributary's JSON WebSocket API with
// librdkafka in the same run: ws-in (/socket/in) against native-produce,
// ws-out (/socket/out) against native-consume. The consume scenarios of a
// round all read one topic that the harness fills beforehand with the
// native producer, each in a fresh consumer group, so they read the same
// records.

// wsDialer is the harness's WebSocket client: large buffers, no
// compression, as a throughput-minded client would set it up.
var wsDialer = websocket.Dialer{
	HandshakeTimeout: 10 * time.Second,
	ReadBufferSize:   64 << 10,
	WriteBufferSize:  64 << 10,
}

// produceFrames builds /socket/in frames from a template: everything but
// the messageId is fixed per socket, so a frame costs an append of the id,
// not a JSON encoding. The load generator stays cheap next to the server.
type produceFrames struct {
	prefix []byte // up to and including `"messageId":"`
	buf    []byte
}

func newProduceFrames(key string, payload []byte) (*produceFrames, error) {
	k, err := json.Marshal(key)
	if err != nil {
		return nil, err
	}
	v, err := json.Marshal(string(payload))
	if err != nil {
		return nil, err
	}
	var p []byte
	p = append(p, `{"key":{"value":`...)
	p = append(p, k...)
	p = append(p, `,"format":"string"},"value":{"value":`...)
	p = append(p, v...)
	p = append(p, `,"format":"string"},"messageId":"`...)
	return &produceFrames{prefix: p}, nil
}

// frame returns the frame for message id n; it is valid until the next call.
func (f *produceFrames) frame(n int) []byte {
	f.buf = append(f.buf[:0], f.prefix...)
	f.buf = strconv.AppendInt(f.buf, int64(n), 10)
	f.buf = append(f.buf, `"}`...)
	return f.buf
}

// errorFrameMark is in every error frame and in no result or record frame:
// topics cannot hold a quote, and a quote inside a JSON string is escaped.
var errorFrameMark = []byte(`"error":{`)

// readFrame reads the next message into buf, reusing its memory.
func readFrame(ws *websocket.Conn, buf *bytes.Buffer) error {
	_, r, err := ws.NextReader()
	if err != nil {
		return err
	}
	buf.Reset()
	_, err = buf.ReadFrom(r)
	return err
}

// closeSocket sends a normal close and gives the server a moment to answer
// before dropping the connection.
func closeSocket(ws *websocket.Conn) {
	_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	_ = ws.SetReadDeadline(time.Now().Add(2 * time.Second))
	for {
		if _, _, err := ws.NextReader(); err != nil {
			break
		}
	}
	ws.Close()
}

// wsProducer is one /socket/in socket of the ws-in scenario.
type wsProducer struct {
	ws     *websocket.Conn
	frames *produceFrames
	slots  chan struct{} // one per frame awaiting its result
}

func dialProducer(ctx context.Context, httpAddr, clientID, topic, key string, payload []byte, window int) (*wsProducer, error) {
	q := url.Values{}
	q.Set("clientId", clientID)
	q.Set("topic", topic)
	q.Set("keyType", "string")
	q.Set("valType", "string")
	u := "ws://" + httpAddr + "/socket/in?" + q.Encode()
	ws, _, err := wsDialer.DialContext(ctx, u, nil)
	if err != nil {
		return nil, fmt.Errorf("dialing %s: %w", u, err)
	}
	f, err := newProduceFrames(key, payload)
	if err != nil {
		ws.Close()
		return nil, err
	}
	return &wsProducer{ws: ws, frames: f, slots: make(chan struct{}, window)}, nil
}

// send writes n frames, each taking a window slot that its result frees.
func (p *wsProducer) send(ctx context.Context, n int) error {
	for i := range n {
		select {
		case p.slots <- struct{}{}:
		case <-ctx.Done():
			return fmt.Errorf("sending frame %d of %d: %w", i, n, ctx.Err())
		}
		if err := p.ws.WriteMessage(websocket.TextMessage, p.frames.frame(i)); err != nil {
			return fmt.Errorf("sending frame %d of %d: %w", i, n, err)
		}
	}
	return nil
}

// results reads n result frames; an error frame fails the socket.
func (p *wsProducer) results(n int) error {
	var buf bytes.Buffer
	errs := 0
	var first string
	for range n {
		if err := readFrame(p.ws, &buf); err != nil {
			return fmt.Errorf("reading results: %w", err)
		}
		if bytes.Contains(buf.Bytes(), errorFrameMark) {
			if errs == 0 {
				first = buf.String()
			}
			errs++
		}
		<-p.slots
	}
	if errs > 0 {
		return fmt.Errorf("%d error frames; first: %s", errs, first)
	}
	return nil
}

// runWSIn starts a fresh Tributary and produces the records through its
// /socket/in, split evenly over the scenario's sockets.
func (b *bench) runWSIn(ctx context.Context, s scenario, topic, name string) result {
	r := result{Scenario: s.name, Records: b.opts.records}
	d, err := startDaemon(ctx, b.daemonConfig(topic, name))
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer d.stop()

	socks := make([]*wsProducer, s.clients)
	defer func() {
		for _, p := range socks {
			if p != nil {
				closeSocket(p.ws)
			}
		}
	}()
	for i := range socks {
		key := fmt.Sprintf("bench/ws-%03d", i)
		if socks[i], err = dialProducer(ctx, d.httpAddr, fmt.Sprintf("bench-%d", i), topic, key, b.payload, b.opts.wsWindow); err != nil {
			r.Error = fmt.Sprintf("%v (log: %s)", err, d.logPath)
			return r
		}
	}

	counts := split(b.opts.records, s.clients)
	sendErrs := make([]error, s.clients)
	readErrs := make([]error, s.clients)
	sendCtx, cancel := context.WithTimeout(ctx, b.opts.timeout)
	defer cancel()
	// A reader blocked on a socket whose results never come is released
	// by closing the socket when the time is up.
	stopAfter := context.AfterFunc(sendCtx, func() {
		for _, p := range socks {
			p.ws.Close()
		}
	})
	defer stopAfter()
	begin := make(chan struct{})
	var sends, reads sync.WaitGroup
	for i, p := range socks {
		sends.Go(func() {
			<-begin
			sendErrs[i] = p.send(sendCtx, counts[i])
		})
		reads.Go(func() { readErrs[i] = p.results(counts[i]) })
	}
	profiled := b.profile(ctx, d, name)
	span := b.startCPU(d.cpuSeconds)
	start := time.Now()
	close(begin)
	sends.Wait()
	sendErr := firstError(sendErrs)
	found, end, err := b.admin.waitForCount(ctx, topic, b.opts.partitions, int64(b.opts.records), b.pollTimeout(sendErr))
	// The clock stopped: so do the CPU readings, before the wait for the
	// last result frames, which Tributary writes after that.
	span.end(&r)
	if sendErr != nil {
		// Results still due will not all come: release the readers.
		for _, p := range socks {
			p.ws.Close()
		}
	}
	reads.Wait()
	if sendErr == nil {
		err = errors.Join(err, firstError(readErrs))
	}
	profiled()
	if rss, err := d.peakRSS(); err == nil {
		r.RSS = &rss
	}
	if !d.alive() {
		err = errors.Join(err, fmt.Errorf("tributary exited during the run: %v", d.waitErr))
	}
	_ = d.saveMetrics(filepath.Join(b.dir, "metrics-"+name+".txt"))
	err = errors.Join(sendErr, err)
	b.finish(&r, start, end, found, err)
	if err != nil {
		r.Error += " (log: " + d.logPath + ")"
	}
	return r
}

// filledTopic returns the topic the consume scenarios of round read,
// creating it and producing the records into it with the native producer
// on first use. Filling is not timed.
func (b *bench) filledTopic(ctx context.Context, runID string, round int) (string, error) {
	if t, ok := b.filled[round]; ok {
		return t, nil
	}
	topic := fmt.Sprintf("bench-%s-consume", runID)
	if b.opts.repeat > 1 {
		topic += fmt.Sprintf("-%d", round)
	}
	fmt.Fprintf(b.progress, "== filling %s with %d records for the consume scenarios (not timed)\n", topic, b.opts.records)
	if err := b.admin.createTopic(ctx, topic, b.opts.partitions); err != nil {
		return "", err
	}
	np, err := newNativeProducer(b.bootstrap)
	if err != nil {
		return "", err
	}
	keys := make([][]byte, 10)
	for i := range keys {
		keys[i] = fmt.Appendf(nil, "bench/native-%03d", i)
	}
	sendCtx, cancel := context.WithTimeout(ctx, b.opts.timeout)
	defer cancel()
	sendErr := np.produce(sendCtx, topic, keys, nil, b.payload, b.opts.records)
	np.Close()
	found, _, err := b.admin.waitForCount(ctx, topic, b.opts.partitions, int64(b.opts.records), b.pollTimeout(sendErr))
	if err = errors.Join(sendErr, np.err(), err); err != nil {
		return "", fmt.Errorf("filling %q: %w", topic, err)
	}
	if found != int64(b.opts.records) {
		return "", fmt.Errorf("filling %q: Kafka holds %d records, expected %d", topic, found, b.opts.records)
	}
	if b.filled == nil {
		b.filled = map[int]string{}
	}
	b.filled[round] = topic
	return topic, nil
}

// offsetCheck verifies that a consumer in a fresh group, starting at the
// earliest offset, sees every partition's records once and in order.
type offsetCheck map[int32]int64

func (o offsetCheck) see(partition int32, offset int64) error {
	if want := o[partition]; offset != want {
		return fmt.Errorf("partition %d: got offset %d, expected %d (a gap or a duplicate)", partition, offset, want)
	}
	o[partition] = offset + 1
	return nil
}

// consumeTiming is when a consumer started, got its first record and got
// its last.
type consumeTiming struct {
	start, first, end time.Time
	got               int64
}

// fill sets r's rate from t: the clock runs from start to the last record.
func (t consumeTiming) fill(r *result, err error) {
	r.Found = t.got
	if !t.end.IsZero() {
		r.Seconds = t.end.Sub(t.start).Seconds()
		if r.Seconds > 0 {
			r.Rate = float64(t.got) / r.Seconds
		}
	}
	if !t.first.IsZero() {
		r.FirstRecordSeconds = ptr(t.first.Sub(t.start).Seconds())
	}
	switch {
	case err != nil:
		r.Error = err.Error()
	case t.got != int64(r.Records):
		r.Error = fmt.Sprintf("received %d records, expected %d", t.got, r.Records)
	default:
		r.OK = true
	}
}

// runNativeConsume reads the filled topic with confluent-kafka-go in a
// fresh group: the consume baseline.
func (b *bench) runNativeConsume(ctx context.Context, s scenario, topic, group string) result {
	r := result{Scenario: s.name, Records: b.opts.records, drain: true}
	ctx, cancel := context.WithTimeout(ctx, b.opts.timeout)
	defer cancel()
	var t consumeTiming
	span := b.startCPU(nil)
	t.start = time.Now()
	c, err := kafka.NewConsumer(&kafka.ConfigMap{
		"bootstrap.servers":   b.bootstrap,
		"group.id":            group,
		"client.id":           "tributary-bench-native-consumer",
		"auto.offset.reset":   "earliest",
		"enable.metrics.push": false,
	})
	if err != nil {
		r.Error = fmt.Sprintf("creating native Kafka consumer: %v", err)
		return r
	}
	defer c.Close()
	if err := c.Subscribe(topic, nil); err != nil {
		r.Error = fmt.Sprintf("subscribing to %q: %v", topic, err)
		return r
	}
	check := offsetCheck{}
	want := int64(b.opts.records)
	for t.got < want && err == nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("consuming %q: %w", topic, ctx.Err())
			break
		}
		switch e := c.Poll(100).(type) {
		case *kafka.Message:
			if e.TopicPartition.Error != nil {
				err = fmt.Errorf("consuming %q: %w", topic, e.TopicPartition.Error)
				break
			}
			if t.got == 0 {
				t.first = time.Now()
			}
			err = check.see(e.TopicPartition.Partition, int64(e.TopicPartition.Offset))
			t.got++
		case kafka.Error:
			if e.IsFatal() {
				err = fmt.Errorf("consuming %q: %w", topic, e)
			}
		}
	}
	t.end = time.Now()
	span.end(&r)
	t.fill(&r, err)
	return r
}

// runWSOut starts a fresh Tributary and reads the filled topic through
// one /socket/out socket in a fresh group.
func (b *bench) runWSOut(ctx context.Context, s scenario, topic, group, name string) result {
	r := result{Scenario: s.name, Records: b.opts.records, drain: true}
	d, err := startDaemon(ctx, b.daemonConfig(topic, name))
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer d.stop()
	q := url.Values{}
	q.Set("clientId", "bench-"+name)
	q.Set("groupId", group)
	q.Set("topic", topic)
	q.Set("keyType", "string")
	q.Set("valType", "string")
	q.Set("autoCommit", "true")
	if s.batch > 1 {
		q.Set("batchSize", strconv.Itoa(s.batch))
	}
	u := "ws://" + d.httpAddr + "/socket/out?" + q.Encode()

	ctx, cancel := context.WithTimeout(ctx, b.opts.timeout)
	defer cancel()
	profiled := b.profile(ctx, d, name)
	span := b.startCPU(d.cpuSeconds)
	var t consumeTiming
	t.start = time.Now()
	ws, _, err := wsDialer.DialContext(ctx, u, nil)
	if err != nil {
		r.Error = fmt.Sprintf("dialing %s: %v (log: %s)", u, err, d.logPath)
		return r
	}
	stopAfter := context.AfterFunc(ctx, func() { ws.Close() })
	check := offsetCheck{}
	want := int64(b.opts.records)
	var buf bytes.Buffer
	for t.got < want {
		if err = readFrame(ws, &buf); err != nil {
			err = fmt.Errorf("reading records: %w", err)
			break
		}
		var n int
		n, err = parseRecords(buf.Bytes(), check)
		if err != nil {
			break
		}
		if t.got == 0 {
			t.first = time.Now()
		}
		t.got += int64(n)
	}
	t.end = time.Now()
	stopAfter()
	span.end(&r)
	profiled()
	if rss, err := d.peakRSS(); err == nil {
		r.RSS = &rss
	}
	closeSocket(ws)
	if !d.alive() {
		err = errors.Join(err, fmt.Errorf("tributary exited during the run: %v", d.waitErr))
	}
	_ = d.saveMetrics(filepath.Join(b.dir, "metrics-"+name+".txt"))
	t.fill(&r, err)
	if !r.OK {
		r.Error += " (log: " + d.logPath + ")"
	}
	return r
}

var (
	partitionField = []byte(`"partition":`)
	offsetField    = []byte(`"offset":`)
)

// parseRecords reads the partition and offset of every record in a
// /socket/out frame (one record, or an array of them), checks them with
// check, and returns how many there were. It scans for the two fields
// rather than decoding the whole record: a quote inside a key or value is
// escaped, so the field names can only match the record's own fields.
func parseRecords(frame []byte, check offsetCheck) (int, error) {
	if bytes.Contains(frame, errorFrameMark) {
		return 0, fmt.Errorf("error frame: %s", frame)
	}
	n := 0
	rest := frame
	for {
		i := bytes.Index(rest, partitionField)
		if i < 0 {
			break
		}
		p, after, err := leadingInt(rest[i+len(partitionField):])
		if err != nil {
			return n, fmt.Errorf("partition of record %d: %w in %.200s", n, err, frame)
		}
		j := bytes.Index(after, offsetField)
		if j < 0 {
			return n, fmt.Errorf("record %d has no offset: %.200s", n, frame)
		}
		o, after, err := leadingInt(after[j+len(offsetField):])
		if err != nil {
			return n, fmt.Errorf("offset of record %d: %w in %.200s", n, err, frame)
		}
		if err := check.see(int32(p), o); err != nil {
			return n, err
		}
		n++
		rest = after
	}
	if n == 0 {
		return 0, fmt.Errorf("a frame without records: %.200s", frame)
	}
	return n, nil
}

// leadingInt parses the non-negative integer at the start of b.
func leadingInt(b []byte) (int64, []byte, error) {
	var v int64
	i := 0
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		v = v*10 + int64(b[i]-'0')
		i++
	}
	if i == 0 {
		return 0, b, io.ErrUnexpectedEOF
	}
	return v, b[i:], nil
}
