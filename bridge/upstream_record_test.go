package bridge

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/tributary-io/tributary/mapping"
)

// testMessage is an upstream MQTT message as the connection hands it
// over, with its packet id (QoS 1 and 2).
type testMessage = wireMessage

func testUpstream(t testing.TB, kafkaTopic string, rules []mapping.Rule) *upstream {
	m, err := mapping.New(mapping.Config{Rules: rules})
	if err != nil {
		t.Fatal(err)
	}
	return &upstream{
		cfg:    UpstreamConfig{Name: "hsl", ClientID: "tributary-hsl-1", KafkaTopic: kafkaTopic},
		mapper: m,
		log:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

var vehicleRules = []mapping.Rule{{
	Match:      `/hfp/v2/journey/ongoing/vp/(?P<mode>[^/]+)/.*`,
	KafkaTopic: "vehicles.${mode}", Source: "hsl",
}}

func TestUpstreamRecord(t *testing.T) {
	msg := &testMessage{topic: "/hfp/v2/journey/ongoing/vp/bus/0018/00423", payload: []byte(`{"VP":{}}`), qos: 1}
	at := time.Unix(1700000000, 0)
	for _, tc := range []struct {
		name, kafkaTopic string
		rules            []mapping.Rule
		wantTopic        string
	}{
		{"kafka_topic shortcut", "vehicle-positions", nil, "vehicle-positions"},
		{"mapping rule on the source", "", vehicleRules, "vehicles.bus"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var rec Record
			if reason := testUpstream(t, tc.kafkaTopic, tc.rules).record(msg, at, &rec); reason != "" {
				t.Fatalf("not produced: %s", reason)
			}
			got := map[string]string{}
			for _, h := range rec.Headers {
				got[h.Key] = string(h.Value)
			}
			want := map[string]string{"mqtt.topic": msg.topic, "mqtt.qos": "1", "mqtt.retain": "false", "mqtt.client_id": "tributary-hsl-1", "mqtt.source": "hsl"}
			if len(got) != len(want) {
				t.Errorf("headers %v, want %v", got, want)
			}
			for k, v := range want {
				if got[k] != v {
					t.Errorf("header %s = %q, want %q", k, got[k], v)
				}
			}
			if rec.Topic != tc.wantTopic || string(rec.Key) != msg.topic || string(rec.Value) != string(msg.payload) || !rec.Timestamp.Equal(at) {
				t.Errorf("record %s %q %q %v", rec.Topic, rec.Key, rec.Value, rec.Timestamp)
			}
		})
	}
}

// TestUpstreamRecordReusesItsRecord guards the per-message allocations:
// with the kafka_topic shortcut, building the record into the
// connection's reused one allocates nothing.
func TestUpstreamRecordReusesItsRecord(t *testing.T) {
	u := testUpstream(t, "vehicle-positions", nil)
	msg := &testMessage{topic: "/hfp/v2/journey/ongoing/vp/bus/0018/00423", payload: []byte(`{"VP":{}}`), qos: 1}
	c := &conn{u: u}
	allocs := testing.AllocsPerRun(1000, func() {
		u.record(msg, time.Time{}, &c.rec)
		c.clearRecord()
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per message, want 0", allocs)
	}
}

// BenchmarkUpstreamRecord is the per-message work between paho and the
// producer for an upstream feed.
func BenchmarkUpstreamRecord(b *testing.B) {
	msg := &testMessage{topic: "/hfp/v2/journey/ongoing/vp/bus/0018/00423", payload: make([]byte, 100), qos: 1}
	for _, tc := range []struct {
		name, kafkaTopic string
		rules            []mapping.Rule
	}{
		{"kafka_topic shortcut", "vehicle-positions", nil},
		{"mapping rule on the source", "", vehicleRules},
	} {
		u := testUpstream(b, tc.kafkaTopic, tc.rules)
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			c := &conn{u: u}
			at := time.Now()
			for b.Loop() {
				if reason := u.record(msg, at, &c.rec); reason != "" {
					b.Fatal(reason)
				}
				c.clearRecord()
			}
		})
	}
}
