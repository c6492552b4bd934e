package broker

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// A will topic a client could not publish to (a wildcard, $SYS) is refused
// at CONNECT: mochi would retain and send it as it came.
func TestWillTopicMustBeATopicName(t *testing.T) {
	b := startBroker(t, newFakeProducer())
	connect := func(t *testing.T, version byte, will string) net.Conn {
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
				WillFlag: true, WillTopic: will, WillPayload: []byte("gone"), WillRetain: true,
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
	for _, will := range []string{"devices/dev/#", "devices/+/x", "$SYS/broker/fake"} {
		t.Run("MQTT 5 "+will, func(t *testing.T) {
			conn := connect(t, 5, will)
			pk := readPacket(t, conn, 5*time.Second)
			if pk[0] != 0x20 || pk[3] != packets.ErrTopicNameInvalid.Code {
				t.Fatalf("got % x, want CONNACK with reason 0x90", pk)
			}
		})
		t.Run("MQTT 3.1.1 "+will, func(t *testing.T) {
			conn := connect(t, 4, will)
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			if rest, err := io.ReadAll(conn); err != nil || len(rest) != 0 {
				t.Fatalf("got % x, %v: want the connection closed without a CONNACK", rest, err)
			}
		})
	}
	conn := connect(t, 4, "devices/dev/status")
	if pk := readPacket(t, conn, 5*time.Second); pk[0] != 0x20 || pk[3] != 0 {
		t.Fatalf("a valid will topic: got % x, want CONNACK accepted", pk)
	}
}
