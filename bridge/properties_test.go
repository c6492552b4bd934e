package bridge

import (
	"strings"
	"testing"
)

// librdkafka's own checks of property names and values, made without a
// client: producer-only and consumer-only properties both pass, as one
// map feeds both kinds of client.
func TestCheckProperties(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		unknown     bool
		reason      string // empty: accepted
	}{
		{"linger.ms", "5", false, ""},
		{"compression.type", "lz4", false, ""},
		{"sasl.mechanism", "SCRAM-SHA-512", false, ""},
		{"security.protocol", "SASL_SSL", false, ""},
		{"enable.idempotence", "true", false, ""},
		{"acks", "all", false, ""},                   // producer, topic level
		{"batch.size", "1000000", false, ""},         // producer
		{"fetch.wait.max.ms", "100", false, ""},      // consumer
		{"auto.offset.reset", "earliest", false, ""}, // consumer, topic level
		{"max.poll.interval.ms", "600000", false, ""},
		{"partition.assignment.strategy", "roundrobin", false, ""},
		{"group.protocol", "classic", false, ""},
		{"{topic}.acks", "1", false, ""},

		{"lingr.ms", "5", true, `No such configuration property: "lingr.ms"`},
		{"linger.ms ", "5", true, "No such configuration property"},
		{"{topic}.linger.ms", "5", true, `No such configuration property: "linger.ms"`},
		{"go.events.channel.size", "10", true, "setting of the Go client"},
		{"compression.type", "brotli", false, `Invalid value "brotli"`},
		{"linger.ms", "abc", false, "Invalid value for configuration property"},
		{"batch.size", "0", false, "outside allowed range"},
		{"enable.auto.commit", "maybe", false, "Expected bool value"},
		{"group.protocol", "bogus", false, `Invalid value "bogus"`},
	} {
		t.Run(tc.name+"="+tc.value, func(t *testing.T) {
			errs := CheckProperties(map[string]string{tc.name: tc.value})
			if tc.reason == "" {
				if len(errs) != 0 {
					t.Fatalf("refused: %v", errs[0])
				}
				return
			}
			if len(errs) != 1 {
				t.Fatalf("%d errors %v, want one", len(errs), errs)
			}
			e := errs[0]
			if e.Name != tc.name || e.Unknown != tc.unknown || !strings.Contains(e.Reason, tc.reason) {
				t.Fatalf("got %+v, want name %q, unknown %v, a reason with %q", e, tc.name, tc.unknown, tc.reason)
			}
			if strings.HasSuffix(e.Reason, "\n") {
				t.Errorf("reason %q ends in a newline", e.Reason)
			}
		})
	}
}

// Every refused property is reported, in name order, and the accepted
// ones are not.
func TestCheckPropertiesReportsAll(t *testing.T) {
	errs := CheckProperties(map[string]string{
		"linger.ms":         "abc",
		"lingr.ms":          "5",
		"compression.type":  "brotli",
		"fetch.wait.max.ms": "100",
		"acks":              "all",
	})
	var names []string
	for _, e := range errs {
		names = append(names, e.Name)
	}
	if got, want := strings.Join(names, ","), "compression.type,linger.ms,lingr.ms"; got != want {
		t.Fatalf("refused %s, want %s: %v", got, want, errs)
	}
}
