package config

import (
	"bytes"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tributary-io/tributary/certs"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tributary.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaults(t *testing.T) {
	cfg, rest, err := Load(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rest) != 0 {
		t.Fatalf("rest = %q", rest)
	}
	want := Default()
	if cfg.MQTT.Addr != ":1883" || cfg.MQTT.WSAddr != ":8083" || cfg.HTTP.Addr != ":8080" ||
		cfg.Kafka.EmbeddedAddr != "127.0.0.1:9092" || cfg.DataDir != "./data" || !cfg.Kafka.Embedded() ||
		cfg.Kafka.InflightBudgetBytes != want.Kafka.InflightBudgetBytes || !cfg.Kafka.CreateTopics {
		t.Fatalf("defaults not applied: %+v", cfg)
	}
	m, err := cfg.Mapper()
	if err != nil {
		t.Fatal(err)
	}
	if got := m.StaticTopics(); len(got) != 1 || got[0] != "mqtt" {
		t.Fatalf("with no rules every topic should go to mqtt, static topics %v", got)
	}
}

// Flags beat env beat file beat defaults.
func TestPrecedence(t *testing.T) {
	file := writeFile(t, "mqtt:\n  addr: \"127.0.0.1:1001\"\n  ws_addr: \"127.0.0.1:1002\"\nhttp:\n  addr: \"127.0.0.1:1003\"\nkafka:\n  flush_timeout: 7s\n  properties:\n    linger.ms: \"20\"\n")
	cfg, _, err := Load(Options{
		Args: []string{"--config", file, "--mqtt-addr", "127.0.0.1:3001"},
		LookupEnv: env(map[string]string{
			"TRIBUTARY_MQTT_ADDR":    "127.0.0.1:2001",
			"TRIBUTARY_MQTT_WS_ADDR": "127.0.0.1:2002",
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ got, want, what string }{
		{cfg.MQTT.Addr, "127.0.0.1:3001", "flag over env and file"},
		{cfg.MQTT.WSAddr, "127.0.0.1:2002", "env over file"},
		{cfg.HTTP.Addr, "127.0.0.1:1003", "file over default"},
		{cfg.Kafka.Properties["linger.ms"], "20", "properties from file"},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %q, want %q", c.what, c.got, c.want)
		}
	}
	if cfg.Kafka.FlushTimeout != 7*time.Second {
		t.Errorf("flush_timeout %v, want 7s", cfg.Kafka.FlushTimeout)
	}
}

// An empty value disables a listener, from a flag, env or file alike.
func TestEmptyDisablesListener(t *testing.T) {
	file := writeFile(t, "http:\n  addr: \"\"\n")
	cfg, _, err := Load(Options{
		Args:      []string{"--config", file, "--mqtt-ws-addr", ""},
		LookupEnv: env(map[string]string{"TRIBUTARY_MQTT_ADDR": ""}),
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MQTT.Addr != "" || cfg.MQTT.WSAddr != "" || cfg.HTTP.Addr != "" {
		t.Fatalf("listeners not disabled: %+v %+v", cfg.MQTT, cfg.HTTP)
	}
}

func TestConfluentEnvIsHonoured(t *testing.T) {
	cfg, _, err := Load(Options{LookupEnv: env(map[string]string{
		"KAFKA_MQTT_TOPIC_REGEX_LIST": "temperature:.*temperature, brightness:.*brightness",
	})})
	if err != nil {
		t.Fatal(err)
	}
	m, err := cfg.Mapper()
	if err != nil {
		t.Fatal(err)
	}
	res, err := m.Map("", "house/kitchen/temperature")
	if err != nil || res.Topic != "temperature" {
		t.Fatalf("Map = %+v, %v; want topic temperature", res, err)
	}
	// The Tributary name wins over the Confluent one.
	cfg, _, err = Load(Options{LookupEnv: env(map[string]string{
		"KAFKA_MQTT_TOPIC_REGEX_LIST": "a:.*",
		"TRIBUTARY_TOPIC_REGEX_LIST":  "b:.*",
	})})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Mapping.TopicRegexList != "b:.*" {
		t.Fatalf("topic_regex_list %q, want the TRIBUTARY_ value", cfg.Mapping.TopicRegexList)
	}
	// An empty or blank Tributary name does not hide the Confluent one...
	for _, blank := range []string{"", " \t"} {
		cfg, _, err = Load(Options{LookupEnv: env(map[string]string{
			"KAFKA_MQTT_TOPIC_REGEX_LIST": "a:.*",
			"TRIBUTARY_TOPIC_REGEX_LIST":  blank,
		})})
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Mapping.TopicRegexList != "a:.*" {
			t.Fatalf("topic_regex_list %q, want the KAFKA_MQTT_ value under a TRIBUTARY_ one of %q", cfg.Mapping.TopicRegexList, blank)
		}
	}
	// ...but alone it still clears the file's rules.
	file := writeFile(t, "mapping:\n  topic_regex_list: 'c:.*'\n")
	cfg, _, err = Load(Options{Args: []string{"--config", file}, LookupEnv: env(map[string]string{
		"TRIBUTARY_TOPIC_REGEX_LIST": "",
	})})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Mapping.TopicRegexList != "" {
		t.Fatalf("topic_regex_list %q, want the empty TRIBUTARY_ value over the file's", cfg.Mapping.TopicRegexList)
	}
}

func TestProblemsReportedTogether(t *testing.T) {
	file := writeFile(t, "mapping:\n  unmatched: sometimes\n")
	_, _, err := Load(Options{
		Args: []string{"--config", file, "--topic-regex-list", "bad:([", "--mqtt-addr", ":1883", "--http-addr", ":1883",
			"--kafka-topic-partitions", "0", "--kafka-max-topics", "-1"},
	})
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v, want *Error", err)
	}
	text := err.Error()
	for _, want := range []string{"bad:([", "sometimes", "port 1883 is already used by mqtt.addr", "kafka.topic_partitions (--kafka-topic-partitions) 0", "kafka.max_topics (--kafka-max-topics) -1"} {
		if !strings.Contains(text, want) {
			t.Errorf("error does not name %q:\n%s", want, text)
		}
	}
	if len(ce.Problems) < 5 {
		t.Errorf("%d problems reported, want at least 5: %q", len(ce.Problems), ce.Problems)
	}
}

// Values that do not parse and secrets that cannot be read are reported
// together with what validation finds in the rest, each key once; every
// unreadable TLS file is named, not only the first.
func TestParseAndValidationProblemsTogether(t *testing.T) {
	dir := t.TempDir()
	missing := func(name string) string { return filepath.Join(dir, name) }
	file := writeFile(t, "kafka:\n  properties:\n    sasl.password: ${file:"+missing("password")+"}\nlog:\n  level: loud\n")
	_, _, err := Load(Options{Args: []string{"--config", file,
		"--kafka-topic-partitions", "many", "--users-file", missing("users.yaml"),
		"--mqtt-tls-addr", ":8883", "--tls-cert-file", missing("server.crt"), "--tls-key-file", missing("server.key"),
		"--tls-client-ca-file", missing("ca.crt"),
	}})
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v, want *Error", err)
	}
	for _, want := range []string{"kafka.properties.sasl.password", "log.level", "kafka.topic_partitions", "auth.users_file",
		"tls.cert_file", "tls.key_file", "tls.client_ca_file"} {
		n := 0
		for _, p := range ce.Problems {
			if problemKey(p) == want {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d problems about %s, want 1:\n%s", n, want, err)
		}
	}
}

// Validation may find several problems under one key (two items of the
// regex list, two settings of one upstream); each is reported.
func TestSeveralValidationProblemsUnderOneKey(t *testing.T) {
	file := writeFile(t, "upstreams:\n  - name: a\n    url: ftp://x\n    subscriptions:\n      - {filter: \"t/#\", qos: 3}\n")
	_, _, err := Load(Options{Args: []string{"--config", file, "--topic-regex-list", "a:(, b:["}})
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v, want *Error", err)
	}
	for _, want := range []string{"item 1", "item 2", "ftp", "qos"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %q:\n%s", want, err)
		}
	}
}

func TestStrictYAML(t *testing.T) {
	for _, body := range []string{"mqtt:\n  adr: x\n", "kafka: [1, 2]\n", "unknown_top_level: 1\n"} {
		cfg := Default()
		if err := DecodeYAML(strings.NewReader(body), &cfg); err == nil {
			t.Errorf("DecodeYAML(%q) accepted it", body)
		}
	}
}

func TestBadValues(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--kafka-create-topics=maybe"}, "not a valid boolean"},
		{[]string{"--publish-rate=fast"}, `limits.publish_rate (--publish-rate) "fast": not a valid number`},
		{[]string{"--mapping-default-topic", "__consumer_offsets"}, `mapping.default_topic (--mapping-default-topic) "__consumer_offsets": not a valid Kafka topic name: starts with "__"`},
		{[]string{"--flush-timeout", "soon"}, "kafka.flush_timeout"},
		{[]string{"--inflight-budget-bytes", "100"}, "inflight_budget_bytes (--inflight-budget-bytes) 100"},
		{[]string{"--log-format", "xml"}, "log.format"},
		{[]string{"--mqtt-message-expiry-max", "1.5s"}, "mqtt.message_expiry_max (--mqtt-message-expiry-max) 1.5s: must be 0 (no limit) or a whole number of seconds"},
		{[]string{"--mqtt-message-expiry-max", "-1h"}, "mqtt.message_expiry_max (--mqtt-message-expiry-max) -1h0m0s: must be"},
		{[]string{"--mqtt-session-expiry-max", "500ms"}, "mqtt.session_expiry_max (--mqtt-session-expiry-max) 500ms: must be 0 (no limit) or a whole number of seconds up to 1193046h28m15s (MQTT's limit)"},
		{[]string{"--mqtt-session-expiry-max", "1193046h28m16s"}, "mqtt.session_expiry_max (--mqtt-session-expiry-max) 1193046h28m16s: must be"},
		{[]string{"--kafka-bootstrap", "", "--embedded-kafka-addr", ""}, "embedded_addr"},
		// The unmatched policy and default topic are named with their
		// flag, as every other setting is.
		{[]string{"--mapping-unmatched", "sometimes"}, `mapping.unmatched (--mapping-unmatched) "sometimes": unknown policy`},
		{[]string{"--mapping-default-topic", "a b"}, `mapping.default_topic (--mapping-default-topic) "a b": not a valid Kafka topic name`},
		{[]string{"--mapping-unmatched", "default_topic", "--mapping-default-topic", ".."}, `mapping.default_topic (--mapping-default-topic) "..": not a valid Kafka topic name`},
	} {
		_, _, err := Load(Options{Args: tc.args})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Load(%q) = %v, want an error naming %q", tc.args, err, tc.want)
		}
	}
}

// An on/off flag given bare means true; "=false" turns it off; a value
// after a space is not the flag's.
func TestBareBooleanFlags(t *testing.T) {
	cfg, rest, err := Load(Options{Args: []string{"--http-pprof", "--kafka-create-topics=false", "--websocket-enabled=1"}})
	if err != nil || len(rest) != 0 {
		t.Fatalf("Load: %v, rest %q", err, rest)
	}
	if !cfg.HTTP.Pprof || cfg.Kafka.CreateTopics || !cfg.WebSocket.Enabled {
		t.Fatalf("pprof %v, create topics %v, websocket %v; want true, false, true", cfg.HTTP.Pprof, cfg.Kafka.CreateTopics, cfg.WebSocket.Enabled)
	}
	for _, args := range [][]string{{"--kafka-create-topics", "false"}, {"-http-pprof", "true", "topic"}} {
		if _, _, err := Load(Options{Args: args}); err == nil || !strings.Contains(err.Error(), args[0]+"="+args[1]) {
			t.Errorf("Load(%q) = %v, want an error showing %s=%s", args, err, args[0], args[1])
		}
	}
	// A positional argument after a flag with its value is no concern of
	// the flags', and neither is one after "--".
	for _, args := range [][]string{{"--kafka-create-topics=false", "false"}, {"--data-dir", "d", "true"}, {"--http-pprof", "--", "false"}} {
		if _, rest, err := Load(Options{Args: args}); err != nil || len(rest) != 1 {
			t.Errorf("Load(%q) = rest %q, %v; want one positional argument", args, rest, err)
		}
	}
}

// A value that does not parse is reported alone: the setting keeps its
// previous value, so other settings are not judged against it.
func TestUnparsableValueBlamesNoOtherSetting(t *testing.T) {
	_, _, err := Load(Options{Args: []string{"--kafka-max-message-bytes", "99999999999999999999", "--publish-bytes-rate", "2000000"}})
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v", err)
	}
	if len(ce.Problems) != 1 || !strings.HasPrefix(ce.Problems[0], "kafka.max_message_bytes") {
		t.Fatalf("problems %q, want only kafka.max_message_bytes", ce.Problems)
	}
}

func TestRedacted(t *testing.T) {
	cfg := Default()
	cfg.Kafka.Properties = map[string]string{"sasl.password": "hunter2", "linger.ms": "5", "ssl.key.password": "k"}
	r := cfg.Redacted()
	if r.Kafka.Properties["sasl.password"] == "hunter2" || r.Kafka.Properties["ssl.key.password"] == "k" {
		t.Fatalf("secrets not redacted: %v", r.Kafka.Properties)
	}
	if r.Kafka.Properties["linger.ms"] != "5" || cfg.Kafka.Properties["sasl.password"] != "hunter2" {
		t.Fatal("Redacted changed what it should not")
	}
}

func TestEverySettingHasFlagEnvKey(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range Settings() {
		if s.Flag == "" || s.Key == "" || len(s.EnvNames()) == 0 || !strings.HasPrefix(s.EnvNames()[0], "TRIBUTARY_") {
			t.Errorf("incomplete setting %+v", s)
		}
		if seen[s.Flag] {
			t.Errorf("duplicate flag %s", s.Flag)
		}
		seen[s.Flag] = true
		// The default round-trips through the setter.
		c := Default()
		if err := s.set(&c, s.Default()); err != nil {
			t.Errorf("%s: default %q does not parse: %v", s.Flag, s.Default(), err)
		}
	}
	for _, f := range []string{"kafka-bootstrap", "embedded-kafka-addr", "data-dir", "mqtt-addr", "mqtt-ws-addr", "http-addr", "topic-regex-list"} {
		if !seen[f] {
			t.Errorf("contract flag --%s missing", f)
		}
	}
}

func FuzzDecodeYAML(f *testing.F) {
	f.Add([]byte("mqtt:\n  addr: \":1883\"\n"))
	f.Add([]byte("mapping:\n  topic_regex_list: 'temperature:.*temperature'\n  rules:\n    - match: '^s/(?P<a>[^/]+)$'\n      kafka_topic: 'x.${a}'\n"))
	f.Add([]byte("kafka:\n  properties:\n    linger.ms: '5'\n  flush_timeout: 3s\n"))
	f.Add([]byte("{{{"))
	f.Add([]byte("mqtt:\n  ws_addr:\nkafka:\n  properties: {linger.ms: ~}\nupstreams: [~, {subscriptions: [{qos: null}]}]\nx: &a ~\nhttp: {addr: *a}\n"))
	f.Add([]byte("upstreams:\n  - name: a\n    kafka-topic: x\n    keepalive: 30\n    subscriptions: [{qos: [1], filter: {a: b}}]\nmqtt: {addr: [1]}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg := Default()
		if err := DecodeYAML(bytes.NewReader(b), &cfg); err != nil {
			return
		}
		// Whatever decodes must validate or explain itself, never panic.
		if err := cfg.Validate(); err != nil {
			var ce *Error
			if !errors.As(err, &ce) || len(ce.Problems) == 0 {
				t.Fatalf("Validate returned %v, want *Error with problems", err)
			}
		}
	})
}

// The README's configuration table lists every setting.
func TestReadmeDocumentsEverySetting(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range Settings() {
		for _, want := range append([]string{"`--" + s.Flag + "`", "`" + s.Key + "`"}, s.EnvNames()...) {
			if !bytes.Contains(b, []byte(want)) {
				t.Errorf("README does not document %s", want)
			}
		}
	}
}

func TestKafkaPropertySecretsFromFileAndEnv(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	yml := filepath.Join(dir, "c.yaml")
	body := "kafka:\n  bootstrap: k:9092\n  properties:\n    sasl.password: ${file:" + pw + "}\n    sasl.username: ${env:KUSER}\n    linger.ms: \"5\"\n"
	if err := os.WriteFile(yml, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"KUSER": "alice"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	cfg, _, err := Load(Options{Args: []string{"--config", yml}, LookupEnv: lookup})
	if err != nil {
		t.Fatal(err)
	}
	if p := cfg.Kafka.Properties; p["sasl.password"] != "from-file" || p["sasl.username"] != "alice" || p["linger.ms"] != "5" {
		t.Fatalf("properties %v", p)
	}

	body = "kafka:\n  bootstrap: k:9092\n  properties:\n    sasl.password: ${file:" + filepath.Join(dir, "missing") + "}\n    sasl.username: ${env:NOPE}\n    ssl.key.password: ${vault:x}\n"
	if err := os.WriteFile(yml, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err = Load(Options{Args: []string{"--config", yml}, LookupEnv: lookup})
	var ce *Error
	if !errors.As(err, &ce) || len(ce.Problems) != 3 {
		t.Fatalf("want three problems, got %v", err)
	}
	for _, want := range []string{"sasl.password", "ssl.key.password", "sasl.username"} {
		if !strings.Contains(err.Error(), "kafka.properties."+want) {
			t.Errorf("no problem names %s: %v", want, err)
		}
	}
}

// An empty secret file (or one holding only a newline) is a problem: the
// login it was meant for would fail later without saying why.
func TestKafkaPropertySecretFileEmpty(t *testing.T) {
	pw := writeFile(t, "\n")
	yml := writeFile(t, "kafka:\n  bootstrap: k:9092\n  properties:\n    sasl.password: ${file:"+pw+"}\n")
	_, _, err := Load(Options{Args: []string{"--config", yml}, LookupEnv: env(nil)})
	if want := "kafka.properties.sasl.password: ${file:" + pw + "} is empty"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("got %v, want a problem containing %q", err, want)
	}
}

func TestKafkaPropertyReferenceErrorsHideTheValue(t *testing.T) {
	dir := t.TempDir()
	yml := filepath.Join(dir, "c.yaml")
	body := "kafka:\n  bootstrap: k:9092\n  properties:\n    sasl.password: \"${Tr0ub4dor&3}\"\n    ssl.key.password: \"$${literal}\"\n"
	if err := os.WriteFile(yml, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err := Load(Options{Args: []string{"--config", yml}})
	if err == nil || strings.Contains(err.Error(), "Tr0ub4dor") || !strings.Contains(err.Error(), "kafka.properties.sasl.password") {
		t.Fatalf("want an error naming the key without the value, got %v", err)
	}
	body = "kafka:\n  bootstrap: k:9092\n  properties:\n    ssl.key.password: \"$${literal}\"\n"
	if err := os.WriteFile(yml, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, _, err := Load(Options{Args: []string{"--config", yml}})
	if err != nil || cfg.Kafka.Properties["ssl.key.password"] != "${literal}" {
		t.Fatalf("$${ escape: %v %q", err, cfg.Kafka.Properties["ssl.key.password"])
	}
}

func TestRatesMustBeFinite(t *testing.T) {
	for _, v := range []string{"NaN", "+Inf", "1e-12"} {
		_, _, err := Load(Options{Args: []string{"--publish-rate", v}})
		if err == nil || !strings.Contains(err.Error(), "limits.publish_rate") {
			t.Errorf("--publish-rate %s: want an error naming limits.publish_rate, got %v", v, err)
		}
	}
}

// librdkafka settings the WebSocket consumers cannot work with, or that
// would keep the producer from acknowledging anything, are refused at
// start-up, naming the key and value, rather than breaking the first
// rebalance or stalling every client.
func TestUnsupportedConsumerProperties(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		want string
	}{
		{"kafka:\n  properties:\n    partition.assignment.strategy: cooperative-sticky\n", `partition.assignment.strategy "cooperative-sticky"`},
		{"kafka:\n  properties:\n    group.protocol: consumer\n", `group.protocol "consumer"`},
		// Settings that would keep every record from being acknowledged.
		{"kafka:\n  properties:\n    delivery.report.only.error: \"true\"\n", `delivery.report.only.error "true": Tributary acknowledges`},
		{"kafka:\n  properties:\n    acks: \"0\"\n", `acks "0": with acks=0 Kafka confirms nothing`},
		{"kafka:\n  properties:\n    request.required.acks: \"00\"\n", `request.required.acks "00"`},
		{"kafka:\n  properties:\n    delivery.report.only.error: \"tRuE\"\n", `delivery.report.only.error "tRuE"`},
	} {
		_, _, err := Load(Options{Args: []string{"--config", writeFile(t, tc.yaml)}})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error naming %s", tc.yaml, err, tc.want)
		}
	}
	ok := "kafka:\n  properties:\n    partition.assignment.strategy: roundrobin\n    group.protocol: classic\n" +
		"    acks: \"1\"\n    delivery.report.only.error: \"false\"\n"
	if _, _, err := Load(Options{Args: []string{"--config", writeFile(t, ok)}}); err != nil {
		t.Errorf("eager assignment, the classic protocol, acks=1 or every delivery report refused: %v", err)
	}
}

// Listeners clash on a port when they bind the same host or one binds
// every address; different hosts may share a port.
func TestListenerPortClash(t *testing.T) {
	for _, tc := range []struct {
		mqtt, http string
		clash      bool
	}{
		{"127.0.0.1:18831", "127.0.0.1:18831", true},
		{":18831", "127.0.0.1:18831", true},
		{"0.0.0.0:18831", "10.0.0.1:18831", true},
		{"[::]:18831", "127.0.0.1:18831", true},
		{"127.0.0.1:18831", "10.0.0.1:18831", false},
		// One host spelled two ways, or an address of every address.
		{"localhost:18831", "127.0.0.1:18831", true},
		{"LocalHost:18831", "[::1]:18831", false}, // Go listens on 127.0.0.1 only
		{"localhost:18831", "0.0.0.0:18831", true},
		{"localhost:18831", "localhost:18831", true},
		{"[::0]:18831", "127.0.0.1:18831", true},
		{"[0:0:0:0:0:0:0:0]:18831", "127.0.0.1:18831", true},
		{"[::ffff:0.0.0.0]:18831", "10.0.0.1:18831", true},
		{"[::ffff:127.0.0.1]:18831", "127.0.0.1:18831", true},
		{"[::1]:18831", "[0:0:0:0:0:0:0:1]:18831", true},
		{"Host.Example:18831", "host.example:18831", true},
		// Different specific addresses do not.
		{"localhost:18831", "10.0.0.1:18831", false},
		{"[::1]:18831", "127.0.0.1:18831", false},
		{"[::ffff:10.0.0.1]:18831", "127.0.0.1:18831", false},
	} {
		_, _, err := Load(Options{Args: []string{"--mqtt-addr", tc.mqtt, "--http-addr", tc.http}})
		if got := err != nil && strings.Contains(err.Error(), "already used by"); got != tc.clash {
			t.Errorf("mqtt %s, http %s: %v, want a clash: %v", tc.mqtt, tc.http, err, tc.clash)
		}
	}
}

// A second YAML document would be ignored, so it is an error naming the
// file; an empty file, or one of comments only, is the defaults.
func TestOneYAMLDocument(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		line       string // the second document's line; empty: accepted
	}{
		{"two documents", "log:\n  level: info\n---\nlog:\n  level: debug\n", "line 3"},
		{"empty first document", "---\n---\nlog:\n  level: debug\n", "line 2"},
		{"after a document end", "log:\n  level: info\n...\n---\nlog:\n  level: debug\n", "line 4"},
		{"a trailing empty document", "log:\n  level: info\n---\n", "line 3"},
		{"empty file", "", ""},
		{"comments only", "# Tributary\n\n# nothing set yet\n", ""},
		{"blank lines", "\n\n", ""},
		{"a leading document marker", "---\nlog:\n  level: warn\n", ""},
		{"a document end marker", "log:\n  level: warn\n...\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, tc.body)
			cfg, _, err := Load(Options{Args: []string{"--config", path}})
			if tc.line == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if want := Default(); !strings.Contains(tc.body, "level") && cfg.Log != want.Log {
					t.Errorf("log %+v, want the defaults %+v", cfg.Log, want.Log)
				}
				return
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("err = %v, want *Error", err)
			}
			for _, want := range []string{path, "only one YAML document is allowed", tc.line} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not name %q: %v", want, err)
				}
			}
		})
	}
}

// What the Kafka client refuses in kafka.properties is reported with
// every other problem: the key, the value unless it may be a secret, and
// the client's reason.
func TestKafkaPropertiesCheckedByTheClient(t *testing.T) {
	file := writeFile(t, "kafka:\n  properties:\n    lingr.ms: 5\n    compression.type: brotli\n    sasl.pasword: hunter2\n"+
		"    ssl.key.password: hunter2\n    fetch.wait.max.ms: 100\n    group.protocol: consumer\nlog:\n  level: loud\n")
	var asked map[string]string
	check := func(props map[string]string) []PropertyProblem {
		asked = props
		return []PropertyProblem{
			{Name: "compression.type", Reason: `Invalid value "brotli" for configuration property "compression.codec"`},
			{Name: "lingr.ms", Unknown: true, Reason: `No such configuration property: "lingr.ms"`},
			{Name: "sasl.pasword", Unknown: true, Reason: `No such configuration property: "sasl.pasword"`},
			{Name: "ssl.key.password", Reason: `Invalid value "hunter2"`},
			{Name: "group.protocol", Reason: `Invalid value "consumer"`}, // reported once, by Tributary's own check
		}
	}
	_, _, err := Load(Options{Args: []string{"--config", file}, CheckKafkaProperties: check})
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v, want *Error", err)
	}
	if asked["lingr.ms"] != "5" || asked["fetch.wait.max.ms"] != "100" {
		t.Errorf("the check was given %v", asked)
	}
	want := []string{
		`kafka.properties.group.protocol "consumer": only the classic consumer group protocol is supported by the WebSocket consumers`,
		`log.level (--log-level) "loud"`,
		`kafka.properties.compression.type "brotli": Invalid value "brotli" for configuration property "compression.codec"`,
		`kafka.properties.lingr.ms: No such configuration property: "lingr.ms"`,
		`kafka.properties.sasl.pasword: No such configuration property: "sasl.pasword"`,
		`kafka.properties.ssl.key.password [redacted]: Invalid value "[redacted]"`,
	}
	if len(ce.Problems) != len(want) {
		t.Fatalf("%d problems, want %d:\n%s", len(ce.Problems), len(want), err)
	}
	for i, w := range want {
		if !strings.HasPrefix(ce.Problems[i], w) {
			t.Errorf("problem %d is %q, want %q", i, ce.Problems[i], w)
		}
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("a secret is shown:\n%s", err)
	}

	// Nothing refused, nothing reported.
	file = writeFile(t, "kafka:\n  properties:\n    linger.ms: 5\n")
	if _, _, err := Load(Options{Args: []string{"--config", file}, CheckKafkaProperties: func(map[string]string) []PropertyProblem { return nil }}); err != nil {
		t.Fatal(err)
	}
}

// A value that parses but does not validate is named by where it came
// from: the environment variable that set it, or the flag, which beats
// the environment.
func TestValidationProblemNamesTheEnvironmentVariable(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"from the environment", nil, `mqtt.addr (env TRIBUTARY_MQTT_ADDR) ":99999": port "99999"`},
		{"the flag beats it", []string{"--mqtt-addr", ":88888"}, `mqtt.addr (--mqtt-addr) ":88888": port "88888"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := Load(Options{Args: tc.args, LookupEnv: env(map[string]string{"TRIBUTARY_MQTT_ADDR": ":99999"})})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a problem starting %s", err, tc.want)
			}
		})
	}
}

// A flag beats the environment also when the environment's value does not
// parse; and each Kafka setting's problem names where its value came from.
func TestFlagBeatsAnUnparsableEnvironmentValue(t *testing.T) {
	cfg, _, err := Load(Options{Args: []string{"--flush-timeout", "30s"}, LookupEnv: env(map[string]string{"TRIBUTARY_FLUSH_TIMEOUT": "30"})})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if cfg.Kafka.FlushTimeout != 30*time.Second {
		t.Fatalf("flush timeout %v, want the flag's 30s", cfg.Kafka.FlushTimeout)
	}
}

func TestKafkaProblemsNameTheirSource(t *testing.T) {
	for _, tc := range []struct{ env, value, key string }{
		{"TRIBUTARY_KAFKA_TOPIC_PARTITIONS", "0", "kafka.topic_partitions"},
		{"TRIBUTARY_KAFKA_MAX_TOPICS", "-1", "kafka.max_topics"},
		{"TRIBUTARY_KAFKA_TOPIC_REPLICATION_FACTOR", "0", "kafka.topic_replication_factor"},
		{"TRIBUTARY_KAFKA_MAX_MESSAGE_BYTES", "10", "kafka.max_message_bytes"},
		{"TRIBUTARY_INFLIGHT_BUDGET_BYTES", "100", "kafka.inflight_budget_bytes"},
		{"TRIBUTARY_KAFKA_ACK_LINGER", "1h", "kafka.ack_linger"},
		{"TRIBUTARY_KAFKA_PROMPT_CLIENTS", "-1", "kafka.prompt_clients"},
		{"TRIBUTARY_KAFKA_PROMPT_CLIENTS", "1000001", "kafka.prompt_clients"},
		{"TRIBUTARY_KAFKA_PROMPT_LINGER", "-1ms", "kafka.prompt_linger"},
		{"TRIBUTARY_FLUSH_TIMEOUT", "0s", "kafka.flush_timeout"},
	} {
		_, _, err := Load(Options{LookupEnv: env(map[string]string{tc.env: tc.value})})
		if want := tc.key + " (env " + tc.env + ") "; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s=%s: got %v, want a problem starting %q", tc.env, tc.value, err, want)
		}
	}
}

// A bad tls.client_auth is one problem, named by its key, whichever layer
// finds it.
func TestClientAuthProblemReportedOnce(t *testing.T) {
	dir := t.TempDir()
	if _, err := certs.WriteDev(dir, certs.DevOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, value := range []string{"request", "bogus", "none"} {
		_, _, err := Load(Options{Args: []string{
			"--mqtt-tls-addr", ":8883", "--tls-cert-file", filepath.Join(dir, certs.ServerCertFile), "--tls-key-file", filepath.Join(dir, certs.ServerKeyFile),
			"--tls-client-auth", value,
		}, LookupEnv: env(nil)})
		if err == nil {
			t.Fatalf("client_auth %q without a client CA: loaded", value)
		}
		if n := strings.Count(err.Error(), "client_auth"); n != 1 {
			t.Errorf("client_auth %q: %d mentions of client_auth, want 1:\n%v", value, n, err)
		}
	}
}

// kafka.properties that would make the clients behave differently from
// one run to the next, or fail every record or socket once running, are
// refused at load, each named.
func TestKafkaPropertiesThatBreakTheClients(t *testing.T) {
	file := writeFile(t, "kafka:\n  properties:\n"+
		"    '{topic}.partitioner': random\n"+
		"    transactional.id: tx\n"+
		"    group.instance.id: member-1\n"+
		"    max.poll.interval.ms: 5000\n"+
		"    acks: all\n    request.required.acks: 1\n"+
		"    metadata.broker.list: k:9092\n")
	_, _, err := Load(Options{Args: []string{"--config", file}})
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v, want *Error", err)
	}
	for _, want := range []string{
		"kafka.properties.{topic}.partitioner: write partitioner without the {topic}. prefix",
		"kafka.properties.transactional.id: Tributary's producers are not transactional",
		"kafka.properties.group.instance.id: each WebSocket consumer",
		`kafka.properties.max.poll.interval.ms "5000": must be at least websocket.session_timeout (10s)`,
		"kafka.properties.request.required.acks and kafka.properties.acks: the two are one librdkafka property under two names",
		"kafka.properties.metadata.broker.list: set kafka.bootstrap (--kafka-bootstrap) instead",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("no problem says %q in:\n%s", want, err)
		}
	}
	if len(ce.Problems) != 6 {
		t.Errorf("%d problems, want 6:\n%s", len(ce.Problems), err)
	}

	// Given by its other name alone, a property reaches the clients under
	// the name Tributary sets it by, so the user's value is the one used.
	file = writeFile(t, "kafka:\n  properties:\n    request.required.acks: 1\n    enable.idempotence: 'false'\n    queue.buffering.max.ms: 20\n    max.poll.interval.ms: 600000\n")
	cfg, _, err := Load(Options{Args: []string{"--config", file}})
	if err != nil {
		t.Fatal(err)
	}
	got := cfg.Kafka.ClientProperties()

	// Consumer settings matter only with the WebSocket API, which makes
	// the consumers.
	file2 := writeFile(t, "websocket:\n  enabled: false\nkafka:\n  properties:\n    group.instance.id: m\n    max.poll.interval.ms: 5000\n")
	if _, _, err := Load(Options{Args: []string{"--config", file2}}); err != nil {
		t.Fatalf("consumer settings refused with the WebSocket API off: %v", err)
	}
	want := map[string]string{"acks": "1", "enable.idempotence": "false", "linger.ms": "20", "max.poll.interval.ms": "600000"}
	if !maps.Equal(got, want) {
		t.Fatalf("ClientProperties = %v, want %v", got, want)
	}
}

// A YAML null (a key with nothing after it, ~, null) is not a value:
// yaml.v3 would leave the default in place, so "ws_addr:" meant to turn
// a listener off would keep it on. It is a problem naming the key, at any
// depth, reported with every other one; a section left empty is not.
func TestNullIsNotAValue(t *testing.T) {
	listener := `null is not a value; write "" to disable the listener`
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{"nothing after the key", "mqtt:\n  ws_addr:\n", []string{"line 2: mqtt.ws_addr: " + listener}},
		{"tilde", "mqtt:\n  ws_addr: ~\n", []string{"line 2: mqtt.ws_addr: " + listener}},
		{"http listener", "http:\n  addr: ~\n", []string{"line 2: http.addr: " + listener}},
		{"a number", "kafka:\n  max_topics: ~\n", []string{"line 2: kafka.max_topics: null is not a value; give it one"}},
		{"a duration and a boolean", "kafka:\n  flush_timeout: null\nwebsocket:\n  enabled: Null\n",
			[]string{"line 2: kafka.flush_timeout: null is not a value", "line 4: websocket.enabled: null is not a value"}},
		{"deep in an upstream", "upstreams:\n  - name: plant\n    url: tcp://broker:1883\n    keepalive:\n    subscriptions: [{filter: a/#}]\n",
			[]string{"line 4: upstreams[0] (plant).keepalive: null is not a value"}},
		{"a list item", "websocket:\n  allowed_origins: [a, ~]\n", []string{"line 2: websocket.allowed_origins[1]: a list item cannot be null"}},
		// yaml.v3 leaves the null item out; the next one, moved up, is
		// not judged under the null's number (its problem would come
		// once the null is removed).
		{"items after one that did not decode", "upstreams:\n  - {name: a, url: \"tcp://h:1883\", subscriptions: [\"x/#\", {filter: ok/#}, {filter: \"a/#/b\"}]}\n",
			[]string{"line 2: upstreams[0] (a).subscriptions[0]"}},
		{"items after a null one in an upstream named null", "upstreams:\n  - {name: ~, url: \"tcp://h:1883\", subscriptions: [~, {filter: ok/#}, {filter: \"a/#/b\"}]}\n",
			[]string{"line 2: upstreams[0].name: null is not a value", "line 2: upstreams[0].subscriptions[0]: a list item cannot be null"}},
		{"items after a null one", "upstreams:\n  - ~\n  - {name: b, url: \"tcp://h:1883\", subscriptions: [{filter: a/#}]}\n  - {name: c, url: \"bad://x\", subscriptions: [{filter: a/#}]}\n",
			[]string{"line 2: upstreams[0]: a list item cannot be null"}},
		{"a mapping rule's topic", "mapping:\n  rules:\n    - match: a\n      kafka_topic:\n", []string{"line 4: mapping.rules[0].kafka_topic: null is not a value"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, tc.yaml)
			_, _, err := Load(Options{Args: []string{"--config", path, "--log-level", "loud"}})
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("err = %v, want *Error", err)
			}
			for _, want := range append(tc.want, `log.level (--log-level) "loud"`) {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("no problem says %q in:\n%s", want, err)
				}
			}
			if len(ce.Problems) != len(tc.want)+1 {
				t.Errorf("%d problems, want %d:\n%s", len(ce.Problems), len(tc.want)+1, err)
			}
		})
	}
	// A section with nothing in it (its keys commented out) is empty, and
	// a quoted "null" is text.
	path := writeFile(t, "kafka:\n  # bootstrap: k:9092\nmqtt:\n  ws_addr: \"\"\nmapping:\n  rules:\n  default_topic: \"null\"\nwebsocket:\n  allowed_origins:\n")
	cfg, _, err := Load(Options{Args: []string{"--config", path}})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MQTT.WSAddr != "" || cfg.Mapping.DefaultTopic != "null" || cfg.Kafka.MaxTopics != Default().Kafka.MaxTopics {
		t.Fatalf("ws_addr %q, default_topic %q, max_topics %d", cfg.MQTT.WSAddr, cfg.Mapping.DefaultTopic, cfg.Kafka.MaxTopics)
	}
	// Where yaml.v3 applies a null, it is what the file says: the empty
	// value in a mapping of any keys, an optional setting unset (an
	// upstream subscription's qos: its default), and a key kept from
	// being inherited beside a merge key.
	path = writeFile(t, "kafka:\n  properties:\n    client.rack: ~\n"+
		"upstreams:\n  - &a {name: a, url: tcp://h:1883, kafka_topic: plant, subscriptions: [{filter: a/#, qos: ~}]}\n"+
		"  - {<<: *a, name: b, url: tcp://h2:1883, kafka_topic: }\n")
	cfg, _, err = Load(Options{Args: []string{"--config", path}})
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := cfg.Kafka.Properties["client.rack"]; !ok || v != "" {
		t.Errorf("client.rack %q (%v), want the empty value", v, ok)
	}
	if cfg.Upstreams[1].KafkaTopic != "" || cfg.Upstreams[0].KafkaTopic != "plant" {
		t.Errorf("kafka_topic %q and %q, want plant and none", cfg.Upstreams[0].KafkaTopic, cfg.Upstreams[1].KafkaTopic)
	}
	// A key or list item left null for the environment or a flag to set
	// is set.
	path = writeFile(t, "kafka:\n  bootstrap:\nmqtt:\n  ws_addr:\nwebsocket:\n  allowed_origins: [~]\n")
	cfg, _, err = Load(Options{Args: []string{"--config", path, "--mqtt-ws-addr", ""},
		LookupEnv: env(map[string]string{"TRIBUTARY_KAFKA_BOOTSTRAP": "k:9092", "TRIBUTARY_WEBSOCKET_ALLOWED_ORIGINS": "https://a.example"})})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Kafka.Bootstrap != "k:9092" || cfg.MQTT.WSAddr != "" {
		t.Errorf("bootstrap %q, ws_addr %q", cfg.Kafka.Bootstrap, cfg.MQTT.WSAddr)
	}
}

// kafka.bootstrap is checked item by item: librdkafka given no broker
// would wait for one forever, and the embedded Kafka is not started.
func TestKafkaBootstrap(t *testing.T) {
	// What librdkafka takes: host:port, a host or IPv6 address alone
	// (port 9092), a scheme naming security.protocol before either; an
	// empty item is passed over (a trailing comma), an empty host is
	// localhost, and what follows a '/' is ignored.
	for _, v := range []string{"k:9092", "k1:9092, k2:9092", "k", "10.0.0.1:9093", "[::1]:9092", "::1", "k.example.com", "PLAINTEXT://k:9092,plaintext://k2", "k:9092,", ":9092", "PLAINTEXT://", "[::1]", "k:9092/x"} {
		if _, _, err := Load(Options{Args: []string{"--kafka-bootstrap", v}}); err != nil {
			t.Errorf("--kafka-bootstrap %q refused: %v", v, err)
		}
	}
	sasl := writeFile(t, "kafka:\n  bootstrap: SASL_SSL://k:9093/, SASL_SSL://k2:9093\n  properties:\n    security.protocol: sasl_ssl\n")
	if _, _, err := Load(Options{Args: []string{"--config", sasl}}); err != nil {
		t.Errorf("SASL_SSL:// with security.protocol sasl_ssl refused: %v", err)
	}
	for _, tc := range []struct{ value, want string }{
		{" , ", `kafka.bootstrap (--kafka-bootstrap) " , ": names no broker`},
		{"k:port", `item 1 "k:port": port "port" is not a number from 1 to 65535`},
		{"k:0", `item 1 "k:0": port "0" is not a number from 1 to 65535`},
		{"k 9092", `item 1 "k 9092": host "k 9092" holds white space`},
		{"k:1:2", `item 1 "k:1:2": not host:port or a host`},
		{"http://k:9092/path", `item 1 "http://k:9092/path": "http" is not a security protocol`},
		{"k1:9092,SSL://k2:9093", `item 2 "SSL://k2:9093": SSL:// is not kafka.properties.security.protocol (plaintext)`},
	} {
		_, _, err := Load(Options{Args: []string{"--kafka-bootstrap", tc.value}})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--kafka-bootstrap %q: %v, want a problem containing %q", tc.value, err, tc.want)
		}
	}
	_, _, err := Load(Options{LookupEnv: env(map[string]string{"TRIBUTARY_KAFKA_BOOTSTRAP": ","})})
	if want := `kafka.bootstrap (env TRIBUTARY_KAFKA_BOOTSTRAP) ",": names no broker`; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("got %v, want a problem containing %q", err, want)
	}
}

// A file key that did not decode does not hide the problem of the flag or
// environment variable that replaced its value.
func TestFlagProblemBesideTheFileProblemItReplaced(t *testing.T) {
	file := writeFile(t, "kafka:\n  topic_partitions: many\n  max_topics: lots\n")
	_, _, err := Load(Options{Args: []string{"--config", file, "--kafka-topic-partitions=0"},
		LookupEnv: env(map[string]string{"TRIBUTARY_KAFKA_MAX_TOPICS": "-1"})})
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v, want *Error", err)
	}
	for _, want := range []string{
		"line 2: kafka.topic_partitions many: not a whole number",
		"line 3: kafka.max_topics lots: not a whole number",
		"kafka.topic_partitions (--kafka-topic-partitions) 0: must be at least 1",
		"kafka.max_topics (env TRIBUTARY_KAFKA_MAX_TOPICS) -1: must be 0 (no limit) or more",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("no problem says %q in:\n%s", want, err)
		}
	}
	if len(ce.Problems) != 4 {
		t.Errorf("%d problems, want 4:\n%s", len(ce.Problems), err)
	}
}

// The largest record librdkafka can send is its message.max.bytes
// maximum less the framing the bridge leaves room for; a larger
// kafka.max_message_bytes would be refused there, or wrap the MQTT
// packet limit.
func TestMaxMessageBytesUpperBound(t *testing.T) {
	if _, _, err := Load(Options{Args: []string{"--kafka-max-message-bytes", strconv.Itoa(maxMessageBytes), "--inflight-budget-bytes", "2000000000"}}); err != nil {
		t.Fatalf("the largest value refused: %v", err)
	}
	for _, v := range []string{strconv.Itoa(maxMessageBytes + 1), "4294967296", "9223372036854775807"} {
		_, _, err := Load(Options{Args: []string{"--kafka-max-message-bytes", v, "--inflight-budget-bytes", "9223372036854775807"}})
		if want := "kafka.max_message_bytes (--kafka-max-message-bytes) " + v + ": must be at most 999998976"; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want a problem containing %q", v, err, want)
		}
	}
}

// maxMessageBytes is written out here because package config cannot
// import bridge (cgo); this ties it to bridge's recordFraming and
// librdkafka's message.max.bytes maximum that the producer caps it at.
func TestMaxMessageBytesMatchesTheProducer(t *testing.T) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "../bridge/producer.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	framing := -1
	ast.Inspect(f, func(n ast.Node) bool {
		vs, ok := n.(*ast.ValueSpec)
		if !ok || len(vs.Names) != 1 || vs.Names[0].Name != "recordFraming" || len(vs.Values) != 1 {
			return true
		}
		if lit, ok := vs.Values[0].(*ast.BasicLit); ok {
			framing, _ = strconv.Atoi(lit.Value)
		}
		return false
	})
	if framing < 0 {
		t.Fatal("bridge/producer.go has no const recordFraming = <number>")
	}
	if maxMessageBytes != librdkafkaMaxMessageBytes-framing {
		t.Fatalf("maxMessageBytes %d, want %d (librdkafka's maximum) - %d (bridge's recordFraming)", maxMessageBytes, librdkafkaMaxMessageBytes, framing)
	}
	b, err := os.ReadFile("../bridge/producer.go")
	if err != nil {
		t.Fatal(err)
	}
	if want := "min(cfg.MaxMessageBytes+recordFraming, " + strconv.Itoa(librdkafkaMaxMessageBytes) + ")"; !bytes.Contains(b, []byte(want)) {
		t.Fatalf("bridge/producer.go no longer sets message.max.bytes to %s", want)
	}
}

// A reload interval near zero would have the watcher re-read the files
// without pause; 0 still means SIGHUP only.
func TestTLSReloadIntervalFloor(t *testing.T) {
	for _, v := range []string{"0", "100ms", "500ms", "10s"} {
		if _, _, err := Load(Options{Args: []string{"--tls-reload-interval", v}}); err != nil {
			t.Errorf("--tls-reload-interval %s refused: %v", v, err)
		}
	}
	for _, v := range []string{"1ns", "99ms", "-1s"} {
		_, _, err := Load(Options{Args: []string{"--tls-reload-interval", v}})
		if want := "tls.reload_interval (--tls-reload-interval) "; err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "must be 0 (SIGHUP only) or at least 100ms") {
			t.Errorf("--tls-reload-interval %s: got %v, want a problem naming it with the floor", v, err)
		}
	}
}

// An upstream's kafka_topic is produced to as it is: Kafka's internal
// topics are refused like invalid names.
func TestUpstreamKafkaTopicNotInternal(t *testing.T) {
	file := writeFile(t, "upstreams:\n  - name: plant\n    url: tcp://broker:1883\n    kafka_topic: __consumer_offsets\n    subscriptions: [{filter: a/#}]\n")
	_, _, err := Load(Options{Args: []string{"--config", file}})
	if want := `upstreams[0] (plant).kafka_topic "__consumer_offsets": not a valid Kafka topic name: starts with "__"`; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("got %v, want a problem containing %q", err, want)
	}
}
