package main

import (
	"io"
	"net/http"
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
	time.Sleep(3 * time.Second)

	lines := buf.Lines(`msg="Kafka producer error`)
	if len(lines) == 0 {
		t.Fatal("no producer error logged while Kafka was unreachable")
	}
	// Two kinds are expected (the failed connection and all brokers
	// down), each once in the 3s since the start; a few more leave room
	// for another kind, not for a flood (298 lines in 11s before the
	// throttle).
	if len(lines) > 6 {
		t.Errorf("%d producer error lines since the start:\n%s", len(lines), strings.Join(lines, "\n"))
	}
}

// With Kafka unreachable, start-up does not wait for the topics the rules
// name: /healthz answers at once, /readyz names Kafka, and the topics'
// failure is still logged once their deadline passes.
func TestStartupDoesNotWaitForKafka(t *testing.T) {
	cfg := testConfig(t)
	cfg.Kafka.Bootstrap = testutil.FreeAddr(t) // nothing listens there
	cfg.Kafka.FlushTimeout = time.Second
	topic := uniq("startup")
	cfg.Mapping.TopicRegexList = topic + ":.*"
	d, buf := startLogged(t, cfg)
	const notReady = "Kafka topic not ready at start-up"
	if lines := buf.Lines(notReady); len(lines) > 0 {
		t.Fatalf("start-up waited for the topic's deadline before returning:\n%s", strings.Join(lines, "\n"))
	}
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + d.httpAddr() + path)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz while Kafka is unreachable: %d %s", code, body)
	}
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "Kafka is not reachable") {
		t.Errorf("/readyz while Kafka is unreachable: %d %s", code, body)
	}
	waitFor(t, 20*time.Second, "the start-up topic failure to be logged", func() bool {
		return len(buf.Lines(notReady)) == 1
	})
	if lines := buf.Lines(notReady); !strings.Contains(lines[0], topic) {
		t.Errorf("the start-up failure does not name the topic %s: %s", topic, lines[0])
	}
}
