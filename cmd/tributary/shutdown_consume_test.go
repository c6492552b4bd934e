package main

import (
	"net/url"
	"testing"
	"time"
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
