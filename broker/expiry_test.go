package broker

import (
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
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
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
	// The broker's own $SYS messages are retained too: the count of ours
	// is taken once they are there.
	testutil.WaitFor(t, 5*time.Second, "the broker's $SYS messages", func() bool {
		_, ok := bounded.server.Topics.Retained.Get("$SYS/broker/version")
		return ok
	})
	sys := gauge(t, boundedReg, "tributary_mqtt_retained_messages")
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
// settings and dropped after mqtt.session_expiry_max; an MQTT 5 client
// asking for longer is told the bound in its CONNACK.
func TestSessionExpiryMax(t *testing.T) {
	defaultReg, boundedReg := prometheus.NewRegistry(), prometheus.NewRegistry()
	def := startConfigured(t, newFakeProducer(), mapping.Config{}, Config{Registerer: defaultReg})
	bounded := startConfigured(t, newFakeProducer(), mapping.Config{}, Config{Registerer: boundedReg, SessionExpiryMax: time.Second})
	dev := rawConnect{version: 4, id: "dev", keep: true}
	for _, b := range []*Broker{def, bounded} {
		conn, _ := connectRaw(t, b.Addr("mqtt-tcp"), dev)
		conn.Close()
	}
	testutil.WaitFor(t, 5*time.Second, "the disconnected session counted", func() bool {
		return gauge(t, defaultReg, "tributary_mqtt_disconnected_sessions") == 1
	})
	testutil.WaitFor(t, 5*time.Second, "the session dropped after a second", func() bool {
		_, ok := bounded.server.Clients.Get("dev")
		return !ok
	})
	if n := gauge(t, boundedReg, "tributary_mqtt_disconnected_sessions"); n != 0 {
		t.Errorf("tributary_mqtt_disconnected_sessions %v after the expiry, want 0", n)
	}
	time.Sleep(1100 * time.Millisecond) // one more look in both
	for _, tc := range []struct {
		b    *Broker
		want bool
	}{{def, true}, {bounded, false}} {
		_, connack := connectRaw(t, tc.b.Addr("mqtt-tcp"), dev)
		if connack.ReasonCode != 0 || connack.SessionPresent != tc.want {
			t.Errorf("CONNACK reason %#x, session present %v; want 0 and %v", connack.ReasonCode, connack.SessionPresent, tc.want)
		}
	}

	_, connack := connectRaw(t, bounded.Addr("mqtt-tcp"), rawConnect{version: 5, id: "dev5", keep: true})
	if p := connack.Properties; !p.SessionExpiryIntervalFlag || p.SessionExpiryInterval != 1 {
		t.Errorf("an MQTT 5 client asking for 60 s was told %v (flag %v), want 1", p.SessionExpiryInterval, p.SessionExpiryIntervalFlag)
	}
}
