package broker

import (
	"bytes"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tributary-io/tributary/internal/testutil"
	"github.com/tributary-io/tributary/mapping"
)

// gauge reads one unlabelled gauge from reg.
func gauge(t *testing.T, reg prometheus.Gatherer, name string) float64 {
	t.Helper()
	v, ok := gathered(t, reg, name)[""]
	if !ok {
		t.Fatalf("no metric %s", name)
	}
	return v
}

// sysRetained waits until the broker has stored its own retained $SYS
// messages (the count stays the same across a second, when they are all
// stored again) and returns how many there are.
func sysRetained(t *testing.T, reg prometheus.Gatherer) float64 {
	t.Helper()
	var n float64
	testutil.WaitFor(t, 10*time.Second, "the broker's $SYS messages retained", func() bool {
		before := gauge(t, reg, "tributary_mqtt_retained_messages")
		time.Sleep(1100 * time.Millisecond)
		n = gauge(t, reg, "tributary_mqtt_retained_messages")
		return n > 0 && n == before
	})
	return n
}

// retainOld stores a retained message as if it had been published age ago.
func retainOld(b *Broker, topic string, age time.Duration) {
	b.server.Topics.RetainMessage(packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Retain: true},
		ProtocolVersion: 4,
		TopicName:       topic,
		Payload:         []byte("v"),
		Created:         time.Now().Add(-age).Unix(),
	})
}

// A retained message is kept until replaced, however old, unless
// mqtt.message_expiry_max says otherwise (mochi's own default drops each
// a day after it was published).
func TestRetainedMessagesAgeOnlyWhenConfigured(t *testing.T) {
	defaultReg, boundedReg := prometheus.NewRegistry(), prometheus.NewRegistry()
	def := startConfigured(t, newFakeProducer(), mapping.Config{}, Config{Registerer: defaultReg})
	bounded := startConfigured(t, newFakeProducer(), mapping.Config{}, Config{Registerer: boundedReg, MessageExpiryMax: time.Hour})
	// The broker's own $SYS messages are retained too, stored one after
	// the other each second: the count of ours is taken once they are all
	// there.
	sys := sysRetained(t, boundedReg)
	for _, b := range []*Broker{def, bounded} {
		retainOld(b, "state/old", 48*time.Hour)
		retainOld(b, "state/new", time.Minute)
	}
	if n := gauge(t, boundedReg, "tributary_mqtt_retained_messages") - sys; n != 2 {
		t.Fatalf("tributary_mqtt_retained_messages grew by %v, want 2", n)
	}
	// The broker looks for expired messages once a second.
	testutil.WaitFor(t, 5*time.Second, "the two-day-old message expired under a one-hour bound", func() bool {
		return len(bounded.server.Topics.Messages("state/old")) == 0
	})
	time.Sleep(1100 * time.Millisecond) // one more look in both
	if len(bounded.server.Topics.Messages("state/new")) != 1 {
		t.Error("a minute-old retained message expired under a one-hour bound")
	}
	if n := gauge(t, boundedReg, "tributary_mqtt_retained_messages") - sys; n != 1 {
		t.Errorf("tributary_mqtt_retained_messages %v over the broker's own after the expiry, want 1", n)
	}
	for _, topic := range []string{"state/old", "state/new"} {
		if len(def.server.Topics.Messages(topic)) != 1 {
			t.Errorf("with the default settings the retained message on %s was dropped", topic)
		}
	}
}

// A disconnected client's persistent session is kept with the default
// settings and dropped after mqtt.session_expiry_max, subscriptions and
// all; an MQTT 5 client asking for longer is told the bound in its
// CONNACK, and cannot stretch it in its DISCONNECT.
func TestSessionExpiryMax(t *testing.T) {
	defaultReg, boundedReg := prometheus.NewRegistry(), prometheus.NewRegistry()
	def := startConfigured(t, newFakeProducer(), mapping.Config{}, Config{Registerer: defaultReg})
	bounded := startConfigured(t, newFakeProducer(), mapping.Config{}, Config{Registerer: boundedReg, SessionExpiryMax: time.Second})
	dev := rawConnect{version: 4, id: "dev", keep: true}
	subscribed := func(b *Broker) bool {
		_, ok := b.server.Topics.Subscribers("x/1").Subscriptions["dev"]
		return ok
	}
	for _, b := range []*Broker{def, bounded} {
		conn, _ := connectRaw(t, b.Addr("mqtt-tcp"), dev)
		writePackets(t, conn, packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
			PacketID:    1,
			Filters:     packets.Subscriptions{{Filter: "x/#", Qos: 1}},
		})
		if ack := readMQTT(t, conn, 4); ack.FixedHeader.Type != packets.Suback {
			t.Fatalf("want SUBACK, got packet type %d", ack.FixedHeader.Type)
		}
		conn.Close()
	}
	// MQTT 5, granted 1 s, asking for no expiry at all as it leaves.
	conn, connack := connectRaw(t, bounded.Addr("mqtt-tcp"), rawConnect{version: 5, id: "dev5", keep: true})
	if p := connack.Properties; !p.SessionExpiryIntervalFlag || p.SessionExpiryInterval != 1 {
		t.Errorf("an MQTT 5 client asking for 60 s was told %v (flag %v), want 1", p.SessionExpiryInterval, p.SessionExpiryIntervalFlag)
	}
	var buf bytes.Buffer
	bye := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: 5}
	bye.Properties.SessionExpiryInterval, bye.Properties.SessionExpiryIntervalFlag = 0xFFFFFFFF, true
	if err := bye.DisconnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}

	testutil.WaitFor(t, 5*time.Second, "the disconnected session counted", func() bool {
		return gauge(t, defaultReg, "tributary_mqtt_disconnected_sessions") == 1
	})
	testutil.WaitFor(t, 5*time.Second, "both sessions dropped after a second", func() bool {
		_, ok := bounded.server.Clients.Get("dev")
		_, ok5 := bounded.server.Clients.Get("dev5")
		return !ok && !ok5
	})
	if n := gauge(t, boundedReg, "tributary_mqtt_disconnected_sessions"); n != 0 {
		t.Errorf("tributary_mqtt_disconnected_sessions %v after the expiry, want 0", n)
	}
	if subscribed(bounded) {
		t.Error("the expired session's subscription is still in the topic index")
	}
	time.Sleep(1100 * time.Millisecond) // one more look in both
	if !subscribed(def) {
		t.Error("with the default settings the session's subscription was dropped")
	}
	for _, tc := range []struct {
		b    *Broker
		want bool
	}{{def, true}, {bounded, false}} {
		_, connack := connectRaw(t, tc.b.Addr("mqtt-tcp"), dev)
		if connack.ReasonCode != 0 || connack.SessionPresent != tc.want {
			t.Errorf("CONNACK reason %#x, session present %v; want 0 and %v", connack.ReasonCode, connack.SessionPresent, tc.want)
		}
	}
}
