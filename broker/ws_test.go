package broker

import (
	"bytes"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tributary-io/tributary/mapping"
)

// The listener selects a subprotocol the client offered: "mqtt", or
// "mqttv3.1", which MQTT 3.1 clients offer alone. Browsers refuse a
// handshake that selects none of theirs, so MQTT 3.1 from a browser needs
// the second. An MQTT 3.1 CONNECT on such a socket gets its CONNACK.
func TestWSSelectsTheClientsSubprotocol(t *testing.T) {
	m, err := mapping.New(mapping.Config{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{WSAddr: "127.0.0.1:0", MaxMessageBytes: 1 << 20}, newFakeProducer(), m,
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	for _, tc := range []struct {
		offered []string
		want    string
	}{
		{[]string{"mqtt"}, "mqtt"},
		{[]string{"mqttv3.1"}, "mqttv3.1"},
		{[]string{"mqttv3.1", "mqtt"}, "mqtt"},
		{nil, ""},
	} {
		d := websocket.Dialer{Subprotocols: tc.offered, HandshakeTimeout: 5 * time.Second}
		c, _, err := d.Dial("ws://"+b.Addr("mqtt-ws")+"/mqtt", nil)
		if err != nil {
			t.Fatalf("offering %q: %v", tc.offered, err)
		}
		if got := c.Subprotocol(); got != tc.want {
			t.Errorf("offering %q: selected %q, want %q", tc.offered, got, tc.want)
		}
		c.Close()
	}

	d := websocket.Dialer{Subprotocols: []string{"mqttv3.1"}, HandshakeTimeout: 5 * time.Second}
	c, _, err := d.Dial("ws://"+b.Addr("mqtt-ws")+"/mqtt", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 3,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQIsdp"), Clean: true, Keepalive: 30, ClientIdentifier: "mqtt31-ws"},
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteMessage(websocket.BinaryMessage, buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, msg, err := c.ReadMessage(); err != nil || len(msg) != 4 || msg[0] != 0x20 || msg[3] != 0 {
		t.Fatalf("want a CONNACK accepting MQTT 3.1, got % x, %v", msg, err)
	}
}
