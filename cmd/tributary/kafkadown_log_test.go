package main

import (
	"strings"
	"testing"
	"time"

	"github.com/tributary-io/tributary/internal/testutil"
)

// While Kafka cannot be reached, librdkafka reports it many times a
// second; each kind of error is logged at most once per 10s.
func TestKafkaDownDoesNotFloodTheLog(t *testing.T) {
	cfg := testConfig(t)
	cfg.Kafka.Bootstrap = testutil.FreeAddr(t) // nothing listens there
	cfg.Kafka.FlushTimeout = time.Second
	_, buf := startLogged(t, cfg)
	time.Sleep(time.Second) // start-up itself waited about 10s for Kafka

	lines := buf.Lines(`msg="Kafka producer error`)
	if len(lines) == 0 {
		t.Fatal("no producer error logged while Kafka was unreachable")
	}
	// Two kinds are expected (the failed connection and all brokers
	// down), each at most twice in the 11s or so since the start; a few
	// more leave room for another kind, not for a flood (298 lines in
	// the same time before the throttle).
	if len(lines) > 8 {
		t.Errorf("%d producer error lines since the start:\n%s", len(lines), strings.Join(lines, "\n"))
	}
}
