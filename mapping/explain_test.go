package mapping_test

import (
	"strings"
	"testing"

	"github.com/tributary-io/tributary/mapping"
)

func TestExplain(t *testing.T) {
	rules := []mapping.Rule{
		{Match: "edge/.*", KafkaTopic: "edge", Source: "edge-1"},
		{Match: "kitchen", KafkaTopic: "kitchen"},
		{Match: `house/(?P<room>\w+)/temperature`, KafkaTopic: "temp.${room}", Key: "${room}", Headers: map[string]string{"room": "${room}"}},
		{Match: `bad/(?P<x>.*)`, KafkaTopic: "bad.${x}"},
	}
	tests := []struct {
		name   string
		cfg    mapping.Config
		source string
		topic  string
		want   []string
	}{
		{
			name:  "confluent example",
			cfg:   mapping.Config{Rules: mustParseList(t, confluentExample)},
			topic: "house/kitchen/temperature",
			want: []string{
				`MQTT topic "house/kitchen/temperature" from a local device`,
				`rules[0] match ".*temperature" (any source): matched`,
				`Kafka topic: "temperature"`,
				`key: "house/kitchen/temperature" (the MQTT topic; the rule sets no key)`,
			},
		},
		{
			name:  "templates and skipped rules",
			cfg:   mapping.Config{Rules: rules},
			topic: "house/kitchen/temperature",
			want: []string{
				`rules[0] match "edge/.*" (only upstream "edge-1"): skipped, the publish is from a local device`,
				`rules[1] match "kitchen" (any source): no match: the regex matches only part of the topic`,
				`rules[2] match "house/(?P<room>\\w+)/temperature" (any source): matched`,
				`Kafka topic: "temp.kitchen" (from kafka_topic "temp.${room}")`,
				`key: "kitchen" (from key "${room}")`,
				`header "room": "kitchen" (from "${room}")`,
			},
		},
		{
			name:   "source matches",
			cfg:    mapping.Config{Rules: rules},
			source: "edge-1",
			topic:  "edge/a",
			want:   []string{`from upstream "edge-1"`, `rules[0] match "edge/.*" (only upstream "edge-1"): matched`, `Kafka topic: "edge"`},
		},
		{
			name:  "rendered topic invalid",
			cfg:   mapping.Config{Rules: rules},
			topic: "bad/a/b",
			want:  []string{`rules[3] match "bad/(?P<x>.*)" (any source): matched`, `rejected: rules[3].kafka_topic "bad.${x}" rendered "bad.a/b"`},
		},
		{
			name:  "no match policy none",
			cfg:   mapping.Config{Rules: rules},
			topic: "garden/x",
			want:  []string{`rules[1] match "kitchen" (any source): no match`, "no rule matched", "unmatched is unset", "no Kafka topic"},
		},
		{
			name:  "no match policy drop",
			cfg:   mapping.Config{Rules: rules, Unmatched: mapping.PolicyDrop},
			topic: "garden/x",
			want:  []string{"no rule matched", `"drop"`, "dropped"},
		},
		{
			name:  "no match policy reject",
			cfg:   mapping.Config{Rules: rules, Unmatched: mapping.PolicyReject},
			topic: "garden/x",
			want:  []string{"no rule matched", `"reject"`, "rejected"},
		},
		{
			name:  "no rules",
			cfg:   mapping.Config{},
			topic: "garden/x",
			want:  []string{"no rules are configured", "no rule matched", `"default_topic"`, `Kafka topic: "mqtt"`, `key: "garden/x"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := newMapper(t, tt.cfg).Explain(tt.source, tt.topic)
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("Explain output does not contain %q:\n%s", w, got)
				}
			}
			if !strings.HasSuffix(got, "\n") {
				t.Errorf("Explain output does not end in a newline: %q", got)
			}
		})
	}
}
