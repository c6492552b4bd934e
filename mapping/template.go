package mapping

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"
)

type partKind uint8

const (
	partLiteral partKind = iota
	partTopic            // the whole MQTT topic (${topic}, ${0})
	partSource           // the upstream's name (${source})
	partGroup            // a regex group (${name}, ${N}, N >= 1)
)

type part struct {
	kind  partKind
	lit   string // partLiteral
	group int    // partGroup: submatch index
	// more are the submatch indexes of later groups of the same name
	// ((?P<k>a)|(?P<k>b)): the first of them that took part in the
	// match gives the text.
	more []int
}

// template is a kafka_topic, key or header value template compiled into parts
// once, so that rendering per message is a length sum and a copy.
type template struct {
	parts []part
	// static is set when there are no variables; value is then the
	// rendered text, returned without allocating.
	static bool
	value  string
	// groups is set when a part needs submatch positions.
	groups bool
}

// parseTemplate compiles src against re, whose groups ${name} and ${N} may
// refer to. With re nil (its regex did not compile) only the syntax is
// checked.
func parseTemplate(src string, re *regexp.Regexp) (template, error) {
	var t template
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			t.parts = append(t.parts, part{kind: partLiteral, lit: lit.String()})
			lit.Reset()
		}
	}
	for i := 0; i < len(src); {
		j := strings.IndexByte(src[i:], '$')
		if j < 0 {
			lit.WriteString(src[i:])
			break
		}
		lit.WriteString(src[i : i+j])
		i += j
		if i+1 == len(src) {
			return template{}, fmt.Errorf(`"$" at byte %d ends the template (write "$$" for a literal dollar)`, i)
		}
		switch src[i+1] {
		case '$':
			lit.WriteByte('$')
			i += 2
		case '{':
			end := strings.IndexByte(src[i+2:], '}')
			if end < 0 {
				return template{}, fmt.Errorf(`unterminated "${" at byte %d`, i)
			}
			p, err := resolveVar(src[i+2:i+2+end], re)
			if err != nil {
				return template{}, err
			}
			flush()
			t.parts = append(t.parts, p)
			t.groups = t.groups || p.kind == partGroup
			i += 2 + end + 1
		default:
			return template{}, fmt.Errorf(`"$" at byte %d must start "${name}" (write "$$" for a literal dollar)`, i)
		}
	}
	flush()

	switch {
	case len(t.parts) == 0:
		t.static = true
	case len(t.parts) == 1 && t.parts[0].kind == partLiteral:
		t.static = true
		t.value = t.parts[0].lit
	}
	return t, nil
}

func resolveVar(name string, re *regexp.Regexp) (part, error) {
	if name == "" {
		return part{}, errors.New(`empty "${}"`)
	}
	if isDigits(name) {
		n, err := strconv.Atoi(name)
		switch {
		case re == nil:
			return part{kind: partGroup, group: n}, nil
		case err != nil || n > re.NumSubexp():
			return part{}, fmt.Errorf("unknown group ${%s}: the regex has %d groups", name, re.NumSubexp())
		case n == 0:
			return part{kind: partTopic}, nil
		}
		return part{kind: partGroup, group: n}, nil
	}
	idx := -1
	if re != nil {
		idx = re.SubexpIndex(name)
	}
	switch name {
	case "topic", "source":
		if idx >= 0 {
			return part{}, fmt.Errorf("ambiguous ${%s}: it is built in, but the regex also defines a group named %q; rename the group", name, name)
		}
		if name == "topic" {
			return part{kind: partTopic}, nil
		}
		return part{kind: partSource}, nil
	}
	if re == nil {
		return part{kind: partGroup}, nil
	}
	if idx < 0 {
		return part{}, fmt.Errorf("unknown variable ${%s}: the regex has %s (built in: topic, source, 0..%d)",
			name, groupNames(re), re.NumSubexp())
	}
	p := part{kind: partGroup, group: idx}
	for i, n := range re.SubexpNames() {
		if i > idx && n == name {
			p.more = append(p.more, i)
		}
	}
	return p, nil
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// groupText returns the text of group n in topic, "" if it did not
// participate in the match.
func groupText(topic string, loc []int, n int) string {
	if 2*n+1 >= len(loc) || loc[2*n] < 0 {
		return ""
	}
	return topic[loc[2*n]:loc[2*n+1]]
}

func (p *part) text(source, topic string, loc []int) string {
	switch p.kind {
	case partTopic:
		return topic
	case partSource:
		return source
	case partGroup:
		if 2*p.group < len(loc) && loc[2*p.group] < 0 {
			for _, g := range p.more {
				if 2*g < len(loc) && loc[2*g] >= 0 {
					return groupText(topic, loc, g)
				}
			}
		}
		return groupText(topic, loc, p.group)
	}
	return p.lit
}

func (t *template) size(source, topic string, loc []int) int {
	n := 0
	for i := range t.parts {
		n += len(t.parts[i].text(source, topic, loc))
	}
	return n
}

// render renders t with one allocation, none when t is static.
func (t *template) render(source, topic string, loc []int) string {
	if t.static {
		return t.value
	}
	if len(t.parts) == 1 {
		// A bare variable is a substring of its input.
		return t.parts[0].text(source, topic, loc)
	}
	var b strings.Builder
	b.Grow(t.size(source, topic, loc))
	for i := range t.parts {
		b.WriteString(t.parts[i].text(source, topic, loc))
	}
	return b.String()
}

// renderBytes renders t into a new slice the caller owns.
func (t *template) renderBytes(source, topic string, loc []int) []byte {
	b := make([]byte, 0, t.size(source, topic, loc))
	for i := range t.parts {
		b = append(b, t.parts[i].text(source, topic, loc)...)
	}
	return b
}

// literalTopicProblem says why t's fixed text keeps every rendering of t
// from being a Kafka topic name to produce to (a character Kafka refuses,
// more bytes than a name may have, or the "__" of Kafka's internal topics
// at the start), or returns "".
func (t *template) literalTopicProblem() string {
	if len(t.parts) > 0 && t.parts[0].kind == partLiteral && strings.HasPrefix(t.parts[0].lit, internalTopicPrefix) {
		return internalTopicProblem
	}
	n := 0
	for _, p := range t.parts {
		if p.kind != partLiteral {
			continue
		}
		n += len(p.lit)
		for i := 0; i < len(p.lit); i++ {
			if !isTopicChar(p.lit[i]) {
				r, _ := utf8.DecodeRuneInString(p.lit[i:])
				return fmt.Sprintf("contains %q (allowed: a-z A-Z 0-9 . _ -)", r)
			}
		}
	}
	if n > maxTopicLen {
		return fmt.Sprintf("is %d bytes long, Kafka allows at most %d", n, maxTopicLen)
	}
	return ""
}
