package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tributary-io/tributary/config"
	"github.com/tributary-io/tributary/internal/testutil"
)

// The integration suite runs against the embedded Kafka (kfake) by default
// and against a real Kafka when TRIBUTARY_TEST_KAFKA_BOOTSTRAP is set
// (make test-kafka).
func externalKafka() string { return os.Getenv("TRIBUTARY_TEST_KAFKA_BOOTSTRAP") }

// testLogger is the daemon's debug logger in tests: its tail is printed
// when the test fails, so a failure in CI explains itself (stderr instead
// with TRIBUTARY_TEST_LOG).
func testLogger(t *testing.T) *slog.Logger {
	t.Helper()
	return slog.New(slog.NewTextHandler(testLogWriter(t), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// capturingLogger is testLogger that also keeps the whole log in a
// buffer, for tests that look for a line in it.
func capturingLogger(t *testing.T) (*slog.Logger, *testutil.SyncBuffer) {
	t.Helper()
	buf := &testutil.SyncBuffer{}
	return slog.New(slog.NewTextHandler(io.MultiWriter(buf, testLogWriter(t)), &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// testLogWriter is where testLogger's handler writes: the tail kept for
// failures, or stderr with TRIBUTARY_TEST_LOG.
func testLogWriter(t *testing.T) io.Writer {
	if os.Getenv("TRIBUTARY_TEST_LOG") != "" {
		return os.Stderr
	}
	tail := &logTail{max: 400}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("last %d lines of the daemon log:\n%s", tail.max, tail.String())
		}
	})
	return tail
}

// daemonGoroutines returns the stacks of the goroutines running the
// project's own code, to show where a stalled test is stuck.
func daemonGoroutines() string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "tributary-io/tributary/") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

// logTail is an io.Writer that keeps the last max lines written to it.
type logTail struct {
	mu    sync.Mutex
	max   int
	lines []string // a ring once full; next is the oldest
	next  int
}

func (l *logTail) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		if len(l.lines) < l.max {
			l.lines = append(l.lines, line)
			continue
		}
		l.lines[l.next] = line
		l.next = (l.next + 1) % l.max
	}
	return len(p), nil
}

func (l *logTail) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(append(l.lines[l.next:len(l.lines):len(l.lines)], l.lines[:l.next]...), "\n")
}

// uniq returns a name unique to this run, so tests sharing one real Kafka
// never read each other's records.
func uniq(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// testConfig is a configuration on free loopback ports with Kafka from
// the environment or embedded in a temporary data dir.
func testConfig(t *testing.T) config.Config {
	t.Helper()
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.Kafka.EmbeddedAddr = "127.0.0.1:0"
	cfg.Kafka.Bootstrap = externalKafka()
	cfg.Kafka.TopicPartitions = 3
	cfg.Kafka.TopicReplicationFactor = 1
	cfg.Kafka.FlushTimeout = 10 * time.Second
	cfg.MQTT.Addr = "127.0.0.1:0"
	cfg.MQTT.WSAddr = "127.0.0.1:0"
	cfg.HTTP.Addr = "127.0.0.1:0"
	return cfg
}

type testDaemon struct {
	*daemon
	bootstrap string
}

func (d *testDaemon) mqttAddr() string { return d.broker.Addr("mqtt-tcp") }
func (d *testDaemon) wsAddr() string   { return d.broker.Addr("mqtt-ws") }
func (d *testDaemon) httpAddr() string { return d.http.Addr() }

// startDaemon starts the whole product in-process and stops it at cleanup.
func startDaemon(t *testing.T, cfg config.Config) *testDaemon {
	t.Helper()
	return startDaemonLog(t, cfg, testLogger(t))
}

// startLogged is startDaemon with a log the test can search.
func startLogged(t *testing.T, cfg config.Config) (*testDaemon, *testutil.SyncBuffer) {
	t.Helper()
	log, buf := capturingLogger(t)
	return startDaemonLog(t, cfg, log), buf
}

// startDaemonLog is startDaemon logging to log.
func startDaemonLog(t *testing.T, cfg config.Config, log *slog.Logger) *testDaemon {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("test config invalid: %v", err)
	}
	d, err := start(cfg, log)
	if err != nil {
		t.Fatalf("starting daemon: %v", err)
	}
	t.Cleanup(d.stop)
	// Cleanups run last first: this one sees the daemon still running.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the daemon's goroutines at the failure:\n%s", daemonGoroutines())
		}
	})
	bs := cfg.Kafka.Bootstrap
	if d.embedded != nil {
		bs = d.embedded.Addr()
	}
	return &testDaemon{daemon: d, bootstrap: bs}
}

// mqttClient connects a paho MQTT 3.1.1 client to url.
func mqttClient(t *testing.T, url, clientID string, opts ...func(*paho.ClientOptions)) paho.Client {
	t.Helper()
	o := paho.NewClientOptions().AddBroker(url).SetClientID(clientID).
		SetAutoReconnect(false).SetConnectRetry(false).SetMaxResumePubInFlight(1000).
		SetWriteTimeout(10 * time.Second).SetConnectTimeout(10 * time.Second)
	for _, f := range opts {
		f(o)
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connecting MQTT client to %s: %v", url, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func publish(t *testing.T, c paho.Client, topic string, qos byte, retain bool, payload string) {
	t.Helper()
	tok := c.Publish(topic, qos, retain, payload)
	if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("publishing to %s: not acknowledged: %v", topic, tok.Error())
	}
}

// kafkaRecords reads topic from the beginning until want records arrived or
// the timeout passed, and returns what it read.
func kafkaRecords(t *testing.T, bootstrap, topic string, want int, timeout time.Duration) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(bootstrap), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(200*time.Millisecond))
	if err != nil {
		t.Fatalf("kafka client: %v", err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out []*kgo.Record
	for len(out) < want && ctx.Err() == nil {
		fs := cl.PollFetches(ctx)
		fs.EachRecord(func(r *kgo.Record) { out = append(out, r) })
	}
	return out
}

// noMoreRecords reads topic for a short while and returns what is there.
func settledRecords(t *testing.T, bootstrap, topic string) []*kgo.Record {
	t.Helper()
	return kafkaRecords(t, bootstrap, topic, 1<<30, 3*time.Second)
}

func header(r *kgo.Record, key string) (string, bool) {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value), true
		}
	}
	return "", false
}

// needTool returns the path of an external peer, and fails the test when
// it is missing: the project's scripts/install-deps.sh installs them, and
// make test runs it. Like install-deps.sh, it looks in /usr/sbin too when
// the tool is not on PATH: Debian puts the mosquitto broker there, which
// is not on every user's PATH (cmd/tributary-bench's findMosquitto does
// the same).
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		p, err = exec.LookPath("/usr/sbin/" + name)
	}
	if err != nil {
		t.Fatalf("%s not found on PATH or in /usr/sbin: run scripts/install-deps.sh (make deps)", name)
	}
	return p
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, timeout, what, cond)
}

// collector gathers MQTT messages delivered to a local subscriber.
type collector struct {
	mu   sync.Mutex
	msgs []paho.Message
}

func (c *collector) handle(_ paho.Client, m paho.Message) {
	c.mu.Lock()
	c.msgs = append(c.msgs, m)
	c.mu.Unlock()
}

func (c *collector) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.msgs)
}

func (c *collector) get(i int) paho.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.msgs[i]
}

func hostPort(addr string) (string, string) {
	i := strings.LastIndex(addr, ":")
	return addr[:i], addr[i+1:]
}

// rawConnect opens a TCP connection and sends an MQTT 3.1.1 CONNECT with a
// will, returning once the CONNACK arrived. Closing it without DISCONNECT
// makes the broker publish the will.
func rawConnect(t *testing.T, addr, clientID, willTopic, willPayload string) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 4,
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			Clean:            true,
			Keepalive:        30,
			ClientIdentifier: clientID,
			WillFlag:         true,
			WillTopic:        willTopic,
			WillPayload:      []byte(willPayload),
			WillQos:          1,
		},
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatalf("encoding CONNECT: %v", err)
	}
	if _, err := conn.Write(buf.Bytes()); err != nil {
		t.Fatalf("writing CONNECT: %v", err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	ack := make([]byte, 4)
	if _, err := io.ReadFull(conn, ack); err != nil || ack[0] != 0x20 || ack[3] != 0 {
		t.Fatalf("reading CONNACK: % x, %v", ack, err)
	}
	return conn
}
