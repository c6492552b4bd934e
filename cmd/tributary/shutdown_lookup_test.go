package main

import (
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/tributary-io/tributary/internal/testutil"
	"github.com/tributary-io/tributary/mapping"
)

// A publish waiting for Kafka to say whether its topic exists, while
// Kafka does not answer at all, does not hold shutdown for the whole
// lookup timeout of librdkafka: it gives up at drain and stays
// unacknowledged.
func TestShutdownWithAPublishWaitingForATopicLookup(t *testing.T) {
	cfg := testConfig(t)
	cfg.Kafka.Bootstrap = testutil.FreeAddr(t) // nothing listens there: Kafka is unreachable
	cfg.Kafka.FlushTimeout = 2 * time.Second
	// A templated topic: nothing to create at start-up, a lookup at the
	// first publish.
	cfg.Mapping.Rules = []mapping.Rule{{Match: `^dev/(?P<kind>[a-z]+)$`, KafkaTopic: "t.${kind}"}}
	d := startDaemon(t, cfg)
	c := mqttClient(t, "tcp://"+d.mqttAddr(), uniq("lk"), func(o *paho.ClientOptions) { o.SetAutoReconnect(false) })
	tok := c.Publish("dev/temp", 1, false, "x")
	// Neither a metric nor a log line says a topic check is under way;
	// the goroutine making it does: the publish's, the only one here.
	waitFor(t, 10*time.Second, "the publish to be in the topic check", func() bool {
		return strings.Contains(daemonGoroutines(), "bridge.(*topics).check")
	})
	start := time.Now()
	d.stop()
	took := time.Since(start)
	t.Logf("shutdown took %s", took.Round(time.Millisecond))
	// Bounded by the flush deadline and the 10 s cap on one lookup, which
	// the producer waits out before it destroys the handle the lookup uses.
	if limit := 16 * time.Second; took > limit {
		t.Errorf("shutdown took %s with a publish in a topic lookup, more than %s", took, limit)
	}
	if tok.WaitTimeout(time.Second) && tok.Error() == nil {
		t.Error("a publish Kafka never took was acknowledged")
	}
}
