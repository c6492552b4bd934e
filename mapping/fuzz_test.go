package mapping_test

import (
	"errors"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/tributary-io/tributary/mapping"
)

func FuzzParseRegexList(f *testing.F) {
	for _, s := range []string{
		confluentExample,
		"temperature:.*temperature, brightness:.*brightness",
		"t:a{1,3},u:b",
		"t:x, ,u:y",
		"a:x, b/c:y",
		"bad:([",
		"a:x,",
		",a:x",
		" :.*",
		`q:a\Qb)`,
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		rules, err := mapping.ParseRegexList(s)
		if err != nil {
			if rules != nil {
				t.Fatalf("rules %+v returned with error %v", rules, err)
			}
			return
		}
		for i, r := range rules {
			if !mapping.ValidTopicName(r.KafkaTopic) {
				t.Fatalf("rules[%d].KafkaTopic %q is not a valid topic name", i, r.KafkaTopic)
			}
			if r.Match == "" || r.Key != "" || r.Source != "" || r.Headers != nil {
				t.Fatalf("rules[%d] = %+v: want a non-empty match and nothing else set", i, r)
			}
		}
		if _, err := mapping.New(mapping.Config{Rules: rules}); err != nil {
			t.Fatalf("parsed list %q does not build a Mapper: %v", s, err)
		}
		// Writing the rules back in canonical form must give the same rules.
		items := make([]string, len(rules))
		for i, r := range rules {
			items[i] = r.KafkaTopic + ":" + r.Match
		}
		canon := strings.Join(items, ",")
		again, err := mapping.ParseRegexList(canon)
		if err != nil {
			t.Fatalf("canonical form %q of %q: %v", canon, s, err)
		}
		if len(again) != len(rules) {
			t.Fatalf("canonical form %q of %q gives %d rules, want %d", canon, s, len(again), len(rules))
		}
		for i := range rules {
			if !equalRule(again[i], rules[i]) {
				t.Fatalf("canonical form %q of %q: rule %d is %+v, want %+v", canon, s, i, again[i], rules[i])
			}
		}
	})
}

func FuzzMap(f *testing.F) {
	f.Add(".*temperature", "temperature", "", "", "", "house/kitchen/temperature")
	f.Add(".*brightness", "brightness", "", "", "edge", "house/kitchen/brightness")
	f.Add(`sensors/(?P<site>[a-z]+)/(?P<kind>[a-z]+)/(?P<id>[^/]+)`, "iot.${kind}", "${site}:${id}", "${topic}", "", "sensors/lyon/temp/42")
	f.Add(`(\w+)/(\w+)`, "${2}.${1}", "${0}@${source}", "$$", "up", "a/b")
	f.Add("(?P<kind>.+)", "iot.${kind}", "", "", "", "a/b")
	f.Add(".*", "${topic}", "", "", "", "..")
	f.Add(".*", "${source}", "", "", "", "x")
	f.Add("kitchen", "k", "", "", "", "house/kitchen/temperature")
	f.Add("(?i)house/.*", "h", "", "", "", "HOUSE/x")
	f.Add(".*\uFFFD", "r", "", "", "", "a\xff")
	f.Add("ab.*ba", "ab", "", "", "", "aba")
	f.Fuzz(func(t *testing.T, match, kafkaTopic, key, header, source, topic string) {
		cfg := mapping.Config{
			Rules:     []mapping.Rule{{Match: match, KafkaTopic: kafkaTopic, Key: key, Headers: map[string]string{"h": header}}},
			Unmatched: mapping.PolicyDefaultTopic,
		}
		m, err := mapping.New(cfg)
		if err != nil {
			return
		}
		res, err := m.Map(source, topic)
		_ = m.Explain(source, topic)
		// Differential check against a plain anchored regexp, skipped for
		// the unterminated \Q that this simple wrapper cannot anchor.
		if ref, rerr := regexp.Compile(`^(?:` + match + `)$`); rerr == nil {
			if want, got := ref.MatchString(topic), res.Rule == 0; want != got {
				t.Fatalf("regex %q on topic %q: reference match %v, Map matched %v (%+v, %v)", match, topic, want, got, res, err)
			}
		}
		if err != nil {
			if !errors.Is(err, mapping.ErrInvalidTopicName) {
				t.Fatalf("Map error %v does not wrap ErrInvalidTopicName", err)
			}
			if res.Action != mapping.ActionReject || res.Rule != 0 {
				t.Fatalf("Map error %v with result %+v, want reject from rule 0", err, res)
			}
			return
		}
		if res.Action != mapping.ActionProduce {
			t.Fatalf("policy default_topic gave action %v", res.Action)
		}
		if !mapping.ValidTopicName(res.Topic) {
			t.Fatalf("produce to invalid topic %q", res.Topic)
		}
		switch res.Rule {
		case -1:
			if res.Topic != mapping.DefaultKafkaTopic || string(res.Key) != topic || res.Headers != nil {
				t.Fatalf("default topic result %+v", res)
			}
		case 0:
			if key == "" && string(res.Key) != topic {
				t.Fatalf("key %q, want the MQTT topic %q", res.Key, topic)
			}
			if len(res.Headers) != 1 || res.Headers[0].Key != "h" {
				t.Fatalf("headers %+v, want one named h", res.Headers)
			}
			// A template without "$" renders as itself.
			if !strings.Contains(header, "$") && res.Headers[0].Value != header {
				t.Fatalf("header %q rendered as %q", header, res.Headers[0].Value)
			}
		default:
			t.Fatalf("result from rule %d of 1", res.Rule)
		}
		// Whole-topic matching: a regex without metacharacters matches
		// only its own text, never a topic that merely contains it.
		if utf8.ValidString(match) && isLiteral(match) && res.Rule == 0 && topic != match {
			t.Fatalf("literal regex %q matched topic %q", match, topic)
		}
	})
}

// isLiteral reports whether s has no regex metacharacters.
func isLiteral(s string) bool {
	return s != "" && !strings.ContainsAny(s, `\.+*?()|[]{}^$`)
}
