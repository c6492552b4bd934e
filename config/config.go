// Package config owns Tributary's configuration: its defaults, loading from a
// YAML file, the environment (TRIBUTARY_*) and command-line flags, and
// validation that reports every problem at once.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"gopkg.in/yaml.v3"

	"github.com/tributary-io/tributary/mapping"
)

// Config is the whole daemon configuration.
type Config struct {
	// DataDir holds the embedded Kafka's data. Default "./data".
	DataDir string `yaml:"data_dir"`
	// Kafka configures the connection to Kafka. See KafkaConfig.
	Kafka KafkaConfig `yaml:"kafka"`
	// MQTT configures the embedded MQTT broker. See MQTTConfig.
	MQTT MQTTConfig `yaml:"mqtt"`
	// HTTP configures the HTTP server for health, readiness and metrics.
	HTTP HTTPConfig `yaml:"http"`
	// WebSocket configures the JSON WebSocket API served on http.addr.
	WebSocket WebSocketConfig `yaml:"websocket"`
	// Mapping holds the MQTT topic to Kafka topic rules.
	Mapping MappingConfig `yaml:"mapping"`
	// Log configures logging.
	Log LogConfig `yaml:"log"`
	// TLS is the server certificate of the TLS listeners. See TLSConfig.
	TLS TLSConfig `yaml:"tls"`
	// Auth configures authentication and ACLs. See AuthConfig.
	Auth AuthConfig `yaml:"auth"`
	// Limits bounds connections and publish rates. See LimitsConfig.
	Limits LimitsConfig `yaml:"limits"`
	// Upstreams are remote MQTT brokers whose feeds are produced into
	// Kafka (YAML only). Default none. See UpstreamConfig.
	Upstreams []UpstreamConfig `yaml:"upstreams"`
}

// KafkaConfig configures the Kafka side.
type KafkaConfig struct {
	// Bootstrap is the comma-separated list of Kafka brokers. Default empty,
	// which starts the embedded evaluation Kafka.
	Bootstrap string `yaml:"bootstrap"`
	// EmbeddedAddr is where the embedded Kafka listens. Default "127.0.0.1:9092".
	EmbeddedAddr string `yaml:"embedded_addr"`
	// Properties are librdkafka settings passed through unchanged (SASL,
	// SSL, linger.ms, compression.type, ...). Default none.
	Properties map[string]string `yaml:"properties"`
	// CreateTopics makes the bridge create missing Kafka topics named by
	// mapping rules. Default true.
	CreateTopics bool `yaml:"create_topics"`
	// TopicPartitions is the partition count of topics the bridge creates. Default 3.
	TopicPartitions int `yaml:"topic_partitions"`
	// MaxTopics bounds the distinct Kafka topics the bridge produces to, so
	// that topic templates fed by device-chosen MQTT topic levels (or
	// WebSocket clients naming topics) cannot create topics without end. A
	// record for one topic more is refused. Topics the configuration names
	// do not count. 0 means no limit. Default 10000.
	MaxTopics int `yaml:"max_topics"`
	// TopicReplicationFactor is the replication factor of topics the bridge
	// creates; -1 means the broker's default. Default -1.
	TopicReplicationFactor int `yaml:"topic_replication_factor"`
	// MaxMessageBytes is the largest record the bridge produces (key, value
	// and headers); larger MQTT payloads are refused. At least 1024, at
	// most 999998976 (see maxMessageBytes). Default 1000000.
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// InflightBudgetBytes bounds the bytes of records waiting for Kafka's
	// acknowledgement, across all clients. Past it, QoS 0 publishes are
	// dropped (counted) and the bridge stops reading from publishing
	// sockets. Default 67108864 (64 MiB).
	InflightBudgetBytes int64 `yaml:"inflight_budget_bytes"`
	// AckLinger is librdkafka's linger for records whose MQTT client waits
	// for the acknowledgement (QoS 1 and 2). It is part of every round trip,
	// and so bounds the rate of a client with a limited window. Best-effort
	// (QoS 0) records use linger.ms from Properties (librdkafka's default
	// 5 ms). Negative uses Properties' value for both. Default 1ms.
	AckLinger time.Duration `yaml:"ack_linger"`
	// PromptClients: while fewer than this many clients (MQTT connections
	// and upstream connections) have records awaiting Kafka, a client's
	// QoS 1/2 records are produced with PromptLinger instead of AckLinger,
	// from when none of its records await Kafka until none do again. A
	// client with a window of N in flight, publishing alone, is bound by
	// the round trip, which the linger would lengthen for no batching;
	// under many clients the longer linger saves CPU. Upstream
	// connections, each a remote broker's whole feed, always use
	// AckLinger. 0 turns this off. Default 4.
	PromptClients int `yaml:"prompt_clients"`
	// PromptLinger is the linger for those records; it applies only when
	// shorter than AckLinger. Default 100µs.
	PromptLinger time.Duration `yaml:"prompt_linger"`
	// FlushTimeout bounds how long shutdown waits for Kafka to acknowledge
	// records still in flight. Default 30s.
	FlushTimeout time.Duration `yaml:"flush_timeout"`
}

// Embedded reports whether the embedded Kafka is to be started.
func (k KafkaConfig) Embedded() bool { return strings.TrimSpace(k.Bootstrap) == "" }

// MQTTConfig configures the embedded MQTT broker.
type MQTTConfig struct {
	// Addr is the MQTT over TCP listener. Default ":1883"; empty disables it.
	Addr string `yaml:"addr"`
	// WSAddr is the MQTT over WebSocket listener (paths /mqtt and /,
	// subprotocol mqtt). Default ":8083"; empty disables it.
	WSAddr string `yaml:"ws_addr"`
	// TLSAddr is the MQTT over TLS listener (conventionally ":8883"); it
	// needs tls.cert_file and tls.key_file. Default empty (disabled).
	TLSAddr string `yaml:"tls_addr"`
	// WSSAddr is the MQTT over secure WebSocket listener. Default empty
	// (disabled).
	WSSAddr string `yaml:"wss_addr"`
	// MessageExpiryMax is the longest the broker keeps a retained message,
	// a message queued for a subscriber, or an unfinished QoS 1/2 exchange
	// of a session; an MQTT 5 publisher's longer message expiry interval
	// is cut to it. Whole seconds. Default 0: kept until replaced,
	// completed, or the publisher's own expiry.
	MessageExpiryMax time.Duration `yaml:"message_expiry_max"`
	// SessionExpiryMax is the longest the broker keeps the session of a
	// disconnected client (its subscriptions and queued messages); MQTT 5
	// clients asking for longer are granted this. Whole seconds. Default
	// 0: as long as an MQTT 5 client asks, and forever for an MQTT 3
	// persistent session.
	SessionExpiryMax time.Duration `yaml:"session_expiry_max"`
}

// HTTPConfig configures the HTTP server.
type HTTPConfig struct {
	// Addr serves /healthz, /readyz and /metrics. Default ":8080"; empty disables it.
	Addr string `yaml:"addr"`
	// TLSAddr serves the same over HTTPS (and the WebSocket API over WSS);
	// it needs tls.cert_file and tls.key_file. Default empty (disabled).
	TLSAddr string `yaml:"tls_addr"`
	// Pprof serves Go's profiler under /debug/pprof/ on Addr. Default false.
	Pprof bool `yaml:"pprof"`
	// ReadHeaderTimeout is how long a client may take to send its request
	// headers. Default 10s.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	// ReadTimeout is how long a client may take to send a whole request.
	// Upgraded WebSocket connections are exempt. Default 30s.
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// WriteTimeout bounds writing a response (it must be positive). Upgraded
	// WebSocket connections are exempt. Default 60s.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// IdleTimeout closes keep-alive connections idle this long. Default 120s.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
}

// WebSocketConfig configures the JSON WebSocket API (/socket/in,
// /socket/out, /kafka/cluster/info) on the HTTP server.
type WebSocketConfig struct {
	// Enabled serves the API on http.addr. Default true.
	Enabled bool `yaml:"enabled"`
	// AllowedOrigins are browser origins allowed besides the server's own
	// ("https://app.example.com", "app.example.com:8443", or "*").
	// Clients that send no Origin header are always allowed. Default none.
	// Pages from these origins may also log in to MQTT over WebSocket
	// with the browser's client certificate.
	AllowedOrigins []string `yaml:"allowed_origins"`
	// MaxFrameBytes is the largest frame a client may send. Default 4194304.
	MaxFrameBytes int `yaml:"max_frame_bytes"`
	// PingInterval is how often the server pings each socket; a socket
	// silent for two intervals is closed. Default 30s.
	PingInterval time.Duration `yaml:"ping_interval"`
	// MaxInflight is how many records one produce socket may have awaiting
	// Kafka before the server stops reading it. Default 1000.
	MaxInflight int `yaml:"max_inflight"`
	// ProduceRate limits records per second per produce socket (error
	// 42901 above it); 0 is unlimited. Default 0.
	ProduceRate int `yaml:"produce_rate"`
	// SendQueue is how many records wait for one consume socket before its
	// partitions are paused. Default 1000.
	SendQueue int `yaml:"send_queue"`
	// SessionTimeout is the Kafka consumer group session timeout of
	// consume sockets. Default 10s.
	SessionTimeout time.Duration `yaml:"session_timeout"`
}

// MappingConfig holds the mapping rules in both syntaxes.
type MappingConfig struct {
	// TopicRegexList is Confluent MQTT Proxy's "kafkaTopic:regex,..." list.
	// Its rules come before Rules. Default empty.
	TopicRegexList string `yaml:"topic_regex_list"`
	// Rules, Unmatched and DefaultTopic: see mapping.Config. With no rules
	// at all, every MQTT topic goes to the Kafka topic "mqtt".
	mapping.Config `yaml:",inline"`
}

// LogConfig configures logging.
type LogConfig struct {
	// Level is debug, info, warn or error. Default info.
	Level string `yaml:"level"`
	// Format is text or json. Default text.
	Format string `yaml:"format"`
}

// Default returns the configuration with every default filled in.
func Default() Config {
	return Config{
		DataDir: "./data",
		Kafka: KafkaConfig{
			EmbeddedAddr:           "127.0.0.1:9092",
			CreateTopics:           true,
			TopicPartitions:        3,
			TopicReplicationFactor: -1,
			MaxTopics:              10000,
			MaxMessageBytes:        1000000,
			InflightBudgetBytes:    64 << 20,
			FlushTimeout:           30 * time.Second,
			AckLinger:              time.Millisecond,
			PromptClients:          4,
			PromptLinger:           100 * time.Microsecond,
		},
		MQTT: MQTTConfig{Addr: ":1883", WSAddr: ":8083"},
		HTTP: HTTPConfig{
			Addr:              ":8080",
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       30 * time.Second,
			WriteTimeout:      60 * time.Second,
			IdleTimeout:       120 * time.Second,
		},
		TLS: TLSConfig{ReloadInterval: 10 * time.Second},
		WebSocket: WebSocketConfig{
			Enabled:        true,
			MaxFrameBytes:  4 << 20,
			PingInterval:   30 * time.Second,
			MaxInflight:    1000,
			SendQueue:      1000,
			SessionTimeout: 10 * time.Second,
		},
		Mapping: MappingConfig{Config: mapping.Config{DefaultTopic: "mqtt"}},
		Log:     LogConfig{Level: "info", Format: "text"},
	}
}

// Error is a configuration error: one or more problems, each naming the key
// and the bad value. The daemon exits with code 2 on it.
type Error struct {
	Problems []string
}

func (e *Error) Error() string {
	if len(e.Problems) == 1 {
		return "invalid configuration: " + e.Problems[0]
	}
	return fmt.Sprintf("invalid configuration (%d problems):\n  - %s", len(e.Problems), strings.Join(e.Problems, "\n  - "))
}

// DecodeYAML decodes a YAML document onto cfg strictly: unknown keys are
// errors, and so is a second document, which would otherwise be ignored.
// An empty input (or one of comments only) leaves cfg as it was. A key it
// does not know, a value of the wrong type, or a null value (see
// addNulls) is a *FileError naming the key's path; the rest of the
// document is decoded onto cfg nonetheless.
func DecodeYAML(r io.Reader, cfg *Config) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		var te *yaml.TypeError
		if errors.As(err, &te) {
			root := documentRoot(data)
			fe := describeTypeErrors(root, te.Errors)
			fe.addNulls(root)
			return fe
		}
		return err
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return err
	default:
		return fmt.Errorf("only one YAML document is allowed, but a second one starts at line %d", next.Line)
	}
	fe := &FileError{}
	if fe.addNulls(documentRoot(data)); len(fe.Problems) > 0 {
		return fe
	}
	return nil
}

// LoadFile decodes the YAML file at path onto cfg. Its error is an
// *Error.
func LoadFile(path string, cfg *Config) error {
	if fe, err := loadFile(path, cfg); err != nil {
		return err
	} else if fe != nil {
		return &Error{Problems: fe.Problems}
	}
	return nil
}

// loadFile decodes the YAML file at path onto cfg. Keys it does not know
// or whose values have the wrong type are returned in a FileError, with
// the rest of the file decoded onto cfg, so that validation can report
// its problems too; any other failure is an *Error.
func loadFile(path string, cfg *Config) (*FileError, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, &Error{Problems: []string{fmt.Sprintf("reading config file: %v", err)}}
	}
	if err := DecodeYAML(bytes.NewReader(b), cfg); err != nil {
		var fe *FileError
		if errors.As(err, &fe) {
			out := &FileError{Keys: fe.Keys, Nulls: map[string]string{}}
			in := func(p string) string { return fmt.Sprintf("config file %s %s", path, p) }
			for _, p := range fe.Problems {
				out.Problems = append(out.Problems, in(p))
			}
			for k, p := range fe.Nulls {
				out.Nulls[k] = in(p)
			}
			return out, nil
		}
		return nil, &Error{Problems: []string{fmt.Sprintf("config file %s: %v", path, err)}}
	}
	return nil, nil
}

// Mapper builds the mapper the configuration describes: the rules of
// topic_regex_list first, then the YAML rules. Its error lists every
// problem, each prefixed with its key (errors.Join).
func (c *Config) Mapper() (*mapping.Mapper, error) {
	var errs []error
	rules, err := mapping.ParseRegexList(c.Mapping.TopicRegexList)
	if err != nil {
		for _, e := range unjoin(err) {
			errs = append(errs, fmt.Errorf("mapping.topic_regex_list (--topic-regex-list, env TRIBUTARY_TOPIC_REGEX_LIST or KAFKA_MQTT_TOPIC_REGEX_LIST) %q: %w", c.Mapping.TopicRegexList, e))
		}
	}
	// The YAML rules are checked on their own so that problems name their
	// index in mapping.rules, not their place after the list's rules.
	if _, err := mapping.New(c.Mapping.Config); err != nil {
		for _, e := range unjoin(err) {
			if fe, ok := errors.AsType[*mapping.FieldError](e); ok {
				// Named like the other settings: by key and flag.
				errs = append(errs, fmt.Errorf("%s %q: %w", settingName("mapping."+fe.Field), fe.Value, fe.Err))
				continue
			}
			errs = append(errs, fmt.Errorf("mapping.%w", e))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	// Each rule is named where it was configured, not by its place in
	// the joined list.
	for i := range rules {
		rules[i].Label = fmt.Sprintf("topic_regex_list item %d", i+1)
	}
	mc := c.Mapping.Config
	mc.Rules = slices.Clone(mc.Rules)
	for i := range mc.Rules {
		mc.Rules[i].Label = fmt.Sprintf("mapping.rules[%d]", i)
	}
	mc.Rules = append(rules, mc.Rules...)
	return mapping.New(mc)
}

// HasUpstream reports whether an upstream of that name is configured.
func (c *Config) HasUpstream(name string) bool {
	return slices.ContainsFunc(c.Upstreams, func(u UpstreamConfig) bool { return u.Name == name })
}

// Validate checks the whole configuration and returns an *Error listing
// every problem, or nil.
func (c *Config) Validate() error {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	var listeners []listener
	for _, l := range c.optionalListeners() {
		if l.addr == "" {
			continue
		}
		listeners = append(listeners, l)
	}
	if !c.Kafka.Embedded() {
		protocol := c.Kafka.Properties["security.protocol"]
		if protocol == "" {
			protocol = "plaintext" // librdkafka's default
		}
		for _, why := range bootstrapProblems(c.Kafka.Bootstrap, protocol) {
			add("%s %q: %s", settingName("kafka.bootstrap"), c.Kafka.Bootstrap, why)
		}
	}
	if c.Kafka.Embedded() {
		if c.Kafka.EmbeddedAddr == "" {
			add("kafka.embedded_addr (--embedded-kafka-addr) is empty but no kafka.bootstrap is set")
		} else {
			listeners = append(listeners, listener{"kafka.embedded_addr (--embedded-kafka-addr)", c.Kafka.EmbeddedAddr})
		}
		if c.DataDir == "" {
			add("data_dir (--data-dir) is empty but the embedded Kafka needs it")
		}
	}
	// Two listeners clash on one port when they bind the same host,
	// however it is spelled, or one of them binds every address;
	// 127.0.0.1:1883 and 10.0.0.1:1883 do not.
	type bound struct{ host, key string }
	ports := map[int][]bound{}
	for _, l := range listeners {
		host, port, err := parseAddr(l.addr)
		if err != nil {
			add("%s %q: %v", l.key, l.addr, err)
			continue
		}
		if port == 0 {
			continue
		}
		clash := ""
		for _, o := range ports[port] {
			if sameHost(o.host, host) {
				clash = o.key
				break
			}
		}
		if clash != "" {
			add("%s %q: port %d is already used by %s", l.key, l.addr, port, clash)
			continue
		}
		ports[port] = append(ports[port], bound{host, l.key})
	}

	if c.Kafka.TopicPartitions < 1 {
		add("%s %d: must be at least 1", settingName("kafka.topic_partitions"), c.Kafka.TopicPartitions)
	}
	if c.Kafka.MaxTopics < 0 {
		add("%s %d: must be 0 (no limit) or more", settingName("kafka.max_topics"), c.Kafka.MaxTopics)
	}
	if c.Kafka.TopicReplicationFactor == 0 || c.Kafka.TopicReplicationFactor < -1 {
		add("%s %d: must be -1 (broker default) or at least 1", settingName("kafka.topic_replication_factor"), c.Kafka.TopicReplicationFactor)
	}
	if c.Kafka.MaxMessageBytes < 1024 {
		add("%s %d: must be at least 1024", settingName("kafka.max_message_bytes"), c.Kafka.MaxMessageBytes)
	} else if c.Kafka.MaxMessageBytes > maxMessageBytes {
		add("%s %d: must be at most %d (librdkafka's largest message.max.bytes, %d, less %d bytes of record framing)",
			settingName("kafka.max_message_bytes"), c.Kafka.MaxMessageBytes, maxMessageBytes, librdkafkaMaxMessageBytes, librdkafkaMaxMessageBytes-maxMessageBytes)
	}
	if c.Kafka.InflightBudgetBytes < int64(c.Kafka.MaxMessageBytes) {
		add("%s %d: must be at least kafka.max_message_bytes (%d)", settingName("kafka.inflight_budget_bytes"), c.Kafka.InflightBudgetBytes, c.Kafka.MaxMessageBytes)
	}
	if d := c.MQTT.MessageExpiryMax; d < 0 || d%time.Second != 0 {
		add("mqtt.message_expiry_max (--mqtt-message-expiry-max) %s: must be 0 (no limit) or a whole number of seconds", d)
	}
	if d := c.MQTT.SessionExpiryMax; d < 0 || d%time.Second != 0 || d > math.MaxUint32*time.Second {
		add("mqtt.session_expiry_max (--mqtt-session-expiry-max) %s: must be 0 (no limit) or a whole number of seconds up to %s (MQTT's limit)", d, time.Duration(math.MaxUint32)*time.Second)
	}
	if c.Kafka.AckLinger > 15*time.Minute {
		add("%s %s: must be at most 15m (librdkafka's limit)", settingName("kafka.ack_linger"), c.Kafka.AckLinger)
	}
	if c.Kafka.PromptClients < 0 || c.Kafka.PromptClients > 1000000 {
		add("%s %d: must be from 0 (off) to 1000000", settingName("kafka.prompt_clients"), c.Kafka.PromptClients)
	}
	if c.Kafka.PromptLinger < 0 || c.Kafka.PromptLinger > 15*time.Minute {
		add("%s %s: must be from 0 to 15m (librdkafka's limit)", settingName("kafka.prompt_linger"), c.Kafka.PromptLinger)
	}
	if c.Kafka.FlushTimeout <= 0 {
		add("%s %s: must be positive", settingName("kafka.flush_timeout"), c.Kafka.FlushTimeout)
	}
	for k, v := range c.Kafka.Properties {
		if name, ok := propertyAliases[k]; ok {
			if _, both := c.Kafka.Properties[name]; both {
				add("kafka.properties.%s and kafka.properties.%s: the two are one librdkafka property under two names; set one", k, name)
			}
		}
		switch {
		case k == "bootstrap.servers" || k == "metadata.broker.list":
			add("kafka.properties.%s: set kafka.bootstrap (--kafka-bootstrap) instead", k)
		case strings.HasPrefix(k, "{topic}."):
			// confluent-kafka-go sets these as a default topic
			// configuration that replaces, in an order that changes from
			// run to run, the topic-level settings Tributary makes
			// (partitioner, auto.offset.reset).
			add("kafka.properties.%s: write %s without the {topic}. prefix; topic-level properties apply to every topic", k, strings.TrimPrefix(k, "{topic}."))
		case k == "transactional.id":
			add("kafka.properties.transactional.id: Tributary's producers are not transactional; every record would be refused")
		case k == "group.instance.id" && c.WebSocket.Enabled:
			add("kafka.properties.group.instance.id: each WebSocket consumer is a member of its own; one static id shared by all of them would have each fence the one before")
		case k == "max.poll.interval.ms" && c.WebSocket.Enabled:
			if ms, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && time.Duration(ms)*time.Millisecond < c.WebSocket.SessionTimeout {
				add("kafka.properties.max.poll.interval.ms %q: must be at least websocket.session_timeout (%s), which is the consumers' session.timeout.ms", v, c.WebSocket.SessionTimeout)
			}
		case k == "partition.assignment.strategy" && strings.Contains(v, "cooperative"):
			// The WebSocket consumers take and give back whole
			// assignments at each rebalance (eager); incremental
			// rebalancing would need the other half of that protocol.
			add("kafka.properties.partition.assignment.strategy %q: cooperative rebalancing is not supported by the WebSocket consumers; use range or roundrobin", v)
		case k == "group.protocol" && v != "classic":
			add("kafka.properties.group.protocol %q: only the classic consumer group protocol is supported by the WebSocket consumers", v)
		case k == "delivery.report.only.error" && isTrue(v):
			add("kafka.properties.%s %q: Tributary acknowledges a record only when Kafka's delivery report for it comes, so it needs every report", k, v)
		case (k == "acks" || k == "request.required.acks") && isZero(v):
			add("kafka.properties.%s %q: with acks=0 Kafka confirms nothing, and Tributary acknowledges only what Kafka confirmed; use all (the default), or 1 with enable.idempotence false", k, v)
		}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		add("log.level (--log-level) %q: must be debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		add("log.format (--log-format) %q: must be text or json", c.Log.Format)
	}
	if _, err := c.Mapper(); err != nil {
		for _, e := range unjoin(err) {
			add("%v", e)
		}
	}
	for i, r := range c.Mapping.Rules {
		if r.Source == "" {
			continue
		}
		j := slices.IndexFunc(c.Upstreams, func(u UpstreamConfig) bool { return u.Name == r.Source })
		switch {
		case j < 0:
			add("mapping.rules[%d].source %q: no upstream of that name is configured, so the rule can never match", i, r.Source)
		case c.Upstreams[j].KafkaTopic != "":
			add("mapping.rules[%d].source %q: upstreams[%d] (%s) sets kafka_topic %q, which takes every message of it without the rules, so the rule can never match; remove one or the other",
				i, r.Source, j, r.Source, c.Upstreams[j].KafkaTopic)
		}
	}
	c.validateSecurity(add)
	problems = append(problems, c.WebSocket.validate()...)
	problems = append(problems, validateUpstreams(c.Upstreams)...)
	if len(problems) > 0 {
		return &Error{Problems: problems}
	}
	return nil
}

// listener is a listen address and the setting it comes from, named as
// problems name it.
type listener struct{ key, addr string }

// optionalListeners are the listeners an empty address turns off.
func (c *Config) optionalListeners() []listener {
	return []listener{
		{"mqtt.addr (--mqtt-addr)", c.MQTT.Addr},
		{"mqtt.ws_addr (--mqtt-ws-addr)", c.MQTT.WSAddr},
		{"http.addr (--http-addr)", c.HTTP.Addr},
		{"mqtt.tls_addr (--mqtt-tls-addr)", c.MQTT.TLSAddr},
		{"mqtt.wss_addr (--mqtt-wss-addr)", c.MQTT.WSSAddr},
		{"http.tls_addr (--http-tls-addr)", c.HTTP.TLSAddr},
	}
}

// unjoin splits an errors.Join result into its parts.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	var w interface{ Unwrap() error }
	if errors.As(err, &w) {
		if inner, ok := w.Unwrap().(interface{ Unwrap() []error }); ok {
			prefix := strings.TrimSuffix(err.Error(), w.Unwrap().Error())
			var out []error
			for _, e := range inner.Unwrap() {
				out = append(out, fmt.Errorf("%s%w", prefix, e))
			}
			return out
		}
	}
	return []error{err}
}

// bootstrapProblems checks a comma-separated list of Kafka brokers as
// librdkafka reads it, and says what is wrong with each bad item.
// librdkafka logs and passes over what it cannot use; a list of nothing
// usable leaves it without a broker to ask, waiting for one forever, and
// a bad scheme makes it drop the rest of the list.
func bootstrapProblems(list, securityProtocol string) []string {
	var problems []string
	brokers := 0
	for i, item := range strings.Split(list, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue // passed over, as librdkafka does (a trailing comma)
		}
		brokers++
		if why := brokerProblem(item, securityProtocol); why != "" {
			problems = append(problems, fmt.Sprintf("item %d %q: %s", i+1, item, why))
		}
	}
	if brokers == 0 {
		problems = append(problems, "names no broker (host:port, comma-separated)")
	}
	return problems
}

// brokerProblem says what is wrong with one bootstrap item, or "": an
// optional scheme:// naming the security protocol, then host:port,
// [IPv6]:port, or a host or IPv6 address alone, which librdkafka gives
// port 9092; anything after a '/' is ignored, and an empty host is
// localhost, as librdkafka reads them.
func brokerProblem(item, securityProtocol string) string {
	addr := item
	if scheme, rest, ok := strings.Cut(item, "://"); ok {
		known := slices.ContainsFunc([]string{"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}, func(p string) bool { return strings.EqualFold(p, scheme) })
		switch {
		case !known:
			return fmt.Sprintf("%q is not a security protocol (PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; or write host:port alone)", scheme)
		case !strings.EqualFold(scheme, securityProtocol):
			return fmt.Sprintf("%s:// is not kafka.properties.security.protocol (%s), so librdkafka would use neither this broker nor the ones after it", scheme, securityProtocol)
		}
		addr = rest
	}
	addr, _, _ = strings.Cut(addr, "/")
	host := addr
	bracketed := strings.HasPrefix(addr, "[") && strings.HasSuffix(addr, "]")
	if strings.Contains(addr, ":") && net.ParseIP(addr) == nil && !bracketed {
		h, port, err := net.SplitHostPort(addr)
		if err != nil {
			return fmt.Sprintf("not host:port or a host: %v", err)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Sprintf("port %q is not a number from 1 to 65535", port)
		}
		host = h
	}
	if strings.ContainsFunc(host, unicode.IsSpace) {
		return fmt.Sprintf("host %q holds white space (separate brokers with commas)", host)
	}
	return ""
}

// parseAddr checks a listen address of the form host:port and returns its port.
func parseAddr(addr string) (host string, port int, err error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("not a host:port address: %v", err)
	}
	port, err = strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("port %q is not a number from 0 to 65535", p)
	}
	return host, port, nil
}

// sameHost reports whether listeners on hosts a and b, on one port,
// would bind an address in common: one of them binds every address
// ("", 0.0.0.0, ::, ::ffff:0.0.0.0), or they are one address written two
// ways (::1 and 0:0:0:0:0:0:0:1, 127.0.0.1 and ::ffff:127.0.0.1, or
// localhost). Other host names are compared as text: what they resolve
// to is not known here.
func sameHost(a, b string) bool {
	ipA, everyA := hostIP(a)
	ipB, everyB := hostIP(b)
	switch {
	case everyA || everyB:
		return true
	case ipA == nil || ipB == nil:
		return strings.EqualFold(a, b)
	}
	return ipA.Equal(ipB)
}

// hostIP returns the address a listen host binds, every if it binds all
// of them, or nil for a host name other than localhost. net.IP's Equal
// and IsUnspecified take an IPv4-mapped IPv6 address (::ffff:a.b.c.d) as
// the IPv4 address it holds, as Go's listeners do.
func hostIP(host string) (ip net.IP, every bool) {
	if host == "" {
		return nil, true
	}
	if strings.EqualFold(strings.TrimSuffix(host, "."), "localhost") {
		// Go listens on a host name's first IPv4 address only.
		return net.IPv4(127, 0, 0, 1), false
	}
	ip = net.ParseIP(host)
	if ip == nil {
		return nil, false
	}
	return ip, ip.IsUnspecified()
}

// librdkafkaMaxMessageBytes is the largest message.max.bytes librdkafka
// takes; the producer caps its setting there.
const librdkafkaMaxMessageBytes = 1000000000

// maxMessageBytes is the largest kafka.max_message_bytes that works end to
// end: the producer sets message.max.bytes to it plus bridge's
// recordFraming (1024 bytes of room for a record's framing), which must
// stay within librdkafka's maximum, and the MQTT packet limit, a uint32,
// is it plus 64 KiB. Package config cannot import bridge (cgo), so the
// framing is written out here; TestMaxMessageBytesMatchesTheProducer ties
// the two together.
const maxMessageBytes = librdkafkaMaxMessageBytes - 1024

// propertyAliases maps other names librdkafka takes for properties that
// Tributary sets itself to the names Tributary sets them by. Given both
// names, the client would apply them in an order that changes from run to
// run. (bootstrap.servers and its other name are refused outright.)
var propertyAliases = map[string]string{
	"request.required.acks":  "acks",
	"queue.buffering.max.ms": "linger.ms",
}

// ClientProperties returns Properties for the Kafka clients, a property
// given by another name (request.required.acks) under the name Tributary
// sets it by (acks), so that the user's value is the one applied.
func (k KafkaConfig) ClientProperties() map[string]string {
	props := make(map[string]string, len(k.Properties))
	for name, v := range k.Properties {
		if to, ok := propertyAliases[name]; ok {
			name = to
		}
		props[name] = v
	}
	return props
}

// Redacted returns a copy safe to print: values of librdkafka properties
// that hold secrets are replaced.
func (c Config) Redacted() Config {
	if len(c.Kafka.Properties) > 0 {
		props := make(map[string]string, len(c.Kafka.Properties))
		for k, v := range c.Kafka.Properties {
			if isSecretKey(k) {
				v = "[redacted]"
			}
			props[k] = v
		}
		c.Kafka.Properties = props
	}
	if len(c.Upstreams) > 0 {
		ups := make([]UpstreamConfig, len(c.Upstreams))
		for i, u := range c.Upstreams {
			if u.Password != "" {
				u.Password = "[redacted]"
			}
			ups[i] = u
		}
		c.Upstreams = ups
	}
	return c
}

func isSecretKey(k string) bool {
	k = strings.ToLower(k)
	for _, s := range []string{"password", "secret", "token", "key.pem", "private", "sasl.oauthbearer.config"} {
		if strings.Contains(k, s) {
			return true
		}
	}
	return false
}

func (w WebSocketConfig) validate() []string {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	if w.MaxFrameBytes < 1024 {
		add("websocket.max_frame_bytes (--websocket-max-frame-bytes) %d: must be at least 1024", w.MaxFrameBytes)
	}
	if w.PingInterval < 100*time.Millisecond {
		add("websocket.ping_interval (--websocket-ping-interval) %s: must be at least 100ms", w.PingInterval)
	}
	if w.MaxInflight < 1 {
		add("websocket.max_inflight (--websocket-max-inflight) %d: must be at least 1", w.MaxInflight)
	}
	if w.ProduceRate < 0 {
		add("websocket.produce_rate (--websocket-produce-rate) %d: must be 0 (unlimited) or more", w.ProduceRate)
	}
	if w.SendQueue < 1 {
		add("websocket.send_queue (--websocket-send-queue) %d: must be at least 1", w.SendQueue)
	}
	if w.SessionTimeout < time.Second || w.SessionTimeout > 30*time.Minute {
		add("websocket.session_timeout (--websocket-session-timeout) %s: must be from 1s to 30m (and within the brokers' group.min/max.session.timeout.ms)", w.SessionTimeout)
	}
	for i, o := range w.AllowedOrigins {
		if strings.TrimSpace(o) == "" {
			add("websocket.allowed_origins[%d] is empty", i)
		}
	}
	return problems
}

// isTrue reads a librdkafka boolean property as true, as librdkafka
// would; a value that is no boolean is left to librdkafka's check.
func isTrue(v string) bool {
	b, err := strconv.ParseBool(strings.ToLower(strings.TrimSpace(v)))
	return err == nil && b
}

// isZero reads an integer property as 0 ("0", "00", "-0").
func isZero(v string) bool {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	return err == nil && n == 0
}
