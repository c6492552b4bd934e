package broker

import (
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tributary-io/tributary/mapping"
)

// The listener selects a subprotocol the client offered: "mqtt", or
// "mqttv3.1", which MQTT 3.1 clients offer alone. Browsers refuse a
// handshake that selects none of theirs, so MQTT 3.1 from a browser needs
// the second. An MQTT 3.1 CONNECT on such a socket gets its CONNACK.
func TestWSSelectsTheClientsSubprotocol(t *testing.T) {
	b := startConfigured(t, newFakeProducer(), mapping.Config{}, Config{WSAddr: "127.0.0.1:0"})

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
	if err := c.WriteMessage(websocket.BinaryMessage, encodeConnect(t, "MQIsdp", 3, "mqtt31-ws", nil)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, msg, err := c.ReadMessage(); err != nil || len(msg) != 4 || msg[0] != 0x20 || msg[3] != 0 {
		t.Fatalf("want a CONNACK accepting MQTT 3.1, got % x, %v", msg, err)
	}
}
