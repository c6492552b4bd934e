// Command tributary-bench measures how fast Tributary moves MQTT publishes
// and WebSocket frames into Kafka, and Kafka records out to WebSocket
// clients, against native librdkafka clients and Debian's mosquitto in
// the same run and on the same Kafka; and Tributary's QoS 1 latency at a
// paced rate and its memory per idle connection. Every produce scenario's
// clock stops only when Kafka's high watermarks show all of its records,
// so nothing is taken on trust from acknowledgements. See
// docs/benchmarks.md and docs/performance.md.
package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/tributary-io/tributary/bridge"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	var code int
	if len(os.Args) > 1 && os.Args[1] == bareEndpointArg {
		code = bareEndpointMain(os.Stdin, os.Stdout, os.Stderr)
	} else {
		code = realMain(ctx, os.Args[1:], os.Stdout, os.Stderr)
	}
	stop()
	os.Exit(code)
}

// scenario is one measured workload.
type scenario struct {
	name    string
	kind    kind
	clients int  // MQTT connections or WebSocket sockets
	qos     byte // MQTT QoS
	window  int  // QoS 1 publishes in flight per connection
	batch   int  // ws-out: records per frame (batchSize)
	// headers (native-produce): each record carries the four mqtt.*
	// headers Tributary adds to the publishes of loadOf's clients, so the
	// native producer writes the same records the bridge does.
	headers bool
	// loadOf names the Tributary MQTT scenario whose load this one sends
	// elsewhere (mosquitto, the bare endpoint) or whose records it writes
	// itself (native-produce): its client ids and topics, and so the
	// records' keys and headers, are that scenario's, byte for byte, so
	// that the comparison is of the same bytes. Empty for the MQTT
	// scenarios themselves, whose clients are named after them.
	loadOf string
}

// clientPrefix is what the ids of s's clients start with: <prefix>-NNN.
func (s scenario) clientPrefix() string { return cmp.Or(s.loadOf, s.name) }

// benchClient returns the client id and topic of client i of a load whose
// ids start with prefix: <prefix>-NNN, publishing to bench/<client id>
// (which Tributary maps to the scenario's Kafka topic, with the MQTT topic
// as the record's key).
func benchClient(prefix string, i int) (id, topic string) {
	id = fmt.Sprintf("%s-%03d", prefix, i)
	return id, "bench/" + id
}

// kind says how a scenario loads which system.
type kind int

const (
	// nativeProduce is librdkafka's producer: the produce baseline.
	nativeProduce kind = iota
	// mqttLoad is MQTT clients publishing through Tributary over TCP.
	mqttLoad
	// mqttWSLoad is the same over MQTT-over-WebSocket (/mqtt).
	mqttWSLoad
	// mosquittoLoad is the same MQTT load against Debian's mosquitto with
	// one subscriber draining it (mosquitto.go): no Kafka.
	mosquittoLoad
	// bareLoad is the same MQTT load against the bare endpoint (bare.go),
	// which only acknowledges: the protocol's own cost.
	bareLoad
	// latencyLoad is paced QoS 1 publishing through Tributary (latency.go).
	latencyLoad
	// idleConns is many idle MQTT connections to Tributary (connections.go).
	idleConns
	// upstreamDrain is a remote mosquitto's backlog drained by
	// mosquitto_sub, then by Tributary's upstream source (upstream.go).
	upstreamDrain
	// wsIn produces through /socket/in sockets (wsbench.go).
	wsIn
	// nativeConsume is librdkafka's consumer: the baseline of wsOut.
	nativeConsume
	// wsOut consumes through one /socket/out socket.
	wsOut
)

// consumes reports whether the scenario reads a pre-filled topic.
func (s scenario) consumes() bool { return s.kind == nativeConsume || s.kind == wsOut }

// needsBridge reports whether the scenario runs Tributary.
func (s scenario) needsBridge() bool {
	return s.kind != nativeProduce && s.kind != nativeConsume && s.kind != mosquittoLoad && s.kind != bareLoad
}

// needsTopic reports whether the scenario produces into a fresh topic.
func (s scenario) needsTopic() bool {
	return s.kind != mosquittoLoad && s.kind != bareLoad && s.kind != idleConns && !s.consumes()
}

func (s scenario) describe() string {
	load := fmt.Sprintf("%d MQTT client(s), QoS %d", s.clients, s.qos)
	if s.qos > 0 {
		load += fmt.Sprintf(", %d in flight each", s.window)
	}
	switch s.kind {
	case nativeProduce:
		if s.headers {
			return "confluent-kafka-go producer straight to Kafka (acks=all, idempotent), each record with the key and the four mqtt.* headers Tributary gives " + s.loadOf + "'s records"
		}
		return "confluent-kafka-go producer straight to Kafka (acks=all, idempotent), with the keys of " + s.loadOf + "'s records"
	case mqttWSLoad:
		return load + ", MQTT over WebSocket (/mqtt), through Tributary"
	case mosquittoLoad:
		return load + ", into Debian's mosquitto with one subscriber draining bench/# (no Kafka)"
	case bareLoad:
		if s.qos == 0 {
			return load + ", into a bare endpoint that only reads and counts them (no broker, no Kafka): the publishes' own cost"
		}
		return load + ", into a bare endpoint that only reads and acknowledges (no broker, no Kafka): the protocol's own cost"
	case latencyLoad:
		return fmt.Sprintf("%d MQTT clients, QoS 1, paced at half the mqtt-qos1 rate (or --latency-rate): PUBACK and publish → Kafka consumer latency", s.clients)
	case idleConns:
		return "--connections idle MQTT clients (keepalive 300 s): connect rate, Tributary's RSS per connection"
	case upstreamDrain:
		return "remote mosquitto's QoS 1 backlog drained by mosquitto_sub, then by Tributary's upstream source"
	case wsIn:
		return fmt.Sprintf("%d WebSocket sockets on /socket/in, pipelined, through Tributary", s.clients)
	case nativeConsume:
		return "confluent-kafka-go consumer in a fresh group reading a pre-filled topic from the earliest offset"
	case wsOut:
		return fmt.Sprintf("1 WebSocket socket on /socket/out (batchSize=%d, autoCommit=true) reading a pre-filled topic, through Tributary", max(1, s.batch))
	}
	return load + ", through Tributary"
}

// scenarios lists every scenario in the order they run. latency-qos1
// comes after mqtt-qos1, whose rate it takes.
var scenarios = []scenario{
	{name: "native-produce", kind: nativeProduce, loadOf: "mqtt-qos0"},
	{name: "native-produce-headers", kind: nativeProduce, headers: true, loadOf: "mqtt-qos0"},
	{name: "mqtt-qos0", kind: mqttLoad, clients: 10, qos: 0},
	{name: "mosquitto-qos0", kind: mosquittoLoad, clients: 10, qos: 0, loadOf: "mqtt-qos0"},
	{name: "bare-qos0", kind: bareLoad, clients: 10, qos: 0, loadOf: "mqtt-qos0"},
	{name: "mqtt-qos1", kind: mqttLoad, clients: 100, qos: 1, window: 10},
	{name: "mosquitto-qos1", kind: mosquittoLoad, clients: 100, qos: 1, window: 10, loadOf: "mqtt-qos1"},
	{name: "bare-qos1", kind: bareLoad, clients: 100, qos: 1, window: 10, loadOf: "mqtt-qos1"},
	{name: "mqtt-qos1-single", kind: mqttLoad, clients: 1, qos: 1, window: 100},
	{name: "mqtt-ws-qos1", kind: mqttWSLoad, clients: 100, qos: 1, window: 10},
	{name: "latency-qos1", kind: latencyLoad, clients: 100, qos: 1},
	{name: "connections", kind: idleConns},
	{name: "upstream", kind: upstreamDrain},
	{name: "ws-in", kind: wsIn, clients: 10},
	{name: "native-consume", kind: nativeConsume},
	{name: "ws-out", kind: wsOut, batch: 1},
	{name: "ws-out-batch100", kind: wsOut, batch: 100},
}

type options struct {
	bootstrap  string
	bin        string
	scenarios  []scenario
	records    int
	payload    int
	partitions int
	timeout    time.Duration
	jsonPath   string
	keep       bool
	repeat     int
	env        []string
	// args are extra command-line arguments for every Tributary.
	args []string
	// profileSeconds > 0 fetches a CPU profile of that many seconds, and
	// an allocation profile, from each Tributary that takes a load.
	profileSeconds int
	// connections is how many idle clients the connections scenario opens.
	connections int
	// latencyRate is latency-qos1's total publish rate; 0 takes half the
	// mqtt-qos1 rate of the same round.
	latencyRate float64
	// mosquittoInflight is the remote broker's max_inflight_messages in
	// the upstream scenario.
	mosquittoInflight int
	// wsWindow is how many frames each ws-in socket keeps awaiting results.
	wsWindow int
	// kafkaPID is the pid of the Kafka broker behind bootstrap when it
	// runs on this machine (0: not measured); its CPU time counts in each
	// scenario's CPU per record.
	kafkaPID int
}

// errReported marks an error the flag package has already printed.
var errReported = errors.New("reported")

type envFlag []string

func (e *envFlag) String() string { return strings.Join(*e, " ") }

func (e *envFlag) Set(v string) error {
	if !strings.Contains(v, "=") {
		return fmt.Errorf("%q is not KEY=VALUE", v)
	}
	*e = append(*e, v)
	return nil
}

// listFlag collects a repeatable flag's values.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, " ") }

func (l *listFlag) Set(v string) error {
	*l = append(*l, v)
	return nil
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	var names string
	var env envFlag
	var tribArgs listFlag
	fs := flag.NewFlagSet("tributary-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.bootstrap, "kafka-bootstrap", "", "Kafka bootstrap servers; empty starts an in-process kfake")
	fs.StringVar(&o.bin, "tributary-bin", "", "Tributary binary to run; empty builds ./cmd/tributary")
	fs.StringVar(&names, "scenarios", "", "comma-separated scenarios to run (default all: "+scenarioNames()+")")
	fs.IntVar(&o.records, "records", 200000, "records per scenario")
	fs.IntVar(&o.payload, "payload", 100, "payload bytes per record")
	fs.IntVar(&o.partitions, "partitions", 3, "partitions of each scenario's Kafka topic")
	fs.DurationVar(&o.timeout, "timeout", 120*time.Second, "limit for a scenario's sends, and again for its records to show up in Kafka")
	fs.StringVar(&o.jsonPath, "json", "", "also write the results as JSON to this file")
	fs.IntVar(&o.repeat, "repeat", 1, "run every scenario this many times (rounds) and report each one's median-rate round")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory (Tributary logs and metrics) even when every scenario passed")
	fs.IntVar(&o.mosquittoInflight, "mosquitto-inflight", 1000, "upstream scenario: the remote mosquitto's max_inflight_messages (0: no limit)")
	fs.IntVar(&o.kafkaPID, "kafka-pid", 0, "pid of the Kafka broker behind --kafka-bootstrap when it runs on this machine (scripts/kafka.sh pid): its CPU time is measured per scenario and counts in the CPU per record (0: not measured)")
	fs.IntVar(&o.wsWindow, "ws-window", 1000, "ws-in scenario: frames each socket keeps awaiting their results (at most Tributary's websocket.max_inflight to keep it busy, default 1000)")
	fs.Var(&env, "tributary-env", "KEY=VALUE added to Tributary's environment, e.g. GODEBUG=gctrace=1 (repeatable)")
	fs.Var(&tribArgs, "tributary-arg", "command-line argument added to Tributary's, e.g. --tributary-arg=--kafka-ack-linger=500us (repeatable)")
	fs.IntVar(&o.profileSeconds, "profile", 0, "fetch a CPU profile of this many seconds from the start of each loaded Tributary's run, and its allocation profile at the end, into the kept temporary directory (0: off)")
	fs.IntVar(&o.connections, "connections", 10000, "connections scenario: idle MQTT clients to open")
	fs.Float64Var(&o.latencyRate, "latency-rate", 0, "latency-qos1 scenario: total publishes per second (0: half the mqtt-qos1 rate of the same round, measuring mqtt-qos1 first if it is not selected)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: tributary-bench [flags]\n\nScenarios:\n")
		for _, s := range scenarios {
			fmt.Fprintf(stderr, "  %-22s %s\n", s.name, s.describe())
		}
		fmt.Fprintf(stderr, "\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, fmt.Errorf("%w: %w", errReported, err)
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	o.env, o.args = env, tribArgs
	if o.profileSeconds > 0 {
		o.env = append(o.env, "TRIBUTARY_HTTP_PPROF=true")
		o.keep = true
	}
	var problems []error
	if o.records < 1 {
		problems = append(problems, fmt.Errorf("--records %d: must be at least 1", o.records))
	}
	if o.payload < 0 {
		problems = append(problems, fmt.Errorf("--payload %d: must not be negative", o.payload))
	}
	if o.partitions < 1 {
		problems = append(problems, fmt.Errorf("--partitions %d: must be at least 1", o.partitions))
	}
	if o.repeat < 1 {
		problems = append(problems, fmt.Errorf("--repeat %d: must be at least 1", o.repeat))
	}
	if o.mosquittoInflight < 0 || o.mosquittoInflight > 65535 {
		problems = append(problems, fmt.Errorf("--mosquitto-inflight %d: must be 0 (no limit) to 65535", o.mosquittoInflight))
	}
	if o.kafkaPID < 0 {
		problems = append(problems, fmt.Errorf("--kafka-pid %d: must be a process id", o.kafkaPID))
	} else if o.kafkaPID > 0 && o.bootstrap == "" {
		problems = append(problems, fmt.Errorf("--kafka-pid %d: only with --kafka-bootstrap (kfake runs in the harness's process and counts as the harness's CPU)", o.kafkaPID))
	} else if o.kafkaPID > 0 {
		if _, err := processCPU(o.kafkaPID); err != nil {
			problems = append(problems, fmt.Errorf("--kafka-pid %d: %w", o.kafkaPID, err))
		}
	}
	if o.wsWindow < 1 {
		problems = append(problems, fmt.Errorf("--ws-window %d: must be at least 1", o.wsWindow))
	}
	if o.profileSeconds < 0 {
		problems = append(problems, fmt.Errorf("--profile %d: must not be negative", o.profileSeconds))
	}
	if o.connections < 1 {
		problems = append(problems, fmt.Errorf("--connections %d: must be at least 1", o.connections))
	}
	if o.latencyRate < 0 || math.IsNaN(o.latencyRate) || math.IsInf(o.latencyRate, 0) {
		problems = append(problems, fmt.Errorf("--latency-rate %v: must be a positive number, or 0 for half the mqtt-qos1 rate", o.latencyRate))
	}
	if o.timeout <= 0 {
		problems = append(problems, fmt.Errorf("--timeout %s: must be positive", o.timeout))
	}
	want := map[string]bool{}
	if names != "" {
		for n := range strings.SplitSeq(names, ",") {
			n = strings.TrimSpace(n)
			if !isScenario(n) {
				problems = append(problems, fmt.Errorf("--scenarios: unknown scenario %q (known: %s)", n, scenarioNames()))
			}
			want[n] = true
		}
	}
	for _, s := range scenarios {
		if names == "" || want[s.name] {
			o.scenarios = append(o.scenarios, s)
		}
	}
	return o, errors.Join(problems...)
}

func scenarioNames() string {
	var ns []string
	for _, s := range scenarios {
		ns = append(ns, s.name)
	}
	return strings.Join(ns, ",")
}

func isScenario(name string) bool {
	for _, s := range scenarios {
		if s.name == name {
			return true
		}
	}
	return false
}

// realMain runs the benchmark and returns the exit code: 0 when every
// scenario got all its records into Kafka (targets missed or not), 1 on
// errors, 2 on bad usage.
func realMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	opts, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		if !errors.Is(err, errReported) {
			fmt.Fprintf(stderr, "tributary-bench: %v\n", err)
		}
		return 2
	}
	dir, err := os.MkdirTemp("", "tributary-bench-")
	if err != nil {
		fmt.Fprintf(stderr, "tributary-bench: %v\n", err)
		return 1
	}
	loadAvg := "unknown"
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(la)); len(f) >= 3 {
			loadAvg = strings.Join(f[:3], " ")
		}
	}
	b := &bench{opts: opts, dir: dir, progress: stderr, payload: makePayload(opts.payload)}
	results, err := b.run(ctx)
	if len(results) > 0 {
		fillRatios(results)
		fmt.Fprintf(stdout, "tributary-bench %s: %d records of %d bytes per scenario, median of %d round(s); Kafka: %s; %d CPUs, load average at start %s\n\n",
			time.Now().Format(time.DateOnly), opts.records, opts.payload, opts.repeat, b.kafkaName, runtime.NumCPU(), loadAvg)
		printTable(stdout, results)
		fmt.Fprintln(stdout)
		printTargets(stdout, results)
		printGenerator(stdout, results)
		printCPU(stdout, results, runtime.NumCPU())
		printDrains(stdout, results)
		printConsumers(stdout, results)
		if opts.jsonPath != "" {
			if jerr := writeJSON(opts.jsonPath, results); jerr != nil {
				err = errors.Join(err, jerr)
			}
		}
	}
	for _, r := range results {
		if !r.OK && r.Skipped == "" {
			err = errors.Join(err, fmt.Errorf("%s: %s", r.Scenario, r.Error))
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "tributary-bench: %v\n", err)
		fmt.Fprintf(stderr, "tributary-bench: Tributary logs and metrics are in %s\n", dir)
		return 1
	}
	if opts.keep {
		fmt.Fprintf(stderr, "tributary-bench: Tributary logs and metrics are in %s\n", dir)
	} else {
		os.RemoveAll(dir)
	}
	return 0
}

// makePayload returns n bytes of printable filler.
func makePayload(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = 'a' + byte(i%26)
	}
	return p
}

// bench is one run of the harness.
type bench struct {
	opts      options
	dir       string
	progress  io.Writer
	payload   []byte
	bootstrap string
	kafkaName string
	bin       string
	admin     *admin
	// filled maps a round to the topic its consume scenarios read.
	filled map[int]string
}

// run sets up Kafka and the Tributary binary, then runs each scenario on
// its own fresh topic. A scenario that fails is reported in its result;
// the error is for failures that stop the whole run.
func (b *bench) run(ctx context.Context) ([]result, error) {
	b.bootstrap, b.kafkaName = b.opts.bootstrap, b.opts.bootstrap
	if b.bootstrap == "" {
		c, addr, err := startKfake()
		if err != nil {
			return nil, err
		}
		defer c.Close()
		b.bootstrap, b.kafkaName = addr, "kfake (in-process, "+addr+")"
	}
	var err error
	if b.admin, err = newAdmin(b.bootstrap); err != nil {
		return nil, err
	}
	defer b.admin.Close()

	b.bin = b.opts.bin
	needBridge := false
	for _, s := range b.opts.scenarios {
		needBridge = needBridge || s.needsBridge()
	}
	if b.bin == "" && needBridge {
		fmt.Fprintf(b.progress, "building tributary into %s\n", b.dir)
		if b.bin, err = buildTributary(ctx, b.dir); err != nil {
			return nil, err
		}
	}

	id := make([]byte, 4)
	_, _ = rand.Read(id)
	runID := hex.EncodeToString(id)
	var rounds [][]result
	for round := 1; round <= b.opts.repeat; round++ {
		var rs []result
		for _, s := range b.opts.scenarios {
			if ctx.Err() != nil {
				return pickMedians(append(rounds, rs)), ctx.Err()
			}
			if s.kind == latencyLoad && b.opts.latencyRate == 0 && !b.selected("mqtt-qos1") {
				// latency-qos1 paces at half the mqtt-qos1 rate of
				// this round: measure that first.
				q1, _ := scenarioNamed("mqtt-qos1")
				fmt.Fprintf(b.progress, "== latency-qos1 needs this round's mqtt-qos1 rate: measuring it first\n")
				rs = append(rs, b.runOne(ctx, q1, runID, round, rs)...)
			}
			rs = append(rs, b.runOne(ctx, s, runID, round, rs)...)
		}
		rounds = append(rounds, rs)
	}
	return pickMedians(rounds), nil
}

// selected reports whether the run includes scenario name.
func (b *bench) selected(name string) bool {
	for _, s := range b.opts.scenarios {
		if s.name == name {
			return true
		}
	}
	return false
}

func scenarioNamed(name string) (scenario, bool) {
	for _, s := range scenarios {
		if s.name == name {
			return s, true
		}
	}
	return scenario{}, false
}

// runOne runs scenario s on a fresh topic; earlier holds the results of
// the round so far. It returns one result, or two for upstream:
// mosquitto_sub's and Tributary's.
func (b *bench) runOne(ctx context.Context, s scenario, runID string, round int, earlier []result) []result {
	name := s.name
	if b.opts.repeat > 1 {
		name = fmt.Sprintf("%s-%d", s.name, round)
	}
	topic := fmt.Sprintf("bench-%s-%s", runID, name)
	rs := []result{{Scenario: s.name, Records: b.opts.records}}
	var err error
	switch {
	case s.consumes():
		topic, err = b.filledTopic(ctx, runID, round)
		rs[0].drain = true
	case s.needsTopic():
		err = b.admin.createTopic(ctx, topic, b.opts.partitions)
	}
	switch s.kind {
	case mosquittoLoad, bareLoad:
		fmt.Fprintf(b.progress, "== %s: %d records, %s\n", name, b.opts.records, s.describe())
	case idleConns:
		fmt.Fprintf(b.progress, "== %s: %d idle MQTT clients (keepalive %d s) to a fresh Tributary\n", name, b.opts.connections, idleKeepalive)
	default:
		fmt.Fprintf(b.progress, "== %s: %d records, %s → Kafka topic %s\n", name, b.opts.records, s.describe(), topic)
	}
	group := fmt.Sprintf("bench-%s-%s", runID, name)
	if err != nil {
		rs[0].Error = err.Error()
	} else {
		switch s.kind {
		case nativeProduce:
			rs[0] = b.runNative(ctx, s, topic)
		case mqttLoad, mqttWSLoad:
			rs[0] = b.runMQTT(ctx, s, topic, name)
		case mosquittoLoad:
			rs[0] = b.runMosquitto(ctx, s, name)
		case bareLoad:
			rs[0] = b.runBare(ctx, s)
		case latencyLoad:
			rs[0] = b.runLatency(ctx, s, topic, name, earlier)
		case idleConns:
			rs[0] = b.runConnections(ctx, s, topic, name)
		case upstreamDrain:
			rs = b.runUpstream(ctx, topic, name)
		case wsIn:
			rs[0] = b.runWSIn(ctx, s, topic, name)
		case nativeConsume:
			rs[0] = b.runNativeConsume(ctx, s, topic, group)
		case wsOut:
			rs[0] = b.runWSOut(ctx, s, topic, group, name)
		}
	}
	// Each row holds the harness's and Kafka's CPU over its own timed
	// part (cpuSpan): that is what the report divides, so it is what is
	// shown here.
	harness := "load generator"
	if b.opts.bootstrap == "" {
		harness += " and kfake"
	}
	for i := range rs {
		r := &rs[i]
		if len(rs) == 1 {
			broker := "tributary "
			switch s.kind {
			case mosquittoLoad:
				broker = "mosquitto "
			case bareLoad:
				broker = "endpoint "
			case nativeProduce, nativeConsume:
				broker = "" // the native client is the harness's
			}
			if broker != "" {
				broker += optf(r.CPU, 2) + " s, "
			}
			fmt.Fprintf(b.progress, "   CPU over the timed part: %sharness (%s) %s s", broker, harness, optf(r.HarnessCPU, 2))
		} else {
			fmt.Fprintf(b.progress, "   %s: CPU %s s, remote mosquitto CPU %s s, harness (%s) %s s while draining", r.Scenario, optf(r.CPU, 2), optf(r.RemoteCPU, 2), harness, optf(r.HarnessCPU, 2))
		}
		if r.KafkaCPU != nil {
			fmt.Fprintf(b.progress, ", Kafka %.2f s", *r.KafkaCPU)
		}
		fmt.Fprintln(b.progress)
		switch {
		case r.Skipped != "":
			fmt.Fprintf(b.progress, "   %s\n", r.Skipped)
		case len(rs) == 1 && r.OK && r.FirstRecordSeconds != nil:
			fmt.Fprintf(b.progress, "   %d records received after %.2f s (first after %.2f s): %.0f records/s\n", r.Found, r.Seconds, *r.FirstRecordSeconds, r.Rate)
		case len(rs) == 1 && r.OK && s.kind == mosquittoLoad:
			fmt.Fprintf(b.progress, "   %d records received by the subscriber after %.2f s: %.0f records/s\n", r.Found, r.Seconds, r.Rate)
		case len(rs) == 1 && r.OK && s.kind == bareLoad && s.qos == 0:
			fmt.Fprintf(b.progress, "   %d publishes read by the endpoint after %.2f s: %.0f records/s\n", r.Found, r.Seconds, r.Rate)
		case len(rs) == 1 && r.OK && s.kind == bareLoad:
			fmt.Fprintf(b.progress, "   %d publishes acknowledged after %.2f s: %.0f records/s\n", r.Found, r.Seconds, r.Rate)
		case len(rs) == 1 && r.OK && s.kind == idleConns:
			fmt.Fprintf(b.progress, "   %d connections open after %.2f s: %.0f connections/s; Tributary's RSS grew %s KiB per connection\n",
				r.Records, r.Seconds, r.Rate, optf(kib(r.RSSPerConn), 1))
		case len(rs) == 1 && r.OK:
			fmt.Fprintf(b.progress, "   %d records in Kafka after %.2f s: %.0f records/s\n", r.Found, r.Seconds, r.Rate)
		case len(rs) == 1:
			fmt.Fprintf(b.progress, "   FAILED: %s\n", r.Error)
		case r.OK:
			fmt.Fprintf(b.progress, "   %s: %d records after %.2f s: %.0f records/s\n", r.Scenario, r.Found, r.Seconds, r.Rate)
		default:
			fmt.Fprintf(b.progress, "   %s FAILED: %s\n", r.Scenario, r.Error)
		}
	}
	return rs
}

// pickMedians reduces repeated rounds to one result per scenario: the
// round with the median rate (the lower middle one for an even count), or
// a failed round if any failed. Rates lists every round's rate.
func pickMedians(rounds [][]result) []result {
	var order []string
	byName := map[string][]result{}
	for _, rs := range rounds {
		for _, r := range rs {
			if _, ok := byName[r.Scenario]; !ok {
				order = append(order, r.Scenario)
			}
			byName[r.Scenario] = append(byName[r.Scenario], r)
		}
	}
	var out []result
	for _, name := range order {
		rs := byName[name]
		var rates []float64
		for _, r := range rs {
			rates = append(rates, r.Rate)
		}
		pick := -1
		for i, r := range rs {
			if !r.OK {
				pick = i
				break
			}
		}
		if pick < 0 {
			idx := make([]int, len(rs))
			for i := range idx {
				idx[i] = i
			}
			slices.SortStableFunc(idx, func(a, b int) int { return cmp.Compare(rs[a].Rate, rs[b].Rate) })
			pick = idx[(len(idx)-1)/2]
		}
		r := rs[pick]
		if len(rates) > 1 {
			r.Rates = rates
		}
		out = append(out, r)
	}
	return out
}

// finish fills in the timing of r from the scenario's start and the
// moment its records were counted in Kafka.
func (b *bench) finish(r *result, start, end time.Time, found int64, err error) {
	r.settle(start, end, found, err, "Kafka holds")
}

// settle fills in r from its clock and the count that where (e.g.
// "Kafka holds") found.
func (r *result) settle(start, end time.Time, found int64, err error, where string) {
	r.Found = found
	r.Seconds = end.Sub(start).Seconds()
	if r.Seconds > 0 {
		r.Rate = float64(found) / r.Seconds
	}
	switch {
	case err != nil:
		r.Error = err.Error()
	case found != int64(r.Records):
		r.Error = fmt.Sprintf("%s %d records, expected %d", where, found, r.Records)
	default:
		r.OK = true
	}
}

// runNative produces the records with librdkafka directly: the baseline.
func (b *bench) runNative(ctx context.Context, s scenario, topic string) result {
	r := result{Scenario: s.name, Records: b.opts.records}
	np, err := newNativeProducer(b.bootstrap)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer np.Close()
	if err := np.warm(topic); err != nil {
		r.Error = err.Error()
		return r
	}
	// The keys (and headers) Tributary gives the records of loadOf's
	// clients: each client's key is its MQTT topic, so the records are as
	// large and spread over the partitions alike.
	load, ok := scenarioNamed(s.loadOf)
	if !ok {
		r.Error = fmt.Sprintf("no scenario %q to take the keys of", s.loadOf)
		return r
	}
	keys := make([][]byte, load.clients)
	var headers [][]kafka.Header
	if s.headers {
		headers = make([][]kafka.Header, len(keys))
	}
	for i := range keys {
		id, topic := benchClient(load.clientPrefix(), i)
		keys[i] = []byte(topic)
		if s.headers {
			// What Tributary adds to a publish of client id on topic at
			// load's QoS, built by the same function.
			for _, h := range bridge.AppendMQTTHeaders(nil, topic, load.qos, false, id) {
				headers[i] = append(headers[i], kafka.Header{Key: h.Key, Value: h.Value})
			}
		}
	}
	sendCtx, cancel := context.WithTimeout(ctx, b.opts.timeout)
	defer cancel()
	span := b.startCPU(nil)
	start := time.Now()
	sendErr := np.produce(sendCtx, topic, keys, headers, b.payload, b.opts.records)
	found, end, err := b.admin.waitForCount(ctx, topic, b.opts.partitions, int64(b.opts.records), b.pollTimeout(sendErr))
	span.end(&r)
	b.finish(&r, start, end, found, errors.Join(sendErr, np.err(), err))
	return r
}

// daemonConfig returns the configuration of a Tributary that maps every
// bench/... MQTT topic to topic, with the run's extra environment and
// arguments.
func (b *bench) daemonConfig(topic, name string) daemonConfig {
	return daemonConfig{
		bin: b.bin, bootstrap: b.bootstrap, topic: topic, dir: b.dir, name: name,
		env: b.opts.env, args: b.opts.args,
	}
}

// profile starts fetching a CPU profile from d when --profile is set,
// and returns a function that waits for it and then saves d's allocation
// profile. Both files go to the run's directory; failures are reported
// on the progress output, not as the scenario's.
func (b *bench) profile(ctx context.Context, d *daemon, name string) func() {
	if b.opts.profileSeconds <= 0 {
		return func() {}
	}
	cpuPath := filepath.Join(b.dir, "cpu-"+name+".pprof")
	done := make(chan error, 1)
	go func() {
		done <- d.fetch(ctx, fmt.Sprintf("/debug/pprof/profile?seconds=%d", b.opts.profileSeconds), cpuPath, time.Duration(b.opts.profileSeconds+30)*time.Second)
	}()
	// The harness's own CPU (load generator, kfake) over the same seconds:
	// on a 2-core machine it is CPU that Tributary does not get.
	harnessPath := filepath.Join(b.dir, "harness-cpu-"+name+".pprof")
	harnessDone := make(chan error, 1)
	go func() { harnessDone <- profileSelf(ctx, harnessPath, time.Duration(b.opts.profileSeconds)*time.Second) }()
	return func() {
		err := errors.Join(<-done, <-harnessDone)
		allocsPath := filepath.Join(b.dir, "allocs-"+name+".pprof")
		err = errors.Join(err, d.fetch(ctx, "/debug/pprof/allocs", allocsPath, 30*time.Second))
		if err != nil {
			fmt.Fprintf(b.progress, "   profiling: %v\n", err)
			return
		}
		fmt.Fprintf(b.progress, "   profiles: go tool pprof -top %s %s (and %s); the harness's own: go tool pprof -top %s\n", b.bin, cpuPath, allocsPath, harnessPath)
	}
}

// profileSelf writes a CPU profile of the harness's process for d, or
// until ctx ends, to path.
func profileSelf(ctx context.Context, path string, d time.Duration) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return fmt.Errorf("profiling the harness: %w", err)
	}
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
	pprof.StopCPUProfile()
	return f.Close()
}

// pollTimeout is how long to wait for records in Kafka: the full timeout,
// or a short while to count what arrived when sending already failed.
func (b *bench) pollTimeout(sendErr error) time.Duration {
	if sendErr != nil {
		return 5 * time.Second
	}
	return b.opts.timeout
}

// runMQTT starts a fresh Tributary, connects the scenario's clients, and
// publishes the records through it, split evenly over the clients.
func (b *bench) runMQTT(ctx context.Context, s scenario, topic, name string) result {
	r := result{Scenario: s.name, Records: b.opts.records}
	dc := b.daemonConfig(topic, name)
	dc.mqttWS = s.kind == mqttWSLoad
	d, err := startDaemon(ctx, dc)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer d.stop()

	how, addr := mqttDial{}, d.mqttAddr
	if s.kind == mqttWSLoad {
		how.ws, addr = true, d.mqttWSAddr
	}
	l, done, err := b.dialLoad(ctx, how, addr, s, d.logPath)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer done()

	profiled := b.profile(ctx, d, name)
	span := b.startCPU(d.cpuSeconds)
	start, sendErr := l.fire(&r)
	found, end, err := b.awaitMQTTRecords(ctx, d, topic, b.pollTimeout(sendErr))
	span.end(&r)
	profiled()
	b.endDaemonRun(&r, d, name, start, end, found, err, sendErr)
	r.setLatencies(l.latencies())
	return r
}

// dropCheckAfter is how long awaitMQTTRecords waits for the records in
// Kafka before it asks Tributary whether it dropped any.
const dropCheckAfter = time.Second

// awaitMQTTRecords waits up to wait for the run's records to show up in
// topic. A QoS 0 publish Tributary dropped (its in-flight budget was full)
// never reaches Kafka: when the records are still short after
// dropCheckAfter, it reads tributary_mqtt_dropped_total once and, if any
// were dropped, waits at most 5 s more to count what did arrive, rather
// than the whole timeout. Asking only then keeps the HTTP round trip to
// /metrics out of a run whose records all arrive in time, whose clock
// would otherwise stop that much later: native-produce pays no such cost.
func (b *bench) awaitMQTTRecords(ctx context.Context, d *daemon, topic string, wait time.Duration) (int64, time.Time, error) {
	want := int64(b.opts.records)
	first := min(wait, dropCheckAfter)
	found, end, err := b.admin.waitForCount(ctx, topic, b.opts.partitions, want, first)
	if found >= want || first == wait || ctx.Err() != nil {
		return found, end, err
	}
	rest := wait - first
	var dropErr error
	if dropped, err := d.metric("tributary_mqtt_dropped_total"); err == nil && dropped > 0 {
		dropErr = fmt.Errorf("Tributary dropped %.0f QoS 0 publishes (tributary_mqtt_dropped_total; see kafka.inflight_budget_bytes)", dropped)
		rest = min(rest, 5*time.Second)
	}
	found, end, err = b.admin.waitForCount(ctx, topic, b.opts.partitions, want, rest)
	return found, end, errors.Join(dropErr, err)
}

// cpuSpan measures, over a scenario's timed part, the CPU time of the
// process the scenario loads (Tributary, mosquitto or the bare endpoint),
// of the harness's own process (load generator, native client, kfake when
// it runs in-process) and of the local Kafka broker of --kafka-pid: one
// span for all of them, so that every figure the report divides by the
// records and the seconds covers those seconds alone, not starting and
// stopping brokers or dialing clients.
type cpuSpan struct {
	b        *bench
	proc     func() (float64, error) // the loaded process's CPU so far; nil for none
	proc0    float64
	procErr  error
	harness0 float64
	kafka0   float64
	kafkaErr error
}

// startCPU begins a span; call it right before the timed part starts.
// proc, if not nil, reads the CPU time of the process the scenario loads.
func (b *bench) startCPU(proc func() (float64, error)) cpuSpan {
	s := cpuSpan{b: b, proc: proc, harness0: selfCPU()}
	s.kafka0, s.kafkaErr = b.kafkaCPU()
	if proc != nil {
		s.proc0, s.procErr = proc()
	}
	return s
}

// end sets r's CPU (with a proc), HarnessCPU and KafkaCPU to the CPU used
// since the span began; call it right when the timed part ends.
func (s cpuSpan) end(r *result) {
	if s.proc != nil && s.procErr == nil {
		if cpu1, err := s.proc(); err == nil {
			r.CPU = ptr(centi(cpu1 - s.proc0))
		}
	}
	r.HarnessCPU = ptr(centi(selfCPU() - s.harness0))
	r.KafkaCPU = s.b.kafkaSince(s.kafka0, s.kafkaErr)
}

// kafkaCPU returns the CPU time the local Kafka broker of --kafka-pid has
// used so far; 0 and no error when it is not measured.
func (b *bench) kafkaCPU() (float64, error) {
	if b.opts.kafkaPID <= 0 {
		return 0, nil
	}
	return processCPU(b.opts.kafkaPID)
}

// kafkaSince returns the local Kafka broker's CPU time since kafkaCPU
// returned k0 and err0, or nil when it is not measured.
func (b *bench) kafkaSince(k0 float64, err0 error) *float64 {
	if b.opts.kafkaPID <= 0 || err0 != nil {
		return nil
	}
	k1, err := b.kafkaCPU()
	if err != nil {
		return nil
	}
	return ptr(centi(k1 - k0))
}

// processCPU returns the user plus system CPU time process pid has used,
// all its threads together.
func processCPU(pid int) (float64, error) {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("reading process stat: %w", err)
	}
	return parseStatCPU(string(st))
}

// selfCPU returns the user plus system CPU seconds this process used.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// split divides n into k parts that differ by at most one.
func split(n, k int) []int {
	parts := make([]int, k)
	for i := range parts {
		parts[i] = n / k
		if i < n%k {
			parts[i]++
		}
	}
	return parts
}

// firstError returns the first non-nil error and how many there were.
func firstError(errs []error) error {
	var first error
	n := 0
	for _, err := range errs {
		if err != nil {
			if first == nil {
				first = err
			}
			n++
		}
	}
	if n > 1 {
		return fmt.Errorf("%d clients failed; first: %w", n, first)
	}
	return first
}

// centi rounds CPU seconds to the 10 ms the kernel counts them in.
func centi(s float64) float64 { return math.Round(s*100) / 100 }
