package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tributary-io/tributary/mapping"
)

// Setting is one configuration key reachable from a flag, an environment
// variable and the YAML file. The table of settings is the single source
// for flags, env names and the README's reference table.
type Setting struct {
	Flag  string   // flag name without dashes
	Env   []string // environment variables, the first is canonical
	Key   string   // YAML key path
	Usage string
	// Bool marks an on/off setting, whose flag given bare means true.
	Bool bool
	set  func(*Config, string) error
	get  func(*Config) string
}

// Settings lists every setting in the order they are documented.
func Settings() []Setting {
	return append([]Setting{
		str("kafka-bootstrap", "kafka.bootstrap", "Kafka bootstrap servers (host:port,...); empty starts the embedded evaluation Kafka",
			func(c *Config) *string { return &c.Kafka.Bootstrap }),
		str("embedded-kafka-addr", "kafka.embedded_addr", "listen address of the embedded Kafka",
			func(c *Config) *string { return &c.Kafka.EmbeddedAddr }),
		str("data-dir", "data_dir", "directory for the embedded Kafka's data",
			func(c *Config) *string { return &c.DataDir }),
		str("mqtt-addr", "mqtt.addr", "MQTT over TCP listen address; empty disables it",
			func(c *Config) *string { return &c.MQTT.Addr }),
		str("mqtt-ws-addr", "mqtt.ws_addr", "MQTT over WebSocket listen address (paths /mqtt and /); empty disables it",
			func(c *Config) *string { return &c.MQTT.WSAddr }),
		duration("mqtt-message-expiry-max", "mqtt.message_expiry_max", "longest a retained message, a message queued for a subscriber, or an unfinished QoS 1/2 exchange of a session is kept; a longer MQTT 5 message expiry is cut to it (whole seconds; 0: until replaced, completed or the publisher's own expiry)",
			func(c *Config) *time.Duration { return &c.MQTT.MessageExpiryMax }),
		duration("mqtt-session-expiry-max", "mqtt.session_expiry_max", "longest the session (subscriptions, queued messages) of a disconnected MQTT client is kept; MQTT 5 clients asking for longer get this (whole seconds; 0: as long as an MQTT 5 client asks, forever for an MQTT 3 persistent session)",
			func(c *Config) *time.Duration { return &c.MQTT.SessionExpiryMax }),
		str("http-addr", "http.addr", "HTTP listen address for /healthz, /readyz, /metrics; empty disables it",
			func(c *Config) *string { return &c.HTTP.Addr }),
		boolean("http-pprof", "http.pprof", "serve Go's profiler under /debug/pprof/ on the HTTP address (for diagnosis; keep it off on untrusted networks)",
			func(c *Config) *bool { return &c.HTTP.Pprof }),
		withEnv(str("topic-regex-list", "mapping.topic_regex_list", "mapping rules as kafkaTopic:regex[,kafkaTopic:regex...] (Confluent MQTT Proxy syntax)",
			func(c *Config) *string { return &c.Mapping.TopicRegexList }), "KAFKA_MQTT_TOPIC_REGEX_LIST"),
		{
			Flag: "mapping-unmatched", Key: "mapping.unmatched",
			Usage: "what happens to publishes no rule matches: default_topic, drop, reject, or empty (local subscribers only)",
			set: func(c *Config, v string) error {
				c.Mapping.Unmatched = mapping.Policy(v)
				return nil
			},
			get: func(c *Config) string { return string(c.Mapping.Unmatched) },
		},
		str("mapping-default-topic", "mapping.default_topic", "Kafka topic for unmatched publishes with the default_topic policy, and for all publishes when no rules are set",
			func(c *Config) *string { return &c.Mapping.DefaultTopic }),
		boolean("kafka-create-topics", "kafka.create_topics", "create missing Kafka topics named by mapping rules",
			func(c *Config) *bool { return &c.Kafka.CreateTopics }),
		integer("kafka-topic-partitions", "kafka.topic_partitions", "partitions of topics the bridge creates",
			func(c *Config) *int { return &c.Kafka.TopicPartitions }),
		integer("kafka-max-topics", "kafka.max_topics", "most distinct Kafka topics records may name besides the configured ones; a record for one more is refused (0: no limit)",
			func(c *Config) *int { return &c.Kafka.MaxTopics }),
		integer("kafka-topic-replication-factor", "kafka.topic_replication_factor", "replication factor of topics the bridge creates (-1: broker default)",
			func(c *Config) *int { return &c.Kafka.TopicReplicationFactor }),
		integer("kafka-max-message-bytes", "kafka.max_message_bytes", "largest record produced (payload, key and headers); larger ones are refused",
			func(c *Config) *int { return &c.Kafka.MaxMessageBytes }),
		{
			Flag: "inflight-budget-bytes", Key: "kafka.inflight_budget_bytes",
			Usage: "bytes of records awaiting Kafka's acknowledgement, across all clients, before the bridge stops reading",
			set: func(c *Config, v string) error {
				n, err := strconv.ParseInt(v, 10, 64)
				c.Kafka.InflightBudgetBytes = n
				return err
			},
			get: func(c *Config) string { return strconv.FormatInt(c.Kafka.InflightBudgetBytes, 10) },
		},
		{
			Flag: "kafka-ack-linger", Key: "kafka.ack_linger",
			Usage: "librdkafka linger for QoS 1/2 records, whose clients wait for Kafka (a duration; negative: use kafka.properties' linger.ms)",
			set: func(c *Config, v string) error {
				d, err := time.ParseDuration(v)
				c.Kafka.AckLinger = d
				return err
			},
			get: func(c *Config) string { return c.Kafka.AckLinger.String() },
		},
		integer("kafka-prompt-clients", "kafka.prompt_clients", "while fewer clients than this have records awaiting Kafka, QoS 1/2 records use kafka.prompt_linger (0: off)",
			func(c *Config) *int { return &c.Kafka.PromptClients }),
		duration("kafka-prompt-linger", "kafka.prompt_linger", "librdkafka linger for QoS 1/2 records while few clients publish (see kafka.prompt_clients)",
			func(c *Config) *time.Duration { return &c.Kafka.PromptLinger }),
		{
			Flag: "flush-timeout", Key: "kafka.flush_timeout",
			Usage: "how long shutdown waits for Kafka to acknowledge records in flight",
			set: func(c *Config, v string) error {
				d, err := time.ParseDuration(v)
				c.Kafka.FlushTimeout = d
				return err
			},
			get: func(c *Config) string { return c.Kafka.FlushTimeout.String() },
		},
		str("log-level", "log.level", "debug, info, warn or error",
			func(c *Config) *string { return &c.Log.Level }),
		str("log-format", "log.format", "text or json",
			func(c *Config) *string { return &c.Log.Format }),
		boolean("websocket-enabled", "websocket.enabled", "serve the JSON WebSocket API (/socket/in, /socket/out, /kafka/cluster/info) on the HTTP address",
			func(c *Config) *bool { return &c.WebSocket.Enabled }),
		{
			Flag: "websocket-allowed-origins", Key: "websocket.allowed_origins",
			Usage: "browser origins allowed besides the server's own, comma-separated (* allows any); clients sending no Origin are always allowed; pages from these origins may also log in to MQTT over WebSocket with a client certificate",
			set: func(c *Config, v string) error {
				c.WebSocket.AllowedOrigins = nil
				for _, o := range strings.Split(v, ",") {
					if o = strings.TrimSpace(o); o != "" {
						c.WebSocket.AllowedOrigins = append(c.WebSocket.AllowedOrigins, o)
					}
				}
				return nil
			},
			get: func(c *Config) string { return strings.Join(c.WebSocket.AllowedOrigins, ",") },
		},
		integer("websocket-max-frame-bytes", "websocket.max_frame_bytes", "largest frame a WebSocket API client may send; larger ones close the socket (1009)",
			func(c *Config) *int { return &c.WebSocket.MaxFrameBytes }),
		duration("websocket-ping-interval", "websocket.ping_interval", "how often the server pings WebSocket API sockets; a socket silent for two intervals is closed",
			func(c *Config) *time.Duration { return &c.WebSocket.PingInterval }),
		integer("websocket-max-inflight", "websocket.max_inflight", "records one /socket/in socket may have awaiting Kafka before the server stops reading it",
			func(c *Config) *int { return &c.WebSocket.MaxInflight }),
		integer("websocket-produce-rate", "websocket.produce_rate", "records per second per /socket/in socket; more get error 42901 (0: unlimited)",
			func(c *Config) *int { return &c.WebSocket.ProduceRate }),
		integer("websocket-send-queue", "websocket.send_queue", "records waiting for one /socket/out socket before its partitions are paused",
			func(c *Config) *int { return &c.WebSocket.SendQueue }),
		duration("websocket-session-timeout", "websocket.session_timeout", "Kafka consumer group session timeout of /socket/out sockets",
			func(c *Config) *time.Duration { return &c.WebSocket.SessionTimeout }),
	}, securitySettings()...)
}

// Default returns the setting's default value as text.
func (s Setting) Default() string {
	c := Default()
	return s.get(&c)
}

func envName(flagName string) string {
	return "TRIBUTARY_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func str(flagName, key, usage string, field func(*Config) *string) Setting {
	return Setting{
		Flag: flagName, Key: key, Usage: usage,
		set: func(c *Config, v string) error { *field(c) = v; return nil },
		get: func(c *Config) string { return *field(c) },
	}
}

func boolean(flagName, key, usage string, field func(*Config) *bool) Setting {
	return Setting{
		Flag: flagName, Key: key, Usage: usage, Bool: true,
		set: func(c *Config, v string) error {
			b, err := strconv.ParseBool(v)
			*field(c) = b
			return err
		},
		get: func(c *Config) string { return strconv.FormatBool(*field(c)) },
	}
}

func integer(flagName, key, usage string, field func(*Config) *int) Setting {
	return Setting{
		Flag: flagName, Key: key, Usage: usage,
		set: func(c *Config, v string) error {
			n, err := strconv.Atoi(v)
			*field(c) = n
			return err
		},
		get: func(c *Config) string { return strconv.Itoa(*field(c)) },
	}
}

func duration(flagName, key, usage string, field func(*Config) *time.Duration) Setting {
	return Setting{
		Flag: flagName, Key: key, Usage: usage,
		set: func(c *Config, v string) error {
			d, err := time.ParseDuration(v)
			*field(c) = d
			return err
		},
		get: func(c *Config) string { return field(c).String() },
	}
}

func withEnv(s Setting, extra ...string) Setting {
	s.Env = append(s.Env, extra...)
	return s
}

// Options are the inputs Load reads.
type Options struct {
	// Args are the command-line arguments after the program and subcommand names.
	Args []string
	// LookupEnv reads the environment (os.LookupEnv in production).
	LookupEnv func(string) (string, bool)
	// Output receives flag usage and errors; nil discards them.
	Output io.Writer
	// Name is used in usage messages.
	Name string
	// CheckKafkaProperties, when set, asks the Kafka client library whether
	// it accepts kafka.properties, and returns the ones it refuses; Load
	// reports them with every other problem. Package config does not link
	// that library (it is cgo): the command passes bridge.CheckProperties.
	CheckKafkaProperties func(props map[string]string) []PropertyProblem
}

// PropertyProblem is a kafka.properties entry the Kafka client library
// refuses.
type PropertyProblem struct {
	Name string
	// Unknown means the library has no property of that name. The value is
	// then not shown: it may be a secret under a misspelled name.
	Unknown bool
	// Reason is the library's explanation.
	Reason string
}

// Load builds the configuration from defaults, the YAML file (--config or
// TRIBUTARY_CONFIG), the environment and flags, in that order of rising
// precedence, validates it, and returns it with the remaining positional
// arguments. Errors are *Error (bad configuration) or flag.ErrHelp.
func Load(opts Options) (Config, []string, error) {
	if opts.LookupEnv == nil {
		opts.LookupEnv = func(string) (string, bool) { return "", false }
	}
	if opts.Output == nil {
		opts.Output = io.Discard
	}
	settings := Settings()
	fs := flag.NewFlagSet(opts.Name, flag.ContinueOnError)
	fs.SetOutput(opts.Output)
	configPath := fs.String("config", "", "YAML config file (env TRIBUTARY_CONFIG)")
	values := make([]string, len(settings))
	for i, s := range settings {
		usage := s.Usage + " (env " + strings.Join(s.envNames(), ", ") + ")"
		values[i] = s.Default()
		if s.Bool {
			fs.Var((*boolFlag)(&values[i]), s.Flag, usage)
		} else {
			fs.StringVar(&values[i], s.Flag, values[i], usage)
		}
	}
	if err := fs.Parse(opts.Args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return Config{}, nil, err
		}
		return Config{}, nil, &Error{Problems: []string{err.Error()}}
	}
	setFlags := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { setFlags[f.Name] = true })

	cfg := Default()
	path := *configPath
	if !setFlags["config"] {
		if v, ok := opts.LookupEnv("TRIBUTARY_CONFIG"); ok {
			path = v
		}
	}
	var problems, fileKeys []string
	var nulls map[string]string
	if path != "" {
		fe, err := loadFile(path, &cfg)
		if err != nil {
			return Config{}, nil, err
		}
		if fe != nil {
			// The rest of the file was decoded: validation reports its
			// problems too, except for the keys that did not decode.
			problems, fileKeys, nulls = append(problems, fe.Problems...), fe.Keys, fe.Nulls
		}
	}
	// A value that does not parse leaves the setting as it was, so that
	// validation does not judge other settings against it.
	apply := func(s Setting, v string) error {
		prev := cfg
		err := s.set(&cfg, v)
		if err != nil {
			cfg = prev
		}
		return err
	}
	fromEnv := map[string]string{} // setting key → the environment variable its value came from
	replaced := map[string]bool{}  // setting keys whose file value an environment variable or flag replaced
	for _, s := range settings {
		env, v, ok := lookupSetting(s, opts.LookupEnv)
		if !ok || setFlags[s.Flag] {
			continue // a flag beats the environment, whatever its value
		}
		if err := apply(s, v); err != nil {
			problems = append(problems, fmt.Sprintf("%s (env %s) %q: %v", s.Key, env, v, cleanParseErr(err)))
		} else {
			fromEnv[s.Key] = env
			replaced[s.Key] = true
		}
	}
	for i, s := range settings {
		if !setFlags[s.Flag] {
			continue
		}
		if err := apply(s, values[i]); err != nil {
			problems = append(problems, fmt.Sprintf("%s (--%s) %q: %v", s.Key, s.Flag, values[i], cleanParseErr(err)))
		} else {
			replaced[s.Key] = true
		}
	}
	// A key the file left null keeps no default unseen when the
	// environment or a flag gives it a value (a file of keys left to be
	// set that way).
	for key, p := range nulls {
		if replaced[settingOf(key)] {
			problems = slices.DeleteFunc(problems, func(q string) bool { return q == p })
		}
	}
	if p := strayBoolValue(fs, opts.Args); p != "" {
		problems = append(problems, p)
	}
	problems = append(problems, expandSecrets(&cfg, opts.LookupEnv)...)
	if err := cfg.Validate(); err != nil {
		var ce *Error
		if !errors.As(err, &ce) {
			return Config{}, nil, err
		}
		// A key whose value did not parse, or whose secret could not be
		// read, is reported once, for that; so is a key of the file that
		// did not decode, unless the environment or a flag replaced its
		// value, which is then judged too. Validation's own problems are
		// all kept, several of them under one key included.
		before := problems
		for _, p := range ce.Problems {
			if !slices.ContainsFunc(before, func(r string) bool { return problemKey(r) == problemKey(p) }) &&
				(replaced[settingOf(problemKey(p))] || !slices.ContainsFunc(fileKeys, func(k string) bool { return aboutKey(p, k) })) {
				problems = append(problems, namingEnv(p, fromEnv))
			}
		}
	}
	if opts.CheckKafkaProperties != nil && len(cfg.Kafka.Properties) > 0 {
		problems = append(problems, propertyProblems(cfg.Kafka.Properties, opts.CheckKafkaProperties(cfg.Kafka.Properties), problems)...)
	}
	if len(problems) > 0 {
		return Config{}, nil, &Error{Problems: problems}
	}
	return cfg, fs.Args(), nil
}

// aboutKey reports whether a validation problem is about key (a path as
// "upstreams[0] (plant).subscriptions") or a key under it.
func aboutKey(problem, key string) bool {
	rest, ok := strings.CutPrefix(problem, key)
	return ok && (rest == "" || strings.ContainsRune(" :.[", rune(rest[0])))
}

// settingOf is the setting a path within it belongs to: the list
// "websocket.allowed_origins" for "websocket.allowed_origins[1]".
func settingOf(path string) string {
	if i := strings.IndexByte(path, '['); i >= 0 {
		return path[:i]
	}
	return path
}

// problemKey is the setting a problem is about: its text up to the first
// space or colon ("kafka.topic_partitions" in "kafka.topic_partitions
// (--kafka-topic-partitions) \"many\": not a valid integer").
func problemKey(problem string) string {
	if i := strings.IndexAny(problem, " :"); i >= 0 {
		return problem[:i]
	}
	return problem
}

// namingEnv names, in a validation problem about a setting whose value
// came from the environment, the variable instead of the flag
// ("mqtt.addr (env TRIBUTARY_MQTT_ADDR)" for "mqtt.addr (--mqtt-addr)"):
// that is where the value to fix is.
func namingEnv(problem string, fromEnv map[string]string) string {
	key := problemKey(problem)
	env, ok := fromEnv[key]
	if !ok {
		return problem
	}
	if rest, ok := strings.CutPrefix(problem, settingName(key)); ok {
		return key + " (env " + env + ")" + rest
	}
	return problem
}

// settingName is key as problems name it: followed by the flag that sets
// it, when one does ("mapping.unmatched (--mapping-unmatched)").
func settingName(key string) string {
	for _, s := range Settings() {
		if s.Key == key {
			return key + " (--" + s.Flag + ")"
		}
	}
	return key
}

// propertyProblems words the Kafka client's refusals like every other
// problem: the key, the value (unless it may be a secret), the reason. A
// property that already has a problem in reported (one Tributary checks
// itself, such as group.protocol) is not reported twice.
func propertyProblems(props map[string]string, refused []PropertyProblem, reported []string) []string {
	var problems []string
	for _, p := range refused {
		key := "kafka.properties." + p.Name
		if slices.ContainsFunc(reported, func(r string) bool { return problemKey(r) == key }) {
			continue
		}
		v, reason := props[p.Name], p.Reason
		switch {
		case p.Unknown:
			problems = append(problems, fmt.Sprintf("%s: %s", key, reason))
		case isSecretKey(p.Name):
			if v != "" {
				reason = strings.ReplaceAll(reason, v, "[redacted]")
			}
			problems = append(problems, fmt.Sprintf("%s [redacted]: %s", key, reason))
		default:
			problems = append(problems, fmt.Sprintf("%s %q: %s", key, v, reason))
		}
	}
	return problems
}

func (s Setting) envNames() []string {
	return append([]string{envName(s.Flag)}, s.Env...)
}

// boolFlag is the flag of an on/off setting: "--name" alone means true,
// "--name=false" turns it off. The value is checked with the other
// settings, so a bad one is reported alongside them.
type boolFlag string

func (b *boolFlag) String() string     { return string(*b) }
func (b *boolFlag) Set(v string) error { *b = boolFlag(v); return nil }
func (b *boolFlag) IsBoolFlag() bool   { return true }

// strayBoolValue says what is wrong when the first argument after the
// flags is "true" or "false" (or another boolean) and the flag before it
// an on/off one given bare: "--kafka-create-topics false" means the flag
// alone (true) and a stray "false", not what was meant.
func strayBoolValue(fs *flag.FlagSet, args []string) string {
	rest := fs.Args()
	i := len(args) - len(rest) - 1
	if len(rest) == 0 || i < 0 || strings.Contains(args[i], "=") {
		return ""
	}
	if _, err := strconv.ParseBool(rest[0]); err != nil {
		return ""
	}
	f := fs.Lookup(strings.TrimLeft(args[i], "-"))
	if f == nil {
		return ""
	}
	if _, ok := f.Value.(*boolFlag); !ok {
		return ""
	}
	return fmt.Sprintf("--%s %s: an on/off flag takes a value only after \"=\" (--%s=%s); alone it means true", f.Name, rest[0], f.Name, rest[0])
}

// lookupSetting returns the environment variable that sets s, if any, and
// its value. The first of s's names that is set wins, except that an
// empty (or blank) value gives way to a later name set to something: a
// deployment template that leaves TRIBUTARY_TOPIC_REGEX_LIST empty does
// not hide the KAFKA_MQTT_TOPIC_REGEX_LIST of a Confluent MQTT Proxy
// setup.
func lookupSetting(s Setting, lookup func(string) (string, bool)) (env, value string, ok bool) {
	for _, name := range s.envNames() {
		v, set := lookup(name)
		switch {
		case !set:
		case strings.TrimSpace(v) != "":
			return name, v, true
		case !ok:
			env, value, ok = name, v, true // blank: applies if no later name has a value
		}
	}
	return env, value, ok
}

// EnvNames returns the environment variables that set this setting,
// canonical first.
func (s Setting) EnvNames() []string { return s.envNames() }

func cleanParseErr(err error) error {
	var ne *strconv.NumError
	if errors.As(err, &ne) {
		return fmt.Errorf("not a valid %s", map[string]string{"ParseBool": "boolean", "ParseInt": "integer", "Atoi": "integer", "ParseFloat": "number"}[ne.Func])
	}
	return err
}
