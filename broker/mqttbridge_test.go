package broker

import (
	"bytes"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// The bridge bit is cleared in a CONNECT however the reads split it, and
// nothing else is touched.
func TestConnectScanClearsTheBridgeBit(t *testing.T) {
	connect := func(name string, version byte) []byte {
		b := encodeConnect(t, name, version&0x7f, "edge.central", nil)
		b[2+2+len(name)] = version // after the type, the 1-byte length and the name
		return b
	}
	// A long CONNECT, so that its remaining length takes two bytes.
	long := func(version byte) []byte {
		b := encodeConnect(t, "MQTT", version&0x7f, "edge", func(c *packets.ConnectParams) {
			c.WillFlag, c.WillTopic, c.WillPayload = true, "$SYS/broker/connection/edge/state", bytes.Repeat([]byte("0"), 300)
		})
		if b[1]&0x80 == 0 {
			t.Fatal("the long CONNECT's remaining length is one byte")
		}
		b[3+2+4] = version
		return b
	}
	for _, tc := range []struct {
		name   string
		in     []byte
		want   []byte
		bridge bool
	}{
		{"3.1.1 bridge", connect("MQTT", 0x84), connect("MQTT", 4), true},
		{"3.1 bridge", connect("MQIsdp", 0x83), connect("MQIsdp", 3), true},
		{"3.1.1 bridge, 2-byte length", long(0x84), long(4), true},
		{"3.1.1", connect("MQTT", 4), connect("MQTT", 4), false},
		{"5", connect("MQTT", 5), connect("MQTT", 5), false},
		{"5 with the bit", connect("MQTT", 0x85), connect("MQTT", 0x85), false}, // not a version mosquitto sends: left for mochi to refuse
		{"3.1 name, 3.1.1 bridge version", connect("MQIsdp", 0x84), connect("MQIsdp", 0x84), false},
		{"not a CONNECT", append([]byte{0x30}, connect("MQTT", 0x84)[1:]...), append([]byte{0x30}, connect("MQTT", 0x84)[1:]...), false},
	} {
		// Every split into two reads, and one read a byte at a time.
		splits := [][]int{}
		for i := 0; i <= len(tc.in); i++ {
			splits = append(splits, []int{i})
		}
		ones := []int{}
		for i := 1; i < len(tc.in); i++ {
			ones = append(ones, i)
		}
		splits = append(splits, ones)
		for _, at := range splits {
			in := bytes.Clone(tc.in)
			var s connectScan
			got := false
			prev := 0
			for _, cut := range append(at, len(in)) {
				if s.feed(in[prev:cut]) {
					got = true
				}
				prev = cut
			}
			if !bytes.Equal(in, tc.want) || got != tc.bridge {
				t.Fatalf("%s, reads split at %v: got % x (bridge %v), want % x (bridge %v)", tc.name, at, in, got, tc.want, tc.bridge)
			}
		}
	}
}

// bridgeBitConn patches what it reads and says so; isMQTTBridge finds it
// under a wrapper with NetConn.
func TestBridgeBitConnRead(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := &bridgeBitConn{Conn: a}
	wrapped := &gatedConn{Conn: c}
	if isMQTTBridge(wrapped) {
		t.Fatal("a bridge before anything was read")
	}
	want := encodeConnect(t, "MQTT", 4, "edge", nil)
	sent := bytes.Clone(want)
	sent[8] = 0x84
	go func() { _, _ = b.Write(sent) }()
	got := make([]byte, len(sent))
	for n := 0; n < len(got); {
		m, err := wrapped.Read(got[n:])
		if err != nil {
			t.Fatal(err)
		}
		n += m
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read % x, want % x", got, want)
	}
	if !isMQTTBridge(wrapped) {
		t.Fatal("not a bridge after its CONNECT was read")
	}
}

func TestBridgeStateTopic(t *testing.T) {
	for _, tc := range []struct {
		id, topic string
		want      bool
	}{
		{"edge.central", "$SYS/broker/connection/edge.central/state", true},
		{"a/b", "$SYS/broker/connection/a/b/state", true},
		{"edge", "$SYS/broker/connection/other/state", false},
		{"edge", "$SYS/broker/connection/edge/state/x", false},
		{"edge", "$SYS/broker/connection/edge", false},
		{"", "$SYS/broker/connection//state", false},
		{"e#", "$SYS/broker/connection/e#/state", false},
		{"edge", "sensors/edge/state", false},
		{"edge", "$SYS/broker/connection/edgeX/state", false},
		{strings.Repeat("b", maxBridgeStateID), "$SYS/broker/connection/" + strings.Repeat("b", maxBridgeStateID) + "/state", true},
		{strings.Repeat("b", maxBridgeStateID+1), "$SYS/broker/connection/" + strings.Repeat("b", maxBridgeStateID+1) + "/state", false},
	} {
		if got := bridgeStateTopic(tc.id, tc.topic); got != tc.want {
			t.Errorf("bridgeStateTopic(%.40q, %.80q) = %v, want %v", tc.id, tc.topic, got, tc.want)
		}
	}
}

// A bridge's subscriptions get No Local and Retain As Published: what it
// publishes is not sent back to it, and a retained publish reaches it
// retained. A plain MQTT 3.1.1 subscriber of the same filter gets the
// bridge's publish, and the retained one with the flag cleared.
func TestBridgeSubscriptionsSkipOwnAndKeepRetain(t *testing.T) {
	p := newFakeProducer()
	p.confirm = true
	b := startBroker(t, p)
	addr := b.Addr("mqtt-tcp")

	edge, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { edge.Close() })
	hello := encodeConnect(t, "MQTT", 4, "edge", nil)
	hello[8] |= 0x80 // the bridge bit
	if _, err := edge.Write(hello); err != nil {
		t.Fatal(err)
	}
	if pk := readPacket(t, edge, 5*time.Second); pk[0] != 0x20 || pk[3] != 0 {
		t.Fatalf("want a CONNACK accepting the bridge, got % x", pk)
	}
	plain := dialNamed(t, addr, "plain")
	device := dialNamed(t, addr, "device")
	for _, c := range []net.Conn{edge, plain} {
		writePackets(t, c, packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
			PacketID:    1,
			Filters:     packets.Subscriptions{{Filter: "x/#"}},
		})
		if pk := readPacket(t, c, 5*time.Second); pk[0] != 0x90 || pk[len(pk)-1] != 0 {
			t.Fatalf("want a SUBACK granting QoS 0, got % x", pk)
		}
	}
	pub := func(c net.Conn, id uint16, topic string, retain bool) {
		t.Helper()
		writePackets(t, c, packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: retain},
			PacketID:    id,
			TopicName:   topic,
			Payload:     []byte(topic),
		})
		if pk := readPacket(t, c, 5*time.Second); pk[0] != 0x40 {
			t.Fatalf("want a PUBACK, got % x", pk)
		}
	}
	// Each PUBLISH as the subscriber reads it: its first byte (QoS 0, so
	// 0x31 when retained) and its topic.
	next := func(c net.Conn) string {
		t.Helper()
		pk := readPacket(t, c, 5*time.Second)
		if len(pk) < 4 || pk[0]&0xf0 != 0x30 {
			t.Fatalf("want a PUBLISH, got % x", pk)
		}
		n := int(pk[2])<<8 | int(pk[3])
		return fmt.Sprintf("%#x %s", pk[0], pk[4:4+n])
	}

	pub(edge, 1, "x/own", false)
	if got := next(plain); got != "0x30 x/own" {
		t.Fatalf("the plain subscriber got %q, want the bridge's publish", got)
	}
	pub(device, 1, "x/kept", true)
	pub(device, 2, "x/live", false)
	// Had the bridge's own publish come back, it would come first.
	for _, want := range []string{"0x31 x/kept", "0x30 x/live"} {
		if got := next(edge); got != want {
			t.Fatalf("the bridge got %q, want %q", got, want)
		}
	}
	for _, want := range []string{"0x30 x/kept", "0x30 x/live"} {
		if got := next(plain); got != want {
			t.Fatalf("the plain subscriber got %q, want %q", got, want)
		}
	}
}

func TestIsBridgeState(t *testing.T) {
	const topic = "$SYS/broker/connection/edge/state"
	for _, tc := range []struct {
		topic, payload string
		want           bool
	}{
		{topic, "1", true},
		{topic, "0", true},
		{topic, "", false},
		{topic, "2", false},
		{topic, "10", false},
		{topic, "online", false},
		{"$SYS/broker/connection/other/state", "1", false},
	} {
		if got := isBridgeState("edge", tc.topic, []byte(tc.payload)); got != tc.want {
			t.Errorf("isBridgeState(edge, %q, %q) = %v, want %v", tc.topic, tc.payload, got, tc.want)
		}
	}
}

// A client's own connection-state topic takes "1" and "0" and nothing
// else: any other payload there is refused as any $SYS publish is, so a
// client cannot retain more than a byte under it.
func TestBridgeStateTakesOnlyAState(t *testing.T) {
	b := startBroker(t, newFakeProducer())
	conn, ack := connectRaw(t, b.Addr("mqtt-tcp"), rawConnect{version: 5, id: "edge"})
	if ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x", ack.ReasonCode)
	}
	state := func(id uint16, payload string) packets.Packet {
		pk := publish5("$SYS/broker/connection/edge/state", 1, id, 0)
		pk.Payload = []byte(payload)
		return pk
	}
	for _, st := range []struct {
		pk   packets.Packet
		want byte
	}{
		{state(1, "1"), 0},
		{state(2, strings.Repeat("x", 1000)), packets.ErrTopicNameInvalid.Code},
		{state(3, "0"), 0},
		{state(4, "online"), packets.ErrTopicNameInvalid.Code},
	} {
		writePackets(t, conn, st.pk)
		got := readMQTT(t, conn, 5)
		if got.FixedHeader.Type != packets.Puback || got.PacketID != st.pk.PacketID || got.ReasonCode != st.want {
			t.Fatalf("state %q: got type %d id %d reason %#x, want PUBACK reason %#x",
				st.pk.Payload, got.FixedHeader.Type, got.PacketID, got.ReasonCode, st.want)
		}
	}
}

// A client id longer than maxBridgeStateID bytes has no connection-state
// topic exempt from the ACLs: a retained topic named by a client id of
// tens of kilobytes is not taken from a client without the right to
// publish it.
func TestLongClientIDHasNoBridgeState(t *testing.T) {
	b := startBroker(t, newFakeProducer())
	id := strings.Repeat("b", maxBridgeStateID+1)
	conn, ack := connectRaw(t, b.Addr("mqtt-tcp"), rawConnect{version: 5, id: id})
	if ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x", ack.ReasonCode)
	}
	pk := publish5("$SYS/broker/connection/"+id+"/state", 1, 1, 0)
	pk.Payload = []byte("1")
	writePackets(t, conn, pk)
	if got := readMQTT(t, conn, 5); got.FixedHeader.Type != packets.Puback || got.ReasonCode != packets.ErrTopicNameInvalid.Code {
		t.Fatalf("the state of a %d-byte client id: got type %d reason %#x, want PUBACK %#x", len(id), got.FixedHeader.Type, got.ReasonCode, packets.ErrTopicNameInvalid.Code)
	}
}
