package broker

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tributary-io/tributary/auth"
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
	edge, _ := connectRaw(t, b.Addr("mqtt-tcp"), rawConnect{version: 4, id: "edge", will: "$SYS/broker/connection/edge/state", willBody: "0"})
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

// orderRecorder is a fakeProducer that keeps each record's value and
// Order, acknowledged or best effort.
type orderRecorder struct {
	*fakeProducer
	mu     sync.Mutex
	values []string
	orders []*bridge.Order
}

func (p *orderRecorder) keep(rec *bridge.Record) {
	p.mu.Lock()
	p.values = append(p.values, string(rec.Value))
	p.orders = append(p.orders, rec.Order)
	p.mu.Unlock()
}

func (p *orderRecorder) Produce(ctx context.Context, rec *bridge.Record, h bridge.DeliveryHandler) error {
	p.keep(rec)
	return p.fakeProducer.Produce(ctx, rec, h)
}

func (p *orderRecorder) TryProduce(_ context.Context, rec *bridge.Record, _ bridge.DeliveryHandler) error {
	p.keep(rec)
	return nil
}

// A will sent as its connection drops is produced with the connection's
// Order, so it reaches Kafka after the connection's QoS 1 records still
// awaiting Kafka, although it takes the best-effort path: "offline" can
// never land before the "online" published just before it.
func TestWillKeepsTheConnectionsOrder(t *testing.T) {
	p := &orderRecorder{fakeProducer: newFakeProducer()}
	b := startWithMapping(t, p, mapping.Config{Rules: []mapping.Rule{{Match: `^devices/.*$`, KafkaTopic: "device-state"}}})
	dev, _ := connectRaw(t, b.Addr("mqtt-tcp"), rawConnect{version: 4, id: "d1", will: "devices/d1/status"})
	if _, err := dev.Write(publish(t, 4, 1, "devices/d1/status", 1, []byte("online"))); err != nil {
		t.Fatal(err)
	}
	p.waitFor(t, 1) // produced, and never acknowledged by the fake
	dev.Close()
	testutil.WaitFor(t, 10*time.Second, "the will produced", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.values) == 2
	})
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.values[0] != "online" || p.values[1] != "gone" {
		t.Fatalf("records %q, want the publish, then the will", p.values)
	}
	if p.orders[0] == nil || p.orders[1] != p.orders[0] {
		t.Fatalf("the will's Order is %p, the publish's %p: want the same one", p.orders[1], p.orders[0])
	}
}

// A delayed will is produced only if the users file in force when it is
// due still lets its login publish it: a reload that removed the user
// while the will waited out its delay keeps it out of Kafka, counted and
// logged. A delayed will still allowed is produced.
func TestDelayedWillOfARevokedLoginIsNotProduced(t *testing.T) {
	hashes := testHashes(t)
	users := auth.NewLive(usersWithHashes(t, `users:
  - {username: dev, password_hash: "{{dev}}"}
  - {username: ops, password_hash: "{{ops}}"}
acls:
  - {user: dev, topic: "devices/%u/#", access: publish}
  - {user: ops, topic: "#", access: all}
`, hashes))
	p := &bestEffortRecorder{fakeProducer: newFakeProducer()}
	reg := prometheus.NewRegistry()
	b := startConfigured(t, p, mapping.Config{Rules: []mapping.Rule{{Match: `^devices/.*$`, KafkaTopic: "device-state"}}},
		Config{Auth: AuthConfig{Users: users}, Registerer: reg})
	for _, c := range []rawConnect{
		{version: 5, id: "dev-1", user: "dev", pass: "dev-pw", keep: true, will: "devices/dev/status", willBody: "dev gone", willDelay: 1},
		{version: 5, id: "ops-1", user: "ops", pass: "ops-pw", keep: true, will: "devices/ops/status", willBody: "ops gone", willDelay: 1},
	} {
		conn, ack := connectRaw(t, b.Addr("mqtt-tcp"), c)
		if ack.ReasonCode != 0 {
			t.Fatalf("%s: CONNACK %#x", c.id, ack.ReasonCode)
		}
		conn.Close() // no DISCONNECT: the will is due after its delay
	}
	testutil.WaitFor(t, 10*time.Second, "both connections gone", func() bool {
		for _, id := range []string{"dev-1", "ops-1"} {
			if cl, ok := b.server.Clients.Get(id); !ok || !cl.Closed() {
				return false
			}
		}
		return true
	})
	old := users.Swap(usersWithHashes(t, `users:
  - {username: ops, password_hash: "{{ops}}"}
acls:
  - {user: ops, topic: "#", access: all}
`, hashes))
	b.Revoke(old)
	testutil.WaitFor(t, 10*time.Second, "ops's delayed will produced", func() bool { return len(p.records()) > 0 })
	testutil.WaitFor(t, 10*time.Second, "dev's delayed will counted as dropped", func() bool {
		return gathered(t, reg, "tributary_mqtt_dropped_total")["reason=will_not_authorized"] == 1
	})
	recs := p.records()
	if len(recs) != 1 || string(recs[0].Value) != "ops gone" {
		var values []string
		for _, r := range recs {
			values = append(values, string(r.Value))
		}
		t.Fatalf("records %q, want only ops's will", values)
	}
}

// heldWillRecorder is an orderRecorder that holds the producing of a
// will until held is closed.
type heldWillRecorder struct {
	*orderRecorder
	held chan struct{}
}

func (p *heldWillRecorder) TryProduce(ctx context.Context, rec *bridge.Record, h bridge.DeliveryHandler) error {
	<-p.held
	return p.orderRecorder.TryProduce(ctx, rec, h)
}

func (p *orderRecorder) produced() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.values...)
}

// A connection that takes a client's session over is answered only once
// the old connection has ended, its will produced, so its records come
// after the old connection's, will included: a device's new "online"
// cannot land before its old connection's "offline". That holds for an
// old connection that published and for one that only has a will. The
// new connection's records have an Order of their own (that it continues
// the old one's while that awaits Kafka is bridge.Order.Follow's test and
// TestOrderingAcrossAReconnect's). Here the producer holds the old
// connection's will for a moment.
func TestTakeoverWaitsForTheOldConnectionsEnd(t *testing.T) {
	for _, published := range []bool{true, false} {
		t.Run(map[bool]string{true: "published", false: "will only"}[published], func(t *testing.T) {
			takeoverAfterEnd(t, published)
		})
	}
}

func takeoverAfterEnd(t *testing.T, published bool) {
	p := &heldWillRecorder{orderRecorder: &orderRecorder{fakeProducer: newFakeProducer()}, held: make(chan struct{})}
	b := startWithMapping(t, p, mapping.Config{Rules: []mapping.Rule{{Match: `^devices/.*$`, KafkaTopic: "device-state"}}})
	old, _ := connectRaw(t, b.Addr("mqtt-tcp"), rawConnect{version: 4, id: "d1", will: "devices/d1/status"})
	defer old.Close()
	// Its session established: mochi answers the CONNECT a moment before
	// it says so, and a takeover in between does not wait.
	testutil.WaitFor(t, 10*time.Second, "the old connection's session established", func() bool {
		c, ok := b.server.Clients.Get("d1")
		if !ok {
			return false
		}
		_, live := b.ingest.live.Load(c)
		return live
	})
	var want []string
	if published {
		if _, err := old.Write(publish(t, 4, 1, "devices/d1/status", 1, []byte("old"))); err != nil {
			t.Fatal(err)
		}
		testutil.WaitFor(t, 10*time.Second, "the old connection's publish produced", func() bool { return len(p.produced()) == 1 })
		want = append(want, "old")
	}
	want = append(want, "gone")
	time.AfterFunc(200*time.Millisecond, func() { close(p.held) })
	cur, ack := connectRaw(t, b.Addr("mqtt-tcp"), rawConnect{version: 4, id: "d1"})
	defer cur.Close()
	if ack.ReasonCode != 0 {
		t.Fatalf("the taking-over CONNECT was refused: %#x", ack.ReasonCode)
	}
	if got := p.produced(); !slices.Equal(got, want) {
		t.Fatalf("at the takeover's CONNACK the records produced are %q, want %q", got, want)
	}
	if _, err := cur.Write(publish(t, 4, 1, "devices/d1/status", 1, []byte("new"))); err != nil {
		t.Fatal(err)
	}
	want = append(want, "new")
	testutil.WaitFor(t, 10*time.Second, "the new connection's publish produced", func() bool { return len(p.produced()) == len(want) })
	if got, ok := b.server.Clients.Get("d1"); !ok || got.Closed() {
		t.Fatal("the new connection is not listed as the client's: the old connection's end let it go")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !slices.Equal(p.values, want) {
		t.Fatalf("records %q, want %q", p.values, want)
	}
	last := len(want) - 1
	if p.orders[last-1] == nil || p.orders[last] == nil || p.orders[last] == p.orders[last-1] {
		t.Fatalf("Orders %p (the will) and %p (the new publish): want each set, and the new connection's its own", p.orders[last-1], p.orders[last])
	}
	if published && p.orders[0] != p.orders[1] {
		t.Fatalf("the old publish's Order %p, its will's %p: want the same", p.orders[0], p.orders[1])
	}
}
