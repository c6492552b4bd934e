package main

import (
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// Shutting down while Kafka is unreachable ends in bounded time with
// consume sockets open, one with a commit waiting: their consumers' last
// commits and leaving the group cannot reach Kafka, and must not hold the
// process.
func TestShutdownWithKafkaDownAndConsumeSockets(t *testing.T) {
	o := newOutage(t)
	cfg := wsConfig(t)
	cfg.Kafka.Bootstrap = o.bootstrap
	cfg.Kafka.FlushTimeout = 2 * time.Second
	d := startDaemon(t, cfg)
	topic := uniq("sdc")
	in := wsDial(t, d, "/socket/in", url.Values{"clientId": {uniq("p")}, "topic": {topic}})
	n := recordsIn(produceStrings(t, in, "s", 20))
	auto := wsDial(t, d, "/socket/out", url.Values{"clientId": {uniq("c")}, "groupId": {uniq("g")}, "topic": {topic}, "autoCommit": {"true"}})
	manual := wsDial(t, d, "/socket/out", url.Values{"clientId": {uniq("c")}, "groupId": {uniq("g")}, "topic": {topic}, "autoCommit": {"false"}})
	readRecords(t, auto, n, 60*time.Second)
	recs := readRecords(t, manual, n, 60*time.Second)
	o.down(t)
	defer o.up(t)
	sendJSON(t, manual, map[string]string{"wsProxyMessageId": recs[len(recs)-1].ID})
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	d.stop()
	took := time.Since(start)
	t.Logf("shutdown took %s", took.Round(time.Millisecond))
	// The flush deadline, then the HTTP server's 5 s for its handlers.
	if limit := cfg.Kafka.FlushTimeout + 10*time.Second; took > limit {
		t.Errorf("shutdown took %s with Kafka down and consume sockets open, more than %s", took, limit)
	}
}

// A produce socket whose record Kafka has not acknowledged by the flush
// deadline gets a close frame (1001) as the server closes, not a dropped
// connection after the HTTP server's own wait; the record gets no result.
func TestShutdownFlushDeadlineClosesProduceSockets(t *testing.T) {
	o := newOutage(t)
	cfg := wsConfig(t)
	cfg.Kafka.Bootstrap = o.bootstrap
	cfg.Kafka.FlushTimeout = 2 * time.Second
	d, buf := startLogged(t, cfg)
	topic := uniq("sdp")
	in := wsDial(t, d, "/socket/in", url.Values{"clientId": {uniq("p")}, "topic": {topic}})
	produceStrings(t, in, "before", 1) // the topic exists and the socket works
	o.down(t)
	defer o.up(t)
	sendJSON(t, in, map[string]any{"value": map[string]string{"value": "during", "format": "string"}, "messageId": "during"})
	waitFor(t, 10*time.Second, "the record to reach the producer", func() bool { return d.producer.InflightBytes() > 0 })
	stopped := make(chan time.Duration, 1)
	go func() {
		start := time.Now()
		d.stop()
		stopped <- time.Since(start)
	}()
	_ = in.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, msg, err := in.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway {
		t.Fatalf("after the flush deadline the socket read %q, %v; want close frame 1001", msg, err)
	}
	took := <-stopped
	t.Logf("close frame %d %q; shutdown took %s", ce.Code, ce.Text, took.Round(time.Millisecond))
	// Before, the socket waited for the result through the HTTP server's
	// 5 s on top of the flush deadline, and was then dropped.
	if limit := cfg.Kafka.FlushTimeout + 4*time.Second; took > limit {
		t.Errorf("shutdown took %s, more than %s", took, limit)
	}
	if lines := buf.Lines("without the results of records Kafka did not acknowledge"); len(lines) != 1 || !strings.Contains(lines[0], "records=1") {
		t.Errorf("want one WARN naming 1 record without its result, got:\n%s", strings.Join(lines, "\n"))
	}
}
