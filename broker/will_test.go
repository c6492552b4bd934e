package broker

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// A will topic a client could not publish to (a wildcard, $SYS) is refused
// at CONNECT: mochi would retain and send it as it came.
func TestWillTopicMustBeATopicName(t *testing.T) {
	b := startBroker(t, newFakeProducer())
	connect := func(t *testing.T, version byte, will, payload string) net.Conn {
		t.Helper()
		conn, err := net.DialTimeout("tcp", b.Addr("mqtt-tcp"), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		pk := packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Connect},
			ProtocolVersion: version,
			Connect: packets.ConnectParams{
				ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: "w" + t.Name(),
				WillFlag: true, WillTopic: will, WillPayload: []byte(payload), WillRetain: true,
			},
		}
		var buf bytes.Buffer
		if err := pk.ConnectEncode(&buf); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write(buf.Bytes()); err != nil {
			t.Fatal(err)
		}
		return conn
	}
	// The one $SYS will taken is a bridge's connection state, under its
	// own client id ({own}: "w" and the test's name), "0" or "1".
	own := func(t *testing.T, will string) string { return strings.ReplaceAll(will, "{own}", "w"+t.Name()) }
	for _, will := range []string{"devices/dev/#", "devices/+/x", "$SYS/broker/fake", "$SYS/broker/connection/{own}/state"} {
		t.Run("MQTT 5 "+will, func(t *testing.T) {
			conn := connect(t, 5, own(t, will), "gone")
			pk := readMQTT(t, conn, 5)
			if pk.FixedHeader.Type != packets.Connack || pk.ReasonCode != packets.ErrTopicNameInvalid.Code {
				t.Fatalf("got packet type %d reason %#x, want CONNACK with reason 0x90", pk.FixedHeader.Type, pk.ReasonCode)
			}
		})
		t.Run("MQTT 3.1.1 "+will, func(t *testing.T) {
			conn := connect(t, 4, own(t, will), "gone")
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			if rest, err := io.ReadAll(conn); err != nil || len(rest) != 0 {
				t.Fatalf("got % x, %v: want the connection closed without a CONNACK", rest, err)
			}
		})
	}
	conn := connect(t, 4, "devices/dev/status", "gone")
	if pk := readPacket(t, conn, 5*time.Second); pk[0] != 0x20 || pk[3] != 0 {
		t.Fatalf("a valid will topic: got % x, want CONNACK accepted", pk)
	}
	conn = connect(t, 4, own(t, "$SYS/broker/connection/{own}/state"), "0")
	if pk := readPacket(t, conn, 5*time.Second); pk[0] != 0x20 || pk[3] != 0 {
		t.Fatalf("a bridge's state as its will: got % x, want CONNACK accepted", pk)
	}
}
