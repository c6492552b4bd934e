package mapping

import (
	"errors"
	"fmt"
	"strings"
)

// listSpace is the white space allowed around items of a regex list.
const listSpace = " \t\r\n"

// ParseRegexList parses Confluent MQTT Proxy's list syntax
// "kafkaTopic:regex[,kafkaTopic:regex...]", for example
// "temperature:.*temperature, brightness:.*brightness". The Kafka topic is
// everything before the first ':' of an item and must be a valid topic name;
// the regex is the rest. White space around items is ignored, so a regex
// cannot end in a space (write [ ] instead).
//
// Every comma outside brackets separates items, so a typo such as a missing
// ':' is reported rather than absorbed into the previous regex. Commas inside
// (...), [...] or {...} and escaped commas (\,) belong to the regex, so
// a{1,3} and (x,y) work, unless what follows the comma is a Kafka topic name
// and ':' (so an unclosed bracket does not swallow the next items; write
// such a comma as \, inside brackets). A comma at either end is a separator next to an
// empty item, which is an error.
//
// The rules have no key template, so the key is the MQTT topic. An empty or
// all-space string gives no rules. All malformed items are reported at once,
// each with its 1-based position and its byte offset in s.
func ParseRegexList(s string) ([]Rule, error) {
	if strings.Trim(s, listSpace) == "" {
		return nil, nil
	}
	var (
		rules []Rule
		errs  []error
	)
	for n, start := 1, 0; ; n++ {
		end := nextSeparator(s, start)
		item := strings.TrimLeft(s[start:end], listSpace)
		offset := start + (end - start - len(item))
		item = strings.TrimRight(item, listSpace)
		r, err := parseListItem(item)
		if err != nil {
			errs = append(errs, fmt.Errorf("item %d at byte %d %q: %w", n, offset, item, err))
		} else {
			rules = append(rules, r)
		}
		if end == len(s) {
			break
		}
		start = end + 1
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return rules, nil
}

// nextSeparator returns the index of the first comma at or after start that
// is outside any group, character class or repetition, and not escaped; or
// len(s).
func nextSeparator(s string, start int) int {
	depth := 0       // open ( and { not yet closed
	inClass := false // inside [...]
	for i := start; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			i++ // the escaped character is never structure
		case c == ',' && inClass && startsItem(s[i+1:]):
			return i
		case inClass:
			if c == '[' && strings.HasPrefix(s[i+1:], ":") {
				// A named class such as [:alpha:] ends at ":]", not "]".
				if j := strings.Index(s[i+2:], ":]"); j >= 0 {
					i += 2 + j + 1
				}
			} else if c == ']' {
				inClass = false
			}
		case c == '[':
			inClass = true
			// A ']' right after '[' or '[^' is a literal member.
			if i+1 < len(s) && s[i+1] == '^' {
				i++
			}
			if i+1 < len(s) && s[i+1] == ']' {
				i++
			}
		case c == '(' || c == '{':
			depth++
		case (c == ')' || c == '}') && depth > 0:
			depth--
		case c == ',' && depth == 0:
			return i
		case c == ',' && startsItem(s[i+1:]):
			// An unbalanced '(' or '{' must not swallow the items after
			// it: a comma followed by "topic:" starts one anyway.
			return i
		}
	}
	return len(s)
}

// startsItem reports whether rest, the text after a comma, begins a new item:
// optional white space, then Kafka topic characters and a ':'.
func startsItem(rest string) bool {
	rest = strings.TrimLeft(rest, listSpace)
	j := 0
	for j < len(rest) && isTopicChar(rest[j]) {
		j++
	}
	return j > 0 && j < len(rest) && rest[j] == ':'
}

func parseListItem(item string) (Rule, error) {
	if item == "" {
		return Rule{}, errors.New(`empty item (want "kafkaTopic:regex")`)
	}
	topic, expr, ok := strings.Cut(item, ":")
	switch {
	case !ok:
		return Rule{}, errors.New(`missing ':' (want "kafkaTopic:regex")`)
	case topic == "":
		return Rule{}, errors.New(`empty Kafka topic before ':' (want "kafkaTopic:regex")`)
	case expr == "":
		return Rule{}, errors.New(`empty regex after ':' (want "kafkaTopic:regex")`)
	case strings.ContainsAny(expr, "\r\n"):
		return Rule{}, fmt.Errorf("regex %q holds a line break: items are separated by commas", expr)
	case strings.TrimLeft(expr, listSpace) != expr:
		return Rule{}, fmt.Errorf("regex %q starts with white space, which a topic would have to start with too (remove it, or write [ ] for a topic that does)", expr)
	}
	if why := ProduceTopicProblem(topic); why != "" {
		return Rule{}, fmt.Errorf("Kafka topic %q: %w: %s", topic, ErrInvalidTopicName, why)
	}
	// Compile as New will, so a list that parses always builds a Mapper.
	if _, err := compileMatch(expr); err != nil {
		return Rule{}, fmt.Errorf("regex %q: %w", expr, err)
	}
	return Rule{Match: expr, KafkaTopic: topic}, nil
}
