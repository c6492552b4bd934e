package auth

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// problem is a rule's problem: the key it is about and what is wrong.
type problem struct{ key, msg string }

// mqttRule grants publish and/or subscribe on an MQTT topic filter.
type mqttRule struct {
	levels     []level
	pub, sub   bool
	usesUser   bool
	usesClient bool
}

// level is one level of a rule's filter: a wildcard, or a sequence of
// literal text and %u/%c placeholders (none at all for an empty level).
type level struct {
	wild  byte // '+', '#', or 0
	parts []part
}

type part struct {
	kind byte // 0 literal, 'u' username, 'c' client id
	lit  string
}

const maxTopicBytes = 65535 // an MQTT string's limit

func compileMQTTRule(topic, access string) (*mqttRule, []problem) {
	r := &mqttRule{}
	var probs []problem
	switch access {
	case "publish":
		r.pub = true
	case "subscribe":
		r.sub = true
	case "all":
		r.pub, r.sub = true, true
	case "":
		probs = append(probs, problem{"access", "access is required: publish, subscribe or all"})
	default:
		probs = append(probs, problem{"access", fmt.Sprintf("%q is not publish, subscribe or all", access)})
	}
	if msg := r.compile(topic); msg != "" {
		probs = append(probs, problem{"topic", msg})
	}
	return r, probs
}

func (r *mqttRule) compile(topic string) string {
	switch {
	case topic == "":
		return "a topic filter is required"
	case len(topic) > maxTopicBytes:
		return "the topic filter is longer than 65535 bytes"
	case strings.ContainsRune(topic, 0):
		return "the topic filter contains a NUL character"
	}
	segs := strings.Split(topic, "/")
	if len(segs) > 1 && strings.EqualFold(segs[0], "$share") {
		return fmt.Sprintf("%q names a share group: write the filter the group subscribes to; $share/<group>/<filter> is checked against <filter>", topic)
	}
	for i, s := range segs {
		switch {
		case s == "#" && i == len(segs)-1:
			r.levels = append(r.levels, level{wild: '#'})
			continue
		case s == "+":
			r.levels = append(r.levels, level{wild: '+'})
			continue
		case strings.Contains(s, "#"):
			return fmt.Sprintf("%q is not a valid MQTT topic filter: '#' must be a whole level and the last one", topic)
		case strings.Contains(s, "+"):
			return fmt.Sprintf("%q is not a valid MQTT topic filter: '+' must be a whole level", topic)
		}
		var lv level
		for s != "" {
			i := strings.Index(s, "%")
			if i < 0 || i+1 == len(s) {
				lv.parts = append(lv.parts, part{lit: s})
				break
			}
			switch s[i+1] {
			case 'u', 'c':
				if i > 0 {
					lv.parts = append(lv.parts, part{lit: s[:i]})
				}
				lv.parts = append(lv.parts, part{kind: s[i+1]})
				if s[i+1] == 'u' {
					r.usesUser = true
				} else {
					r.usesClient = true
				}
				s = s[i+2:]
			default: // a literal '%'
				lv.parts = append(lv.parts, part{lit: s[:i+1]})
				s = s[i+1:]
			}
		}
		if lv.has('u') && lv.has('c') {
			return fmt.Sprintf("%q: a level holds %%u and %%c together, so where one ends is not known (user \"a\" with client id \"b-c\" and user \"a-b\" with client id \"c\" would both get \"a-b-c\"); put them in levels of their own", topic)
		}
		r.levels = append(r.levels, lv)
	}
	return ""
}

// has reports whether the level holds the placeholder kind ('u' or 'c').
func (lv *level) has(kind byte) bool {
	for _, p := range lv.parts {
		if p.kind == kind {
			return true
		}
	}
	return false
}

// substitutable reports whether a username or client id may stand for %u
// or %c: an empty one, or one with a wildcard or level separator (or a
// Kafka glob star), would widen or shift what the rule grants, and one
// starting with '$' would reach the broker's own $-topics ($SYS) through
// a rule such as %c/#.
func substitutable(s string) bool {
	return s != "" && s[0] != '$' && !strings.ContainsAny(s, "+#/*")
}

// covers reports whether every topic that filter matches is matched by the
// rule's filter. A topic name is a filter that matches only itself.
// Wildcards in the first level of a rule do not match topics starting with
// '$', as in MQTT.
func (r *mqttRule) covers(filter, username, clientID string) bool {
	if r.usesUser && !substitutable(username) || r.usesClient && !substitutable(clientID) {
		return false
	}
	rest, more := filter, true
	for i, lv := range r.levels {
		if lv.wild == '#' {
			return i > 0 || !strings.HasPrefix(filter, "$")
		}
		if !more {
			return false
		}
		var seg string
		seg, rest, more = strings.Cut(rest, "/")
		switch {
		case seg == "#":
			// Only +/# covers #: both match every topic not starting
			// with '$'. Deeper, a/+/# does not cover a/#, which also
			// matches a.
			return i == 0 && lv.wild == '+' && len(r.levels) == 2 && r.levels[1].wild == '#'
		case lv.wild == '+':
			if i == 0 && strings.HasPrefix(seg, "$") {
				return false
			}
		case !lv.match(seg, username, clientID):
			return false
		}
	}
	return !more
}

func (lv *level) match(seg, username, clientID string) bool {
	for _, p := range lv.parts {
		s := p.lit
		switch p.kind {
		case 'u':
			s = username
		case 'c':
			s = clientID
		}
		if !strings.HasPrefix(seg, s) {
			return false
		}
		seg = seg[len(s):]
	}
	return seg == ""
}

// unshare returns the filter of a shared subscription ($share/group/filter),
// or filter itself.
func unshare(filter string) string {
	if len(filter) > 7 && strings.EqualFold(filter[:7], "$share/") {
		if _, f, ok := strings.Cut(filter[7:], "/"); ok {
			return f
		}
	}
	return filter
}

// kafkaRule grants produce and/or consume on Kafka topics matching a glob.
type kafkaRule struct {
	pattern          string
	usesUser         bool
	produce, consume bool
}

const maxKafkaTopic = 249

func compileKafkaRule(topic, access string) (*kafkaRule, []problem) {
	r := &kafkaRule{pattern: topic, usesUser: strings.Contains(topic, "%u")}
	var probs []problem
	switch access {
	case "produce":
		r.produce = true
	case "consume":
		r.consume = true
	case "all":
		r.produce, r.consume = true, true
	case "":
		probs = append(probs, problem{"access", "access is required: produce, consume or all"})
	default:
		probs = append(probs, problem{"access", fmt.Sprintf("%q is not produce, consume or all", access)})
	}
	plain := strings.ReplaceAll(topic, "%u", "")
	switch {
	case topic == "":
		probs = append(probs, problem{"topic", "a Kafka topic name or pattern is required"})
	case len(topic) > maxKafkaTopic:
		probs = append(probs, problem{"topic", "longer than Kafka's 249-character topic name limit"})
	case strings.ContainsFunc(plain, notKafkaPattern):
		probs = append(probs, problem{"topic", fmt.Sprintf("%q: a Kafka topic has only letters, digits, '.', '_' and '-'; '*' matches any run of them and %%u is the username", topic)})
	case r.usesUser && strings.Contains(topic, "*") &&
		!strings.Contains(topic[:strings.IndexByte(topic, '*')], "%u") && !strings.Contains(topic[strings.LastIndexByte(topic, '*')+1:], "%u"):
		probs = append(probs, problem{"topic", fmt.Sprintf("%q: with %%u only between two '*', every user's topics are every other user's too (a topic can hold both names); put %%u before the first '*' or after the last", topic)})
	}
	return r, probs
}

func notKafkaPattern(c rune) bool {
	return !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.ContainsRune("._-*", c))
}

func (r *kafkaRule) matches(topic, username string) bool {
	p := r.pattern
	if r.usesUser {
		if !substitutable(username) {
			return false
		}
		p = strings.ReplaceAll(p, "%u", username)
	}
	return glob(p, topic)
}

// glob matches s against pattern, where '*' matches any run of bytes.
func glob(pattern, s string) bool {
	px, sx := 0, 0
	star, next := -1, 0
	for sx < len(s) {
		switch {
		case px < len(pattern) && pattern[px] == '*':
			star, next = px, sx
			px++
		case px < len(pattern) && pattern[px] == s[sx]:
			px++
			sx++
		case star >= 0:
			next++
			px, sx = star+1, next
		default:
			return false
		}
	}
	for px < len(pattern) && pattern[px] == '*' {
		px++
	}
	return px == len(pattern)
}

// kafkaOverlap looks for two of names whose renderings of a Kafka ACL
// pattern holding %u match a common topic: with "tenant-%u-*", users
// "acme" and "acme-labs" both match "tenant-acme-labs-x", so acme would
// reach acme-labs' topics. It returns the first such pair, or ok false.
// Pairs are only compared when the literal text before the pattern's
// first '*' (or after its last) can overlap, which for the usual
// patterns leaves few. A pattern with %u only between two '*' overlaps
// for any two users, and is reported as such by the caller.
func kafkaOverlap(pattern string, names []string) (a, b string, ok bool) {
	first := strings.IndexByte(pattern, '*')
	if first < 0 {
		return "", "", false // a plain name: one topic per user, a different one for each
	}
	type rendered struct{ name, pattern, key string }
	rs := make([]rendered, len(names))
	byPrefix := strings.Contains(pattern[:first], "%u")
	for i, n := range names {
		p := strings.ReplaceAll(pattern, "%u", n)
		key := p[:strings.IndexByte(p, '*')]
		if !byPrefix {
			key = reverse(p[strings.LastIndexByte(p, '*')+1:])
		}
		rs[i] = rendered{n, p, key}
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].key < rs[j].key })
	for i, r := range rs {
		// Later keys that start with r's key are contiguous in order;
		// an earlier key that r's starts with is found from its side.
		for _, o := range rs[i+1:] {
			if !strings.HasPrefix(o.key, r.key) {
				break
			}
			if globsMeet(r.pattern, o.pattern) {
				return r.name, o.name, true
			}
		}
	}
	return "", "", false
}

func reverse(s string) string {
	b := []byte(s)
	slices.Reverse(b)
	return string(b)
}

// globsMeet reports whether some string matches both patterns, where '*'
// matches any run of bytes.
func globsMeet(p, q string) bool {
	seen := make([]bool, (len(p)+1)*(len(q)+1))
	var meet func(i, j int) bool
	meet = func(i, j int) bool {
		k := i*(len(q)+1) + j
		if seen[k] {
			return false // already explored from here without success
		}
		seen[k] = true
		switch {
		case i == len(p) && j == len(q):
			return true
		case i < len(p) && p[i] == '*':
			return meet(i+1, j) || j < len(q) && meet(i, j+1)
		case j < len(q) && q[j] == '*':
			return meet(i, j+1) || i < len(p) && meet(i+1, j)
		case i < len(p) && j < len(q) && p[i] == q[j]:
			return meet(i+1, j+1)
		}
		return false
	}
	return meet(0, 0)
}
