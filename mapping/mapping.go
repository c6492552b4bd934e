// Package mapping owns the rules that turn an MQTT publish into a Kafka
// record: which Kafka topic it goes to, its key and its extra headers, and what
// happens to a publish that no rule matches. It parses rules (the YAML form and
// Confluent MQTT Proxy's "kafkaTopic:regex" list), validates and compiles them,
// maps topics on the per-message path, and explains its decisions in words for
// `tributary mapping explain`. It does no I/O.
//
// # Matching
//
// Rules are tried in order and the first match wins. A rule's match is a Go
// (RE2) regular expression that must match the whole MQTT topic: it is anchored
// as ^(?:match)$, so ".*temperature" matches "house/kitchen/temperature" but
// "kitchen" does not. A rule with a source only matches publishes that arrived
// from the upstream of that name; a rule without one matches every publish,
// local devices included.
//
// # Templates
//
// kafka_topic, key and header values are templates. ${name} is the text of the
// regex's named group (?P<name>...), ${N} that of its N-th group, ${topic} the
// whole MQTT topic and ${source} the upstream's name ("" for local devices). A
// group that did not take part in the match renders as "". $$ is a literal
// dollar; any other "$" is an error, so that a shell-style $name is caught at
// start-up instead of silently producing to a topic named "$name". References
// to groups the regex does not define are configuration errors.
package mapping

import (
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"
)

// DefaultKafkaTopic is the Kafka topic used by the default_topic policy when
// Config.DefaultTopic is empty.
const DefaultKafkaTopic = "mqtt"

// ErrInvalidTopicName is returned (wrapped) by Map when a kafka_topic template
// renders a string that is not a legal Kafka topic name.
var ErrInvalidTopicName = errors.New("not a valid Kafka topic name")

// Rule is one mapping rule (YAML form).
type Rule struct {
	// Match is a regex that must match the whole MQTT topic. Required.
	Match string `yaml:"match"`
	// KafkaTopic is a template for the Kafka topic, e.g. "iot.${kind}". Required.
	KafkaTopic string `yaml:"kafka_topic"`
	// Key is a template for the record key. Default: the MQTT topic.
	Key string `yaml:"key"`
	// Source restricts the rule to records from the upstream with this name.
	// Default: "" (matches every source, local devices included).
	Source string `yaml:"source"`
	// Headers are extra record headers; values are templates. Default: none.
	Headers map[string]string `yaml:"headers"`
	// Label names the rule in errors and explanations, where it came
	// from ("mapping.rules[2]", "topic_regex_list item 1"). Default:
	// "rules[i]", its index among all rules. Not configurable.
	Label string `yaml:"-"`
}

// Policy says what happens to a publish no rule matched.
type Policy string

// The unmatched policies.
const (
	// PolicyNone sends unmatched publishes to no Kafka topic; local
	// subscribers still get them. The caller counts them.
	PolicyNone Policy = ""
	// PolicyDefaultTopic produces unmatched publishes to Config.DefaultTopic.
	PolicyDefaultTopic Policy = "default_topic"
	// PolicyDrop drops unmatched publishes (not produced); the caller counts them.
	PolicyDrop Policy = "drop"
	// PolicyReject refuses unmatched publishes; the caller maps that to an MQTT
	// reason code.
	PolicyReject Policy = "reject"
)

// Config is the mapping section of the configuration.
type Config struct {
	// Rules are tried in order; the first match wins. Default: none.
	Rules []Rule `yaml:"rules"`
	// Unmatched is the policy for publishes no rule matched. Default: none
	// (no Kafka topic), or default_topic when there are no rules at all.
	Unmatched Policy `yaml:"unmatched"`
	// DefaultTopic is the Kafka topic of the default_topic policy.
	// Default: "mqtt".
	DefaultTopic string `yaml:"default_topic"`
}

// FieldError is a problem with one of Config's own settings (unmatched,
// default_topic) rather than with a rule. Field is its YAML key, so that a
// caller that also reads the setting from a flag can name the flag too.
type FieldError struct {
	Field string // "unmatched" or "default_topic"
	Value string
	Err   error
}

func (e *FieldError) Error() string { return fmt.Sprintf("%s %q: %v", e.Field, e.Value, e.Err) }

// Unwrap returns what is wrong with the value (ErrInvalidTopicName, ...).
func (e *FieldError) Unwrap() error { return e.Err }

// Action is what the caller should do with a mapped publish.
type Action int

// The actions Map can return.
const (
	// ActionProduce produces Result.Topic, Result.Key and Result.Headers.
	ActionProduce Action = iota
	// ActionNone means no rule matched and the policy is none.
	ActionNone
	// ActionDrop means no rule matched and the policy is drop.
	ActionDrop
	// ActionReject means the publish is refused: no rule matched and the
	// policy is reject, or Map returned an error.
	ActionReject
)

// String returns the action's name, for logs and Explain.
func (a Action) String() string {
	switch a {
	case ActionProduce:
		return "produce"
	case ActionNone:
		return "none"
	case ActionDrop:
		return "drop"
	case ActionReject:
		return "reject"
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

// Result is the outcome of mapping one publish.
type Result struct {
	Action Action
	// Rule is the index of the matching rule; -1 if none matched (including
	// publishes sent to the default topic).
	Rule  int
	Topic string
	Key   []byte
	// Headers are the rule's extra headers in sorted key order; nil if none.
	Headers []Header
}

// Header is one extra Kafka record header set by a rule.
type Header struct{ Key, Value string }

// Mapper maps MQTT topics to Kafka records. It is immutable after New and safe
// for concurrent use.
type Mapper struct {
	rules        []compiledRule
	policy       Policy
	defaultTopic string
	static       []string
}

type compiledRule struct {
	Rule                   // as configured, for Explain
	name    string         // Label, or rules[i]
	re      *regexp.Regexp // anchored
	topic   template
	key     template // unused when keyIsTopic
	headers []headerTemplate
	// keyIsTopic avoids rendering the common empty key template.
	keyIsTopic bool
	// groups is set when a template needs submatch positions, so Map only
	// pays for FindStringSubmatchIndex when they are used.
	groups bool
	// prefix and suffix are literals every matching topic starts and ends
	// with; see literalAffixes.
	prefix, suffix string
	// fast and fastLit decide a match without the regexp engine when the
	// pattern is simple enough and no template needs its groups.
	fast    fastKind
	fastLit string
}

type headerTemplate struct {
	key   string
	value template
}

// New validates cfg and compiles it. It reports every problem at once
// (joined with errors.Join), each naming the field, e.g. rules[2].match, and
// the bad value.
func New(cfg Config) (*Mapper, error) {
	var errs []error
	m := &Mapper{policy: cfg.Unmatched, defaultTopic: cfg.DefaultTopic}
	if m.defaultTopic == "" {
		m.defaultTopic = DefaultKafkaTopic
	} else if why := ProduceTopicProblem(m.defaultTopic); why != "" {
		errs = append(errs, &FieldError{Field: "default_topic", Value: m.defaultTopic, Err: fmt.Errorf("%w: %s", ErrInvalidTopicName, why)})
	}
	switch m.policy {
	case PolicyNone:
		if len(cfg.Rules) == 0 {
			// Without rules, "none" would make the bridge a no-op; sending
			// everything to one topic is the useful zero configuration.
			m.policy = PolicyDefaultTopic
		}
	case PolicyDefaultTopic, PolicyDrop, PolicyReject:
	default:
		errs = append(errs, &FieldError{Field: "unmatched", Value: string(m.policy),
			Err: fmt.Errorf("unknown policy (want %q, %q or %q, or leave unset)", PolicyDefaultTopic, PolicyDrop, PolicyReject)})
	}

	m.rules = make([]compiledRule, 0, len(cfg.Rules))
	for i, r := range cfg.Rules {
		cr, rerrs := compileRule(i, r)
		errs = append(errs, rerrs...)
		m.rules = append(m.rules, cr)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	seen := make(map[string]bool)
	for _, r := range m.rules {
		if r.topic.static && !seen[r.topic.value] {
			seen[r.topic.value] = true
			m.static = append(m.static, r.topic.value)
		}
	}
	if m.policy == PolicyDefaultTopic && !seen[m.defaultTopic] {
		m.static = append(m.static, m.defaultTopic)
	}
	return m, nil
}

func compileRule(i int, r Rule) (compiledRule, []error) {
	var errs []error
	fail := func(field, value string, err error) {
		errs = append(errs, fmt.Errorf("rules[%d].%s %q: %w", i, field, value, err))
	}

	cr := compiledRule{Rule: r, name: r.Label}
	if cr.name == "" {
		cr.name = fmt.Sprintf("rules[%d]", i)
	}
	// Explain reads the configured text later; the caller keeps its map.
	cr.Headers = maps.Clone(r.Headers)
	var err error
	if r.Match == "" {
		fail("match", r.Match, errors.New("required"))
	} else if cr.re, err = compileMatch(r.Match); err != nil {
		fail("match", r.Match, err)
	} else {
		cr.prefix, cr.suffix = literalAffixes(r.Match)
		cr.fast, cr.fastLit = fastMatcher(r.Match)
	}
	// With a bad regex, templates are still checked for syntax (re == nil
	// skips name lookups) so that all problems show up in one run.

	if r.KafkaTopic == "" {
		fail("kafka_topic", r.KafkaTopic, errors.New("required"))
	} else if cr.topic, err = parseTemplate(r.KafkaTopic, cr.re); err != nil {
		fail("kafka_topic", r.KafkaTopic, err)
	} else if cr.topic.static {
		if why := ProduceTopicProblem(cr.topic.value); why != "" {
			fail("kafka_topic", r.KafkaTopic, fmt.Errorf("%w: %s", ErrInvalidTopicName, why))
		}
	} else if why := cr.topic.literalTopicProblem(); why != "" {
		// The fixed text alone already makes every rendering invalid.
		fail("kafka_topic", r.KafkaTopic, fmt.Errorf("%w whatever it renders: its fixed text %s", ErrInvalidTopicName, why))
	}

	cr.keyIsTopic = r.Key == ""
	if !cr.keyIsTopic {
		if cr.key, err = parseTemplate(r.Key, cr.re); err != nil {
			fail("key", r.Key, err)
		}
	}

	for _, k := range slices.Sorted(maps.Keys(r.Headers)) {
		v := r.Headers[k]
		if k == "" {
			fail("headers", k, errors.New("header name must not be empty"))
			continue
		}
		if ReservedHeader(k) {
			errs = append(errs, fmt.Errorf("rules[%d].headers[%q]: Tributary sets this header itself; a rule may not", i, k))
			continue
		}
		t, err := parseTemplate(v, cr.re)
		if err != nil {
			errs = append(errs, fmt.Errorf("rules[%d].headers[%q] %q: %w", i, k, v, err))
			continue
		}
		cr.headers = append(cr.headers, headerTemplate{key: k, value: t})
	}

	cr.groups = cr.topic.groups || cr.key.groups
	for _, h := range cr.headers {
		cr.groups = cr.groups || h.value.groups
	}
	return cr, errs
}

// compileMatch compiles a rule's regex so that it must match the whole topic.
func compileMatch(expr string) (*regexp.Regexp, error) {
	if filterLike(expr) {
		return nil, errors.New("looks like an MQTT topic filter, but a rule takes a regular expression for the whole topic: " +
			"write [^/]+ for a + level and .* for a trailing #")
	}
	// Compiling the bare expression first gives errors that quote what the
	// user wrote, and guarantees its parentheses balance, so the wrapper
	// below cannot be closed early by a stray ")" inside expr.
	if _, err := regexp.Compile(expr); err != nil {
		return nil, err
	}
	re, err := regexp.Compile(`^(?:` + expr + `)$`)
	if err != nil {
		// An unterminated \Q quotes to the end of the string, swallowing
		// the wrapper's ")$"; end the quote before closing the group.
		re, err = regexp.Compile(`^(?:` + expr + `\E)$`)
	}
	if err != nil {
		return nil, fmt.Errorf("anchoring regexp: %w", err)
	}
	return re, nil
}

// ReservedHeader reports whether key names a header Tributary sets on
// every record made from an MQTT message: mqtt.topic, mqtt.qos,
// mqtt.retain, mqtt.client_id, mqtt.content_type and an upstream's
// mqtt.source.
func ReservedHeader(key string) bool {
	switch key {
	case "mqtt.topic", "mqtt.qos", "mqtt.retain", "mqtt.client_id", "mqtt.content_type", "mqtt.source":
		return true
	}
	return false
}

// filterLike reports whether expr is written as an MQTT topic filter
// ("house/+/temperature", "house/#"). As a regex it would need a literal
// '#', which no topic name holds, or read '+' as repetition.
func filterLike(expr string) bool {
	e := strings.TrimSuffix(strings.TrimPrefix(expr, "^"), "$")
	return e == "#" || e == "+" || strings.HasSuffix(e, "/#") || strings.HasPrefix(e, "+/") ||
		strings.HasSuffix(e, "/+") || strings.Contains(e, "/+/")
}

// Map maps a publish on mqttTopic; source is "" for local devices or the
// upstream's name. An error (wrapping ErrInvalidTopicName) means the matching
// rule's kafka_topic template rendered an invalid Kafka topic name; it names
// the rule, the template and the rendered value, and the Result then has
// ActionReject so that a caller ignoring the error still does not produce.
func (m *Mapper) Map(source, mqttTopic string) (Result, error) {
	for i := range m.rules {
		r := &m.rules[i]
		if r.Source != "" && r.Source != source ||
			!strings.HasPrefix(mqttTopic, r.prefix) || !strings.HasSuffix(mqttTopic, r.suffix) {
			continue
		}
		var loc []int
		if r.fast != fastNone && !r.groups {
			if !fastMatch(r.fast, r.fastLit, mqttTopic) {
				continue
			}
		} else if r.groups {
			// Allocates only on a match.
			if loc = r.re.FindStringSubmatchIndex(mqttTopic); loc == nil {
				continue
			}
		} else if !r.re.MatchString(mqttTopic) {
			continue
		}
		return r.produce(i, source, mqttTopic, loc)
	}
	return m.unmatched(mqttTopic), nil
}

func (r *compiledRule) produce(i int, source, mqttTopic string, loc []int) (Result, error) {
	topic := r.topic.render(source, mqttTopic, loc)
	if !r.topic.static {
		if why := ProduceTopicProblem(topic); why != "" {
			return Result{Action: ActionReject, Rule: i}, fmt.Errorf("%s.kafka_topic %q rendered %q: %w: %s",
				r.name, r.KafkaTopic, topic, ErrInvalidTopicName, why)
		}
	}
	res := Result{Action: ActionProduce, Rule: i, Topic: topic}
	if r.keyIsTopic {
		res.Key = []byte(mqttTopic)
	} else {
		res.Key = r.key.renderBytes(source, mqttTopic, loc)
	}
	if len(r.headers) > 0 {
		res.Headers = make([]Header, len(r.headers))
		for j, h := range r.headers {
			res.Headers[j] = Header{Key: h.key, Value: h.value.render(source, mqttTopic, loc)}
		}
	}
	return res, nil
}

func (m *Mapper) unmatched(mqttTopic string) Result {
	switch m.policy {
	case PolicyDefaultTopic:
		return Result{Action: ActionProduce, Rule: -1, Topic: m.defaultTopic, Key: []byte(mqttTopic)}
	case PolicyDrop:
		return Result{Action: ActionDrop, Rule: -1}
	case PolicyReject:
		return Result{Action: ActionReject, Rule: -1}
	}
	return Result{Action: ActionNone, Rule: -1}
}

// StaticTopics returns the Kafka topics known without a message, for creating
// them at start-up: the kafka_topic of every rule whose template has no
// variables, then the default topic when the unmatched policy is
// default_topic. Each topic appears once, in rule order.
func (m *Mapper) StaticTopics() []string {
	return slices.Clone(m.static)
}

// maxTopicLen is Kafka's limit on topic name length.
const maxTopicLen = 249

// ValidTopicName reports whether s is a legal Kafka topic name: 1 to 249
// characters of [a-zA-Z0-9._-], and neither "." nor "..".
func ValidTopicName(s string) bool {
	if len(s) == 0 || len(s) > maxTopicLen || s == "." || s == ".." {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTopicChar(s[i]) {
			return false
		}
	}
	return true
}

// TopicNameProblem says what is wrong with s as a Kafka topic name, or "" if
// nothing is, so that errors tell the user what to change.
func TopicNameProblem(s string) string {
	switch {
	case s == "":
		return "empty"
	case len(s) > maxTopicLen:
		return fmt.Sprintf("%d bytes long, Kafka allows at most %d", len(s), maxTopicLen)
	case s == "." || s == "..":
		return `"." and ".." are reserved`
	}
	for i := 0; i < len(s); i++ {
		if !isTopicChar(s[i]) {
			// Decode the rune so a non-ASCII character is quoted whole.
			r, _ := utf8.DecodeRuneInString(s[i:])
			return fmt.Sprintf("contains %q at byte %d (allowed: a-z A-Z 0-9 . _ -)", r, i)
		}
	}
	return ""
}

// ProduceTopicProblem is TopicNameProblem for a topic a record is about
// to be produced to (a configured or rendered kafka_topic, the default
// topic, a WebSocket query): it also refuses the "__" prefix Kafka keeps
// for its internal topics, which a broker may not protect (the embedded
// one does not).
func ProduceTopicProblem(s string) string {
	if why := TopicNameProblem(s); why != "" {
		return why
	}
	if strings.HasPrefix(s, internalTopicPrefix) {
		return internalTopicProblem
	}
	return ""
}

// internalTopicPrefix starts the names of Kafka's internal topics.
const internalTopicPrefix = "__"

const internalTopicProblem = `starts with "__", which Kafka keeps for its internal topics such as __consumer_offsets`

func isTopicChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '.' || c == '_' || c == '-'
}

// groupNames lists the named groups of re, for error messages.
func groupNames(re *regexp.Regexp) string {
	var names []string
	for _, n := range re.SubexpNames() {
		if n != "" && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return "no named groups"
	}
	return "named groups: " + strings.Join(names, ", ")
}
