package mapping_test

import (
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/tributary-io/tributary/mapping"
)

// confluentExample is the rule list from Confluent MQTT Proxy's documentation.
const confluentExample = "temperature:.*temperature,brightness:.*brightness"

func newMapper(t testing.TB, cfg mapping.Config) *mapping.Mapper {
	t.Helper()
	m, err := mapping.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return m
}

func mustParseList(t testing.TB, s string) []mapping.Rule {
	t.Helper()
	rules, err := mapping.ParseRegexList(s)
	if err != nil {
		t.Fatalf("ParseRegexList(%q): %v", s, err)
	}
	return rules
}

// wantErrContains checks that err is non-nil and mentions every one of subs.
func wantErrContains(t *testing.T, err error, subs ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one containing %q", subs)
	}
	for _, s := range subs {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not contain %q", err, s)
		}
	}
}

func TestMap(t *testing.T) {
	kinds := mapping.Config{Rules: []mapping.Rule{
		{
			Match:      `sensors/(?P<site>[a-z]+)/(?P<kind>[a-z]+)/(?P<id>[^/]+)`,
			KafkaTopic: "iot.${kind}",
			Key:        "${site}:${id}",
			Headers:    map[string]string{"site": "${site}", "mqtt-topic": "${topic}", "from": "src=${source}", "fixed": "x$$y"},
		},
	}}
	tests := []struct {
		name    string
		cfg     mapping.Config
		source  string
		topic   string
		want    mapping.Result
		wantErr string
	}{
		{
			name:  "confluent example temperature",
			cfg:   mapping.Config{Rules: mustParseList(t, confluentExample)},
			topic: "house/kitchen/temperature",
			want:  mapping.Result{Action: mapping.ActionProduce, Rule: 0, Topic: "temperature", Key: []byte("house/kitchen/temperature")},
		},
		{
			name:  "confluent example brightness",
			cfg:   mapping.Config{Rules: mustParseList(t, confluentExample)},
			topic: "house/kitchen/brightness",
			want:  mapping.Result{Action: mapping.ActionProduce, Rule: 1, Topic: "brightness", Key: []byte("house/kitchen/brightness")},
		},
		{
			name:  "substring match is no match",
			cfg:   mapping.Config{Rules: mustParseList(t, confluentExample)},
			topic: "house/kitchen/temperature/raw",
			want:  mapping.Result{Action: mapping.ActionNone, Rule: -1},
		},
		{
			name:  "regex matching the middle only",
			cfg:   mapping.Config{Rules: []mapping.Rule{{Match: "kitchen", KafkaTopic: "k"}}},
			topic: "house/kitchen/temperature",
			want:  mapping.Result{Action: mapping.ActionNone, Rule: -1},
		},
		{
			name:  "alternation anchored as a whole",
			cfg:   mapping.Config{Rules: []mapping.Rule{{Match: "a|ab", KafkaTopic: "k"}}},
			topic: "ab",
			want:  mapping.Result{Action: mapping.ActionProduce, Rule: 0, Topic: "k", Key: []byte("ab")},
		},
		{
			name: "first match wins",
			cfg: mapping.Config{Rules: []mapping.Rule{
				{Match: "house/.*", KafkaTopic: "house"},
				{Match: ".*temperature", KafkaTopic: "temperature"},
			}},
			topic: "house/kitchen/temperature",
			want:  mapping.Result{Action: mapping.ActionProduce, Rule: 0, Topic: "house", Key: []byte("house/kitchen/temperature")},
		},
		{
			name:   "named groups in topic key and headers",
			cfg:    kinds,
			source: "edge-1",
			topic:  "sensors/lyon/temp/42",
			want: mapping.Result{
				Action: mapping.ActionProduce, Rule: 0, Topic: "iot.temp", Key: []byte("lyon:42"),
				Headers: []mapping.Header{
					{"fixed", "x$y"},
					{"from", "src=edge-1"},
					{"mqtt-topic", "sensors/lyon/temp/42"},
					{"site", "lyon"},
				},
			},
		},
		{
			name:  "numbered groups and source variable",
			cfg:   mapping.Config{Rules: []mapping.Rule{{Match: `(\w+)/(\w+)`, KafkaTopic: "${2}.${1}", Key: "${0}@${source}"}}},
			topic: "a/b",
			want:  mapping.Result{Action: mapping.ActionProduce, Rule: 0, Topic: "b.a", Key: []byte("a/b@")},
		},
		{
			name:  "group that did not participate renders empty",
			cfg:   mapping.Config{Rules: []mapping.Rule{{Match: `x(?P<opt>-y)?`, KafkaTopic: "t${opt}"}}},
			topic: "x",
			want:  mapping.Result{Action: mapping.ActionProduce, Rule: 0, Topic: "t", Key: []byte("x")},
		},
		{
			name: "source filter skips local publishes",
			cfg: mapping.Config{Rules: []mapping.Rule{
				{Match: ".*", KafkaTopic: "from-edge", Source: "edge"},
				{Match: ".*", KafkaTopic: "local"},
			}},
			topic: "a/b",
			want:  mapping.Result{Action: mapping.ActionProduce, Rule: 1, Topic: "local", Key: []byte("a/b")},
		},
		{
			name: "source filter matches its upstream",
			cfg: mapping.Config{Rules: []mapping.Rule{
				{Match: ".*", KafkaTopic: "from-edge", Source: "edge"},
				{Match: ".*", KafkaTopic: "local"},
			}},
			source: "edge",
			topic:  "a/b",
			want:   mapping.Result{Action: mapping.ActionProduce, Rule: 0, Topic: "from-edge", Key: []byte("a/b")},
		},
		{
			name:   "source filter skips other upstreams",
			cfg:    mapping.Config{Rules: []mapping.Rule{{Match: ".*", KafkaTopic: "from-edge", Source: "edge"}}},
			source: "cloud",
			topic:  "a/b",
			want:   mapping.Result{Action: mapping.ActionNone, Rule: -1},
		},
		{
			name:  "no rules goes to mqtt",
			cfg:   mapping.Config{},
			topic: "anything/at/all",
			want:  mapping.Result{Action: mapping.ActionProduce, Rule: -1, Topic: "mqtt", Key: []byte("anything/at/all")},
		},
		{
			name:  "no rules with drop policy",
			cfg:   mapping.Config{Unmatched: mapping.PolicyDrop},
			topic: "a",
			want:  mapping.Result{Action: mapping.ActionDrop, Rule: -1},
		},
		{
			name:  "policy none",
			cfg:   mapping.Config{Rules: []mapping.Rule{{Match: "x", KafkaTopic: "x"}}},
			topic: "y",
			want:  mapping.Result{Action: mapping.ActionNone, Rule: -1},
		},
		{
			name:  "policy default_topic with default name",
			cfg:   mapping.Config{Rules: []mapping.Rule{{Match: "x", KafkaTopic: "x"}}, Unmatched: mapping.PolicyDefaultTopic},
			topic: "y",
			want:  mapping.Result{Action: mapping.ActionProduce, Rule: -1, Topic: "mqtt", Key: []byte("y")},
		},
		{
			name:  "policy default_topic with custom name",
			cfg:   mapping.Config{Rules: []mapping.Rule{{Match: "x", KafkaTopic: "x"}}, Unmatched: mapping.PolicyDefaultTopic, DefaultTopic: "other"},
			topic: "y",
			want:  mapping.Result{Action: mapping.ActionProduce, Rule: -1, Topic: "other", Key: []byte("y")},
		},
		{
			name:  "policy drop",
			cfg:   mapping.Config{Rules: []mapping.Rule{{Match: "x", KafkaTopic: "x"}}, Unmatched: mapping.PolicyDrop},
			topic: "y",
			want:  mapping.Result{Action: mapping.ActionDrop, Rule: -1},
		},
		{
			name:  "policy reject",
			cfg:   mapping.Config{Rules: []mapping.Rule{{Match: "x", KafkaTopic: "x"}}, Unmatched: mapping.PolicyReject},
			topic: "y",
			want:  mapping.Result{Action: mapping.ActionReject, Rule: -1},
		},
		{
			name:    "rendered topic invalid",
			cfg:     mapping.Config{Rules: []mapping.Rule{{Match: "(?P<kind>.+)", KafkaTopic: "iot.${kind}"}}},
			topic:   "a/b",
			want:    mapping.Result{Action: mapping.ActionReject, Rule: 0},
			wantErr: `rules[0].kafka_topic "iot.${kind}" rendered "iot.a/b"`,
		},
		{
			name:    "rendered topic empty",
			cfg:     mapping.Config{Rules: []mapping.Rule{{Match: "(?P<kind>[a-z]*)/x", KafkaTopic: "${kind}"}}},
			topic:   "/x",
			want:    mapping.Result{Action: mapping.ActionReject, Rule: 0},
			wantErr: `rendered ""`,
		},
		{
			name:    "rendered topic internal",
			cfg:     mapping.Config{Rules: []mapping.Rule{{Match: "dev/(?P<kind>[^/]+)", KafkaTopic: "${kind}"}}},
			topic:   "dev/__consumer_offsets",
			want:    mapping.Result{Action: mapping.ActionReject, Rule: 0},
			wantErr: `rendered "__consumer_offsets": not a valid Kafka topic name: starts with "__"`,
		},
		{
			name:    "rendered topic too long",
			cfg:     mapping.Config{Rules: []mapping.Rule{{Match: ".*", KafkaTopic: "${topic}"}}},
			topic:   strings.Repeat("a", 250),
			want:    mapping.Result{Action: mapping.ActionReject, Rule: 0},
			wantErr: "250 bytes long",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMapper(t, tt.cfg)
			got, err := m.Map(tt.source, tt.topic)
			if tt.wantErr != "" {
				wantErrContains(t, err, tt.wantErr)
				if !errors.Is(err, mapping.ErrInvalidTopicName) {
					t.Errorf("error %v does not wrap ErrInvalidTopicName", err)
				}
			} else if err != nil {
				t.Fatalf("Map: %v", err)
			}
			if !equalResult(got, tt.want) {
				t.Errorf("Map(%q, %q)\n got %+v\nwant %+v", tt.source, tt.topic, got, tt.want)
			}
		})
	}
}

func equalResult(a, b mapping.Result) bool {
	return a.Action == b.Action && a.Rule == b.Rule && a.Topic == b.Topic &&
		string(a.Key) == string(b.Key) && slices.Equal(a.Headers, b.Headers)
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name  string
		cfg   mapping.Config
		want  []string
		field string // a *FieldError's Field among the problems, if any
	}{
		{
			name: "bad regex names the field and the regex",
			cfg:  mapping.Config{Rules: []mapping.Rule{{Match: "bad:([", KafkaTopic: "t"}}},
			want: []string{`rules[0].match "bad:(["`, "error parsing regexp"},
		},
		{
			name: "two bad rules are both reported",
			cfg: mapping.Config{Rules: []mapping.Rule{
				{Match: "ok", KafkaTopic: "ok"},
				{Match: "a(", KafkaTopic: "t"},
				{Match: "ok", KafkaTopic: "not/valid"},
			}},
			want: []string{`rules[1].match "a("`, `rules[2].kafka_topic "not/valid"`, `contains '/'`},
		},
		{
			name: "all problems of one rule",
			cfg:  mapping.Config{Rules: []mapping.Rule{{Match: "[", KafkaTopic: "${unterminated", Key: "$x"}}},
			want: []string{`rules[0].match "["`, `rules[0].kafka_topic "${unterminated": unterminated "${"`, `rules[0].key "$x"`},
		},
		{
			name: "fixed text of a topic template that no rendering can make valid",
			cfg: mapping.Config{Rules: []mapping.Rule{
				{Match: "(?P<kind>.*)", KafkaTopic: "iot/${kind}"},
				{Match: "(?P<kind>.*)", KafkaTopic: strings.Repeat("x", 250) + "${kind}"},
			}},
			want: []string{`rules[0].kafka_topic "iot/${kind}": not a valid Kafka topic name whatever it renders: its fixed text contains '/'`,
				"rules[1].kafka_topic", "250 bytes long"},
		},
		{
			name: "a header Tributary sets",
			cfg:  mapping.Config{Rules: []mapping.Rule{{Match: "a", KafkaTopic: "t", Headers: map[string]string{"mqtt.topic": "forged", "site": "x"}}}},
			want: []string{`rules[0].headers["mqtt.topic"]: Tributary sets this header itself`},
		},
		{
			name: "an MQTT topic filter instead of a regex",
			cfg:  mapping.Config{Rules: []mapping.Rule{{Match: "sensors/+/temperature", KafkaTopic: "t"}}},
			want: []string{`rules[0].match "sensors/+/temperature": looks like an MQTT topic filter`},
		},
		{
			name: "required fields",
			cfg:  mapping.Config{Rules: []mapping.Rule{{}}},
			want: []string{`rules[0].match "": required`, `rules[0].kafka_topic "": required`},
		},
		{
			name: "unknown named group",
			cfg:  mapping.Config{Rules: []mapping.Rule{{Match: "(?P<kind>.*)", KafkaTopic: "iot.${knd}"}}},
			want: []string{`rules[0].kafka_topic "iot.${knd}"`, "unknown variable ${knd}", "named groups: kind"},
		},
		{
			name: "unknown name in key and header",
			cfg: mapping.Config{Rules: []mapping.Rule{{
				Match: "x", KafkaTopic: "t", Key: "${id}",
				Headers: map[string]string{"h": "${site}"},
			}}},
			want: []string{`rules[0].key "${id}"`, "${id}", `rules[0].headers["h"] "${site}"`, "${site}"},
		},
		{
			name: "numbered group out of range",
			cfg:  mapping.Config{Rules: []mapping.Rule{{Match: "(a)", KafkaTopic: "t${2}"}}},
			want: []string{`rules[0].kafka_topic "t${2}"`, "unknown group ${2}", "has 1 groups"},
		},
		{
			name: "empty variable",
			cfg:  mapping.Config{Rules: []mapping.Rule{{Match: "a", KafkaTopic: "t${}"}}},
			want: []string{`empty "${}"`},
		},
		{
			name: "trailing dollar",
			cfg:  mapping.Config{Rules: []mapping.Rule{{Match: "a", KafkaTopic: "t", Key: "k$"}}},
			want: []string{`rules[0].key "k$"`, "ends the template"},
		},
		{
			name: "builtin shadowed by a group",
			cfg:  mapping.Config{Rules: []mapping.Rule{{Match: "(?P<topic>.*)", KafkaTopic: "t", Key: "${topic}"}}},
			want: []string{`rules[0].key "${topic}"`, "ambiguous"},
		},
		{
			name: "empty header name",
			cfg:  mapping.Config{Rules: []mapping.Rule{{Match: "a", KafkaTopic: "t", Headers: map[string]string{"": "v"}}}},
			want: []string{"rules[0].headers", "header name must not be empty"},
		},
		{
			name: "static topic invalid",
			cfg:  mapping.Config{Rules: []mapping.Rule{{Match: "a", KafkaTopic: ".."}}},
			want: []string{`rules[0].kafka_topic ".."`, "reserved"},
		},
		{
			// README: a topic starting with "__" (Kafka's internal topics)
			// is refused; a fixed one can be refused at start-up.
			name: "static topic internal",
			cfg:  mapping.Config{Rules: []mapping.Rule{{Match: "a", KafkaTopic: "__consumer_offsets"}}},
			want: []string{`rules[0].kafka_topic "__consumer_offsets": not a valid Kafka topic name: starts with "__"`},
		},
		{
			name: "topic template whose fixed text starts with __",
			cfg:  mapping.Config{Rules: []mapping.Rule{{Match: "(?P<kind>.*)", KafkaTopic: "__${kind}"}}},
			want: []string{`rules[0].kafka_topic "__${kind}": not a valid Kafka topic name whatever it renders: its fixed text starts with "__"`},
		},
		{
			name:  "internal default topic",
			cfg:   mapping.Config{Unmatched: mapping.PolicyDefaultTopic, DefaultTopic: "__consumer_offsets"},
			want:  []string{`default_topic "__consumer_offsets"`, `starts with "__"`},
			field: "default_topic",
		},
		{
			name:  "unknown policy",
			cfg:   mapping.Config{Unmatched: "discard"},
			want:  []string{`unmatched "discard"`, "unknown policy"},
			field: "unmatched",
		},
		{
			name:  "invalid default topic",
			cfg:   mapping.Config{Unmatched: mapping.PolicyDefaultTopic, DefaultTopic: "a b"},
			want:  []string{`default_topic "a b"`, "contains ' '"},
			field: "default_topic",
		},
		{
			name:  "policy and rule errors together",
			cfg:   mapping.Config{Unmatched: "nope", Rules: []mapping.Rule{{Match: "(", KafkaTopic: "t"}}},
			want:  []string{`unmatched "nope"`, `rules[0].match "("`},
			field: "unmatched",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := mapping.New(tt.cfg)
			if m != nil {
				t.Errorf("New returned a Mapper with error %v", err)
			}
			wantErrContains(t, err, tt.want...)
			got := ""
			if fe, ok := errors.AsType[*mapping.FieldError](err); ok {
				got = fe.Field
			}
			if got != tt.field {
				t.Errorf("FieldError for %q, want one for %q", got, tt.field)
			}
		})
	}
}

func TestNewAccepts(t *testing.T) {
	tests := []struct {
		name string
		rule mapping.Rule
	}{
		{"unterminated quote", mapping.Rule{Match: `a\Qb)`, KafkaTopic: "t"}},
		{"flags", mapping.Rule{Match: `(?i)ABC`, KafkaTopic: "t"}},
		{"perl group syntax", mapping.Rule{Match: `(?<kind>\w+)`, KafkaTopic: "t.${kind}"}},
		{"duplicate group names", mapping.Rule{Match: `(?P<k>a)|(?P<k>b)`, KafkaTopic: "t.${k}"}},
		{"literal dollar in header", mapping.Rule{Match: `a`, KafkaTopic: "t", Headers: map[string]string{"price": "$$5"}}},
		{"source variable", mapping.Rule{Match: `a`, KafkaTopic: "t", Key: "${source}/${topic}"}},
		// Only a fixed "__" at the start is Kafka's; a rendering that
		// makes one is refused when it does.
		{"one underscore before a variable", mapping.Rule{Match: `(?P<k>.*)`, KafkaTopic: "_${k}"}},
		{"two underscores after a variable", mapping.Rule{Match: `(?P<k>.*)`, KafkaTopic: "${k}__x"}},
		{"two underscores inside a fixed topic", mapping.Rule{Match: `a`, KafkaTopic: "a__b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			newMapper(t, mapping.Config{Rules: []mapping.Rule{tt.rule}})
		})
	}
}

func TestUnterminatedQuoteMatchesLiterally(t *testing.T) {
	m := newMapper(t, mapping.Config{Rules: []mapping.Rule{{Match: `a\Qb)$`, KafkaTopic: "t"}}})
	for topic, want := range map[string]mapping.Action{"ab)$": mapping.ActionProduce, "ab": mapping.ActionNone, "ab)$x": mapping.ActionNone} {
		res, err := m.Map("", topic)
		if err != nil || res.Action != want {
			t.Errorf("Map(%q) = %v, %v; want %v", topic, res.Action, err, want)
		}
	}
}

func TestStaticTopics(t *testing.T) {
	tests := []struct {
		name string
		cfg  mapping.Config
		want []string
	}{
		{"no rules", mapping.Config{}, []string{"mqtt"}},
		{"confluent example", mapping.Config{Rules: mustParseList(t, confluentExample)}, []string{"temperature", "brightness"}},
		{
			"variables skipped, duplicates once, default last",
			mapping.Config{
				Rules: []mapping.Rule{
					{Match: "(?P<k>.*)", KafkaTopic: "iot.${k}"},
					{Match: "a", KafkaTopic: "fixed"},
					{Match: "b", KafkaTopic: "fixed"},
					{Match: "c", KafkaTopic: "other"},
				},
				Unmatched:    mapping.PolicyDefaultTopic,
				DefaultTopic: "rest",
			},
			[]string{"fixed", "other", "rest"},
		},
		{"policy drop has no default", mapping.Config{Rules: []mapping.Rule{{Match: "a", KafkaTopic: "a"}}, Unmatched: mapping.PolicyDrop}, []string{"a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMapper(t, tt.cfg)
			got := m.StaticTopics()
			if !slices.Equal(got, tt.want) {
				t.Errorf("StaticTopics() = %q, want %q", got, tt.want)
			}
			if len(got) > 0 {
				got[0] = "changed"
				if m.StaticTopics()[0] == "changed" {
					t.Error("StaticTopics returns the Mapper's own slice")
				}
			}
		})
	}
}

func TestValidTopicName(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want bool
	}{
		{"simple", "temperature", true},
		{"all allowed characters", "a-Z_0.9", true},
		{"max length", strings.Repeat("x", 249), true},
		{"too long", strings.Repeat("x", 250), false},
		{"empty", "", false},
		{"dot", ".", false},
		{"dot dot", "..", false},
		{"three dots", "...", true},
		{"slash", "a/b", false},
		{"space", "a b", false},
		{"non-ascii", "températures", false},
		{"dollar", "$SYS", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mapping.ValidTopicName(tt.in); got != tt.want {
				t.Errorf("ValidTopicName(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestMapConcurrent(t *testing.T) {
	m := newMapper(t, mapping.Config{Rules: []mapping.Rule{{Match: `(?P<a>\w+)/(?P<b>\w+)`, KafkaTopic: "t.${a}", Key: "${b}"}}})
	done := make(chan struct{})
	for range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for range 1000 {
				res, err := m.Map("", "x/y")
				if err != nil || res.Topic != "t.x" || string(res.Key) != "y" {
					t.Errorf("Map = %+v, %v", res, err)
					return
				}
			}
		}()
	}
	for range 4 {
		<-done
	}
}

func BenchmarkMap(b *testing.B) {
	confluent := mustParseList(b, confluentExample)
	many := make([]mapping.Rule, 0, 20)
	for _, k := range []string{"a", "b", "c", "d", "e", "f", "g", "h", "i"} {
		many = append(many, mapping.Rule{Match: "house/[^/]+/" + k, KafkaTopic: k})
	}
	many = append(many, confluent...)
	benches := []struct {
		name  string
		cfg   mapping.Config
		topic string
	}{
		{"confluent example", mapping.Config{Rules: confluent}, "house/kitchen/brightness"},
		{"tenth rule", mapping.Config{Rules: many}, "house/kitchen/temperature"},
		{"named groups", mapping.Config{Rules: []mapping.Rule{{
			Match:      `sensors/(?P<site>[a-z]+)/(?P<kind>[a-z]+)/(?P<id>[^/]+)`,
			KafkaTopic: "iot.${kind}", Key: "${site}:${id}",
			Headers: map[string]string{"site": "${site}"},
		}}}, "sensors/lyon/temp/42"},
		{"no rules", mapping.Config{}, "house/kitchen/temperature"},
		// A literal then .*, as in "kafka:prefix/.*" lists: no regexp runs.
		{"prefix rule", mapping.Config{Rules: mustParseList(b, "telemetry:devices/.*")}, "devices/kitchen/temperature"},
	}
	for _, bb := range benches {
		m := newMapper(b, bb.cfg)
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := m.Map("", bb.topic); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	// Baselines in the same run, to read Map's cost as a ratio: one anchored
	// regexp match plus the key copy every produced record needs anyway.
	b.Run("baseline regexp match and key copy", func(b *testing.B) {
		b.ReportAllocs()
		re := regexp.MustCompile(`^(?:.*brightness)$`)
		topic := "house/kitchen/brightness"
		var sink []byte
		for b.Loop() {
			if re.MatchString(topic) {
				sink = []byte(topic)
			}
		}
		_ = sink
	})
}

// TestLiteralShortcut covers the literal prefix and suffix check Map runs
// before a rule's regex: it must never reject a topic the regex matches.
func TestLiteralShortcut(t *testing.T) {
	tests := []struct {
		name, match, topic string
		want               bool
	}{
		{"suffix", ".*temperature", "a/temperature", true},
		{"suffix mismatch", ".*temperature", "a/brightness", false},
		{"prefix in group", "(?P<h>house)/.*", "house/x", true},
		{"prefix mismatch", "house/.*", "garden/x", false},
		{"fold case", "(?i)house/.*", "HOUSE/x", true},
		{"fold case suffix", ".*(?i:Temp)", "a/tEMP", true},
		{"replacement character", ".*\uFFFD", "a\xff", true},
		{"alternation", "a/x|a/y", "a/y", true},
		{"whole literal", "a/b", "a/b", true},
		{"overlapping affixes", "ab.*ba", "aba", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMapper(t, mapping.Config{Rules: []mapping.Rule{{Match: tt.match, KafkaTopic: "t"}}})
			res, err := m.Map("", tt.topic)
			if err != nil {
				t.Fatal(err)
			}
			if got := res.Rule == 0; got != tt.want {
				t.Errorf("rule %q matches %q = %v, want %v", tt.match, tt.topic, got, tt.want)
			}
		})
	}
}

// A name given to several groups (in alternatives) renders the text of
// the one that took part in the match, in the topic, key and headers.
func TestDuplicateGroupNameRendersTheGroupThatMatched(t *testing.T) {
	m := newMapper(t, mapping.Config{Rules: []mapping.Rule{{
		Match: `^(?:a/(?P<k>[^/]+)|b/(?P<k>[^/]+)/x)$`, KafkaTopic: "t.${k}", Key: "${k}", Headers: map[string]string{"k": "${k}"},
	}}})
	for topic, want := range map[string]string{"a/one": "one", "b/two/x": "two"} {
		res, err := m.Map("", topic)
		if err != nil {
			t.Fatalf("%s: %v", topic, err)
		}
		if res.Topic != "t."+want || string(res.Key) != want || len(res.Headers) != 1 || string(res.Headers[0].Value) != want {
			t.Errorf("%s: topic %q key %q headers %v, want t.%s, %s and k=%s", topic, res.Topic, res.Key, res.Headers, want, want, want)
		}
	}
}
