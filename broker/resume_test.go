package broker

import (
	"fmt"
	"net"
	"reflect"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
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
			if recs[0].PacketID != 1 || recs[0].ReasonCode != 0 {
				t.Fatalf("first PUBREC after reconnecting: packet %d, reason %#x; want packet 1, success", recs[0].PacketID, recs[0].ReasonCode)
			}
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
			readUntilPubrec(t, conn, version, 2)
			if got, want := p.produced(), []string{"first", "second"}; !reflect.DeepEqual(got, want) {
				t.Fatalf("Kafka got %q, want %q", got, want)
			}
		})
	}
}
