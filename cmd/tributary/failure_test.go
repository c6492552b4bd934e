package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/tributary-io/tributary/config"
	"github.com/tributary-io/tributary/internal/testutil"
)

// outage makes Kafka unavailable and brings it back. Against the embedded
// broker it is a stopped and restarted kfake on the same port and data dir;
// against real Kafka the broker process is frozen and thawed.
type outage struct {
	bootstrap string
	down, up  func(t *testing.T)
}

func newOutage(t *testing.T) *outage {
	t.Helper()
	if bs := externalKafka(); bs != "" {
		script, err := filepath.Abs("../../scripts/kafka.sh")
		if err != nil {
			t.Fatal(err)
		}
		run := func(t *testing.T, arg string) {
			t.Helper()
			if out, err := exec.Command(script, arg).CombinedOutput(); err != nil {
				t.Fatalf("kafka.sh %s: %v: %s", arg, err, out)
			}
		}
		t.Cleanup(func() { _ = exec.Command(script, "resume").Run() })
		return &outage{bootstrap: bs, down: func(t *testing.T) { run(t, "pause") }, up: func(t *testing.T) { run(t, "resume") }}
	}
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	var mu sync.Mutex
	var c *kfake.Cluster
	startKfake := func(t *testing.T) {
		t.Helper()
		var err error
		deadline := time.Now().Add(10 * time.Second)
		for {
			mu.Lock()
			c, err = kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port), kfake.DataDir(dir))
			mu.Unlock()
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("starting kfake on port %d: %v", port, err)
		}
	}
	startKfake(t)
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		if c != nil {
			c.Close()
		}
	})
	return &outage{
		bootstrap: fmt.Sprintf("127.0.0.1:%d", port),
		down: func(t *testing.T) {
			mu.Lock()
			c.Close()
			c = nil
			mu.Unlock()
		},
		up: startKfake,
	}
}

// Kafka stops mid-stream and comes back: publishes stay unacknowledged
// meanwhile, the in-flight budget holds, QoS 0 past the budget is dropped
// and counted, and once Kafka is back every publish is acknowledged (the
// client keeps its connection throughout: its keepalive outlasts the
// outage) and in Kafka.
func TestKafkaOutageLosesNothingAcknowledged(t *testing.T) {
	o := newOutage(t)
	cfg := testConfig(t)
	cfg.Kafka.Bootstrap = o.bootstrap
	cfg.Kafka.MaxMessageBytes = 16 << 10
	cfg.Kafka.InflightBudgetBytes = 64 << 10
	topic := uniq("outage")
	cfg.Mapping.TopicRegexList = topic + ":.*"
	d := startDaemon(t, cfg)

	var overBudget atomic.Int64
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	stopOnce := sync.OnceFunc(func() { close(stopSampling); <-sampled })
	// On an early failure too, the sampler ends before the daemon stops.
	t.Cleanup(stopOnce)
	go func() {
		defer close(sampled)
		for {
			if used := d.producer.InflightBytes(); used > cfg.Kafka.InflightBudgetBytes {
				overBudget.Store(used)
			}
			select {
			case <-stopSampling:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()

	const n = 3000
	payload := strings.Repeat("p", 1000)
	c := mqttClient(t, "tcp://"+d.mqttAddr(), uniq("outage"), func(o *paho.ClientOptions) {
		o.SetKeepAlive(60 * time.Second).SetPingTimeout(30 * time.Second)
	})
	var acked sync.Map
	var ackedCount atomic.Int64
	var wg sync.WaitGroup
	var failMu sync.Mutex
	var failed []string // publishes not acknowledged, with why
	// The waiters below end with the test even when it fails early
	// (cleanups run last first: before mqttClient's disconnect).
	testDone := make(chan struct{})
	t.Cleanup(func() { close(testDone); wg.Wait() })
	for i := range n {
		if i == n/3 {
			waitFor(t, 30*time.Second, "a third of the publishes to be acknowledged", func() bool { return ackedCount.Load() >= int64(n/4) })
			o.down(t)
		}
		tok := c.Publish("dev/outage", 1, false, strconv.Itoa(i)+":"+payload)
		wg.Add(1)
		go func() {
			defer wg.Done()
			why := "no PUBACK within 120s"
			select {
			case <-tok.Done():
				if tok.Error() == nil {
					acked.Store(i, true)
					ackedCount.Add(1)
					return
				}
				why = tok.Error().Error()
			case <-time.After(120 * time.Second):
			case <-testDone:
				return
			}
			failMu.Lock()
			failed = append(failed, fmt.Sprintf("%d: %s", i, why))
			failMu.Unlock()
		}()
		if i == n/3+200 {
			// Kafka is down and the budget is full: QoS 0 is dropped, counted.
			// The QoS 1 publishes above are sent asynchronously, so wait
			// until they have used the budget before offering QoS 0.
			waitFor(t, 30*time.Second, "the in-flight budget to be used up", func() bool {
				return d.producer.InflightBytes()+int64(len(payload)) > cfg.Kafka.InflightBudgetBytes
			})
			q0 := mqttClient(t, "tcp://"+d.mqttAddr(), uniq("q0"))
			for range 50 {
				q0.Publish("dev/q0", 0, false, payload).WaitTimeout(time.Second)
			}
			waitFor(t, 10*time.Second, "QoS 0 drops to be counted", func() bool {
				return strings.Contains(metricsText(t, d.httpAddr()), `tributary_mqtt_dropped_total{reason="budget_exhausted"}`)
			})
			before := ackedCount.Load()
			time.Sleep(time.Second) // the outage lasts a while; nothing may be acknowledged meanwhile
			if now := ackedCount.Load(); now != before {
				t.Errorf("%d publishes acknowledged while Kafka was down", now-before)
			}
			o.up(t)
		}
	}
	wg.Wait()
	stopOnce()
	if v := overBudget.Load(); v > 0 {
		t.Errorf("in-flight bytes reached %d, over the budget of %d", v, cfg.Kafka.InflightBudgetBytes)
	}
	if !c.IsConnected() {
		t.Errorf("the publishing client lost its connection during the outage")
	}
	if len(failed) > 0 || ackedCount.Load() != n {
		show := failed
		if len(show) > 10 {
			show = show[:10]
		}
		t.Fatalf("%d of %d publishes acknowledged after Kafka came back; not acknowledged: %d, e.g. %q",
			ackedCount.Load(), n, len(failed), show)
	}
	recs := kafkaRecords(t, d.bootstrap, topic, n, 60*time.Second)
	inKafka := map[int]bool{}
	for _, r := range recs {
		i, err := strconv.Atoi(strings.SplitN(string(r.Value), ":", 2)[0])
		if err == nil {
			inKafka[i] = true
		}
	}
	missing := 0
	acked.Range(func(k, _ any) bool {
		if !inKafka[k.(int)] {
			missing++
		}
		return true
	})
	if missing > 0 {
		t.Fatalf("%d acknowledged publishes are not in Kafka", missing)
	}
	t.Logf("all %d publishes acknowledged and in Kafka (%d records read)", n, len(recs))
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary builds the tributary command once per test run.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tributary-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "tributary")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

type proc struct {
	cmd  *exec.Cmd
	log  *os.File
	done chan error
}

// startBinary runs the tributary binary and waits until /readyz answers 200.
func startBinary(t *testing.T, httpAddr string, args ...string) *proc {
	t.Helper()
	logf, err := os.Create(filepath.Join(t.TempDir(), "tributary.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary(t), append(args, "--http-addr", httpAddr)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, log: logf, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("tributary log:\n%s", b)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case err := <-p.done:
			p.done <- err
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("tributary exited before ready: %v\n%s", err, b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("tributary not ready after 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The process is killed (SIGKILL) right after the last PUBACK, or stopped
// with SIGTERM: after a restart every acknowledged record is in Kafka.
func TestProcessDeathKeepsAcknowledged(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			dataDir := t.TempDir()
			kafkaAddr := testutil.FreeAddr(t)
			mqttAddr, httpAddr := testutil.FreeAddr(t), testutil.FreeAddr(t)
			topic := uniq("crash")
			args := []string{"--data-dir", dataDir, "--embedded-kafka-addr", kafkaAddr, "--mqtt-addr", mqttAddr,
				"--mqtt-ws-addr", "", "--topic-regex-list", topic + ":.*"}
			bootstrap := kafkaAddr
			if bs := externalKafka(); bs != "" {
				args = append(args, "--kafka-bootstrap", bs)
				bootstrap = bs
			}
			p := startBinary(t, httpAddr, args...)

			const n = 2000
			c := mqttClient(t, "tcp://"+mqttAddr, uniq("crash"))
			toks := make([]paho.Token, n)
			for i := range n {
				toks[i] = c.Publish("dev/crash", 1, false, strconv.Itoa(i))
			}
			for i, tok := range toks {
				if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
					t.Fatalf("publish %d not acknowledged: %v", i, tok.Error())
				}
			}
			if err := p.cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-p.done:
				p.done <- err
				if sig == syscall.SIGTERM && err != nil {
					t.Errorf("after SIGTERM tributary exited with %v, want 0", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("tributary did not exit after %s", sig)
			}

			startBinary(t, httpAddr, args...)
			recs := kafkaRecords(t, bootstrap, topic, n, 30*time.Second)
			if len(recs) != n {
				t.Fatalf("after %s and a restart Kafka holds %d of %d acknowledged records", sig, len(recs), n)
			}
			for i, r := range recs {
				if string(r.Value) != strconv.Itoa(i) {
					t.Fatalf("record %d is %q: order broken", i, r.Value)
				}
			}
		})
	}
}

// Bad configuration: exit code 2, every problem named, nothing started.
func TestBadConfigExitsTwo(t *testing.T) {
	dir := t.TempDir()
	unknownKey := filepath.Join(dir, "unknown.yaml")
	if err := os.WriteFile(unknownKey, []byte("mqtt:\n  adr: \":1883\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	badRule := filepath.Join(dir, "rule.yaml")
	if err := os.WriteFile(badRule, []byte("mapping:\n  rules:\n    - match: '^a/(?P<x>[^/]+)$'\n      kafka_topic: 't.${y}'\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	badProps := filepath.Join(dir, "props.yaml")
	if err := os.WriteFile(badProps, []byte("kafka:\n  properties:\n    lingr.ms: 5\n    compression.type: brotli\n    linger.ms: abc\n"+
		"    fetch.wait.max.ms: 100\n    acks: all\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	twoDocs := filepath.Join(dir, "two.yaml")
	if err := os.WriteFile(twoDocs, []byte("log:\n  level: info\n---\nmqtt:\n  addr: \":1884\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	nullListener := filepath.Join(dir, "null.yaml")
	if err := os.WriteFile(nullListener, []byte("mqtt:\n  ws_addr:\nkafka:\n  max_topics: ~\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	takesDefault := filepath.Join(dir, "clientid.yaml")
	if err := os.WriteFile(takesDefault, []byte("upstreams:\n"+
		"  - {name: plant, url: \"tcp://broker:1883\", subscriptions: [{filter: \"a/#\"}]}\n"+
		"  - {name: backup, url: \"tcp://broker:1883\", client_id: \"tributary-plant-"+host+"\", subscriptions: [{filter: \"b/#\"}]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"client_id of another upstream's default", []string{"check-config", "--config", takesDefault},
			[]string{`upstreams[1] (backup).client_id "tributary-plant-` + host + `"`, "upstreams[0] (plant)"}},
		{"librdkafka properties", []string{"check-config", "--config", badProps, "--log-level", "loud"}, []string{
			"4 problems", "log.level", "loud",
			`kafka.properties.lingr.ms: No such configuration property: "lingr.ms"`,
			`kafka.properties.compression.type "brotli": Invalid value "brotli"`,
			`kafka.properties.linger.ms "abc": Invalid value for configuration property`}},
		{"null values", []string{"check-config", "--config", nullListener, "--log-level", "loud"}, []string{
			"3 problems", `line 2: mqtt.ws_addr: null is not a value; write "" to disable the listener`,
			"line 4: kafka.max_topics: null is not a value", "log.level"}},
		{"no Kafka broker", []string{"check-config", "--kafka-bootstrap", " , "}, []string{`kafka.bootstrap (--kafka-bootstrap) " , ": names no broker`}},
		{"two YAML documents", []string{"check-config", "--config", twoDocs}, []string{twoDocs, "only one YAML document is allowed", "line 3"}},
		{"regex does not compile", []string{"check-config", "--topic-regex-list", "bad:(["}, []string{"bad:([", "missing closing ]"}},
		{"malformed pair", []string{"check-config", "--topic-regex-list", "temperature:.*temperature,nocolon"}, []string{"nocolon"}},
		{"unknown YAML key", []string{"check-config", "--config", unknownKey}, []string{"adr"}},
		{"unknown template variable", []string{"check-config", "--config", badRule}, []string{"rules[0]", "y"}},
		{"unparsable address", []string{"check-config", "--mqtt-addr", "localhost"}, []string{"mqtt.addr", "localhost"}},
		{"two listeners on one port", []string{"check-config", "--mqtt-addr", ":18830", "--http-addr", "127.0.0.1:18830"}, []string{"http.addr", "18830", "mqtt.addr"}},
		{"not a number", []string{"check-config", "--kafka-topic-partitions", "many"}, []string{"kafka.topic_partitions", "many"}},
		{"on/off flag with a separate value", []string{"check-config", "--kafka-create-topics", "false"}, []string{"--kafka-create-topics=false", "alone it means true"}},
		{"on/off flag with a separate value before a topic", []string{"mapping", "explain", "--http-pprof", "false"}, []string{"--http-pprof=false"}},
		{"on/off flag with a bad value", []string{"check-config", "--metrics-auth=maybe"}, []string{"auth.metrics_auth", "maybe", "not a valid boolean"}},
		{"explain from an upstream nobody configured", []string{"mapping", "explain", "--source", "hls", "a"}, []string{`--source "hls"`, "no upstream"}},
		{"explain --source without a name", []string{"mapping", "explain", "a", "--source"}, []string{"--source needs an upstream name"}},
		{"all problems at once", []string{"check-config", "--topic-regex-list", "bad:([", "--mqtt-ws-addr", "nope", "--log-level", "loud"},
			[]string{"bad:([", "mqtt.ws_addr", "nope", "log.level", "loud", "3 problems"}},
		{"run refuses too", []string{"--topic-regex-list", "bad:([", "--data-dir", filepath.Join(dir, "never")}, []string{"bad:(["}},
		{"run refuses librdkafka properties", []string{"--config", badProps, "--data-dir", filepath.Join(dir, "never")}, []string{"kafka.properties.lingr.ms"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			code := realMain(context.Background(), tc.args, strings.NewReader(""), &stdout, &stderr)
			if code != 2 {
				t.Fatalf("exit code %d, want 2; stderr: %s", code, stderr.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr does not name %q:\n%s", w, stderr.String())
				}
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "never")); err == nil {
		t.Error("a bad configuration still created the data dir")
	}

	// And the real binary, as an operator runs it.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--topic-regex-list", "bad:(["}, "bad:(["},
		{[]string{"--config", badProps, "--data-dir", filepath.Join(dir, "never")}, "kafka.properties.lingr.ms"},
	} {
		out, err := exec.Command(binary(t), tc.args...).CombinedOutput()
		var ee *exec.ExitError
		if !errorsAs(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), tc.want) {
			t.Fatalf("binary %q: %v, output %s; want exit 2 naming %q", tc.args, err, out, tc.want)
		}
	}
}

func errorsAs(err error, target **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	if ok {
		*target = e
	}
	return ok
}

func TestCommands(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	rules := write("rules.yaml", "mapping:\n  rules:\n"+
		"    - {match: '^sensors/(?P<site>[^/]+)/(?P<kind>[^/]+)$', kafka_topic: 'iot.${kind}'}\n"+
		"    - {match: '^/hfp/.*$', source: hsl, kafka_topic: vehicles}\n"+
		"upstreams:\n  - name: hsl\n    url: tcp://127.0.0.1:1\n    subscriptions:\n      - {filter: '/hfp/#', qos: 1}\n")
	fixed := write("fixed.yaml", "mapping:\n  rules:\n    - {match: '^plant/.*$', kafka_topic: devices}\n"+
		"upstreams:\n  - name: plant\n    url: tcp://127.0.0.1:1\n    kafka_topic: plant-data\n    subscriptions:\n      - {filter: 'plant/#', qos: 1}\n")
	// One map feeds the producers and the consumers: the properties of
	// either kind pass.
	props := write("props.yaml", "kafka:\n  properties:\n    linger.ms: 20\n    compression.type: lz4\n    acks: all\n"+
		"    fetch.wait.max.ms: 50\n    auto.offset.reset: latest\n    partition.assignment.strategy: roundrobin\n    group.protocol: classic\n")
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want []string
	}{
		{[]string{"version"}, nil, []string{"tributary ", "(librdkafka 2."}},
		{[]string{"check-config", "--config", props}, nil, []string{"configuration ok"}},
		{[]string{"check-config", "--config", write("empty.yaml", "")}, nil, []string{"configuration ok"}},
		{[]string{"check-config", "--config", write("comments.yaml", "# nothing set yet\n")}, nil, []string{"configuration ok"}},
		{[]string{"check-config", "--topic-regex-list", "temperature:.*temperature"}, nil, []string{"configuration ok"}},
		{[]string{"mapping", "explain", "--topic-regex-list", "temperature:.*temperature,brightness:.*brightness", "house/kitchen/temperature"}, nil,
			// The first item matches; the second is never tried.
			[]string{`topic_regex_list item 1 match ".*temperature" (any source): matched`, "\nKafka topic: \"temperature\"\n",
				`key: "house/kitchen/temperature"`}},
		{[]string{"mapping", "explain", "--topic-regex-list", "temperature:.*temperature", "house/door"}, nil, []string{"no rule matched"}},
		// Rules are named where they were configured, not by their place
		// among all of them.
		{[]string{"mapping", "explain", "--config", rules, "--topic-regex-list", "a:zzz", "sensors/north/te mp"}, nil,
			[]string{"topic_regex_list item 1 match", "mapping.rules[0] match", `mapping.rules[0].kafka_topic "iot.${kind}" rendered "iot.te mp"`}},
		{[]string{"mapping", "explain", "--config", rules, "--source=hsl", "/hfp/v2/x"}, nil, []string{`from upstream "hsl"`, `Kafka topic: "vehicles"`}},
		{[]string{"mapping", "explain", "--source", "hsl", "--config", rules, "/hfp/v2/x"}, nil, []string{`Kafka topic: "vehicles"`}},
		{[]string{"mapping", "explain", "--config", rules, "/hfp/v2/x"}, nil, []string{"skipped, the publish is from a local device"}},
		// An upstream with kafka_topic sends everything there; the rules
		// apply to its messages no more.
		{[]string{"mapping", "explain", "--config", fixed, "--source", "plant", "plant/line1/temp"}, nil,
			[]string{`from upstream "plant"`, `upstreams[0] (plant) sets kafka_topic`, `Kafka topic: "plant-data"`, `key: "plant/line1/temp"`}},
		{[]string{"mapping", "explain", "--config", fixed, "plant/line1/temp"}, nil, []string{`Kafka topic: "devices"`}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr strings.Builder
			if code := realMain(context.Background(), tc.args, strings.NewReader(""), &stdout, &stderr); code != 0 {
				t.Fatalf("exit code %d; stderr: %s", code, stderr.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, stdout.String())
				}
			}
		})
	}
}

// mapping explain --source says when no subscription filter of the
// upstream matches the topic, under its first line, and leaves the rest
// of the output as it was. Shared subscriptions match by their plain
// filter, whether written as $share/<group>/<filter>, $queue/<filter> or
// with shared_group.
func TestExplainTopicNoSubscriptionMatches(t *testing.T) {
	file := filepath.Join(t.TempDir(), "upstreams.yaml")
	if err := os.WriteFile(file, []byte("mapping:\n  rules:\n    - {match: '^plant/.*$', kafka_topic: devices}\n"+
		"upstreams:\n"+
		"  - name: plant\n    url: tcp://127.0.0.1:1\n    shared_group: ingest\n    subscriptions:\n"+
		"      - {filter: 'plant/#'}\n      - {filter: 'site/+/temp', qos: 0}\n"+
		"  - name: edge\n    url: tcp://127.0.0.1:1\n    kafka_topic: edge-data\n    subscriptions:\n"+
		"      - {filter: '$share/g/edge/#'}\n      - {filter: '$queue/gw/+'}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, _, err := config.Load(config.Options{Args: []string{"--config", file}})
	if err != nil {
		t.Fatal(err)
	}
	m, err := cfg.Mapper()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		source, topic string
		want          string // the added line; empty: none
	}{
		{"plant", "other/x", `not subscribed: no filter of upstreams[0] (plant) matches this topic ("plant/#", "site/+/temp"; each as $share/ingest/<filter>), so such a message does not arrive from it`},
		{"plant", "site/a/b/temp", `not subscribed: no filter of upstreams[0] (plant) matches this topic`},
		{"plant", "plant/line1/temp", ""},
		{"plant", "plant", ""},
		{"plant", "site/north/temp", ""},
		{"edge", "edge/x/y", ""},
		{"edge", "gw/1", ""},
		{"edge", "gw/1/2", `not subscribed: no filter of upstreams[1] (edge) matches this topic ("$share/g/edge/#", "$queue/gw/+"), so`},
		{"edge", "$share/g/edge/x", `not subscribed: no filter of upstreams[1] (edge)`},
		{"", "other/x", ""},
	} {
		t.Run(tc.source+" "+tc.topic, func(t *testing.T) {
			args := []string{"mapping", "explain", "--config", file, tc.topic}
			if tc.source != "" {
				args = append(args, "--source", tc.source)
			}
			var stdout, stderr strings.Builder
			if code := realMain(context.Background(), args, strings.NewReader(""), &stdout, &stderr); code != 0 {
				t.Fatalf("exit code %d; stderr: %s", code, stderr.String())
			}
			unchanged, fixed := explainFixedTopic(cfg.Upstreams, tc.source, tc.topic)
			if !fixed {
				unchanged = m.Explain(tc.source, tc.topic)
			}
			got := stdout.String()
			if tc.want == "" {
				if got != unchanged {
					t.Fatalf("output\n%s\nwant\n%s", got, unchanged)
				}
				return
			}
			lines := strings.SplitAfter(got, "\n")
			if len(lines) < 2 || !strings.HasPrefix(lines[1], tc.want) || !strings.Contains(lines[1], "not_subscribed") {
				t.Fatalf("output\n%s\nwant as its second line one starting %q", got, tc.want)
			}
			if rest := lines[0] + strings.Join(lines[2:], ""); rest != unchanged {
				t.Fatalf("the rest of the output changed:\n%s\nwant\n%s", rest, unchanged)
			}
		})
	}
}

// Shutting down while Kafka is unreachable ends within the flush deadline
// and acknowledges nothing that Kafka did not take; what was left is
// counted for the exit status and logged once.
func TestShutdownWithKafkaDown(t *testing.T) {
	o := newOutage(t)
	cfg := testConfig(t)
	cfg.Kafka.Bootstrap = o.bootstrap
	cfg.Kafka.FlushTimeout = 2 * time.Second
	topic := uniq("shutdown")
	cfg.Mapping.TopicRegexList = topic + ":.*"
	d, buf := startLogged(t, cfg)
	c := mqttClient(t, "tcp://"+d.mqttAddr(), uniq("sd"))
	publish(t, c, "dev/sd", 1, false, "before")
	o.down(t)
	defer o.up(t)
	tok := c.Publish("dev/sd", 1, false, "during")
	waitFor(t, 10*time.Second, "the publish to reach the producer", func() bool { return d.producer.InflightBytes() > 0 })
	start := time.Now()
	d.stop()
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("shutdown took %s with a flush deadline of %s", took, cfg.Kafka.FlushTimeout)
	}
	if tok.WaitTimeout(time.Second) && tok.Error() == nil {
		t.Error("a publish Kafka never took was acknowledged")
	}
	if d.unflushed != 1 {
		t.Errorf("%d records counted as left at the flush deadline, want 1", d.unflushed)
	}
	if lines := buf.Lines("flush deadline"); len(lines) != 1 || !strings.Contains(lines[0], "records=1") {
		t.Errorf("want one line about the flush deadline naming 1 record, got:\n%s", strings.Join(lines, "\n"))
	}
}

// A failure part-way through start-up is an error naming the cause, with
// whatever had started stopped again, never a crash.
// With JSON logs, the line saying why the process exits is JSON too.
func TestStartFailureLoggedAsJSON(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	var stdout, stderr strings.Builder
	code := realMain(context.Background(), []string{"--log-format", "json", "--mqtt-addr", busy.Addr().String(), "--mqtt-ws-addr=",
		"--http-addr", "127.0.0.1:0", "--embedded-kafka-addr", "127.0.0.1:0", "--data-dir", t.TempDir()}, strings.NewReader(""), &stdout, &stderr)
	if code != 1 {
		t.Fatalf("exit code %d, want 1; stderr:\n%s", code, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	for _, l := range lines {
		if !json.Valid([]byte(l)) {
			t.Errorf("not JSON: %s", l)
		}
	}
	if last := lines[len(lines)-1]; !strings.Contains(last, busy.Addr().String()) {
		t.Errorf("the last line does not say why: %s", last)
	}
}

func TestStartFailureIsAnError(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, tc := range []struct {
		name   string
		mutate func(*config.Config)
		want   string
	}{
		{"unknown librdkafka property", func(c *config.Config) { c.Kafka.Properties = map[string]string{"no.such.property": "1"} }, "no.such.property"},
		{"MQTT port taken", func(c *config.Config) { c.MQTT.Addr = busy.Addr().String() }, busy.Addr().String()},
		{"HTTP port taken", func(c *config.Config) { c.HTTP.Addr = busy.Addr().String() }, busy.Addr().String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			tc.mutate(&cfg)
			d, err := start(cfg, testLogger(t))
			if err == nil {
				d.stop()
				t.Fatal("start succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not name %q", err, tc.want)
			}
		})
	}
}
