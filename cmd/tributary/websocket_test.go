package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tributary-io/tributary/config"
)

// wsConfig is testConfig with consumer groups tuned for tests: short
// sessions make rebalances against a real Kafka quick.
func wsConfig(t *testing.T) config.Config {
	t.Helper()
	cfg := testConfig(t)
	cfg.WebSocket.SessionTimeout = 6 * time.Second
	cfg.WebSocket.PingInterval = 5 * time.Second
	return cfg
}

func wsDial(t *testing.T, d *testDaemon, path string, q url.Values) *websocket.Conn {
	t.Helper()
	c, err := wsTryDial(d, path, q, nil)
	if err != nil {
		t.Fatalf("dialing %s?%s: %v", path, q.Encode(), err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func wsTryDial(d *testDaemon, path string, q url.Values, h http.Header) (*websocket.Conn, error) {
	u := url.URL{Scheme: "ws", Host: d.httpAddr(), Path: path, RawQuery: q.Encode()}
	dl := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	c, resp, err := dl.Dial(u.String(), h)
	if err != nil && resp != nil {
		return nil, fmt.Errorf("%w (HTTP %d)", err, resp.StatusCode)
	}
	return c, err
}

func sendJSON(t *testing.T, c *websocket.Conn, v any) {
	t.Helper()
	var b []byte
	if s, ok := v.(string); ok {
		b = []byte(s)
	} else {
		var err error
		if b, err = json.Marshal(v); err != nil {
			t.Fatal(err)
		}
	}
	_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := c.WriteMessage(websocket.TextMessage, b); err != nil {
		t.Fatalf("writing frame: %v", err)
	}
}

// readFrame reads one text frame; it fails the test on a timeout or close.
func readFrame(t *testing.T, c *websocket.Conn, timeout time.Duration) []byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	_, b, err := c.ReadMessage()
	if err != nil {
		// The goroutines now, while the socket is still open, say where
		// the server is stuck.
		t.Fatalf("reading frame: %v\nthe daemon's goroutines:\n%s", err, daemonGoroutines())
	}
	return b
}

type wsResult struct {
	Topic     string          `json:"topic"`
	Partition int32           `json:"partition"`
	Offset    *int64          `json:"offset"`
	Timestamp int64           `json:"timestamp"`
	MessageID json.RawMessage `json:"messageId"`
	Error     *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	Committed *struct {
		Topic     string `json:"topic"`
		Partition int32  `json:"partition"`
		Offset    int64  `json:"offset"`
	} `json:"committed"`
	WsProxyMessageID string `json:"wsProxyMessageId"`
}

func readResult(t *testing.T, c *websocket.Conn) wsResult {
	t.Helper()
	b := readFrame(t, c, 30*time.Second)
	var r wsResult
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("frame %s: %v", b, err)
	}
	return r
}

type wsValue struct {
	Value  json.RawMessage `json:"value"`
	Format string          `json:"format"`
}

type wsRecord struct {
	ID        string `json:"wsProxyMessageId"`
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	Offset    int64  `json:"offset"`
	Timestamp int64  `json:"timestamp"`
	Headers   []struct {
		Key    string `json:"key"`
		Value  string `json:"value"`
		Format string `json:"format"`
	} `json:"headers"`
	Key   *wsValue `json:"key"`
	Value wsValue  `json:"value"`
}

func (r wsRecord) str() string {
	var s string
	_ = json.Unmarshal(r.Value.Value, &s)
	return s
}

// readRecords reads records until n arrived; frames that are arrays are
// batches.
func readRecords(t *testing.T, c *websocket.Conn, n int, timeout time.Duration) []wsRecord {
	t.Helper()
	var out []wsRecord
	deadline := time.Now().Add(timeout)
	for len(out) < n {
		if time.Now().After(deadline) {
			t.Fatalf("received %d of %d records in %s", len(out), n, timeout)
		}
		b := readFrame(t, c, time.Until(deadline))
		if bytes.HasPrefix(b, []byte("[")) {
			var batch []wsRecord
			if err := json.Unmarshal(b, &batch); err != nil {
				t.Fatalf("batch %s: %v", b, err)
			}
			out = append(out, batch...)
			continue
		}
		var r wsRecord
		if err := json.Unmarshal(b, &r); err != nil || r.ID == "" {
			t.Fatalf("expected a record, got %s (%v)", b, err)
		}
		out = append(out, r)
	}
	return out
}

// expectQuiet checks that no frame arrives for d.
func expectQuiet(t *testing.T, c *websocket.Conn, d time.Duration) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	if _, b, err := c.ReadMessage(); err == nil {
		t.Fatalf("unexpected frame %s", b)
	}
}

// closeWS closes the socket cleanly and waits for the server's close.
func closeWS(c *websocket.Conn) {
	_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"), time.Now().Add(time.Second))
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, _, err := c.ReadMessage(); err != nil {
			break
		}
	}
	c.Close()
}

type produced struct {
	partition int32
	offset    int64
}

// produceStrings sends n records with messageIds prefix-i and keys k-i, and
// returns the results by messageId. A record whose
// result is error 50002 (Kafka failed or did not confirm it) is sent
// again, as the API asks of clients; every other error fails the test.
// At most produceWindow records await their results at a time: a client
// that wrote every record before reading any result would, once the socket
// buffers are full, be stuck writing to a server that has stopped reading
// until its results are read.
func produceStrings(t *testing.T, c *websocket.Conn, prefix string, n int) map[string]produced {
	t.Helper()
	send := func(i int) {
		sendJSON(t, c, map[string]any{
			"headers":   []map[string]string{{"key": "n", "value": fmt.Sprint(i)}},
			"key":       map[string]string{"value": fmt.Sprintf("k-%d", i), "format": "string"},
			"value":     map[string]string{"value": fmt.Sprintf("%s-value-%d", prefix, i), "format": "string"},
			"messageId": fmt.Sprintf("%s-%d", prefix, i),
		})
	}
	got := map[string]produced{}
	last := map[int32]int64{}
	retries, sent, awaiting := 0, 0, 0
	for len(got) < n {
		for sent < n && awaiting < produceWindow {
			send(sent)
			sent++
			awaiting++
		}
		r := readResult(t, c)
		awaiting--
		var id string
		if err := json.Unmarshal(r.MessageID, &id); err != nil || !strings.HasPrefix(id, prefix+"-") {
			t.Fatalf("result with messageId %s", r.MessageID)
		}
		if r.Error != nil && r.Error.Code == 50002 && retries < n {
			retries++
			i, _ := strconv.Atoi(strings.TrimPrefix(id, prefix+"-"))
			t.Logf("resending %s after error %d: %s", id, r.Error.Code, r.Error.Message)
			send(i)
			awaiting++
			continue
		}
		if r.Error != nil || r.Offset == nil {
			t.Fatalf("expected a result, got error %+v", r.Error)
		}
		if _, dup := got[id]; dup {
			t.Fatalf("two results for %s", id)
		}
		if *r.Offset < 0 {
			t.Fatalf("%s: partition %d: offset %d", id, r.Partition, *r.Offset)
		}
		// Offsets increase per partition, except for a resent record,
		// which lands after those sent later.
		if prev, ok := last[r.Partition]; ok && *r.Offset <= prev && retries == 0 {
			t.Fatalf("partition %d: offset %d after %d", r.Partition, *r.Offset, prev)
		}
		last[r.Partition] = max(last[r.Partition], *r.Offset)
		if r.Timestamp == 0 || r.Topic == "" {
			t.Fatalf("result without topic or timestamp: %+v", r)
		}
		got[id] = produced{r.Partition, *r.Offset}
	}
	return got
}

// produceWindow is how many records produceStrings keeps awaiting results:
// below websocket.max_inflight (1000), so the server never stops reading.
const produceWindow = 500

// recordsIn is how many records a fresh topic holds after produceStrings
// returned results: offsets are dense from 0 in each partition (an
// idempotent, non-transactional producer), so it is the highest offset
// plus one, summed over partitions. It is more than len(results) when a
// record Kafka did not confirm (error 50002, resent) was written after all.
func recordsIn(results map[string]produced) int {
	top := map[int32]int64{}
	for _, p := range results {
		if o, ok := top[p.partition]; !ok || p.offset > o {
			top[p.partition] = p.offset
		}
	}
	n := 0
	for _, o := range top {
		n += int(o) + 1
	}
	return n
}

func checkOrderPerPartition(t *testing.T, recs []wsRecord) {
	t.Helper()
	last := map[string]int64{}
	for _, r := range recs {
		k := fmt.Sprintf("%s/%d", r.Topic, r.Partition)
		if prev, ok := last[k]; ok && r.Offset <= prev {
			t.Fatalf("%s: offset %d after %d", k, r.Offset, prev)
		}
		last[k] = r.Offset
	}
}

// The acceptance, step by step.
func TestWebSocketAcceptance(t *testing.T) {
	d := startDaemon(t, wsConfig(t))
	topic := uniq("t1")
	in := wsDial(t, d, "/socket/in", url.Values{"clientId": {uniq("c1")}, "topic": {topic}, "keyType": {"string"}, "valType": {"string"}})

	results := produceStrings(t, in, "m", 100)
	if len(results) != 100 {
		t.Fatalf("%d results", len(results))
	}

	sendJSON(t, in, "{not json")
	r := readResult(t, in)
	if r.Error == nil || r.Error.Code != 42205 || string(r.MessageID) != "null" {
		t.Fatalf("malformed JSON: got %+v messageId %s", r.Error, r.MessageID)
	}
	sendJSON(t, in, `{"key":{"value":"k-after"},"value":{"value":"after"},"messageId":"after"}`)
	r = readResult(t, in)
	if r.Error != nil || string(r.MessageID) != `"after"` {
		t.Fatalf("record after the error: %+v %s", r.Error, r.MessageID)
	}
	results["after"] = produced{r.Partition, *r.Offset}

	// What is in Kafka matches the results.
	krecs := kafkaRecords(t, d.bootstrap, topic, 101, 30*time.Second)
	if len(krecs) != 101 {
		t.Fatalf("Kafka has %d records, want 101", len(krecs))
	}
	for _, kr := range krecs {
		id := strings.TrimPrefix(string(kr.Value), "m-value-")
		if string(kr.Value) != "after" {
			id = "m-" + id
		} else {
			id = "after"
		}
		p, ok := results[id]
		if !ok || p.partition != kr.Partition || p.offset != kr.Offset {
			t.Fatalf("Kafka record %s at %d/%d, result said %+v", kr.Value, kr.Partition, kr.Offset, p)
		}
	}

	client, group := uniq("c2"), uniq("g1")
	q := url.Values{"clientId": {client}, "groupId": {group}, "topic": {topic}, "valType": {"string"}, "keyType": {"string"}, "autoCommit": {"false"}}
	out := wsDial(t, d, "/socket/out", q)
	recs := readRecords(t, out, 101, 60*time.Second)
	checkOrderPerPartition(t, recs)
	for _, rec := range recs {
		if rec.Topic != topic || rec.Key == nil || rec.Value.Format != "string" || !strings.HasPrefix(rec.ID, topic+"-") {
			t.Fatalf("record shape: %+v", rec)
		}
	}
	fiftieth := recs[49]
	sendJSON(t, out, map[string]string{"wsProxyMessageId": fiftieth.ID})
	closeWS(out)

	out = wsDial(t, d, "/socket/out", q)
	// Only the 50th record's partition was committed: it resumes after it;
	// the other partitions, never committed, start again from the beginning.
	want := 0
	for _, rec := range recs {
		if rec.Partition != fiftieth.Partition || rec.Offset > fiftieth.Offset {
			want++
		}
	}
	again := readRecords(t, out, want, 60*time.Second)
	checkOrderPerPartition(t, again)
	for _, rec := range again {
		if rec.Partition == fiftieth.Partition && rec.Offset <= fiftieth.Offset {
			t.Fatalf("record %d/%d redelivered although offset %d was committed", rec.Partition, rec.Offset, fiftieth.Offset)
		}
	}
	firstInPartition := int64(-1)
	for _, rec := range again {
		if rec.Partition == fiftieth.Partition {
			firstInPartition = rec.Offset
			break
		}
	}
	if firstInPartition != -1 && firstInPartition != fiftieth.Offset+1 {
		t.Fatalf("partition %d resumed at %d, want %d", fiftieth.Partition, firstInPartition, fiftieth.Offset+1)
	}
	expectQuiet(t, out, time.Second)
}

// The volume test: 10,000 records through /socket/in, each with a
// result carrying its offset (increasing per partition, checked by
// produceStrings); consumed back with autoCommit=false, half of every
// partition committed, and after a reconnect exactly the other half
// arrives.
func TestWebSocketCommitHalf(t *testing.T) {
	d := startDaemon(t, wsConfig(t))
	topic := uniq("half")
	in := wsDial(t, d, "/socket/in", url.Values{"clientId": {uniq("p")}, "topic": {topic}})
	const n = 10000
	start := time.Now()
	results := produceStrings(t, in, "h", n)
	total := recordsIn(results)
	t.Logf("produced %d records in %s (%d in Kafka)", n, time.Since(start).Round(time.Millisecond), total)

	q := url.Values{"clientId": {uniq("c")}, "groupId": {uniq("g")}, "topic": {topic}, "autoCommit": {"false"}, "commitAck": {"true"}}
	out := wsDial(t, d, "/socket/out", q)
	start = time.Now()
	recs := readRecords(t, out, total, 120*time.Second)
	t.Logf("consumed %d records in %s", len(recs), time.Since(start).Round(time.Millisecond))
	checkOrderPerPartition(t, recs)
	// Every result names a record that came back, at the place it said.
	at := map[produced]string{}
	for _, r := range recs {
		at[produced{r.Partition, r.Offset}] = r.str()
	}
	for id, p := range results {
		if v, ok := at[p]; !ok || v != "h-value-"+strings.TrimPrefix(id, "h-") {
			t.Fatalf("%s: result said %d/%d, which was consumed as %q", id, p.partition, p.offset, v)
		}
	}
	// Commit the first half of every partition's records.
	byPartition := map[int32][]wsRecord{}
	for _, r := range recs {
		byPartition[r.Partition] = append(byPartition[r.Partition], r)
	}
	rest := 0
	for _, rs := range byPartition {
		half := rs[len(rs)/2-1]
		sendJSON(t, out, map[string]string{"wsProxyMessageId": half.ID})
		rest += len(rs) - len(rs)/2
	}
	for range byPartition {
		r := readResult(t, out)
		if r.Committed == nil {
			t.Fatalf("expected a commit acknowledgement, got %+v", r)
		}
		rs := byPartition[r.Committed.Partition]
		if want := rs[len(rs)/2-1].Offset; r.Committed.Topic != topic || r.Committed.Offset != want {
			t.Fatalf("commit acknowledged %+v, want %s/%d@%d", *r.Committed, topic, r.Committed.Partition, want)
		}
	}
	closeWS(out)
	out = wsDial(t, d, "/socket/out", q)
	start = time.Now()
	again := readRecords(t, out, rest, 120*time.Second)
	t.Logf("after the reconnect, %d records in %s", len(again), time.Since(start).Round(time.Millisecond))
	checkOrderPerPartition(t, again)
	for _, r := range again {
		rs := byPartition[r.Partition]
		if r.Offset <= rs[len(rs)/2-1].Offset {
			t.Fatalf("committed record %d/%d redelivered", r.Partition, r.Offset)
		}
	}
	// Each partition resumes right after its committed record.
	first := map[int32]int64{}
	for _, r := range again {
		if _, ok := first[r.Partition]; !ok {
			first[r.Partition] = r.Offset
		}
	}
	for p, rs := range byPartition {
		if want := rs[len(rs)/2-1].Offset + 1; first[p] != want {
			t.Fatalf("partition %d resumed at %d, want %d", p, first[p], want)
		}
	}
	expectQuiet(t, out, time.Second)
}

func TestWebSocketBase64AndFormats(t *testing.T) {
	d := startDaemon(t, wsConfig(t))
	topic := uniq("bin")
	in := wsDial(t, d, "/socket/in", url.Values{"clientId": {uniq("p")}, "topic": {topic}, "keyType": {"long"}, "valType": {"string"}})
	bin := []byte{0, 0xff, 0x10, 0x80}
	sendJSON(t, in, map[string]any{
		"headers":   []map[string]string{{"key": "raw", "value": base64.StdEncoding.EncodeToString([]byte{1, 0xfe}), "format": "base64"}},
		"key":       map[string]any{"value": 42},
		"value":     map[string]string{"value": base64.StdEncoding.EncodeToString(bin), "format": "base64"},
		"messageId": "b1",
	})
	if r := readResult(t, in); r.Error != nil {
		t.Fatalf("base64 record: %+v", r.Error)
	}
	// A value that does not fit its format is an error frame; the socket stays open.
	sendJSON(t, in, `{"key":{"value":"not a number"},"value":{"value":"v"},"messageId":"b2"}`)
	if r := readResult(t, in); r.Error == nil || r.Error.Code != 42205 || string(r.MessageID) != `"b2"` {
		t.Fatalf("wrong format: %+v %s", r.Error, r.MessageID)
	}
	sendJSON(t, in, `{"key":{"value":7},"value":{"value":"text"},"messageId":"b3"}`)
	if r := readResult(t, in); r.Error != nil {
		t.Fatalf("record after the error: %+v", r.Error)
	}

	krecs := kafkaRecords(t, d.bootstrap, topic, 2, 30*time.Second)
	if len(krecs) != 2 {
		t.Fatalf("Kafka has %d records", len(krecs))
	}
	var binRec = krecs[0]
	if !bytes.Equal(binRec.Value, bin) {
		binRec = krecs[1]
	}
	if !bytes.Equal(binRec.Value, bin) || !bytes.Equal(binRec.Key, []byte{0, 0, 0, 0, 0, 0, 0, 42}) {
		t.Fatalf("Kafka record key %x value %x", binRec.Key, binRec.Value)
	}
	if len(binRec.Headers) != 1 || !bytes.Equal(binRec.Headers[0].Value, []byte{1, 0xfe}) {
		t.Fatalf("headers %+v", binRec.Headers)
	}

	out := wsDial(t, d, "/socket/out", url.Values{"clientId": {uniq("c")}, "topic": {topic}, "keyType": {"long"}, "valType": {"string"}})
	recs := readRecords(t, out, 2, 60*time.Second)
	for _, r := range recs {
		if r.Key == nil || r.Key.Format != "long" {
			t.Fatalf("key %+v", r.Key)
		}
		switch string(r.Key.Value) {
		case "42":
			if r.Value.Format != "base64" || r.str() != base64.StdEncoding.EncodeToString(bin) {
				t.Fatalf("binary value came back as %s %s", r.Value.Value, r.Value.Format)
			}
			if len(r.Headers) != 1 || r.Headers[0].Format != "base64" {
				t.Fatalf("binary header came back as %+v", r.Headers)
			}
		case "7":
			if r.Value.Format != "string" || r.str() != "text" {
				t.Fatalf("value %s %s", r.Value.Value, r.Value.Format)
			}
		default:
			t.Fatalf("key %s", r.Key.Value)
		}
	}
}

func TestWebSocketUnknownTopic(t *testing.T) {
	cfg := wsConfig(t)
	cfg.Kafka.CreateTopics = false
	d := startDaemon(t, cfg)
	topic := uniq("missing")
	in := wsDial(t, d, "/socket/in", url.Values{"clientId": {uniq("p")}, "topic": {topic}})
	for i := range 2 { // the socket stays open after the first error
		sendJSON(t, in, fmt.Sprintf(`{"value":{"value":"v"},"messageId":"u%d"}`, i))
		r := readResult(t, in)
		if r.Error == nil || r.Error.Code != 40401 || string(r.MessageID) != fmt.Sprintf(`"u%d"`, i) || !strings.Contains(r.Error.Message, "kafka.create_topics is false") {
			t.Fatalf("unknown topic: %+v %s", r.Error, r.MessageID)
		}
	}

	// Consuming never creates a topic, whatever kafka.create_topics says:
	// the error does not name it.
	out := wsDial(t, d, "/socket/out", url.Values{"clientId": {uniq("c")}, "topic": {topic}})
	if r := readResult(t, out); r.Error == nil || r.Error.Code != 40401 || strings.Contains(r.Error.Message, "create_topics") {
		t.Fatalf("consume unknown topic: %+v", r.Error)
	}
	_ = out.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err := out.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.ClosePolicyViolation || !strings.Contains(ce.Text, topic) {
		t.Fatalf("expected a close frame naming the topic, got %v", err)
	}

	// Bad parameters: an error frame, then a close frame with the reason.
	bad := wsDial(t, d, "/socket/in", url.Values{"topic": {"x"}, "valType": {"avro"}})
	if r := readResult(t, bad); r.Error == nil || r.Error.Code != 40000 || !strings.Contains(r.Error.Message, "clientId") || !strings.Contains(r.Error.Message, "avro") {
		t.Fatalf("bad parameters: %+v", r.Error)
	}
}

func TestWebSocketMultiTopicCommitAck(t *testing.T) {
	d := startDaemon(t, wsConfig(t))
	a, b := uniq("ta"), uniq("tb")
	for _, topic := range []string{a, b} {
		in := wsDial(t, d, "/socket/in", url.Values{"clientId": {uniq("p")}, "topic": {topic}})
		produceStrings(t, in, "x", 10)
	}
	// A topic named twice is read once (librdkafka refuses such a list).
	out := wsDial(t, d, "/socket/out", url.Values{"clientId": {uniq("c")}, "topic": {a + "," + b + "," + a}, "autoCommit": {"false"}, "commitAck": {"true"}})
	recs := readRecords(t, out, 20, 60*time.Second)
	seen := map[string]int{}
	for _, r := range recs {
		seen[r.Topic]++
	}
	if seen[a] != 10 || seen[b] != 10 {
		t.Fatalf("records per topic %v", seen)
	}
	target := recs[len(recs)-1]
	sendJSON(t, out, map[string]string{"wsProxyMessageId": target.ID})
	r := readResult(t, out)
	if r.Committed == nil || r.Committed.Topic != target.Topic || r.Committed.Partition != target.Partition || r.Committed.Offset != target.Offset {
		t.Fatalf("commit ack %+v for %s", r, target.ID)
	}
	for _, tc := range []struct {
		frame string
		code  int
	}{
		{fmt.Sprintf(`{"wsProxyMessageId":%q}`, target.ID), 40402},                         // stale: already committed
		{fmt.Sprintf(`{"wsProxyMessageId":"%s-%d-999999-1"}`, a, target.Partition), 40402}, // never sent
		{`{"wsProxyMessageId":"other-topic-0-1-1"}`, 40402},                                // not this socket's topic
		{`{"wsProxyMessageId":"nonsense"}`, 42205},
		{`{"commit":true}`, 42205},
		{`{not json`, 42205},
	} {
		sendJSON(t, out, tc.frame)
		r := readResult(t, out)
		if r.Error == nil || r.Error.Code != tc.code {
			t.Fatalf("%s: got %+v, want error %d", tc.frame, r, tc.code)
		}
	}
}

func TestWebSocketGroupSplitsPartitions(t *testing.T) {
	d := startDaemon(t, wsConfig(t))
	topic, group := uniq("grp"), uniq("g")
	in := wsDial(t, d, "/socket/in", url.Values{"clientId": {uniq("p")}, "topic": {topic}})
	produceStrings(t, in, "a", 30)

	q := func(client string) url.Values {
		return url.Values{"clientId": {client}, "groupId": {group}, "topic": {topic}}
	}
	first := wsDial(t, d, "/socket/out", q(uniq("c1")))
	readRecords(t, first, 30, 60*time.Second) // alone, it owns every partition

	secondID := uniq("c2")
	second := wsDial(t, d, "/socket/out", q(secondID))
	// Records produced after the second member joined are split between
	// the two; keep producing until both have received some.
	type got struct {
		who string
		r   wsRecord
	}
	ch := make(chan got, 10000)
	stop := make(chan struct{})
	reader := func(who string, c *websocket.Conn) {
		for {
			_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
			_, b, err := c.ReadMessage()
			if err != nil {
				return
			}
			var r wsRecord
			if json.Unmarshal(b, &r) == nil && r.ID != "" {
				select {
				case ch <- got{who, r}:
				case <-stop:
					return
				}
			}
		}
	}
	secondDone := make(chan struct{})
	go reader("first", first)
	go func() {
		defer close(secondDone)
		reader("second", second)
	}()
	defer close(stop)
	owners := map[int32]map[string]bool{}
	counts := map[string]int{}
	deadline := time.Now().Add(60 * time.Second)
	round := 0
	for counts["first"] == 0 || counts["second"] == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("partitions not split after 60s: %v", counts)
		}
		produceStrings(t, in, fmt.Sprintf("b%d", round), 30)
		round++
		timeout := time.After(3 * time.Second)
	collect:
		for {
			select {
			case g := <-ch:
				if strings.HasPrefix(g.r.str(), "a-") {
					continue // redelivery of records produced before the rebalance
				}
				counts[g.who]++
				if owners[g.r.Partition] == nil {
					owners[g.r.Partition] = map[string]bool{}
				}
				owners[g.r.Partition][g.who] = true
			case <-timeout:
				break collect
			}
		}
	}
	t.Logf("records after the join: %v", counts)

	// When the second leaves, the first gets its partitions back. Its
	// reader goroutine owns reading, so only the close frame is sent here.
	_ = second.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"), time.Now().Add(time.Second))
	select {
	case <-secondDone:
	case <-time.After(15 * time.Second):
		t.Fatal("second socket did not close")
	}
	n := 60
	produceStrings(t, in, "c", n)
	fromFirst := 0
	deadline = time.Now().Add(60 * time.Second)
	for fromFirst < n {
		select {
		case g := <-ch:
			if g.who == "first" && strings.HasPrefix(g.r.str(), "c-") {
				fromFirst++
			}
		case <-time.After(time.Until(deadline)):
			t.Fatalf("after the second member left, the first received %d of %d new records", fromFirst, n)
		}
	}
}

func TestWebSocketBatchAndRate(t *testing.T) {
	d := startDaemon(t, wsConfig(t))
	topic := uniq("rate")
	in := wsDial(t, d, "/socket/in", url.Values{"clientId": {uniq("p")}, "topic": {topic}})
	produceStrings(t, in, "r", 60)

	out := wsDial(t, d, "/socket/out", url.Values{"clientId": {uniq("c")}, "topic": {topic}, "batchSize": {"10"}, "rate": {"20"}})
	var total, frames, biggest int
	var first time.Time
	for total < 60 {
		b := readFrame(t, out, 60*time.Second)
		if first.IsZero() {
			first = time.Now()
		}
		var batch []wsRecord
		if err := json.Unmarshal(b, &batch); err != nil {
			t.Fatalf("with batchSize=10 every frame is an array, got %s", b)
		}
		if len(batch) == 0 || len(batch) > 10 {
			t.Fatalf("batch of %d", len(batch))
		}
		total += len(batch)
		frames++
		biggest = max(biggest, len(batch))
	}
	elapsed := time.Since(first)
	// 60 records at 20/s with a burst of one batch (10): at least 2.5s.
	if elapsed < 2*time.Second {
		t.Fatalf("60 records at rate=20 took only %s", elapsed)
	}
	if biggest < 2 {
		t.Fatalf("no frame held more than one record (%d frames)", frames)
	}
	t.Logf("%d frames, largest %d, %s", frames, biggest, elapsed)
}

func TestWebSocketProduceRateLimit(t *testing.T) {
	cfg := wsConfig(t)
	cfg.WebSocket.ProduceRate = 5
	d := startDaemon(t, cfg)
	topic := uniq("rl")
	in := wsDial(t, d, "/socket/in", url.Values{"clientId": {uniq("p")}, "topic": {topic}})
	for i := range 20 {
		sendJSON(t, in, fmt.Sprintf(`{"value":{"value":"v"},"messageId":%d}`, i))
	}
	limited, ok := 0, 0
	for range 20 {
		r := readResult(t, in)
		switch {
		case r.Error != nil && r.Error.Code == 42901:
			limited++
		case r.Error == nil:
			ok++
		default:
			t.Fatalf("unexpected error %+v", r.Error)
		}
	}
	if limited == 0 || ok == 0 {
		t.Fatalf("%d accepted, %d rate limited", ok, limited)
	}
	// A rate-limited record was not produced.
	if recs := settledRecords(t, d.bootstrap, topic); len(recs) != ok {
		t.Fatalf("Kafka has %d records, want the %d accepted", len(recs), ok)
	}
}

func TestWebSocketReplaceOriginInfo(t *testing.T) {
	cfg := wsConfig(t)
	cfg.WebSocket.AllowedOrigins = []string{"https://app.example.com"}
	d := startDaemon(t, cfg)
	topic := uniq("rep")
	q := url.Values{"clientId": {uniq("same")}, "topic": {topic}}
	old := wsDial(t, d, "/socket/in", q)
	// The old socket must be registered before the new one arrives, or the
	// new one is the one replaced: a round trip on it proves it.
	sendJSON(t, old, `{"value":{"value":"o"},"messageId":"o"}`)
	if r := readResult(t, old); r.Error != nil {
		t.Fatalf("old socket: %+v", r.Error)
	}
	fresh := wsDial(t, d, "/socket/in", q)
	_ = old.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err := old.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 4001 || !strings.Contains(ce.Text, "replaced") {
		t.Fatalf("old socket: want close 4001 with a reason, got %v", err)
	}
	sendJSON(t, fresh, `{"value":{"value":"v"},"messageId":"f"}`)
	if r := readResult(t, fresh); r.Error != nil {
		t.Fatalf("new socket: %+v", r.Error)
	}

	for _, tc := range []struct {
		origin string
		ok     bool
	}{
		{"https://evil.example.com", false},
		{"https://app.example.com", true},
		{"http://" + d.httpAddr(), true},
	} {
		c, err := wsTryDial(d, "/socket/in", url.Values{"clientId": {uniq("o")}, "topic": {topic}}, http.Header{"Origin": {tc.origin}})
		if (err == nil) != tc.ok {
			t.Fatalf("origin %s: err %v, want ok=%v", tc.origin, err, tc.ok)
		}
		if c != nil {
			c.Close()
		}
	}

	resp, err := http.Get("http://" + d.httpAddr() + "/kafka/cluster/info")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var brokers []struct {
		ID   *int    `json:"id"`
		Host string  `json:"host"`
		Port int     `json:"port"`
		Rack *string `json:"rack"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&brokers); err != nil || resp.StatusCode != 200 {
		t.Fatalf("cluster info: %d %v", resp.StatusCode, err)
	}
	if len(brokers) == 0 || brokers[0].ID == nil || brokers[0].Host == "" || brokers[0].Port == 0 {
		t.Fatalf("cluster info %+v", brokers)
	}
}

// A reader that does not read: the consumer pauses instead of buffering the
// topic, and everything arrives once it reads.
func TestWebSocketSlowReader(t *testing.T) {
	cfg := wsConfig(t)
	cfg.WebSocket.SendQueue = 100
	d := startDaemon(t, cfg)
	topic := uniq("slow")
	in := wsDial(t, d, "/socket/in", url.Values{"clientId": {uniq("p")}, "topic": {topic}})
	n := 3000
	for i := range n {
		// 8 KiB records: 24 MB in all, more than loopback socket buffers
		// absorb, so the stalled reader really stalls the writer.
		sendJSON(t, in, fmt.Sprintf(`{"value":{"value":"%08192d"},"messageId":%d}`, i, i))
	}
	for range n {
		if r := readResult(t, in); r.Error != nil {
			t.Fatalf("%+v", r.Error)
		}
	}
	out := wsDial(t, d, "/socket/out", url.Values{"clientId": {uniq("c")}, "topic": {topic}})
	// Read one record, then stall long enough for the socket buffers to fill.
	readRecords(t, out, 1, 60*time.Second)
	time.Sleep(3 * time.Second)
	recs := readRecords(t, out, n-1, 60*time.Second)
	checkOrderPerPartition(t, recs)
	if m := metricsText(t, d.httpAddr()); strings.Contains(m, "tributary_websocket_consumer_pauses_total 0") ||
		!strings.Contains(m, "tributary_websocket_consumer_pauses_total") {
		t.Fatalf("the stalled socket never paused its partitions")
	}
}
