package broker

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"maps"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tributary-io/tributary/mapping"
)

// startMapped starts a broker whose only rule sends dev/... to Kafka, with
// the given policy for other topics.
func startMapped(t *testing.T, p Producer, policy mapping.Policy) *Broker {
	t.Helper()
	return startWithMapping(t, p, mapping.Config{
		Rules:     []mapping.Rule{{Match: "dev/.*", KafkaTopic: "devices"}},
		Unmatched: policy,
	})
}

func publish(t *testing.T, version, qos byte, topic string, id uint16, payload []byte) []byte {
	t.Helper()
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: qos},
		ProtocolVersion: version,
		TopicName:       topic,
		PacketID:        id,
		Payload:         payload,
	}
	var buf bytes.Buffer
	if err := pk.PublishEncode(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// subscribe subscribes conn to filter at QoS 0 and waits for the SUBACK.
func subscribe(t *testing.T, conn net.Conn, version byte, filter string, noLocal bool) {
	t.Helper()
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		ProtocolVersion: version,
		PacketID:        9,
		Filters:         packets.Subscriptions{{Filter: filter, Qos: 0, NoLocal: noLocal}},
	}
	var buf bytes.Buffer
	if err := pk.SubscribeEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	if got := readPacket(t, conn, 5*time.Second); got[0] != 0x90 {
		t.Fatalf("want SUBACK, got % x", got)
	}
}

// expectQuiet fails if anything arrives on conn within d.
func expectQuiet(t *testing.T, conn net.Conn, d time.Duration, what string) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(d))
	if k, err := conn.Read(make([]byte, 64)); err == nil || k > 0 {
		t.Fatalf("%s: the client got a packet", what)
	}
}

// A QoS 1 publish that goes to no Kafka topic is acknowledged at once by
// mochi, unless earlier publishes of the connection still await Kafka:
// then its PUBACK waits its turn (MQTT 3.1.1 §4.6), for every policy that
// sends nothing to Kafka.
func TestAckOfUnproducedPublishWaitsItsTurn(t *testing.T) {
	for _, policy := range []mapping.Policy{mapping.PolicyNone, mapping.PolicyDrop} {
		t.Run("policy "+string(policy), func(t *testing.T) {
			p := newFakeProducer()
			b := startMapped(t, p, policy)
			conn := dial(t, b.Addr("mqtt-tcp"), 4)
			msgs := append(publish(t, 4, 1, "dev/a", 1, []byte("x")), publish(t, 4, 1, "other/b", 2, []byte("y"))...)
			if _, err := conn.Write(msgs); err != nil {
				t.Fatal(err)
			}
			p.waitFor(t, 1)
			expectQuiet(t, conn, 300*time.Millisecond, "before Kafka confirmed publish 1")
			p.deliver(0, nil)
			for want := 1; want <= 2; want++ {
				if pk := readPacket(t, conn, 5*time.Second); pk[0] != 0x40 || pk[3] != byte(want) {
					t.Fatalf("ack %d: got % x, want PUBACK for packet %d", want, pk, want)
				}
			}
		})
	}
}

// An MQTT 5 publish the mapping refuses gets its negative PUBACK in its
// turn too, after those of the publishes before it.
func TestRefusalWaitsItsTurn(t *testing.T) {
	p := newFakeProducer()
	b := startMapped(t, p, mapping.PolicyReject)
	conn := dial(t, b.Addr("mqtt-tcp"), 5)
	msgs := append(publish(t, 5, 1, "dev/a", 1, []byte("x")), publish(t, 5, 1, "other/b", 2, []byte("y"))...)
	if _, err := conn.Write(msgs); err != nil {
		t.Fatal(err)
	}
	p.waitFor(t, 1)
	expectQuiet(t, conn, 300*time.Millisecond, "before Kafka confirmed publish 1")
	p.deliver(0, nil)
	if pk := readPacket(t, conn, 5*time.Second); pk[0] != 0x40 || pk[3] != 1 || pk[1] != 2 {
		t.Fatalf("first ack % x, want a plain PUBACK for 1", pk)
	}
	if pk := readPacket(t, conn, 5*time.Second); pk[0] != 0x40 || pk[3] != 2 || pk[4] != packets.ErrTopicNameInvalid.Code {
		t.Fatalf("second ack % x, want PUBACK for 2 with reason 0x90", pk)
	}
}

// A connection may have at most the advertised receive maximum of QoS 1
// publishes awaiting Kafka: an MQTT 5 client over it is disconnected with
// 0x93; an MQTT 3 client is read no further until there is room.
func TestPendingPublishesBounded(t *testing.T) {
	t.Run("MQTT 5", func(t *testing.T) {
		p := newFakeProducer()
		b := startBroker(t, p)
		limit := b.ingest.maxPending
		conn := dial(t, b.Addr("mqtt-tcp"), 5)
		if _, err := conn.Write(publishes(t, 5, 1, limit+1)); err != nil {
			t.Fatal(err)
		}
		pk := readPacket(t, conn, 5*time.Second)
		if pk[0] != 0xe0 || pk[2] != packets.ErrReceiveMaximum.Code {
			t.Fatalf("got % x, want DISCONNECT with reason 0x93", pk)
		}
		p.mu.Lock()
		produced := len(p.pending)
		p.mu.Unlock()
		if produced != limit {
			t.Fatalf("%d records produced, want %d", produced, limit)
		}
	})
	t.Run("MQTT 3.1.1", func(t *testing.T) {
		p := newFakeProducer()
		b := startBroker(t, p)
		limit := b.ingest.maxPending
		conn := dial(t, b.Addr("mqtt-tcp"), 4)
		if _, err := conn.Write(publishes(t, 4, 1, limit+5)); err != nil {
			t.Fatal(err)
		}
		p.waitFor(t, limit)
		time.Sleep(200 * time.Millisecond)
		p.mu.Lock()
		produced := len(p.pending)
		p.mu.Unlock()
		if produced != limit {
			t.Fatalf("%d records produced with none confirmed, want the limit %d", produced, limit)
		}
		for i := range limit {
			p.deliver(i, nil)
		}
		p.waitFor(t, limit+5)
		for i := limit; i < limit+5; i++ {
			p.deliver(i, nil)
		}
		for want := 1; want <= limit+5; want++ {
			pk := readPacket(t, conn, 5*time.Second)
			if pk[0] != 0x40 || int(pk[2])<<8|int(pk[3]) != want {
				t.Fatalf("ack %d: got % x", want, pk)
			}
		}
	})
}

// An MQTT 3 client waiting for room in its queue when the broker drains
// for shutdown has that publish left unacknowledged and not produced:
// taken after Drain, it could reach Kafka after the flush, with no PUBACK
// to follow, and come back as a duplicate when the client resends it.
func TestDrainEndsTheWaitForRoom(t *testing.T) {
	p := newFakeProducer()
	b := startBroker(t, p)
	limit := b.ingest.maxPending
	conn := dial(t, b.Addr("mqtt-tcp"), 4)
	if _, err := conn.Write(publishes(t, 4, 1, limit+1)); err != nil {
		t.Fatal(err)
	}
	p.waitFor(t, limit)
	time.Sleep(200 * time.Millisecond) // for the last one, read meanwhile, to wait for room
	b.Drain()
	for i := range limit {
		p.deliver(i, nil)
	}
	// The read loop takes the PINGREQ only once it is done with the
	// publish before it.
	if _, err := conn.Write([]byte{packets.Pingreq << 4, 0}); err != nil {
		t.Fatal(err)
	}
	acks, pong := 0, false
	for range limit + 1 {
		switch pk := readPacket(t, conn, 5*time.Second); pk[0] {
		case packets.Puback << 4:
			acks++
		case packets.Pingresp << 4:
			pong = true
		default:
			t.Fatalf("got % x, want PUBACK or PINGRESP", pk)
		}
	}
	if acks != limit || !pong {
		t.Fatalf("%d PUBACKs and PINGRESP %v, want the %d publishes Kafka had acknowledged and PINGRESP", acks, pong, limit)
	}
	p.mu.Lock()
	produced := len(p.pending)
	p.mu.Unlock()
	if produced != limit {
		t.Fatalf("%d records produced, want %d: the publish waiting at Drain was produced", produced, limit)
	}
}

// A subscriber with No Local does not get its own QoS 1 publishes back
// once Kafka has them; another subscriber does.
func TestNoLocalHoldsForAcknowledgedPublishes(t *testing.T) {
	p := newFakeProducer()
	b := startBroker(t, p)
	self := dial(t, b.Addr("mqtt-tcp"), 5)
	other := dialNamed(t, b.Addr("mqtt-tcp"), "other")
	subscribe(t, self, 5, "dev/#", true)
	subscribe(t, other, 4, "dev/#", false)
	if _, err := self.Write(publish(t, 5, 1, "dev/a", 1, []byte("x"))); err != nil {
		t.Fatal(err)
	}
	p.waitFor(t, 1)
	p.deliver(0, nil)
	if pk := readPacket(t, self, 5*time.Second); pk[0] != 0x40 {
		t.Fatalf("want PUBACK, got % x", pk)
	}
	if pk := readPacket(t, other, 5*time.Second); pk[0]>>4 != packets.Publish {
		t.Fatalf("the other subscriber got % x, want the PUBLISH", pk)
	}
	expectQuiet(t, self, 300*time.Millisecond, "No Local subscriber after its own publish")
}

// Close finishes even when a client stopped reading while the broker was
// writing to it: that write holds the client's lock, which disconnecting
// the client needs.
func TestCloseWithAClientThatDoesNotRead(t *testing.T) {
	p := newFakeProducer()
	b := startBroker(t, p)
	// MQTT 5: disconnecting it means writing a DISCONNECT.
	reader := dial(t, b.Addr("mqtt-tcp"), 5)
	subscribe(t, reader, 5, "big/#", false)
	// From now on the reader reads nothing: 32 MiB forwarded to it fill
	// the socket buffers and leave the broker's write to it blocked.
	writer := dialNamed(t, b.Addr("mqtt-tcp"), "writer")
	big := publish(t, 4, 0, "big/x", 0, make([]byte, 64<<10))
	for range 512 {
		if _, err := writer.Write(big); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond)
	done := make(chan struct{})
	go func() {
		_ = b.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("Close did not return within 15 s with a client that does not read")
	}
}

// A publish the ACLs refuse is answered in its turn as well: an MQTT 5
// client gets PUBACK (QoS 1) or PUBREC (QoS 2) 0x87 after the
// acknowledgements of the publishes before it, and an MQTT 3.1.1 client,
// which has no negative acknowledgement, is disconnected after them
// (never with a PUBACK for a record Kafka has not confirmed). A refused
// publish produces no
// record and is counted once, also when it gives only a topic alias; a
// refused subscription is still refused.
func TestACLRefusalWaitsItsTurn(t *testing.T) {
	start := func(t *testing.T) (*fakeProducer, *Broker, *prometheus.Registry) {
		t.Helper()
		p := newFakeProducer()
		reg := prometheus.NewRegistry()
		b := startConfigured(t, p, mapping.Config{}, Config{Auth: AuthConfig{Users: loadTestUsers(t, "")}, Registerer: reg})
		return p, b, reg
	}
	denied := func(t *testing.T, reg prometheus.Gatherer, want map[string]float64) {
		t.Helper()
		if got := authMetric(t, reg, "tributary_mqtt_acl_denied_total"); !maps.Equal(got, want) {
			t.Fatalf("tributary_mqtt_acl_denied_total by action: %v, want %v", got, want)
		}
	}
	t.Run("MQTT 5", func(t *testing.T) {
		p, b, reg := start(t)
		conn, _ := connectRaw(t, b.Addr("mqtt-tcp"), rawConnect{version: 5, id: "dev-1", user: "dev", pass: "dev-pw"})
		writePackets(t, conn,
			publish5("devices/dev/x", 1, 1, 0),
			publish5("devices/ops/x", 1, 2, 0),
			publish5("devices/ops/y", 2, 3, 0),
			publish5("devices/ops/z", 0, 0, 0),
		)
		p.waitFor(t, 1)
		expectQuiet(t, conn, 300*time.Millisecond, "before Kafka confirmed publish 1")
		p.deliver(0, nil)
		for _, want := range []struct {
			typ    byte
			id     uint16
			reason byte
		}{{packets.Puback, 1, 0}, {packets.Puback, 2, 0x87}, {packets.Pubrec, 3, 0x87}} {
			got := readMQTT(t, conn, 5)
			if got.FixedHeader.Type != want.typ || got.PacketID != want.id || got.ReasonCode != want.reason {
				t.Fatalf("got type %d id %d reason %#x, want type %d id %d reason %#x",
					got.FixedHeader.Type, got.PacketID, got.ReasonCode, want.typ, want.id, want.reason)
			}
		}
		if got := p.produced(); len(got) != 1 {
			t.Fatalf("%d records produced, want 1 (the allowed publish)", len(got))
		}
		// The topic a topic alias stands for is what is checked.
		p.confirmFromNowOn()
		for _, st := range []struct {
			pk     packets.Packet
			reason byte
		}{
			{publish5("devices/ops/a", 1, 4, 1), 0x87},
			{publish5("", 1, 5, 1), 0x87},
			{publish5("devices/dev/b", 1, 6, 2), 0},
			{publish5("", 1, 7, 2), 0},
		} {
			writePackets(t, conn, st.pk)
			if got := readMQTT(t, conn, 5); got.FixedHeader.Type != packets.Puback || got.PacketID != st.pk.PacketID || got.ReasonCode != st.reason {
				t.Fatalf("publish %d: got type %d id %d reason %#x, want PUBACK reason %#x",
					st.pk.PacketID, got.FixedHeader.Type, got.PacketID, got.ReasonCode, st.reason)
			}
		}
		if got := p.produced(); len(got) != 3 {
			t.Fatalf("%d records produced, want 3 (the allowed publishes)", len(got))
		}
		sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 5, PacketID: 9,
			Filters: packets.Subscriptions{{Filter: "devices/dev/x", Qos: 1}}}
		writePackets(t, conn, sub)
		if got := readMQTT(t, conn, 5); got.FixedHeader.Type != packets.Suback || !bytes.Equal(got.ReasonCodes, []byte{0x87}) {
			t.Fatalf("SUBACK type %d reason codes % x, want 87", got.FixedHeader.Type, got.ReasonCodes)
		}
		denied(t, reg, map[string]float64{"publish": 5, "subscribe": 1})
	})
	t.Run("MQTT 3.1.1", func(t *testing.T) {
		p, b, reg := start(t)
		conn, _ := connectRaw(t, b.Addr("mqtt-tcp"), rawConnect{version: 4, id: "dev-3", user: "dev", pass: "dev-pw"})
		pub := func(topic string, id uint16) packets.Packet {
			return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: 4, TopicName: topic, PacketID: id, Payload: []byte("x")}
		}
		writePackets(t, conn, pub("devices/dev/x", 1), pub("devices/ops/x", 2))
		p.waitFor(t, 1)
		// Sent after the refused publish, before the connection closes:
		// neither produced nor acknowledged, the client sends it again.
		writePackets(t, conn, pub("devices/dev/y", 3))
		expectQuiet(t, conn, 300*time.Millisecond, "before Kafka confirmed publish 1")
		p.deliver(0, nil)
		// The PUBACK of the publish before the refused one is written
		// before the connection closes, so the client does not send it,
		// into Kafka, again.
		var acked []uint16
		for {
			pk, err := tryReadMQTT(conn, 4, 5*time.Second)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("want the connection closed, got %v", err)
			}
			if pk.FixedHeader.Type == packets.Puback {
				acked = append(acked, pk.PacketID)
			}
		}
		if len(acked) != 1 || acked[0] != 1 {
			t.Fatalf("PUBACKs %v before the connection closed, want [1]", acked)
		}
		if got := p.produced(); len(got) != 1 {
			t.Fatalf("%d records produced, want 1 (the allowed publish before the refused one)", len(got))
		}
		denied(t, reg, map[string]float64{"publish": 1, "subscribe": 0})
	})
}

// An UNSUBSCRIBE of a filter the client never subscribed to, which
// another client holds, changes nothing: the MQTT 5 client is told no
// subscription existed (0x11), the server's count of subscriptions stays,
// and the other client still gets the QoS 0 and QoS 1 publishes to it,
// which the ingest stops forwarding once that count is zero.
func TestUnsubscribeOfAnotherClientsFilterChangesNothing(t *testing.T) {
	p := &bestEffortRecorder{fakeProducer: newFakeProducer()}
	p.confirm = true
	b := startBroker(t, p)
	sub, _ := connectRaw(t, b.Addr("mqtt-tcp"), rawConnect{version: 4, id: "sub"})
	subscribe(t, sub, 4, "sensors/#", false)
	before := atomic.LoadInt64(&b.server.Info.Subscriptions)
	other, _ := connectRaw(t, b.Addr("mqtt-tcp"), rawConnect{version: 5, id: "other"})
	writePackets(t, other, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, ProtocolVersion: 5, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "sensors/#"}},
	})
	ack := readMQTT(t, other, 5)
	if ack.FixedHeader.Type != packets.Unsuback || len(ack.ReasonCodes) != 1 || ack.ReasonCodes[0] != packets.CodeNoSubscriptionExisted.Code {
		t.Fatalf("UNSUBACK type %d reason codes % x, want 0x11", ack.FixedHeader.Type, ack.ReasonCodes)
	}
	if after := atomic.LoadInt64(&b.server.Info.Subscriptions); after != before {
		t.Fatalf("the server counts %d subscriptions, want %d", after, before)
	}
	writePackets(t, other, publish5("sensors/a", 0, 0, 0), publish5("sensors/b", 1, 3, 0))
	for _, want := range []string{"sensors/a", "sensors/b"} {
		pk := readMQTT(t, sub, 4)
		if pk.FixedHeader.Type != packets.Publish || pk.TopicName != want {
			t.Fatalf("the subscriber got type %d topic %q, want the publish to %s", pk.FixedHeader.Type, pk.TopicName, want)
		}
	}
	// The subscriber's own UNSUBSCRIBE still ends its subscription.
	writePackets(t, sub, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, ProtocolVersion: 4, PacketID: 4,
		Filters: packets.Subscriptions{{Filter: "sensors/#"}},
	})
	if ack = readMQTT(t, sub, 4); ack.FixedHeader.Type != packets.Unsuback {
		t.Fatalf("got packet type %d, want UNSUBACK", ack.FixedHeader.Type)
	}
	if after := atomic.LoadInt64(&b.server.Info.Subscriptions); after != before-1 {
		t.Fatalf("after the subscriber's own UNSUBSCRIBE the server counts %d subscriptions, want %d", after, before-1)
	}
}

// A subscription's count in mochi can be lowered more than once: its index
// folds the case of "$share", a client's session does not, so a client
// holding $share/g/t and $SHARE/g/t has one entry counted and two
// removed. A client cycling through such spellings brought the count to
// zero while others' subscriptions remained, and the ingest then stopped
// forwarding QoS 0 and acknowledged QoS 1 publishes to local subscribers.
// Whether there may be subscribers no longer depends on that count.
func TestSubscriptionCountDriftDoesNotStopForwarding(t *testing.T) {
	p := &bestEffortRecorder{fakeProducer: newFakeProducer()}
	p.confirm = true
	b := startBroker(t, p)
	sub, _ := connectRaw(t, b.Addr("mqtt-tcp"), rawConnect{version: 4, id: "sub"})
	subscribe(t, sub, 4, "sensors/#", false)
	other, _ := connectRaw(t, b.Addr("mqtt-tcp"), rawConnect{version: 5, id: "other"})
	subscribe(t, other, 5, "sensors/x", false)
	for i := 0; atomic.LoadInt64(&b.server.Info.Subscriptions) > 0; i++ {
		if i == 10 {
			t.Fatalf("mochi still counts %d subscriptions: the drift this test is about no longer happens", atomic.LoadInt64(&b.server.Info.Subscriptions))
		}
		subscribe(t, other, 5, "$share/g/sensors", false)
		subscribe(t, other, 5, "$SHARE/g/sensors", false)
		writePackets(t, other, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, ProtocolVersion: 5, PacketID: 7,
			Filters: packets.Subscriptions{{Filter: "$share/g/sensors"}, {Filter: "$SHARE/g/sensors"}}})
		if ack := readMQTT(t, other, 5); ack.FixedHeader.Type != packets.Unsuback {
			t.Fatalf("got packet type %d, want UNSUBACK", ack.FixedHeader.Type)
		}
	}
	t.Logf("mochi counts %d subscriptions; two remain", atomic.LoadInt64(&b.server.Info.Subscriptions))
	pub, _ := connectRaw(t, b.Addr("mqtt-tcp"), rawConnect{version: 5, id: "pub"})
	writePackets(t, pub, publish5("sensors/a", 0, 0, 0), publish5("sensors/b", 1, 3, 0))
	for _, want := range []string{"sensors/a", "sensors/b"} {
		pk, err := tryReadMQTT(sub, 4, 5*time.Second)
		if err != nil || pk.FixedHeader.Type != packets.Publish || pk.TopicName != want {
			t.Fatalf("the subscriber to sensors/# got %+v (%v), want the publish to %s", pk.FixedHeader, err, want)
		}
	}
}

// PUBACKs that the socket does not take at once, because the client does
// not read, are left to the connection's ack writer, which writes them
// before any later ones once the client reads again: none is lost, none
// overtaken, and where only part of a PUBACK went out, nothing mochi
// writes (PINGRESPs here) lands inside it.
func TestAcksTheSocketCannotTakeKeepTheirOrder(t *testing.T) {
	for _, tc := range []struct {
		name    string
		sndbuf  int // the server's send buffer; 0 leaves it
		cut     int // ingest.cutInlineWrites
		pings   bool
		counter func(*ingest) *atomic.Int64
	}{
		// A small send buffer the client does not empty: writes find it
		// full. No PINGREQs: a PINGRESP blocked on the full socket would
		// hold the client's lock, and every PUBACK would go through the
		// writer, never through what this case is for.
		{name: "socket full", sndbuf: 4096, counter: func(h *ingest) *atomic.Int64 { return &h.carried }},
		// Each write of more than one PUBACK stops in the middle of the
		// second, as a nearly full socket can make it.
		{name: "write cut inside a packet", cut: 6, pings: true, counter: func(h *ingest) *atomic.Int64 { return &h.split }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newFakeProducer()
			b := startBroker(t, p)
			b.ingest.cutInlineWrites = tc.cut
			conn, _ := connectRaw(t, b.Addr("mqtt-tcp"), rawConnect{version: 4, id: "slow-reader", keepalive: 600})
			const n, pingEvery = 100000, 97
			id := func(i int) uint16 { return uint16(i%65535 + 1) }
			// Reports come in bursts, so that each write holds many
			// PUBACKs.
			stop := make(chan struct{})
			delivering := make(chan struct{})
			go func() {
				defer close(delivering)
				for {
					select {
					case <-p.changed:
					case <-time.After(time.Millisecond):
					case <-stop:
						return
					}
					p.deliverBurst()
				}
			}()
			defer func() { close(stop); <-delivering }()
			if tc.sndbuf > 0 {
				// A first publish makes the connection's session, through
				// which the server's end of the socket is found.
				if _, err := conn.Write(publish(t, 4, 1, "t", id(0), []byte("x"))); err != nil {
					t.Fatal(err)
				}
				var server *net.TCPConn
				for deadline := time.Now().Add(5 * time.Second); server == nil; time.Sleep(time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatal("no session for the connection")
					}
					b.ingest.sessions.Range(func(_, v any) bool {
						server, _ = connIn[*net.TCPConn](v.(*session).cl.Net.Conn)
						return false
					})
				}
				if err := server.SetWriteBuffer(tc.sndbuf); err != nil {
					t.Fatal(err)
				}
			}
			var all []byte
			pings := 0
			for i := range n {
				if i == 0 && tc.sndbuf > 0 {
					continue // sent above
				}
				all = append(all, publish(t, 4, 1, "t", id(i), []byte("x"))...)
				if tc.pings && i%pingEvery == 0 {
					all = append(all, packets.Pingreq<<4, 0)
					pings++
				}
			}
			wrote := make(chan error, 1)
			go func() {
				_, err := conn.Write(all)
				wrote <- err
			}()
			for deadline := time.Now().Add(30 * time.Second); tc.counter(b.ingest).Load() == 0; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("no acknowledgements were left to the ack writer: the test did not do what it is for")
				}
			}
			r := bufio.NewReaderSize(conn, 64<<10)
			var pk [4]byte
			pongs := 0
			for i := 0; i < n || pongs < pings; {
				if i%1024 == 0 {
					_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
				}
				if _, err := io.ReadFull(r, pk[:2]); err != nil {
					t.Fatalf("after %d of %d acknowledgements and %d of %d PINGRESPs: %v", i, n, pongs, pings, err)
				}
				if pk[0] == packets.Pingresp<<4 && pk[1] == 0 {
					pongs++
					continue
				}
				if _, err := io.ReadFull(r, pk[2:]); err != nil {
					t.Fatalf("after %d of %d acknowledgements: %v", i, n, err)
				}
				if want := [4]byte{packets.Puback << 4, 2, byte(id(i) >> 8), byte(id(i))}; i >= n || pk != want {
					t.Fatalf("acknowledgement %d: % x, want PUBACK %d", i+1, pk, id(i))
				}
				i++
			}
			if err := <-wrote; err != nil {
				t.Fatal(err)
			}
		})
	}
}
