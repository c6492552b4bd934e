package broker

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tributary-io/tributary/bridge"
	"github.com/tributary-io/tributary/internal/testutil"
	"github.com/tributary-io/tributary/mapping"
)

// heldProducer is a fakeProducer whose Produce of the value "hold" waits
// until release is closed or its context ends, as Produce waits while
// the in-flight budget is used up.
type heldProducer struct {
	*fakeProducer
	release chan struct{}
	held    chan context.Context // the context of each held Produce
}

func (p *heldProducer) Produce(ctx context.Context, rec *bridge.Record, h bridge.DeliveryHandler) error {
	if string(rec.Value) == "hold" {
		p.held <- ctx
		select {
		case <-p.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return p.fakeProducer.Produce(ctx, rec, h)
}

func newHeldProducer() *heldProducer {
	return &heldProducer{fakeProducer: newFakeProducer(), release: make(chan struct{}), held: make(chan context.Context, 4)}
}

func publish1(id uint16, value string) packets.Packet {
	return packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: 4,
		TopicName: "t", PacketID: id, Payload: []byte(value),
	}
}

// A connection whose read loop waited in the producer for longer than its
// keepalive allows (Kafka slow, the budget used up) still gets the
// acknowledgements Kafka's recovery brings: mochi set the write deadline
// at its last read, and a write on it failed and closed the connection,
// so every publish in flight was sent again.
func TestAcksAfterALongWaitInTheProducer(t *testing.T) {
	p := newHeldProducer()
	b := startBroker(t, p)
	conn, ack := connectRaw(t, b.Addr("mqtt-tcp"), rawConnect{version: 4, id: "slow", keepalive: 2})
	if ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x", ack.ReasonCode)
	}
	writePackets(t, conn, publish1(1, "first"), publish1(2, "hold"))
	p.waitFor(t, 1)
	<-p.held
	// mochi's deadline: keepalive 2 s + 1 s.
	time.Sleep(3500 * time.Millisecond)
	p.deliver(0, nil)
	if pk := readMQTT(t, conn, 4); pk.FixedHeader.Type != packets.Puback || pk.PacketID != 1 {
		t.Fatalf("got packet type %d id %d, want PUBACK 1", pk.FixedHeader.Type, pk.PacketID)
	}
	if b.ingest.carried.Load() == 0 {
		// The write from the delivery reports' goroutine met the
		// deadline and left the PUBACK to the ack writer, which moved it.
		t.Fatal("the PUBACK was not left to the ack writer: the test no longer meets mochi's deadline")
	}
	close(p.release)
	p.waitFor(t, 2)
	p.deliver(1, nil)
	if pk := readMQTT(t, conn, 4); pk.FixedHeader.Type != packets.Puback || pk.PacketID != 2 {
		t.Fatalf("got packet type %d id %d, want PUBACK 2", pk.FixedHeader.Type, pk.PacketID)
	}
}

// Drain does not shorten the acknowledgements' write deadline: during the
// flush that follows it, a client waiting for its PUBACKs sends nothing
// that would move the deadline, and Kafka may confirm its records more
// than a second apart. The ack writer took the session's context, which
// Drain ends, for a sign that Tributary was closing the connection, and
// set a deadline of one second that it then left alone: the next PUBACK's
// write failed and closed the connection, and the client sent again
// records Kafka had.
func TestDrainKeepsTheAckWriteDeadline(t *testing.T) {
	p := newFakeProducer()
	// Over WebSocket every acknowledgement goes through the ack writer's
	// write, which sets the deadline.
	b := startConfigured(t, p, mapping.Config{}, Config{WSAddr: "127.0.0.1:0"})
	c := dialWS(t, b.Addr("mqtt-ws"), "flushing") // keepalive 30 s
	for id := uint16(1); id <= 2; id++ {
		if err := c.WriteMessage(websocket.BinaryMessage, publish(t, 4, 1, "t", id, []byte("x"))); err != nil {
			t.Fatal(err)
		}
	}
	p.waitFor(t, 2)
	b.Drain()
	readAck := func(want byte) {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, msg, err := c.ReadMessage()
		if err != nil || len(msg) != 4 || msg[0] != packets.Puback<<4 || msg[3] != want {
			t.Fatalf("got % x, %v; want PUBACK %d", msg, err, want)
		}
	}
	p.deliver(0, nil)
	readAck(1)
	// Longer than a second, far shorter than half the writer's deadline
	// (1.5 keepalives), after which it would move it again.
	time.Sleep(1500 * time.Millisecond)
	p.deliver(1, nil)
	readAck(2)
}

// A publish whose read loop waits in the producer (the budget used up)
// stops waiting when Tributary closes its connection, here for a session
// takeover: produced later, it would be a duplicate of the resend, and
// until then the QoS 2 publish held up the resuming CONNECT for
// takeoverWait and had it refused.
func TestProducerWaitEndsWithTheConnection(t *testing.T) {
	p := newHeldProducer()
	b := startBroker(t, p)
	conn, ack := connectRaw(t, b.Addr("mqtt-tcp"), rawConnect{version: 4, id: "dev", keep: true})
	if ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x", ack.ReasonCode)
	}
	pk := publish1(1, "hold")
	pk.FixedHeader.Qos = 2
	writePackets(t, conn, pk)
	ctx := <-p.held

	start := time.Now()
	_, ack = connectRaw(t, b.Addr("mqtt-tcp"), rawConnect{version: 4, id: "dev", keep: true})
	if ack.ReasonCode != 0 {
		t.Fatalf("the resuming CONNACK %#x after %v, want 0: the held QoS 2 publish was still waited for", ack.ReasonCode, time.Since(start).Round(time.Millisecond))
	}
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the publish still waits in the producer 5s after its connection was closed")
	}
	if got := p.produced(); len(got) != 0 {
		t.Fatalf("produced %q, want nothing: the client resends the publish", got)
	}
}

// qos0Counter is a fakeProducer that takes QoS 0 records and counts them.
type qos0Counter struct {
	*fakeProducer
	n atomic.Int64
}

func (p *qos0Counter) TryProduce(context.Context, *bridge.Record, bridge.DeliveryHandler) error {
	p.n.Add(1)
	return nil
}

// Once the broker drains for shutdown, QoS 0 publishes no longer go to
// the producer (they still reach local subscribers): a steady stream of
// them kept the producer from ever being empty, so the shutdown flush
// ran until its timeout. They are counted as dropped, and logged.
func TestDrainStopsProducingQoS0(t *testing.T) {
	p := &qos0Counter{fakeProducer: newFakeProducer()}
	reg := prometheus.NewRegistry()
	m, err := mapping.New(mapping.Config{})
	if err != nil {
		t.Fatal(err)
	}
	var logs testutil.SyncBuffer
	b, err := New(Config{Addr: "127.0.0.1:0", MaxMessageBytes: 1 << 20, Registerer: reg}, p, m, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	conn, _ := connectRaw(t, b.Addr("mqtt-tcp"), rawConnect{version: 4, id: "q0"})
	subscribe(t, conn, 4, "t", false)
	publish0 := func(value string) {
		t.Helper()
		writePackets(t, conn, packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish}, ProtocolVersion: 4,
			TopicName: "t", Payload: []byte(value),
		})
		if pk := readMQTT(t, conn, 4); pk.FixedHeader.Type != packets.Publish || string(pk.Payload) != value {
			t.Fatalf("the local subscriber got packet type %d %q, want the publish %q", pk.FixedHeader.Type, pk.Payload, value)
		}
	}
	publish0("before")
	if n := p.n.Load(); n != 1 {
		t.Fatalf("%d QoS 0 records produced, want 1", n)
	}
	b.Drain()
	publish0("during")
	if n := p.n.Load(); n != 1 {
		t.Fatalf("%d QoS 0 records produced, want 1: a publish after Drain was produced", n)
	}
	if got := gathered(t, reg, "tributary_mqtt_dropped_total")["reason=shutting_down"]; got != 1 {
		t.Fatalf(`tributary_mqtt_dropped_total{reason="shutting_down"} = %v, want 1`, got)
	}
	if lines := logs.Lines("QoS 0 publishes dropped at shutdown"); len(lines) != 1 {
		t.Fatalf("%d log lines about the drop, want 1:\n%s", len(lines), strings.Join(logs.Lines(""), "\n"))
	}
}

// The ack writer's write deadline is mochi's: one and a half keepalive
// intervals, and none for a client with keepalive off, to which mochi
// writes with no deadline (one set here would stay, past, until the
// client's next packet, which it need never send).
func TestAckWriteTimeout(t *testing.T) {
	for keepalive, want := range map[uint16]time.Duration{0: 0, 1: 1500 * time.Millisecond, 30: 45 * time.Second} {
		cl := &mqtt.Client{}
		cl.State.Keepalive = keepalive
		if got := ackWriteTimeout(cl); got != want {
			t.Errorf("keepalive %d: %v, want %v", keepalive, got, want)
		}
	}
}
