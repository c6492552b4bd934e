package mapping

import (
	"fmt"
	"regexp"
	"strings"
)

// Explain describes in words how a publish on mqttTopic from source ("" for
// local devices) is mapped: why each rule before the match did not match,
// which rule matched (index, regex, source), and the Kafka topic, key and
// headers; or that no rule matched and what the unmatched policy does. The
// result has several lines, ending in a newline, for
// `tributary mapping explain TOPIC`.
func (m *Mapper) Explain(source, mqttTopic string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "MQTT topic %q from %s\n", mqttTopic, describeSource(source))
	if len(m.rules) == 0 {
		b.WriteString("no rules are configured\n")
	}
	for i := range m.rules {
		r := &m.rules[i]
		fmt.Fprintf(&b, "%s match %q (%s): ", r.name, r.Match, describeRuleSource(r.Source))
		if r.Source != "" && r.Source != source {
			fmt.Fprintf(&b, "skipped, the publish is from %s\n", describeSource(source))
			continue
		}
		loc := r.re.FindStringSubmatchIndex(mqttTopic)
		if loc == nil {
			b.WriteString(whyNoMatch(r.Match, mqttTopic) + "\n")
			continue
		}
		b.WriteString("matched, first match wins\n")
		res, err := r.produce(i, source, mqttTopic, loc)
		if err != nil {
			fmt.Fprintf(&b, "rejected: %v\n", err)
			return b.String()
		}
		fmt.Fprintf(&b, "Kafka topic: %q", res.Topic)
		if !r.topic.static {
			fmt.Fprintf(&b, " (from kafka_topic %q)", r.KafkaTopic)
		}
		fmt.Fprintf(&b, "\nkey: %q", res.Key)
		if r.keyIsTopic {
			b.WriteString(" (the MQTT topic; the rule sets no key)")
		} else {
			fmt.Fprintf(&b, " (from key %q)", r.Key)
		}
		b.WriteString("\n")
		for _, h := range res.Headers {
			fmt.Fprintf(&b, "header %q: %q (from %q)\n", h.Key, h.Value, r.Headers[h.Key])
		}
		return b.String()
	}

	res := m.unmatched(mqttTopic)
	fmt.Fprintf(&b, "no rule matched; unmatched policy is %s: ", m.describePolicy())
	switch res.Action {
	case ActionProduce:
		fmt.Fprintf(&b, "produced to the default topic\nKafka topic: %q\nkey: %q (the MQTT topic)\n", res.Topic, res.Key)
	case ActionDrop:
		b.WriteString("the publish is dropped, not produced to Kafka\n")
	case ActionReject:
		b.WriteString("the publish is rejected and the publisher gets an error\n")
	default:
		b.WriteString("the publish goes to no Kafka topic (local subscribers still get it)\n")
	}
	return b.String()
}

func (m *Mapper) describePolicy() string {
	if m.policy == PolicyNone {
		return `none (unmatched is unset)`
	}
	return fmt.Sprintf("%q", m.policy)
}

func describeSource(source string) string {
	if source == "" {
		return "a local device"
	}
	return fmt.Sprintf("upstream %q", source)
}

func describeRuleSource(source string) string {
	if source == "" {
		return "any source"
	}
	return fmt.Sprintf("only upstream %q", source)
}

// whyNoMatch distinguishes a regex that matches nothing from one that only
// matches part of the topic, the usual surprise for users of unanchored
// regexes.
func whyNoMatch(expr, topic string) string {
	// expr compiled in New, so this cannot fail.
	if re, err := regexp.Compile(expr); err == nil && re.MatchString(topic) {
		return "no match: the regex matches only part of the topic, and it must match all of it"
	}
	return "no match"
}
