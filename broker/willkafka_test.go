package broker

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/tributary-io/tributary/bridge"
	"github.com/tributary-io/tributary/internal/testutil"
	"github.com/tributary-io/tributary/mapping"
)

// bestEffortRecorder is a fakeProducer that keeps each QoS 0 record.
type bestEffortRecorder struct {
	*fakeProducer
	mu   sync.Mutex
	recs []bridge.Record
}

func (p *bestEffortRecorder) TryProduce(_ context.Context, rec *bridge.Record, _ bridge.DeliveryHandler) error {
	c := bridge.Record{Topic: rec.Topic, Key: append([]byte(nil), rec.Key...), Value: append([]byte(nil), rec.Value...)}
	for _, h := range rec.Headers {
		c.Headers = append(c.Headers, bridge.Header{Key: h.Key, Value: append([]byte(nil), h.Value...)})
	}
	p.mu.Lock()
	p.recs = append(p.recs, c)
	p.mu.Unlock()
	return nil
}

func (p *bestEffortRecorder) records() []bridge.Record {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]bridge.Record(nil), p.recs...)
}

// A will that mochi sends when a connection drops goes to Kafka too,
// mapped like a publish to its topic, with the record's usual headers;
// a will no rule maps produces nothing.
func TestWillIsProduced(t *testing.T) {
	p := &bestEffortRecorder{fakeProducer: newFakeProducer()}
	b := startWithMapping(t, p, mapping.Config{Rules: []mapping.Rule{
		{Match: `^devices/.*$`, KafkaTopic: "device-state"},
		{Match: `^\$SYS/.*$`, KafkaTopic: "sys"},
	}})
	dev, _ := connectRaw(t, b.Addr("mqtt-tcp"), rawConnect{version: 4, id: "d1", will: "devices/d1/status"})
	other, _ := connectRaw(t, b.Addr("mqtt-tcp"), rawConnect{version: 4, id: "d2", will: "elsewhere/d2"})
	// An MQTT bridge's connection state stays local, as its publishes do.
	edge, _ := connectRaw(t, b.Addr("mqtt-tcp"), rawConnect{version: 4, id: "edge", will: "$SYS/broker/connection/edge/state"})
	other.Close()
	edge.Close()
	// mochi lets a clean session's client go after it sent the will.
	testutil.WaitFor(t, 10*time.Second, "d2 and edge gone", func() bool {
		_, d2 := b.server.Clients.Get("d2")
		_, e := b.server.Clients.Get("edge")
		return !d2 && !e
	})
	dev.Close()
	testutil.WaitFor(t, 10*time.Second, "the will of d1 produced", func() bool { return len(p.records()) > 0 })
	recs := p.records()
	if len(recs) != 1 {
		t.Fatalf("%d records, want 1 (d2's will matches no rule, edge's is a bridge's state): %+v", len(recs), recs)
	}
	r := recs[0]
	headers := map[string]string{}
	for _, h := range r.Headers {
		headers[h.Key] = string(h.Value)
	}
	if r.Topic != "device-state" || string(r.Key) != "devices/d1/status" || string(r.Value) != "gone" ||
		headers["mqtt.topic"] != "devices/d1/status" || headers["mqtt.client_id"] != "d1" {
		t.Fatalf("record topic %q key %q value %q headers %v, want device-state, the will's topic as key, \"gone\", mqtt.topic and mqtt.client_id d1", r.Topic, r.Key, r.Value, headers)
	}
}
