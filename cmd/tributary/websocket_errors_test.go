package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// The error frames and close codes of docs/websocket.md, each provoked the
// way a client would run into it. 40401 is in TestWebSocketUnknownTopic,
// 42901 in TestWebSocketProduceRateLimit, malformed JSON and 40402 for
// unknown and stale ids in TestWebSocketAcceptance and
// TestWebSocketMultiTopicCommitAck.

// expectClose reads until the server's close frame and returns it; it fails
// the test when the socket ends without one or stays open past timeout.
func expectClose(t *testing.T, c *websocket.Conn, timeout time.Duration) *websocket.CloseError {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	for {
		_, b, err := c.ReadMessage()
		if err == nil {
			t.Logf("frame before the close: %s", b)
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("expected a close frame, got %v", err)
		}
		return ce
	}
}

// 40000: bad query parameters get one error frame naming each problem, then
// close 1008 with the reason; each frame is counted.
func TestWebSocketBadParams(t *testing.T) {
	d := startDaemon(t, wsConfig(t))
	topic := uniq("params")
	cases := []struct {
		path  string
		q     url.Values
		names []string // each must be named in the error message and the close reason
	}{
		{"/socket/in", url.Values{}, []string{"clientId", "topic"}},
		{"/socket/in", url.Values{"clientId": {"c"}}, []string{"topic"}},
		{"/socket/in", url.Values{"clientId": {"c"}, "topic": {topic}, "keyType": {"avro"}}, []string{"keyType", "avro"}},
		{"/socket/in", url.Values{"clientId": {"c"}, "topic": {topic}, "valType": {"protobuf"}}, []string{"valType", "protobuf"}},
		{"/socket/in", url.Values{"clientId": {"c"}, "topic": {topic}, "socketPayload": {"avro"}}, []string{"socketPayload"}},
		{"/socket/in", url.Values{"clientId": {"c"}, "topic": {topic}, "transactional": {"true"}}, []string{"transactional"}},
		{"/socket/in", url.Values{"clientId": {"c"}, "topic": {"bad topic"}}, []string{"bad topic", "not a valid Kafka topic name"}},
		{"/socket/in", url.Values{"clientId": {"c"}, "topic": {strings.Repeat("t", 300)}}, []string{"300 bytes long"}},
		{"/socket/in", url.Values{"clientId": {"c"}, "topic": {".."}}, []string{"reserved"}},
		{"/socket/in", url.Values{"clientId": {"c"}, "topic": {"__consumer_offsets"}}, []string{"__consumer_offsets", "internal topics"}},
		{"/socket/out", url.Values{"topic": {topic}}, []string{"clientId"}},
		{"/socket/out", url.Values{"clientId": {"c"}, "topic": {" , "}}, []string{"topic"}},
		{"/socket/out", url.Values{"clientId": {"c"}, "topic": {topic + ",a/b"}}, []string{`"a/b"`, "not a valid Kafka topic name"}},
		{"/socket/out", url.Values{"clientId": {"c"}, "topic": {strings.Repeat("t", 250)}}, []string{"250 bytes long"}},
		{"/socket/out", url.Values{"clientId": {"c"}, "topic": {topic}, "offsetResetStrategy": {"middle"}}, []string{"offsetResetStrategy", "middle"}},
		{"/socket/out", url.Values{"clientId": {"c"}, "topic": {topic}, "isolationLevel": {"serializable"}}, []string{"isolationLevel", "serializable"}},
		{"/socket/out", url.Values{"clientId": {"c"}, "topic": {topic}, "rate": {"-1"}}, []string{"rate"}},
		{"/socket/out", url.Values{"clientId": {"c"}, "topic": {topic}, "batchSize": {"ten"}}, []string{"batchSize"}},
		{"/socket/out", url.Values{"clientId": {"c"}, "topic": {topic}, "autoCommit": {"maybe"}}, []string{"autoCommit"}},
		{"/socket/out", url.Values{"clientId": {"c"}, "topic": {topic}, "commitAck": {"sometimes"}}, []string{"commitAck"}},
		{"/socket/out", url.Values{"clientId": {"c"}, "topic": {topic}, "valType": {"xml"}}, []string{"valType", "xml"}},
	}
	for _, tc := range cases {
		t.Run(tc.path+" "+strings.Join(tc.names, ","), func(t *testing.T) {
			c := wsDial(t, d, tc.path, tc.q)
			r := readResult(t, c)
			if r.Error == nil || r.Error.Code != 40000 {
				t.Fatalf("want error 40000, got %+v", r)
			}
			ce := expectClose(t, c, 10*time.Second)
			if ce.Code != websocket.ClosePolicyViolation {
				t.Fatalf("close %d %q, want 1008", ce.Code, ce.Text)
			}
			for _, name := range tc.names {
				if !strings.Contains(r.Error.Message, name) || !strings.Contains(ce.Text, name) {
					t.Fatalf("error %q and close reason %q should both name %q", r.Error.Message, ce.Text, name)
				}
			}
		})
	}
	want := fmt.Sprintf(`tributary_websocket_error_frames_total{code="40000"} %d`, len(cases))
	if m := metricsText(t, d.httpAddr()); !strings.Contains(m, want+"\n") {
		t.Fatalf("want %s:\n%s", want, linesWith(m, "error_frames_total"))
	}
}

// 42205 for every kind of bad record, including one Kafka refuses for good
// (larger than the broker's message.max.bytes, which both kfake and Apache
// Kafka default to 1048588, though within kafka.max_message_bytes): not
// 50002, which tells the client to send it again. After each error the
// socket stays open and the next record is produced, and Kafka holds only
// those.
func TestWebSocketPayloadErrors(t *testing.T) {
	cfg := wsConfig(t)
	cfg.Kafka.MaxMessageBytes = 3 << 20 // below websocket.max_frame_bytes (4 MiB)
	d := startDaemon(t, cfg)
	topic := uniq("payload")
	in := wsDial(t, d, "/socket/in", url.Values{"clientId": {uniq("p")}, "topic": {topic}, "keyType": {"string"}, "valType": {"string"}})
	big := func(id string, n int) string {
		return fmt.Sprintf(`{"value":{"value":%q},"messageId":%q}`, strings.Repeat("x", n), id)
	}
	cases := []struct {
		name  string
		frame string
		id    string // the messageId the error frame echoes, as JSON
		code  int
	}{
		{"malformed JSON", `{not json`, `null`, 42205},
		{"not an object", `[1,2,3]`, `null`, 42205},
		{"value of the wrong JSON type", `{"value":"bare","messageId":"e1"}`, `"e1"`, 42205},
		{"unknown format", `{"value":{"value":"v","format":"avro"},"messageId":"e2"}`, `"e2"`, 42205},
		{"int out of range", `{"key":{"value":3000000000,"format":"int"},"value":{"value":"v"},"messageId":"e3"}`, `"e3"`, 42205},
		{"long that is not a number", `{"key":{"value":"abc","format":"long"},"messageId":"e4"}`, `"e4"`, 42205},
		{"bad base64", `{"value":{"value":"@@not base64@@","format":"base64"},"messageId":"e5"}`, `"e5"`, 42205},
		{"header without a key", `{"headers":[{"value":"v"}],"value":{"value":"v"},"messageId":"e6"}`, `"e6"`, 42205},
		{"header in a numeric format", `{"headers":[{"key":"h","value":"1","format":"int"}],"value":{"value":"v"},"messageId":"e7"}`, `"e7"`, 42205},
		{"larger than kafka.max_message_bytes", big("e8", 3<<20+100), `"e8"`, 42205},
		{"refused by Kafka for good", big("e9", 2<<20), `"e9"`, 42205},
	}
	for i, tc := range cases {
		t.Run(fmt.Sprintf("%d %s", tc.code, tc.name), func(t *testing.T) {
			sendJSON(t, in, tc.frame)
			r := readResult(t, in)
			if r.Error == nil || r.Error.Code != tc.code || string(r.MessageID) != tc.id {
				t.Fatalf("want error %d for messageId %s, got %+v messageId %s offset %v", tc.code, tc.id, r.Error, r.MessageID, r.Offset)
			}
			if r.Error.Message == "" {
				t.Fatal("error frame without a message")
			}
			t.Logf("%d: %s", r.Error.Code, r.Error.Message)
			// The socket stays open and the next record is produced.
			sendJSON(t, in, fmt.Sprintf(`{"value":{"value":"ok-%d"},"messageId":"ok-%d"}`, i, i))
			r = readResult(t, in)
			if r.Error != nil || r.Offset == nil || string(r.MessageID) != fmt.Sprintf(`"ok-%d"`, i) {
				t.Fatalf("record after the error: %+v messageId %s", r.Error, r.MessageID)
			}
		})
	}
	recs := settledRecords(t, d.bootstrap, topic)
	if len(recs) != len(cases) {
		t.Fatalf("Kafka has %d records, want the %d valid ones", len(recs), len(cases))
	}
	for _, r := range recs {
		if !strings.HasPrefix(string(r.Value), "ok-") {
			t.Fatalf("Kafka has a record of %d bytes that got an error frame", len(r.Value))
		}
	}
	if m := metricsText(t, d.httpAddr()); !strings.Contains(m, `tributary_websocket_error_frames_total{code="42205"} 11`) ||
		strings.Contains(m, `tributary_websocket_error_frames_total{code="50002"}`) {
		t.Fatalf("error frames not counted by code:\n%s", linesWith(m, "error_frames_total"))
	}
}

// 42205 for a record to one more topic than kafka.max_topics allows: the
// message says Tributary refused it, not Kafka, and names the setting to
// raise. The topic in use keeps working.
func TestWebSocketMaxTopics(t *testing.T) {
	cfg := wsConfig(t)
	cfg.Kafka.MaxTopics = 1
	d := startDaemon(t, cfg)
	first, second := uniq("first"), uniq("second")
	in := wsDial(t, d, "/socket/in", url.Values{"clientId": {uniq("p")}, "topic": {first}})
	produceStrings(t, in, "a", 1)
	over := wsDial(t, d, "/socket/in", url.Values{"clientId": {uniq("p")}, "topic": {second}})
	sendJSON(t, over, `{"value":{"value":"b"},"messageId":"b"}`)
	r := readResult(t, over)
	if r.Error == nil || r.Error.Code != 42205 || string(r.MessageID) != `"b"` {
		t.Fatalf("record for a second topic with kafka.max_topics 1: %+v messageId %s, want error 42205", r.Error, r.MessageID)
	}
	msg := r.Error.Message
	if strings.Contains(msg, "Kafka refused") || !strings.Contains(msg, "Tributary") ||
		!strings.Contains(msg, "kafka.max_topics") || !strings.Contains(msg, strconv.Quote(second)) {
		t.Fatalf("error %q: want it to say Tributary refused topic %q, not Kafka, and name kafka.max_topics", msg, second)
	}
	t.Logf("42205: %s", msg)
	produceStrings(t, in, "c", 1)
	if m := metricsText(t, d.httpAddr()); !strings.Contains(m, `tributary_websocket_error_frames_total{code="42205"} 1`+"\n") {
		t.Fatalf("the refusal is not counted:\n%s", linesWith(m, "error_frames_total"))
	}
}

// 50002 for a record Kafka did not take in time (it is down): the client
// may send it again, and once Kafka is back that works.
func TestWebSocketKafkaErrorIsRetryable(t *testing.T) {
	o := newOutage(t)
	cfg := wsConfig(t)
	cfg.Kafka.Bootstrap = o.bootstrap
	cfg.Kafka.Properties = map[string]string{"message.timeout.ms": "2000"}
	d := startDaemon(t, cfg)
	topic := uniq("k50002")
	in := wsDial(t, d, "/socket/in", url.Values{"clientId": {uniq("p")}, "topic": {topic}})
	sendJSON(t, in, `{"value":{"value":"before"},"messageId":"m0"}`)
	if r := readResult(t, in); r.Error != nil {
		t.Fatalf("before the outage: %+v", r.Error)
	}
	o.down(t)
	sendJSON(t, in, `{"value":{"value":"during"},"messageId":"m1"}`)
	r := readResult(t, in)
	if r.Error == nil || r.Error.Code != 50002 || string(r.MessageID) != `"m1"` {
		t.Fatalf("with Kafka down: %+v messageId %s, want error 50002 for m1", r.Error, r.MessageID)
	}
	t.Logf("50002: %s", r.Error.Message)
	o.up(t)
	waitFor(t, 60*time.Second, "the resent record to be taken", func() bool {
		sendJSON(t, in, `{"value":{"value":"during"},"messageId":"m1"}`)
		r := readResult(t, in)
		return r.Error == nil && r.Offset != nil
	})
}

// linesWith returns the lines of s containing sub.
func linesWith(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// 40402 for a commit of a record whose partition a rebalance moved to
// another member of the group; the new owner's commit of it works.
func TestWebSocketCommitAfterRebalance(t *testing.T) {
	d := startDaemon(t, wsConfig(t))
	topic, group := uniq("moved"), uniq("g")
	in := wsDial(t, d, "/socket/in", url.Values{"clientId": {uniq("p")}, "topic": {topic}})
	results := produceStrings(t, in, "m", 60)
	total := recordsIn(results)
	q := func(client string) url.Values {
		return url.Values{"clientId": {client}, "groupId": {group}, "topic": {topic}, "autoCommit": {"false"}, "commitAck": {"true"}}
	}
	first := wsDial(t, d, "/socket/out", q(uniq("c1")))
	recs := readRecords(t, first, total, 60*time.Second) // alone, it owns every partition
	last := map[int32]wsRecord{}
	for _, r := range recs {
		last[r.Partition] = r
	}

	// The second member starts from the beginning of the partitions it is
	// given, since nothing was committed: its first record says the
	// rebalance is done and which partition moved. (The first of two:
	// the server marks a record as sent only after writing it, so a
	// commit of the very last record received can race that; see
	// TestWebSocketCommitOnReceipt.)
	second := wsDial(t, d, "/socket/out", q(uniq("c2")))
	moved := readRecords(t, second, 2, 60*time.Second)[0]
	sendJSON(t, first, map[string]string{"wsProxyMessageId": last[moved.Partition].ID})
	// The first member may get records of the partitions it kept again
	// (the rebalance restarts them from the committed offsets) before the
	// error frame.
	for {
		b := readFrame(t, first, 30*time.Second)
		var r wsResult
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatalf("frame %s: %v", b, err)
		}
		if r.Error == nil && r.Committed == nil {
			continue // a record
		}
		if r.Error == nil || r.Error.Code != 40402 || r.WsProxyMessageID != last[moved.Partition].ID || !strings.Contains(r.Error.Message, "reassigned") {
			t.Fatalf("commit of moved partition %d: got %s, want error 40402 naming the reassignment", moved.Partition, b)
		}
		t.Logf("partition %d moved: %s", moved.Partition, r.Error.Message)
		break
	}
	// The new owner commits it.
	sendJSON(t, second, map[string]string{"wsProxyMessageId": moved.ID})
	for {
		b := readFrame(t, second, 30*time.Second)
		var r wsResult
		_ = json.Unmarshal(b, &r)
		if r.Error != nil {
			t.Fatalf("the new owner's commit: %s", b)
		}
		if r.Committed != nil {
			if r.Committed.Partition != moved.Partition || r.Committed.Offset != moved.Offset {
				t.Fatalf("commit acknowledged %+v, want %d@%d", *r.Committed, moved.Partition, moved.Offset)
			}
			break
		}
	}
}

// 50302: a socket opened while the server shuts down gets the error frame,
// then a close frame saying why.
func TestWebSocketShuttingDown(t *testing.T) {
	d := startDaemon(t, wsConfig(t))
	topic := uniq("down")
	in := wsDial(t, d, "/socket/in", url.Values{"clientId": {uniq("p")}, "topic": {topic}})
	produceStrings(t, in, "d", 1)
	// The first step of the daemon's shutdown: sockets are told to finish
	// and new ones refused, while the HTTP listener is still open.
	d.wsAPI.Drain()
	ce := expectClose(t, in, 10*time.Second)
	if ce.Code != websocket.CloseGoingAway || !strings.Contains(ce.Text, "shutting down") {
		t.Fatalf("open socket at shutdown: close %d %q, want 1001 server shutting down", ce.Code, ce.Text)
	}
	for _, path := range []string{"/socket/in", "/socket/out"} {
		c := wsDial(t, d, path, url.Values{"clientId": {uniq("late")}, "topic": {topic}})
		r := readResult(t, c)
		if r.Error == nil || r.Error.Code != 50302 {
			t.Fatalf("%s: want error 50302, got %+v", path, r)
		}
		ce := expectClose(t, c, 10*time.Second)
		if ce.Code != websocket.CloseGoingAway || !strings.Contains(ce.Text, "shutting down") {
			t.Fatalf("%s: close %d %q, want 1001 with a reason saying the server is shutting down", path, ce.Code, ce.Text)
		}
		t.Logf("%s: error %d %q, close %d %q", path, r.Error.Code, r.Error.Message, ce.Code, ce.Text)
	}
}

// A frame over websocket.max_frame_bytes closes the socket with 1009, and
// each such socket is counted.
func TestWebSocketFrameTooLarge(t *testing.T) {
	cfg := wsConfig(t)
	cfg.WebSocket.MaxFrameBytes = 4096
	d := startDaemon(t, cfg)
	topic := uniq("huge")
	in := wsDial(t, d, "/socket/in", url.Values{"clientId": {uniq("p")}, "topic": {topic}})
	// A frame just under the limit is fine.
	sendJSON(t, in, fmt.Sprintf(`{"value":{"value":%q},"messageId":"fits"}`, strings.Repeat("x", 4000)))
	if r := readResult(t, in); r.Error != nil {
		t.Fatalf("a frame within the limit: %+v", r.Error)
	}
	out := wsDial(t, d, "/socket/out", url.Values{"clientId": {uniq("c")}, "topic": {topic}})
	readRecords(t, out, 1, 60*time.Second)
	for name, c := range map[string]*websocket.Conn{"/socket/in": in, "/socket/out": out} {
		sendJSON(t, c, fmt.Sprintf(`{"value":{"value":%q},"messageId":"too big"}`, strings.Repeat("x", 4097)))
		ce := expectClose(t, c, 10*time.Second)
		if ce.Code != websocket.CloseMessageTooBig {
			t.Fatalf("%s: close %d %q, want 1009", name, ce.Code, ce.Text)
		}
		t.Logf("%s: close %d %q", name, ce.Code, ce.Text)
	}
	waitFor(t, 10*time.Second, "tributary_websocket_frames_too_large_total 2", func() bool {
		return strings.Contains(metricsText(t, d.httpAddr()), "tributary_websocket_frames_too_large_total 2")
	})
	// Nothing of the refused frame reached Kafka.
	if recs := settledRecords(t, d.bootstrap, topic); len(recs) != 1 {
		t.Fatalf("Kafka has %d records, want 1", len(recs))
	}
}

// A socket that stops answering pings is closed after two ping intervals;
// one that answers stays open however long it sends nothing else. The four
// sockets run side by side: the test takes about five intervals.
func TestWebSocketPingTimeout(t *testing.T) {
	cfg := wsConfig(t)
	// Long enough that a loaded machine answers a ping within one interval,
	// which is all the server allows past the two.
	const interval = time.Second
	cfg.WebSocket.PingInterval = interval
	d := startDaemon(t, cfg)
	topic := uniq("ping")
	produceStrings(t, wsDial(t, d, "/socket/in", url.Values{"clientId": {uniq("p")}, "topic": {topic}}), "p", 1)

	for _, path := range []string{"/socket/in", "/socket/out"} {
		t.Run(path+" silent", func(t *testing.T) {
			t.Parallel()
			c := wsDial(t, d, path, url.Values{"clientId": {uniq("mute")}, "topic": {topic}, "offsetResetStrategy": {"latest"}})
			pings := 0
			c.SetPingHandler(func(string) error { pings++; return nil }) // no pong
			start := time.Now()
			ce := expectClose(t, c, 10*interval)
			took := time.Since(start)
			if took < 2*interval-100*time.Millisecond || took > 2*interval+2*time.Second {
				t.Fatalf("closed after %s, want two ping intervals (%s)", took, 2*interval)
			}
			if pings == 0 {
				t.Fatal("closed without having been pinged")
			}
			if ce.Code != websocket.CloseGoingAway || !strings.Contains(ce.Text, "pong") {
				t.Fatalf("close %d %q, want 1001 saying no pong came", ce.Code, ce.Text)
			}
			t.Logf("closed after %s and %d unanswered pings: close %d %q", took.Round(time.Millisecond), pings, ce.Code, ce.Text)
		})
		t.Run(path+" answering", func(t *testing.T) {
			t.Parallel()
			c := wsDial(t, d, path, url.Values{"clientId": {uniq("live")}, "topic": {topic}, "offsetResetStrategy": {"latest"}})
			pings := 0
			c.SetPingHandler(func(data string) error {
				pings++
				// As gorilla's own handler: no error once the close is sent.
				_ = c.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
				return nil
			})
			// Reading is what answers pings.
			ended := make(chan error, 1)
			go func() {
				_, b, err := c.ReadMessage()
				if err == nil {
					err = fmt.Errorf("unexpected frame %s", b)
				}
				ended <- err
			}()
			select {
			case err := <-ended:
				t.Fatalf("a socket answering pings ended within five intervals: %v", err)
			case <-time.After(5 * interval):
			}
			// Still open: the server answers a close with the same code.
			_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"), time.Now().Add(time.Second))
			select {
			case err := <-ended:
				var ce *websocket.CloseError
				if !errors.As(err, &ce) || ce.Code != websocket.CloseNormalClosure {
					t.Fatalf("after the client's close: %v, want close 1000", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the server did not answer the close frame")
			}
			if pings < 3 {
				t.Fatalf("%d pings in %s at an interval of %s", pings, 5*interval, interval)
			}
		})
	}
}
