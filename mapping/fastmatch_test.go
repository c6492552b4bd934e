package mapping

import (
	"regexp"
	"testing"
)

// The fast paths decide exactly what the anchored regexp decides.
func TestFastMatchAgreesWithRegexp(t *testing.T) {
	patterns := []string{`bench/.*`, `.*`, `(?s).*`, `(?s)a/.*`, `house/kitchen/temperature`, `a\.b/.*`, `(?i)a/.*`,
		`a/.+`, `a/(.*)`, `a/.*/b`, `é/.*`, "\ufffd/.*", `a|b`, ``}
	topics := []string{"", "bench/", "bench/x", "bench", "xbench/x", "bench/x\ny", "a/", "a/b", "A/b", "a.b/c", "axb/c",
		"house/kitchen/temperature", "house/kitchen/temperature/x", "é/x", "\xff/x", "a", "b", "\n"}
	recognised := 0
	for _, p := range patterns {
		kind, lit := fastMatcher(p)
		if kind == fastNone {
			continue
		}
		recognised++
		re := regexp.MustCompile(`^(?:` + p + `)$`)
		for _, topic := range topics {
			if got, want := fastMatch(kind, lit, topic), re.MatchString(topic); got != want {
				t.Errorf("pattern %q topic %q: fast path says %v, regexp %v", p, topic, got, want)
			}
		}
	}
	if recognised < 5 {
		t.Fatalf("only %d patterns took a fast path", recognised)
	}
	for _, p := range []string{`(?i)a/.*`, `a/.+`, `a/.*/b`, `a|b`, "\ufffd/.*"} {
		if kind, _ := fastMatcher(p); kind != fastNone {
			t.Errorf("pattern %q must not take a fast path", p)
		}
	}
}

func FuzzFastMatch(f *testing.F) {
	for _, s := range [][2]string{{"bench/.*", "bench/x"}, {"a", "a"}, {"(?s)x.*", "x\n"}, {".*", "\n"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, topic string) {
		kind, lit := fastMatcher(pattern)
		if kind == fastNone {
			return
		}
		re, err := regexp.Compile(`^(?:` + pattern + `)$`)
		if err != nil {
			return
		}
		if got, want := fastMatch(kind, lit, topic), re.MatchString(topic); got != want {
			t.Fatalf("pattern %q topic %q: fast path %v, regexp %v", pattern, topic, got, want)
		}
	})
}
