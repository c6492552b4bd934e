package broker

import (
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tributary-io/tributary/mapping"
)

// recordCase is a publish as OnPublish sees it, with the mapping that
// decides its Kafka topic and key.
type recordCase struct {
	name string
	cfg  mapping.Config
	pk   packets.Packet
}

func recordCases() []recordCase {
	plain := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   "house/kitchen/temperature",
		Payload:     []byte("21.5"),
		PacketID:    7,
	}
	v5 := plain
	v5.Properties.ContentType = "text/plain"
	v5.Properties.User = []packets.UserProperty{{Key: "unit", Val: "celsius"}, {Key: "room", Val: "kitchen"}}
	forged := v5
	forged.Properties.User = []packets.UserProperty{{Key: "unit", Val: "celsius"}, {Key: "mqtt.client_id", Val: "someone-else"},
		{Key: "mqtt.topic", Val: "elsewhere"}, {Key: "mqtt.source", Val: "plant"}, {Key: "mqtt.content_type", Val: "x"}}
	return []recordCase{
		{"no rules, MQTT 3.1.1", mapping.Config{}, plain},
		{"named groups and a header rule", mapping.Config{Rules: []mapping.Rule{{
			Match:      `house/(?P<room>[^/]+)/(?P<kind>[^/]+)`,
			KafkaTopic: "iot.${kind}", Key: "${room}",
			Headers: map[string]string{"room": "${room}"},
		}}}, plain},
		{"MQTT 5 user properties and content type", mapping.Config{}, v5},
		{"MQTT 5 user properties named like Tributary's headers", mapping.Config{}, forged},
	}
}

// mapped returns the mapping result of tc's publish.
func mapped(t testing.TB, tc recordCase) mapping.Result {
	t.Helper()
	m, err := mapping.New(tc.cfg)
	if err != nil {
		t.Fatal(err)
	}
	res, err := m.Map("", tc.pk.TopicName)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestBuildRecord(t *testing.T) {
	cl := &mqtt.Client{ID: "sensor-1"}
	at := time.Unix(1700000000, 0)
	for _, tc := range recordCases() {
		t.Run(tc.name, func(t *testing.T) {
			res := mapped(t, tc)
			rec, forged := buildRecord(cl, &tc.pk, &res, at)
			got := map[string]string{}
			for _, h := range rec.Headers {
				got[h.Key] = string(h.Value)
			}
			want := map[string]string{"mqtt.topic": "house/kitchen/temperature", "mqtt.qos": "1", "mqtt.retain": "false", "mqtt.client_id": "sensor-1"}
			for _, h := range res.Headers {
				want[h.Key] = h.Value
			}
			if tc.pk.Properties.ContentType != "" {
				want["mqtt.content_type"] = tc.pk.Properties.ContentType
			}
			wantForged := 0
			for _, u := range tc.pk.Properties.User {
				if _, ours := want[u.Key]; ours || u.Key == "mqtt.source" {
					wantForged++ // Tributary's headers keep their values
					continue
				}
				want[u.Key] = u.Val
			}
			if forged != wantForged {
				t.Errorf("%d user properties reported as reserved, want %d", forged, wantForged)
			}
			if len(rec.Headers) != len(want) {
				t.Errorf("%d headers, want %d: %v", len(rec.Headers), len(want), got)
			}
			for k, v := range want {
				if got[k] != v {
					t.Errorf("header %s = %q, want %q", k, got[k], v)
				}
			}
			if rec.Topic != res.Topic || string(rec.Key) != string(res.Key) || string(rec.Value) != "21.5" || !rec.Timestamp.Equal(at) {
				t.Errorf("record %s %q %q %v, want %s %q 21.5 %v", rec.Topic, rec.Key, rec.Value, rec.Timestamp, res.Topic, res.Key, at)
			}
			releaseRecord(rec)
		})
	}
}

// TestBuildRecordReusesRecords guards the per-publish allocations: once
// the pool is warm, building and releasing a record allocates nothing.
// (Under the race detector sync.Pool drops items on purpose, so it is
// not checked there.)
func TestBuildRecordReusesRecords(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	cl := &mqtt.Client{ID: "sensor-1"}
	for _, tc := range recordCases() {
		res := mapped(t, tc)
		allocs := testing.AllocsPerRun(1000, func() {
			rec, _ := buildRecord(cl, &tc.pk, &res, time.Time{})
			releaseRecord(rec)
		})
		if allocs != 0 {
			t.Errorf("%s: %.1f allocations per record, want 0", tc.name, allocs)
		}
	}
}

// BenchmarkBuildRecord is the per-publish work between mochi and the
// producer: mapping the topic and building the Kafka record.
func BenchmarkBuildRecord(b *testing.B) {
	cl := &mqtt.Client{ID: "sensor-1"}
	for _, tc := range recordCases() {
		m, err := mapping.New(tc.cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			at := time.Now()
			for b.Loop() {
				res, err := m.Map("", tc.pk.TopicName)
				if err != nil {
					b.Fatal(err)
				}
				rec, _ := buildRecord(cl, &tc.pk, &res, at)
				releaseRecord(rec)
			}
		})
	}
}
