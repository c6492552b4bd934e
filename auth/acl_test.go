package auth

import (
	"strings"
	"testing"
)

func mustMQTTRule(t testing.TB, topic string) *mqttRule {
	t.Helper()
	r, probs := compileMQTTRule(topic, "all")
	if len(probs) > 0 {
		t.Fatalf("compiling %q: %v", topic, probs)
	}
	return r
}

func TestMQTTRuleCovers(t *testing.T) {
	tests := []struct {
		rule, filter string
		want         bool
	}{
		// Topic names.
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/b", "a/b/c", false},
		{"a/b", "a", false},
		{"a/+", "a/b", true},
		{"a/+", "a/b/c", false},
		{"a/+", "a", false},
		{"a/+", "a/", true}, // an empty level is a level
		{"a/#", "a", true},  // # matches the parent level too
		{"a/#", "a/b/c", true},
		{"a/#", "ab", false},
		{"#", "a/b", true},
		{"+/+", "a/b", true},
		{"+/+", "/b", true},
		{"/a", "/a", true},
		{"a//b", "a//b", true},
		{"a//b", "a/b", false},
		// $-topics are not matched by a leading wildcard.
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/x", true},
		{"$SYS/+", "$SYS/x", true},
		{"a/#", "a/$x", true},
		// Subscription filters: covered only if every match is allowed.
		{"a/#", "a/b/+", true},
		{"a/#", "a/#", true},
		{"a/#", "a/+/#", true},
		{"a/#", "#", false},
		{"a/+", "a/#", false},
		{"a/+", "a/+", true},
		{"a/+", "a/+/b", false},
		{"a/+", "+/b", false},
		{"a/b", "a/+", false},
		{"+/b", "+/b", true},
		{"#", "#", true},
		{"#", "+/#", true},
		{"#", "$SYS/#", false},
		{"+/#", "$SYS/#", false},
		{"+/#", "#", true},
		{"a/+/c", "a/+/c", true},
		{"a/+/c", "a/+/+", false},
		{"a/+/#", "a/#", false}, // a/# matches a
		{"a/+/#", "a/+/#", true},
		{"+/+/#", "+/#", false},
	}
	for _, tt := range tests {
		t.Run(tt.rule+" covers "+tt.filter, func(t *testing.T) {
			r := mustMQTTRule(t, tt.rule)
			if got := r.covers(tt.filter, "u", "c"); got != tt.want {
				t.Fatalf("covers = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestMQTTRuleSubstitution(t *testing.T) {
	tests := []struct {
		name, rule, filter, user, client string
		want                             bool
	}{
		{"username", "devices/%u/#", "devices/dev/temp", "dev", "c1", true},
		{"other username", "devices/%u/#", "devices/eve/temp", "dev", "c1", false},
		{"client id", "clients/%c", "clients/c1", "dev", "c1", true},
		{"both, each in a level", "x/%u/%c", "x/dev/c1", "dev", "c1", true},
		{"both, another user's levels", "x/%u/%c", "x/dev/c1", "de", "v/c1", false},
		{"prefix and suffix", "x/pre%usuf", "x/predevsuf", "dev", "c1", true},
		{"prefix and suffix, wrong", "x/pre%usuf", "x/predevsu", "dev", "c1", false},
		{"literal percent", "x/100%", "x/100%", "dev", "c1", true},
		{"other percent sequence", "x/%d", "x/%d", "dev", "c1", true},
		// A name holding a wildcard or separator must not widen access.
		{"username +", "devices/%u/#", "devices/+/temp", "+", "c1", false},
		{"username + as a name", "devices/%u", "devices/+", "+", "c1", false},
		{"username #", "devices/%u", "devices/#", "#", "c1", false},
		{"username with /", "devices/%u/x", "devices/a/b/x", "a/b", "c1", false},
		{"username with / into a #", "devices/%u/#", "devices/a/b", "a/b", "c1", false},
		{"client id #", "clients/%c", "clients/#", "dev", "#", false},
		{"client id with /", "clients/%c/x", "clients/a/b/x", "dev", "a/b", false},
		{"anonymous", "devices/%u/#", "devices//x", "", "c1", false},
		{"empty client id", "clients/%c/x", "clients//x", "dev", "", false},
		{"subscription + is not the user", "devices/%u/#", "devices/+/#", "dev", "c1", false},
		{"client id $SYS into $-topics", "%c/#", "$SYS/broker/version", "dev", "$SYS", false},
		{"username $SYS into $-topics", "%u/#", "$SYS/#", "$SYS", "c1", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := mustMQTTRule(t, tt.rule)
			if got := r.covers(tt.filter, tt.user, tt.client); got != tt.want {
				t.Fatalf("%q covers %q as user %q client %q = %v, want %v", tt.rule, tt.filter, tt.user, tt.client, got, tt.want)
			}
		})
	}
}

func TestMQTTRuleProblems(t *testing.T) {
	tests := []struct {
		topic, access, key, want string
	}{
		{"", "all", "topic", "required"},
		{"a/#/b", "all", "topic", "'#' must be a whole level and the last"},
		{"a/b#", "all", "topic", "'#' must be a whole level"},
		{"a/b+", "all", "topic", "'+' must be a whole level"},
		{"a/%u+", "all", "topic", "'+' must be a whole level"},
		{"x/%u-%c", "all", "topic", "a level holds %u and %c together"},
		{"x/%c%u/#", "all", "topic", "a level holds %u and %c together"},
		{"$share/g/a", "all", "topic", "share group"},
		{"a\x00b", "all", "topic", "NUL"},
		{"a", "", "access", "required"},
		{"a", "write", "access", `"write" is not publish, subscribe or all`},
	}
	for _, tt := range tests {
		t.Run(tt.topic+" "+tt.access, func(t *testing.T) {
			_, probs := compileMQTTRule(tt.topic, tt.access)
			if len(probs) != 1 || probs[0].key != tt.key || !strings.Contains(probs[0].msg, tt.want) {
				t.Fatalf("problems %v, want one about %s containing %q", probs, tt.key, tt.want)
			}
		})
	}
}

func TestUnshare(t *testing.T) {
	for in, want := range map[string]string{
		"$share/g/a/b": "a/b",
		"$SHARE/g/#":   "#",
		"$share/g":     "$share/g",
		"a/$share/g/b": "a/$share/g/b",
		"$shared/g/a":  "$shared/g/a",
	} {
		if got := unshare(in); got != want {
			t.Errorf("unshare(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestKafkaRule(t *testing.T) {
	tests := []struct {
		pattern, topic, user string
		want                 bool
	}{
		{"telemetry", "telemetry", "dev", true},
		{"telemetry", "telemetry2", "dev", false},
		{"telemetry-*", "telemetry-a", "dev", true},
		{"telemetry-*", "telemetry-", "dev", true},
		{"telemetry-*", "telemetry", "dev", false},
		{"*", "anything.at_all", "dev", true},
		{"*-raw", "a-raw", "dev", true},
		{"*-raw", "a-raw-b", "dev", false},
		{"a*b*c", "aXbYc", "dev", true},
		{"a*b*c", "abbc", "dev", true},
		{"a*b*c", "acb", "dev", false},
		{"a**", "a", "dev", true},
		{"user-%u", "user-dev", "dev", true},
		{"user-%u", "user-eve", "dev", false},
		{"user-%u-*", "user-dev-x", "dev", true},
		// A username with a star must not become a wildcard.
		{"user-%u", "user-anything", "*", false},
		{"user-%u", "user-", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.pattern+" "+tt.topic, func(t *testing.T) {
			r, probs := compileKafkaRule(tt.pattern, "all")
			if len(probs) > 0 {
				t.Fatal(probs)
			}
			if got := r.matches(tt.topic, tt.user); got != tt.want {
				t.Fatalf("matches = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestKafkaRuleProblems(t *testing.T) {
	for _, tt := range []struct{ topic, access, key string }{
		{"", "all", "topic"},
		{"telemetry/#", "all", "topic"},
		{"a b", "all", "topic"},
		{"télémetry", "all", "topic"},
		{"%c-x", "all", "topic"},
		{strings.Repeat("a", 250), "all", "topic"},
		{"a", "publish", "access"},
		{"a", "", "access"},
	} {
		_, probs := compileKafkaRule(tt.topic, tt.access)
		if len(probs) != 1 || probs[0].key != tt.key {
			t.Errorf("%q %q: problems %v, want one about %s", tt.topic, tt.access, probs, tt.key)
		}
	}
}

// refMatch is MQTT topic matching written the plain way, for the fuzz test.
func refMatch(filter, topic string) bool {
	f, n := strings.Split(filter, "/"), strings.Split(topic, "/")
	if strings.HasPrefix(topic, "$") && (f[0] == "+" || f[0] == "#") {
		return false
	}
	for i, lv := range f {
		if lv == "#" {
			return true
		}
		if i >= len(n) || lv != "+" && lv != n[i] {
			return false
		}
	}
	return len(f) == len(n)
}

// A rule without placeholders matches a topic name exactly when MQTT
// matching says so, and a subscription it covers never matches a topic
// the rule does not.
func FuzzMQTTRule(f *testing.F) {
	for _, s := range [][3]string{
		{"a/#", "a/b", "a/+"},
		{"+/b", "$x/b", "+/b"},
		{"#", "a", "#"},
		{"a/+/c", "a//c", "a/+/#"},
		{"devices/%u/#", "devices/dev/x", "devices/dev/+"},
		{"", "", ""},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, rule, topic, sub string) {
		r, probs := compileMQTTRule(rule, "all")
		if len(probs) > 0 {
			return
		}
		if strings.ContainsAny(topic, "+#") {
			return
		}
		got := r.covers(topic, "u", "c")
		if !r.usesUser && !r.usesClient {
			if want := refMatch(rule, topic); got != want {
				t.Fatalf("rule %q, topic %q: covers %v, MQTT match %v", rule, topic, got, want)
			}
		}
		if sub == "" || strings.Contains(sub, "\x00") {
			return
		}
		if _, probs := compileMQTTRule(sub, "all"); len(probs) > 0 || strings.Contains(sub, "%") {
			return
		}
		if r.covers(sub, "u", "c") && refMatch(sub, topic) && !got {
			t.Fatalf("rule %q covers subscription %q, which matches %q, which the rule does not", rule, sub, topic)
		}
	})
}

func TestGlobsMeet(t *testing.T) {
	tests := []struct {
		p, q string
		want bool
	}{
		{"tenant-acme-*", "tenant-acme-labs-*", true},
		{"tenant-al-*", "tenant-alice-*", false},
		{"*-b", "*-a-b", true},
		{"*-b", "*-a-c", false},
		{"a*", "*b", true},
		{"a*c", "b*", false},
		{"x", "x", true},
		{"x", "y", false},
		{"a*b*c", "*bb*", true},
		{"ab*", "a*c*d", true},
		{"abc", "a*d", false},
	}
	for _, tt := range tests {
		if got := globsMeet(tt.p, tt.q); got != tt.want {
			t.Errorf("globsMeet(%q, %q) = %v, want %v", tt.p, tt.q, got, tt.want)
		}
		if got := globsMeet(tt.q, tt.p); got != tt.want {
			t.Errorf("globsMeet(%q, %q) = %v, want %v", tt.q, tt.p, got, tt.want)
		}
	}
}

// Names that do not overlap under a rule load: "al" is not a prefix of
// "alice-", so tenant-al-* and tenant-alice-* share no topic.
func TestKafkaOverlapKeepsDistinctTenants(t *testing.T) {
	for _, pattern := range []string{"tenant-%u-*", "tenant-%u", "*.%u", "%u.*"} {
		if a, b, ok := kafkaOverlap(pattern, []string{"al", "alice", "bob", "carol"}); ok {
			t.Errorf("%q: %q and %q reported as overlapping", pattern, a, b)
		}
	}
	if a, b, ok := kafkaOverlap("%u*", []string{"bob", "al", "alice"}); !ok || a != "al" || b != "alice" {
		t.Errorf(`"%%u*": got %q, %q, %v, want "al", "alice", true`, a, b, ok)
	}
}
