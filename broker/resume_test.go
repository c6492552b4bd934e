package broker

import (
	"fmt"
	"net"
	"reflect"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tributary-io/tributary/mapping"
)

func qos2Publish(version byte, id uint16, payload string, dup bool) packets.Packet {
	return packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: 2, Dup: dup},
		ProtocolVersion: version, TopicName: "dev/once", PacketID: id, Payload: []byte(payload),
	}
}

// readUntilPubrec reads packets until the PUBREC for id and returns every
// PUBREC read, in order.
func readUntilPubrec(t *testing.T, conn net.Conn, version byte, id uint16) []packets.Packet {
	t.Helper()
	var recs []packets.Packet
	for {
		pk := readMQTT(t, conn, version)
		if pk.FixedHeader.Type != packets.Pubrec {
			t.Fatalf("want PUBREC, got packet type %d", pk.FixedHeader.Type)
		}
		recs = append(recs, pk)
		if pk.PacketID == id {
			return recs
		}
	}
}

// confirmFromNowOn confirms what is produced from now on as it comes.
func (f *fakeProducer) confirmFromNowOn() {
	f.mu.Lock()
	f.confirm = true
	f.mu.Unlock()
}

// allSucceed fails unless every PUBREC in recs is a success: mochi
// answers a resend from its inflight store with 0x91 (packet identifier
// in use), a failure to an MQTT 5 client, unless the ingest hook mends it.
func allSucceed(t *testing.T, recs []packets.Packet) {
	t.Helper()
	for _, r := range recs {
		if r.ReasonCode != 0 {
			t.Fatalf("PUBREC for packet %d with reason %#x, want success: Kafka has the record", r.PacketID, r.ReasonCode)
		}
	}
}

// openConnections reads the connections gauge of the TCP listener, which
// OnDisconnect lowers once a connection's read loop has ended.
func openConnections(b *Broker) float64 {
	var m dto.Metric
	_ = b.ingest.m.connections.WithLabelValues("mqtt-tcp").Write(&m)
	return m.GetGauge().GetValue()
}

func (f *fakeProducer) produced() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.values...)
}

// A QoS 2 publish still awaiting Kafka when its connection drops: the
// client reconnects to its session and resends it, as MQTT requires. It
// reaches Kafka once, and the client gets its PUBREC: the reconnect waits
// for Kafka's answer, so the resumed session holds the PUBREC that
// answers the resend.
func TestQoS2AwaitingKafkaWhenTheClientReconnects(t *testing.T) {
	for _, version := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", version), func(t *testing.T) {
			p := newFakeProducer()
			b := startBroker(t, p)
			addr := b.Addr("mqtt-tcp")
			dev := rawConnect{version: version, id: "dev", keep: true}
			conn, _ := connectRaw(t, addr, dev)
			writePackets(t, conn, qos2Publish(version, 1, "first", false))
			p.waitFor(t, 1)
			conn.Close()

			// Kafka confirms while the client is reconnecting.
			go func() {
				time.Sleep(200 * time.Millisecond)
				p.deliver(0, nil)
			}()
			conn, connack := connectRaw(t, addr, dev)
			if connack.ReasonCode != 0 || !connack.SessionPresent {
				t.Fatalf("CONNACK reason %#x, session present %v; want 0 and true", connack.ReasonCode, connack.SessionPresent)
			}
			p.confirmFromNowOn()
			writePackets(t, conn, qos2Publish(version, 1, "first", true), qos2Publish(version, 2, "second", false))
			recs := readUntilPubrec(t, conn, version, 2)
			if recs[0].PacketID != 1 {
				t.Fatalf("first PUBREC after reconnecting is for packet %d, want 1", recs[0].PacketID)
			}
			allSucceed(t, recs)
			if got, want := p.produced(), []string{"first", "second"}; !reflect.DeepEqual(got, want) {
				t.Fatalf("Kafka got %q, want %q: the resend was produced again", got, want)
			}
			// The flow of packet 1 completes on the new connection.
			writePackets(t, conn, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, ProtocolVersion: version, PacketID: 1})
			if pk := readMQTT(t, conn, version); pk.FixedHeader.Type != packets.Pubcomp || pk.PacketID != 1 || pk.ReasonCode != 0 {
				t.Fatalf("want PUBCOMP for packet 1 with success, got type %d packet %d reason %#x", pk.FixedHeader.Type, pk.PacketID, pk.ReasonCode)
			}
		})
	}
}

// While Kafka does not answer, a reconnect that would resume the session
// is refused as server unavailable, not accepted with a session that
// would produce the resend twice. Once Kafka has answered, the client
// gets in, and its resend is answered from the session.
func TestResumeRefusedWhileQoS2AwaitsKafka(t *testing.T) {
	for _, version := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", version), func(t *testing.T) {
			p := newFakeProducer()
			b := startBroker(t, p)
			b.ingest.takeoverWait = 300 * time.Millisecond
			addr := b.Addr("mqtt-tcp")
			dev := rawConnect{version: version, id: "dev", keep: true}
			conn, _ := connectRaw(t, addr, dev)
			writePackets(t, conn, qos2Publish(version, 1, "first", false))
			p.waitFor(t, 1)
			// Taken over by a new connection while it is still open.
			_, connack := connectRaw(t, addr, dev)
			want := packets.Err3ServerUnavailable.Code
			if version == 5 {
				want = packets.ErrServerBusy.Code
			}
			if connack.ReasonCode != want {
				t.Fatalf("CONNACK reason %#x while Kafka has not answered, want %#x", connack.ReasonCode, want)
			}
			reg := prometheus.NewPedanticRegistry()
			reg.MustRegister(b.ingest.m.resumesRefused)
			if n := gathered(t, reg, "tributary_mqtt_session_resumes_refused_total")[""]; n != 1 {
				t.Fatalf("session_resumes_refused_total = %v, want 1", n)
			}

			p.deliver(0, nil)
			conn, connack = connectRaw(t, addr, dev)
			if connack.ReasonCode != 0 || !connack.SessionPresent {
				t.Fatalf("CONNACK reason %#x, session present %v after Kafka answered; want 0 and true", connack.ReasonCode, connack.SessionPresent)
			}
			p.confirmFromNowOn()
			writePackets(t, conn, qos2Publish(version, 1, "first", true), qos2Publish(version, 2, "second", false))
			allSucceed(t, readUntilPubrec(t, conn, version, 2))
			if got, want := p.produced(), []string{"first", "second"}; !reflect.DeepEqual(got, want) {
				t.Fatalf("Kafka got %q, want %q", got, want)
			}
		})
	}
}

// An MQTT 5 connection with Clean Start 0 and no session expiry, taken
// over while still open: its session ends with that connection (MQTT 5
// §3.1.2.11.2), closed here before mochi looks for a session to hand on,
// so the new connection starts afresh and the record Kafka has is its
// only copy.
func TestTakeoverOfAnOpenMQTT5SessionWithoutExpiry(t *testing.T) {
	p := newFakeProducer()
	b := startBroker(t, p)
	addr := b.Addr("mqtt-tcp")
	old, _ := connectRaw(t, addr, rawConnect{version: 5, id: "dev", keep: true, noExpiry: true})
	writePackets(t, old, qos2Publish(5, 1, "first", false))
	p.waitFor(t, 1)
	go func() {
		time.Sleep(200 * time.Millisecond)
		p.deliver(0, nil)
	}()
	conn, connack := connectRaw(t, addr, rawConnect{version: 5, id: "dev", keep: true})
	if connack.ReasonCode != 0 || connack.SessionPresent {
		t.Fatalf("CONNACK reason %#x, session present %v; want 0 and false", connack.ReasonCode, connack.SessionPresent)
	}
	p.confirmFromNowOn()
	writePackets(t, conn, qos2Publish(5, 1, "new", false))
	allSucceed(t, readUntilPubrec(t, conn, 5, 1))
	if got, want := p.produced(), []string{"first", "new"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Kafka got %q, want %q", got, want)
	}
}

// A QoS 2 publish the previous connection is still handling when the
// takeover comes (here held by the publish rate limit) is not queued
// behind the takeover's back: the new connection waits for the old one's
// read loop, and the publish, left unacknowledged, is resent and produced
// once.
func TestTakeoverWhileAPublishIsHeldByTheRateLimit(t *testing.T) {
	p := newFakeProducer()
	p.confirmFromNowOn()
	b := startConfigured(t, p, mapping.Config{}, Config{Publish: PublishLimits{MessagesPerSecond: 1, MessageBurst: 1}})
	addr := b.Addr("mqtt-tcp")
	dev := rawConnect{version: 4, id: "dev", keep: true}
	old, _ := connectRaw(t, addr, dev)
	writePackets(t, old, qos2Publish(4, 1, "first", false), qos2Publish(4, 2, "second", false))
	readUntilPubrec(t, old, 4, 1)
	// The second publish now waits about a second for the rate limit.
	conn, connack := connectRaw(t, addr, dev)
	if connack.ReasonCode != 0 || !connack.SessionPresent {
		t.Fatalf("CONNACK reason %#x, session present %v; want 0 and true", connack.ReasonCode, connack.SessionPresent)
	}
	writePackets(t, conn, qos2Publish(4, 2, "second", true))
	readUntilPubrec(t, conn, 4, 2)
	// Whatever the old connection would produce, it has produced once its
	// read loop has ended, which mochi reports with OnDisconnect (only the
	// new connection is left counted).
	deadline := time.Now().Add(10 * time.Second)
	for openConnections(b) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%v connections still open after 10 s, want 1", openConnections(b))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got, want := p.produced(), []string{"first", "second"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Kafka got %q, want %q", got, want)
	}
}

// Only QoS 2 publishes hold a reconnect up: a QoS 1 publish awaiting Kafka
// may be produced again (at least once), and its client is not kept
// waiting for Kafka.
func TestResumeNotHeldForQoS1(t *testing.T) {
	p := newFakeProducer()
	b := startBroker(t, p)
	b.ingest.takeoverWait = time.Minute // longer than connectRaw waits for the CONNACK
	addr := b.Addr("mqtt-tcp")
	dev := rawConnect{version: 4, id: "dev", keep: true}
	old, _ := connectRaw(t, addr, dev)
	writePackets(t, old, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: 4,
		TopicName: "dev/once", PacketID: 1, Payload: []byte("q1"),
	})
	p.waitFor(t, 1)
	if _, connack := connectRaw(t, addr, dev); connack.ReasonCode != 0 || !connack.SessionPresent {
		t.Fatalf("CONNACK reason %#x, session present %v; want 0 and true", connack.ReasonCode, connack.SessionPresent)
	}
}

// A CONNECT the auth hook refuses (a wrong password for the session's own
// user) does not get as far as closing the session owner's connection.
func TestRefusedLoginLeavesTheSessionOwnerConnected(t *testing.T) {
	p := newFakeProducer()
	b := startConfigured(t, p, mapping.Config{}, Config{Auth: AuthConfig{Users: loadTestUsers(t, "")}})
	addr := b.Addr("mqtt-tcp")
	owner, _ := connectRaw(t, addr, rawConnect{version: 4, id: "ops-1", user: "ops", pass: "ops-pw", keep: true})
	writePackets(t, owner, qos2Publish(4, 1, "first", false))
	p.waitFor(t, 1)
	if _, connack := connectRaw(t, addr, rawConnect{version: 4, id: "ops-1", user: "ops", pass: "wrong", keep: true}); connack.ReasonCode == 0 {
		t.Fatal("a wrong password was accepted")
	}
	p.confirmFromNowOn()
	p.deliver(0, nil)
	writePackets(t, owner, qos2Publish(4, 2, "second", false))
	readUntilPubrec(t, owner, 4, 2)
}

// A QoS 2 resend can pass mochi's look at the inflight store just before
// the ack writer stores the first copy's PUBREC and releases its id: the
// session then finds the stored PUBREC and takes the resend as the
// duplicate it is, instead of producing it again.
func TestQoS2ResendAfterItsPubrecWasStoredIsNotProducedAgain(t *testing.T) {
	srv := mqtt.New(nil)
	cl := srv.NewClient(nil, "t", "c", false)
	s := &session{cl: cl, ids: map[uint16]*pending{}}
	pk := qos2Publish(5, 7, "again", true)
	if got := s.add(&pk, &pending{}, false, 10); got != added {
		t.Fatalf("the first copy: add = %v, want added", got)
	}
	delete(s.ids, 7) // as the writer does once Kafka has it...
	s.queue = nil
	cl.State.Inflight.Set(ack(7, 2, packets.CodeSuccess)) // ...after storing its PUBREC
	if got := s.add(&pk, &pending{}, false, 10); got != duplicate {
		t.Fatalf("the resend: add = %v, want duplicate", got)
	}
	if len(s.queue) != 0 {
		t.Fatalf("%d entries queued for the resend", len(s.queue))
	}
	cl.State.Inflight.Delete(7) // PUBREL: the id is free for a new publish
	if got := s.add(&pk, &pending{}, false, 10); got != added {
		t.Fatalf("a new publish with the released id: add = %v, want added", got)
	}
}
