package broker

import (
	"bytes"
	"net"
	"testing"

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
	} {
		if got := bridgeStateTopic(tc.id, tc.topic); got != tc.want {
			t.Errorf("bridgeStateTopic(%q, %q) = %v, want %v", tc.id, tc.topic, got, tc.want)
		}
	}
}
