package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tributary-io/tributary/config"
	"github.com/tributary-io/tributary/mapping"
)

// mosquittoBroker is a Debian mosquitto run as the remote broker of
// upstream-source tests, on a free loopback port, with its config,
// persistence and log in a temporary directory.
type mosquittoBroker struct {
	t    *testing.T
	bin  string
	args []string // after the binary
	dir  string
	port int

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	out  bytes.Buffer
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startMosquitto starts mosquitto with a config file holding a plain
// listener, persistence, and extra (more config lines; "%d" in it is not
// expanded). It is killed at cleanup.
func startMosquitto(t *testing.T, extra string) *mosquittoBroker {
	t.Helper()
	bin := needTool(t, "mosquitto")
	dir := t.TempDir()
	port := freePort(t)
	var conf strings.Builder
	fmt.Fprintf(&conf, "per_listener_settings false\nlistener %d 127.0.0.1\n", port)
	fmt.Fprintf(&conf, "persistence true\npersistence_location %s/\n", dir)
	// The remote broker must not drop what it queued for Tributary while
	// Tributary drains it.
	conf.WriteString("max_queued_messages 0\nmax_inflight_messages 100\n")
	if u, err := user.Current(); err == nil {
		// As root, mosquitto would otherwise switch to the mosquitto user,
		// which cannot write the temporary persistence directory.
		fmt.Fprintf(&conf, "user %s\n", u.Username)
	}
	conf.WriteString(extra)
	if !strings.Contains(extra, "allow_anonymous") {
		conf.WriteString("allow_anonymous true\n")
	}
	path := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(path, []byte(conf.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	m := &mosquittoBroker{t: t, bin: bin, args: []string{"-c", path}, dir: dir, port: port}
	m.start()
	t.Cleanup(func() { m.stop(syscall.SIGKILL) })
	return m
}

// startPlainMosquitto runs exactly `mosquitto -p <port>`.
func startPlainMosquitto(t *testing.T) *mosquittoBroker {
	t.Helper()
	bin := needTool(t, "mosquitto")
	port := freePort(t)
	m := &mosquittoBroker{t: t, bin: bin, args: []string{"-p", strconv.Itoa(port)}, dir: t.TempDir(), port: port}
	m.start()
	t.Cleanup(func() { m.stop(syscall.SIGKILL) })
	return m
}

func (m *mosquittoBroker) url() string { return fmt.Sprintf("tcp://127.0.0.1:%d", m.port) }

func (m *mosquittoBroker) start() {
	m.t.Helper()
	m.mu.Lock()
	cmd := exec.Command(m.bin, m.args...)
	cmd.Stdout, cmd.Stderr = &lockedWriter{mu: &m.mu, w: &m.out}, &lockedWriter{mu: &m.mu, w: &m.out}
	if err := cmd.Start(); err != nil {
		m.mu.Unlock()
		m.t.Fatalf("starting mosquitto: %v", err)
	}
	done := make(chan struct{})
	m.cmd, m.done = cmd, done
	m.mu.Unlock()
	go func() { _ = cmd.Wait(); close(done) }()
	addr := fmt.Sprintf("127.0.0.1:%d", m.port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-done:
			m.t.Fatalf("mosquitto exited at start-up:\n%s", m.output())
		default:
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("mosquitto not listening on %s after 10s:\n%s", addr, m.output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop signals mosquitto and waits for it to exit. SIGTERM saves the
// persistence database; SIGKILL loses what was not saved.
func (m *mosquittoBroker) stop(sig syscall.Signal) {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

func (m *mosquittoBroker) restart(sig syscall.Signal) {
	m.t.Helper()
	m.stop(sig)
	m.start()
}

func (m *mosquittoBroker) output() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.out.String()
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func qos(n int) *int { return &n }

// upstream returns an upstream of m with fast reconnects, for tests.
func testUpstream(name, url string, filters ...string) config.UpstreamConfig {
	u := config.UpstreamConfig{
		Name:         name,
		URL:          url,
		ClientID:     uniq("trib-" + name),
		ReconnectMin: 50 * time.Millisecond,
		ReconnectMax: 500 * time.Millisecond,
		KeepAlive:    5 * time.Second,
	}
	for _, f := range filters {
		u.Subscriptions = append(u.Subscriptions, config.SubscriptionConfig{Filter: f, QoS: qos(1)})
	}
	return u
}

func waitConnected(t *testing.T, d *testDaemon, name string) {
	t.Helper()
	waitFor(t, 20*time.Second, "upstream "+name+" connected and subscribed", func() bool { return d.upstreams.Connected(name) })
}

// mosquittoPub publishes payloads, one per line, with mosquitto_pub -l at
// QoS 1 (it exits once each is acknowledged).
func mosquittoPub(t *testing.T, port int, topic string, lines []string, extra ...string) {
	t.Helper()
	bin := needTool(t, "mosquitto_pub")
	args := append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(port), "-q", "1", "-t", topic, "-l", "-i", uniq("pub")}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_pub: %v\n%s", err, out)
	}
}

func payloads(prefix string, from, to int) []string {
	out := make([]string, 0, to-from)
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("%s-%05d", prefix, i))
	}
	return out
}

// countPayloads waits until every payload in want is in topic (or the
// timeout passed) and returns each payload's count.
func countPayloads(t *testing.T, bootstrap, topic string, want []string, timeout time.Duration) map[string]int {
	t.Helper()
	counts := map[string]int{}
	cl, err := kgo.NewClient(kgo.SeedBrokers(bootstrap), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(200*time.Millisecond))
	if err != nil {
		t.Fatalf("kafka client: %v", err)
	}
	defer cl.Close()
	missing := len(want)
	wanted := map[string]bool{}
	for _, w := range want {
		wanted[w] = true
	}
	deadline := time.Now().Add(timeout)
	for missing > 0 && time.Now().Before(deadline) {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		fs := cl.PollFetches(ctx)
		cancel()
		fs.EachRecord(func(r *kgo.Record) {
			p := string(r.Value)
			if counts[p] == 0 && wanted[p] {
				missing--
			}
			counts[p]++
		})
	}
	return counts
}

// lost lists the payloads of want that are not in counts, and counts the
// duplicates.
func lost(counts map[string]int, want []string) (missing []string, dups int) {
	for _, w := range want {
		switch n := counts[w]; {
		case n == 0:
			missing = append(missing, w)
		case n > 1:
			dups += n - 1
		}
	}
	return missing, dups
}

func checkNoneLost(t *testing.T, counts map[string]int, want []string) int {
	t.Helper()
	missing, dups := lost(counts, want)
	if len(missing) > 0 {
		show := missing
		if len(show) > 10 {
			show = show[:10]
		}
		t.Fatalf("%d of %d messages are not in Kafka, e.g. %q", len(missing), len(want), show)
	}
	return dups
}

// The acceptance scenario: mosquitto -p, an upstream on plant/#
// with kafka_topic, 500 messages with mosquitto_pub, a kill and restart of
// mosquitto, 500 more; all 1,000 in Kafka, with mqtt.source.
func TestUpstreamAcceptance(t *testing.T) {
	mq := startPlainMosquitto(t)
	cfg := testConfig(t)
	topic := uniq("plant-data")
	up := testUpstream("plant", mq.url(), "plant/#")
	up.KafkaTopic = topic
	cfg.Upstreams = []config.UpstreamConfig{up}
	d := startDaemon(t, cfg)
	waitConnected(t, d, "plant")

	first := payloads("t", 0, 500)
	mosquittoPub(t, mq.port, "plant/line1/temp", first)
	recs := kafkaRecords(t, d.bootstrap, topic, 500, 30*time.Second)
	if len(recs) != 500 {
		t.Fatalf("got %d records in %s, want 500", len(recs), topic)
	}
	for i, r := range recs {
		if src, _ := header(r, "mqtt.source"); src != "plant" {
			t.Fatalf("record %d: mqtt.source %q, want plant", i, src)
		}
		if tp, _ := header(r, "mqtt.topic"); tp != "plant/line1/temp" || string(r.Key) != "plant/line1/temp" {
			t.Fatalf("record %d: mqtt.topic %q key %q", i, tp, r.Key)
		}
		// One remote topic, one key, one partition: the order is kept.
		if string(r.Value) != first[i] {
			t.Fatalf("record %d is %q, want %q: order not kept", i, r.Value, first[i])
		}
	}

	// SIGKILL: mosquitto -p keeps nothing, so only resubscribing brings
	// the feed back.
	mq.restart(syscall.SIGKILL)
	waitFor(t, 20*time.Second, "the upstream to notice the restart and reconnect", func() bool {
		return strings.Contains(metricsText(t, d.httpAddr()), `tributary_upstream_connects_total{upstream="plant"} 2`)
	})
	waitConnected(t, d, "plant")
	second := payloads("t", 500, 1000)
	mosquittoPub(t, mq.port, "plant/line1/temp", second)
	all := append(first, second...)
	counts := countPayloads(t, d.bootstrap, topic, all, 30*time.Second)
	dups := checkNoneLost(t, counts, all)
	t.Logf("1000 messages in Kafka, %d duplicates", dups)
	if !strings.Contains(metricsText(t, d.httpAddr()), `tributary_upstream_disconnects_total{upstream="plant"} 1`) {
		t.Errorf("disconnect not counted")
	}
}

// QoS 1 and QoS 2 subscriptions on one connection: the ack writer writes
// the PUBACKs and PUBRECs itself, and paho answers the PUBRELs with
// PUBCOMP. mosquitto -p lets 20
// messages be in flight, so 600 only get through if every one of both
// kinds is acknowledged; none may come twice.
func TestUpstreamQoS1AndQoS2Acknowledged(t *testing.T) {
	mq := startPlainMosquitto(t)
	cfg := testConfig(t)
	topic := uniq("mixed-qos")
	up := testUpstream("mixed", mq.url(), "mix/one/#")
	up.Subscriptions = append(up.Subscriptions, config.SubscriptionConfig{Filter: "mix/two/#", QoS: qos(2)})
	up.KafkaTopic = topic
	cfg.Upstreams = []config.UpstreamConfig{up}
	d := startDaemon(t, cfg)
	waitConnected(t, d, "mixed")

	one, two := payloads("one", 0, 300), payloads("two", 0, 300)
	mosquittoPub(t, mq.port, "mix/two/a", two, "-q", "2")
	mosquittoPub(t, mq.port, "mix/one/a", one)
	all := append(one, two...)
	counts := countPayloads(t, d.bootstrap, topic, all, 30*time.Second)
	if dups := checkNoneLost(t, counts, all); dups != 0 {
		t.Errorf("%d duplicates: some acknowledgement did not reach mosquitto", dups)
	}
	recs := kafkaRecords(t, d.bootstrap, topic, 600, 30*time.Second)
	next := map[string]int{}
	for _, r := range recs {
		q, _ := header(r, "mqtt.qos")
		v := string(r.Value)
		kind := v[:3]
		want := map[string]string{"one": "1", "two": "2"}[kind]
		if q != want {
			t.Fatalf("record %q: mqtt.qos %q, want %q", v, q, want)
		}
		if exp := fmt.Sprintf("%s-%05d", kind, next[kind]); v != exp {
			t.Fatalf("record %q, want %q: order not kept", v, exp)
		}
		next[kind]++
	}
	if m := metricsText(t, d.httpAddr()); !strings.Contains(m, `tributary_upstream_redelivered_total{upstream="mixed"} 0`) {
		t.Errorf("redeliveries counted:\n%s", grepLines(m, "tributary_upstream_redelivered_total"))
	}
}

// A remote topic carrying QoS 0 and QoS 1 messages, interleaved, lands in
// Kafka in the order the remote broker sent them, although the two QoS
// levels are produced through producers with different lingers.
func TestUpstreamMixedQoSInOrder(t *testing.T) {
	// No in-flight limit: past it, mosquitto sends QoS 0 messages ahead of
	// the QoS 1 ones it queued.
	mq := startMosquitto(t, "max_inflight_messages 0\n")
	cfg := testConfig(t)
	topic := uniq("mixed-order")
	up := testUpstream("mixorder", mq.url(), "mixorder/#")
	up.KafkaTopic = topic
	cfg.Upstreams = []config.UpstreamConfig{up}
	d := startDaemon(t, cfg)
	waitConnected(t, d, "mixorder")

	const n = 1000
	pub := mqttClient(t, mq.url(), uniq("pub"))
	toks := make([]paho.Token, n)
	var acked []string
	for i := range n {
		v := fmt.Sprintf("m-%05d", i)
		toks[i] = pub.Publish("mixorder/a", byte(i%2), false, v)
		if i%2 == 1 {
			acked = append(acked, v)
		}
	}
	for i, tok := range toks {
		if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %d to mosquitto: %v", i, tok.Error())
		}
	}
	counts := countPayloads(t, d.bootstrap, topic, acked, 30*time.Second)
	checkNoneLost(t, counts, acked)
	recs := settledRecords(t, d.bootstrap, topic)
	last := ""
	for _, r := range recs {
		if v := string(r.Value); v <= last {
			t.Fatalf("record %q after %q: order not kept", v, last)
		} else {
			last = v
		}
	}
	if len(recs) < n {
		t.Logf("%d of %d messages in Kafka: QoS 0 is best effort", len(recs), n)
	}
}

// With kafka_topic set, Kafka refusing that topic (here: it does not exist
// and topic creation is off) refuses the whole feed: the messages are not
// acknowledged and dropped but stay with the remote broker, and reach
// Kafka once the topic is there.
func TestUpstreamFixedTopicRefusedKeepsMessages(t *testing.T) {
	mq := startMosquitto(t, "")
	cfg := testConfig(t)
	cfg.Kafka.CreateTopics = false
	topic := uniq("made-later")
	up := testUpstream("later", mq.url(), "later/#")
	up.KafkaTopic = topic
	cfg.Upstreams = []config.UpstreamConfig{up}
	d, log := startLogged(t, cfg)
	waitConnected(t, d, "later")

	msgs := payloads("m", 0, 200)
	mosquittoPub(t, mq.port, "later/a", msgs)
	waitFor(t, 20*time.Second, "the refusal counted", func() bool {
		return strings.Contains(grepLines(metricsText(t, d.httpAddr()), "tributary_upstream_records_failed_total"), `upstream="later"`)
	})

	cl, err := kgo.NewClient(kgo.SeedBrokers(d.bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, nil, topic); err != nil {
		t.Fatalf("creating %s: %v", topic, err)
	}
	counts := countPayloads(t, d.bootstrap, topic, msgs, 60*time.Second)
	checkNoneLost(t, counts, msgs)
	if strings.Contains(log.String(), "messages dropped") {
		t.Errorf("messages were dropped:\n%s", log.String())
	}
}

// 10,000 QoS 1 messages with mosquitto restarted (persistence on) while
// Tributary is still draining its persistent session: none lost.
//
// Kafka is down while they are published, so Tributary holds the few
// mosquitto sends it (10 in flight at a time) unacknowledged and the rest
// queue up in mosquitto. Once Kafka is back, mosquitto is stopped with
// SIGTERM (saving its database) as soon as Tributary has produced some of
// them, and started again. At the stop more than 10 are not produced yet,
// so some were never sent before it and must come from the restored
// session. Every message is in Kafka afterwards; duplicates are allowed
// (mosquitto sends again what was in flight, and more, see below) and
// counted.
func TestUpstreamRestartMidStreamLosesNothing(t *testing.T) {
	const inflight = 10
	o := newOutage(t)
	mq := startMosquitto(t, fmt.Sprintf("max_inflight_messages %d\n", inflight))
	cfg := testConfig(t)
	cfg.Kafka.Bootstrap = o.bootstrap
	topic := uniq("upstream-10k")
	up := testUpstream("feed", mq.url(), "feed/#")
	up.KafkaTopic = topic
	cfg.Upstreams = []config.UpstreamConfig{up}
	d := startDaemon(t, cfg)
	waitConnected(t, d, "feed")
	produced := func() int { return upstreamCount(t, d, "tributary_upstream_records_produced_total", "feed") }

	const n = 10000
	all := payloads("m", 0, n)
	o.down(t)
	pub := mqttClient(t, mq.url(), uniq("pub"))
	toks := make([]paho.Token, 0, n)
	for i, p := range all {
		toks = append(toks, pub.Publish(fmt.Sprintf("feed/dev%d/v", i%7), 1, false, p))
	}
	for i, tok := range toks {
		if !tok.WaitTimeout(60*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %d to mosquitto: %v", i, tok.Error())
		}
	}
	pub.Disconnect(100)
	waitFor(t, 20*time.Second, "Tributary to hold messages Kafka cannot take", func() bool { return d.producer.InflightBytes() > 0 })
	if p := produced(); p != 0 {
		t.Fatalf("%d records produced while Kafka was down", p)
	}

	o.up(t)
	waitFor(t, 60*time.Second, "Tributary to produce some of the backlog", func() bool { return produced() > 0 })
	mq.stop(syscall.SIGTERM)
	// Read after the stop: mosquitto sends nothing more, and Tributary
	// holds at most inflight messages it has not produced yet.
	atRestart := produced()
	t.Logf("mosquitto stopped with %d of %d records produced", atRestart, n)
	if atRestart >= n-inflight {
		t.Fatalf("%d of %d records produced when mosquitto stopped: the drain was (nearly) over, the restart was not mid-stream", atRestart, n)
	}
	mq.start()

	counts := countPayloads(t, d.bootstrap, topic, all, 120*time.Second)
	dups := checkNoneLost(t, counts, all)
	if c := upstreamCount(t, d, "tributary_upstream_connects_total", "feed"); c < 2 {
		t.Errorf("the upstream connected %d times: it never reconnected after the restart", c)
	}
	// mosquitto 2.0.11 itself sends again, after a restart, many messages
	// a subscriber had acknowledged before it (mosquitto_sub sees the same):
	// far more duplicates than the 10 in flight are usual.
	t.Logf("%d messages in Kafka, %d duplicates, %d received with DUP set", n, dups,
		upstreamCount(t, d, "tributary_upstream_redelivered_total", "feed"))
}

// Mapping rules match on the upstream's name; the record carries it.
func TestUpstreamMappingBySource(t *testing.T) {
	mq := startMosquitto(t, "")
	cfg := testConfig(t)
	fromEdge, local := uniq("from-edge"), uniq("local")
	cfg.Mapping.Rules = []mapping.Rule{
		{Match: "s/.*", Source: "edge", KafkaTopic: fromEdge, Headers: map[string]string{"via": "${source}"}},
		{Match: "s/.*", KafkaTopic: local},
	}
	cfg.Upstreams = []config.UpstreamConfig{testUpstream("edge", mq.url(), "s/#")}
	d := startDaemon(t, cfg)
	waitConnected(t, d, "edge")

	mosquittoPub(t, mq.port, "s/remote", []string{"r1"})
	publish(t, mqttClient(t, "tcp://"+d.mqttAddr(), "dev"), "s/device", 1, false, "d1")

	recs := kafkaRecords(t, d.bootstrap, fromEdge, 1, 20*time.Second)
	if len(recs) != 1 || string(recs[0].Value) != "r1" {
		t.Fatalf("records in %s: %v", fromEdge, recs)
	}
	if v, _ := header(recs[0], "via"); v != "edge" {
		t.Errorf("via header %q, want edge", v)
	}
	if v, _ := header(recs[0], "mqtt.qos"); v != "1" {
		t.Errorf("mqtt.qos %q", v)
	}
	recs = kafkaRecords(t, d.bootstrap, local, 1, 20*time.Second)
	if len(recs) != 1 || string(recs[0].Value) != "d1" {
		t.Fatalf("records in %s: %v", local, recs)
	}
	if _, ok := header(recs[0], "mqtt.source"); ok {
		t.Errorf("a local device's record has mqtt.source")
	}
}

type httpResponse struct {
	code int
	body string
}

func httpGet(t *testing.T, url string) httpResponse {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return httpResponse{code: resp.StatusCode, body: string(b)}
}

// testCA is a CA and a server certificate for 127.0.0.1, written as PEM.
type testCA struct{ caFile, certFile, keyFile string }

func newTestCA(t *testing.T) testCA {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tributary test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	ca := testCA{caFile: filepath.Join(dir, "ca.pem"), certFile: filepath.Join(dir, "server.pem"), keyFile: filepath.Join(dir, "server-key.pem")}
	for _, f := range []struct {
		path, typ string
		der       []byte
	}{{ca.caFile, "CERTIFICATE", caDER}, {ca.certFile, "CERTIFICATE", srvDER}, {ca.keyFile, "EC PRIVATE KEY", keyDER}} {
		if err := os.WriteFile(f.path, pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der}), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return ca
}

// TLS to the upstream, trusting a CA file.
func TestUpstreamTLS(t *testing.T) {
	ca := newTestCA(t)
	tlsPort := freePort(t)
	mq := startMosquitto(t, fmt.Sprintf("listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\n", tlsPort, ca.caFile, ca.certFile, ca.keyFile))
	cfg := testConfig(t)
	topic := uniq("upstream-tls")
	up := testUpstream("secure", fmt.Sprintf("ssl://127.0.0.1:%d", tlsPort), "tls/#")
	up.TLS.CAFile = ca.caFile
	up.KafkaTopic = topic
	cfg.Upstreams = []config.UpstreamConfig{up}
	d := startDaemon(t, cfg)
	waitConnected(t, d, "secure")

	want := payloads("tls", 0, 50)
	mosquittoPub(t, mq.port, "tls/x", want) // the plain listener
	checkNoneLost(t, countPayloads(t, d.bootstrap, topic, want, 20*time.Second), want)
}

// A tcp:// URL at mosquitto's TLS port, or an ssl:// URL at its plain
// port, fails with a hint at the other scheme, in the log and the last
// error, rather than only "connection reset by peer".
func TestUpstreamWrongSchemeHint(t *testing.T) {
	ca := newTestCA(t)
	tlsPort := freePort(t)
	mq := startMosquitto(t, fmt.Sprintf("listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\n", tlsPort, ca.caFile, ca.certFile, ca.keyFile))
	cfg := testConfig(t)
	plainAtTLS := testUpstream("plain-at-tls", fmt.Sprintf("tcp://127.0.0.1:%d", tlsPort), "a/#")
	tlsAtPlain := testUpstream("tls-at-plain", fmt.Sprintf("ssl://127.0.0.1:%d", mq.port), "a/#")
	tlsAtPlain.TLS.CAFile = ca.caFile
	cfg.Upstreams = []config.UpstreamConfig{plainAtTLS, tlsAtPlain}
	d, logs := startLogged(t, cfg)
	for _, tc := range []struct{ name, want string }{
		{"plain-at-tls", fmt.Sprintf("the url must be ssl://127.0.0.1:%d", tlsPort)},
		{"tls-at-plain", fmt.Sprintf("the url must be tcp://127.0.0.1:%d", mq.port)},
	} {
		waitFor(t, 10*time.Second, tc.name+"'s error with a hint at the scheme", func() bool {
			return strings.Contains(d.upstreams.LastError(tc.name), tc.want)
		})
		t.Logf("%s: %s", tc.name, d.upstreams.LastError(tc.name))
		// The error is recorded just before its log line is written.
		waitFor(t, 10*time.Second, fmt.Sprintf("a log line of %s saying %q", tc.name, tc.want), func() bool {
			return strings.Contains(strings.Join(logs.Lines("upstream="+tc.name), "\n"), tc.want)
		})
	}
}

// A wrong password is a clear error, retried with backoff; /readyz names
// the upstream while it has never connected.
func TestUpstreamWrongPassword(t *testing.T) {
	dir := t.TempDir()
	pwfile := filepath.Join(dir, "passwd")
	if out, err := exec.Command(needTool(t, "mosquitto_passwd"), "-b", "-c", pwfile, "bridge", "right").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd: %v\n%s", err, out)
	}
	_ = os.Chmod(pwfile, 0o644)
	mq := startMosquitto(t, fmt.Sprintf("allow_anonymous false\npassword_file %s\n", pwfile))
	cfg := testConfig(t)
	good := testUpstream("good", mq.url(), "a/#")
	good.Username, good.Password = "bridge", "right"
	bad := testUpstream("bad", mq.url(), "a/#")
	bad.Username, bad.Password = "bridge", "wrong"
	bad.ReconnectMin, bad.ReconnectMax = 100*time.Millisecond, 400*time.Millisecond
	cfg.Upstreams = []config.UpstreamConfig{good, bad}
	d := startDaemon(t, cfg)
	waitConnected(t, d, "good")

	waitFor(t, 10*time.Second, "a refused login error", func() bool {
		e := strings.ToLower(d.upstreams.LastError("bad"))
		return strings.Contains(e, "not authorized") || strings.Contains(e, "bad user name or password")
	})
	t.Logf("error: %s", d.upstreams.LastError("bad"))
	// With backoff from 100ms to 400ms (half of it jitter), two seconds
	// hold a handful of attempts: more than one, far fewer than a tight
	// loop would make.
	errs := func() int {
		l := grepLines(metricsText(t, d.httpAddr()), `tributary_upstream_connect_errors_total{upstream="bad"}`)
		f := strings.Fields(l)
		if len(f) != 2 {
			return 0
		}
		n, _ := strconv.Atoi(f[1])
		return n
	}
	before := errs()
	time.Sleep(2 * time.Second) // a fixed window to count retries in, not a wait for a condition
	if n := errs() - before; n < 3 || n > 25 {
		t.Fatalf("%d failed attempts in 2s; want retries with a 100ms-400ms backoff", n)
	}
	if d.upstreams.Connected("bad") {
		t.Fatal("bad upstream connected")
	}
	resp := httpGet(t, "http://"+d.httpAddr()+"/readyz")
	if resp.code == 200 || !strings.Contains(resp.body, "bad") || strings.Contains(resp.body, "good (") {
		t.Fatalf("/readyz %d %q: want 503 naming only the bad upstream", resp.code, resp.body)
	}
}

// A subscription the remote broker's ACL refuses (SUBACK 0x80) is logged
// and counted; the others work. mosquitto 2.0's acl_file grants every
// SUBSCRIBE and filters at delivery, so the refusal comes from its dynamic
// security plugin (shipped in Debian's mosquitto package), whose role
// denies subscribing to secret/#.
func TestUpstreamRefusedSubscription(t *testing.T) {
	plugins, _ := filepath.Glob("/usr/lib/*/mosquitto_dynamic_security.so")
	if len(plugins) == 0 {
		plugins, _ = filepath.Glob("/usr/lib/mosquitto_dynamic_security.so")
	}
	if len(plugins) == 0 {
		t.Fatalf("mosquitto_dynamic_security.so not found: install Debian's mosquitto package (scripts/install-deps.sh)")
	}
	dir := t.TempDir()
	dynsec := filepath.Join(dir, "dynsec.json")
	if err := os.WriteFile(dynsec, []byte(`{
  "defaultACLAccess": {"publishClientSend": true, "publishClientReceive": true, "subscribe": true, "unsubscribe": true},
  "clients": [],
  "groups": [{"groupname": "anonymous", "roles": [{"rolename": "no-secrets"}]}],
  "roles": [{"rolename": "no-secrets", "acls": [{"acltype": "subscribePattern", "topic": "secret/#", "priority": 0, "allow": false}]}],
  "anonymousGroup": "anonymous"
}`), 0o644); err != nil {
		t.Fatal(err)
	}
	mq := startMosquitto(t, fmt.Sprintf("plugin %s\nplugin_opt_config_file %s\n", plugins[0], dynsec))
	cfg := testConfig(t)
	topic := uniq("upstream-acl")
	up := testUpstream("acl", mq.url(), "secret/#", "open/#")
	up.KafkaTopic = topic
	cfg.Upstreams = []config.UpstreamConfig{up}
	d := startDaemon(t, cfg)
	waitConnected(t, d, "acl")
	m := metricsText(t, d.httpAddr())
	if !strings.Contains(m, `tributary_upstream_subscriptions_refused_total{filter="secret/#",upstream="acl"} 1`) {
		t.Fatalf("refused subscription not counted:\n%s", grepLines(m, "tributary_upstream_subscriptions_refused"))
	}
	if !strings.Contains(d.upstreams.LastError("acl"), "secret/#") {
		t.Errorf("last error %q does not name the refused filter", d.upstreams.LastError("acl"))
	}
	mosquittoPub(t, mq.port, "open/x", []string{"o1"})
	if recs := kafkaRecords(t, d.bootstrap, topic, 1, 20*time.Second); len(recs) != 1 {
		t.Fatalf("the allowed subscription delivered %d records", len(recs))
	}
}

func grepLines(s, prefix string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// ingest_retained: a retained message the remote broker sends again on
// every (re)subscription is produced once (first), every time (always),
// or never; live messages are produced in every case.
func TestUpstreamRetainedPolicy(t *testing.T) {
	for _, tt := range []struct {
		policy string
		want   int // records of the retained value after one reconnect
	}{
		{"first", 1},
		{"always", 2},
		{"never", 0},
	} {
		t.Run(tt.policy, func(t *testing.T) {
			mq := startMosquitto(t, "")
			mosquittoPub(t, mq.port, "r/state", []string{"retained-value"}, "-r")
			cfg := testConfig(t)
			topic := uniq("upstream-retained")
			up := testUpstream("ret", mq.url(), "r/#")
			up.KafkaTopic = topic
			up.IngestRetained = tt.policy
			cfg.Upstreams = []config.UpstreamConfig{up}
			d := startDaemon(t, cfg)
			waitConnected(t, d, "ret")
			mosquittoPub(t, mq.port, "r/live", []string{"live-1"})
			// Before the restart: the retained value once, unless the
			// policy is never, and live-1.
			before := map[string]int{"live-1": 1}
			if tt.want > 0 {
				before["retained-value"] = 1
			}
			countPayloads(t, d.bootstrap, topic, []string{"live-1"}, 20*time.Second)
			got := map[string]int{}
			for _, r := range settledRecords(t, d.bootstrap, topic) {
				got[string(r.Value)]++
			}
			if !maps.Equal(got, before) {
				t.Fatalf("records before the restart %v, want %v (the retained value once, unless never, and live-1)", got, before)
			}
			mq.restart(syscall.SIGTERM) // keeps the retained message
			waitFor(t, 20*time.Second, "a reconnect", func() bool {
				return strings.Contains(metricsText(t, d.httpAddr()), `tributary_upstream_connects_total{upstream="ret"} 2`)
			})
			waitConnected(t, d, "ret")
			mosquittoPub(t, mq.port, "r/live", []string{"live-2"})
			counts := countPayloads(t, d.bootstrap, topic, []string{"live-1", "live-2"}, 20*time.Second)
			// live-2 was published after the resubscription, so any
			// retained redelivery is in Kafka before it.
			if counts["live-1"] < 1 || counts["live-2"] < 1 {
				t.Fatalf("live messages missing: %v", counts)
			}
			settled := settledRecords(t, d.bootstrap, topic)
			n := 0
			for _, r := range settled {
				if string(r.Value) == "retained-value" {
					n++
					if v, _ := header(r, "mqtt.retain"); v != "true" {
						t.Errorf("retained record has mqtt.retain %q", v)
					}
				}
			}
			if n != tt.want {
				t.Fatalf("ingest_retained %s: the retained value is in Kafka %d times, want %d", tt.policy, n, tt.want)
			}
		})
	}
}

// sharedUpstream is upstream "shared" of mq's sh/# in shared_group
// tributary, producing to topic.
func sharedUpstream(mq *mosquittoBroker, topic string) config.UpstreamConfig {
	up := testUpstream("shared", mq.url(), "sh/#")
	up.KafkaTopic = topic
	up.SharedGroup = "tributary"
	return up
}

// startSharedNodes starts two nodes on one Kafka, the first with up, the
// second with up under another client id, and waits until both are
// subscribed.
func startSharedNodes(t *testing.T, up config.UpstreamConfig) (*testDaemon, *testDaemon) {
	t.Helper()
	cfg1 := testConfig(t)
	cfg1.Upstreams = []config.UpstreamConfig{up}
	d1 := startDaemon(t, cfg1)
	cfg2 := testConfig(t)
	cfg2.Kafka.Bootstrap = d1.bootstrap // the same Kafka as node 1
	up2 := up
	up2.ClientID = uniq("trib-shared-2")
	cfg2.Upstreams = []config.UpstreamConfig{up2}
	d2 := startDaemon(t, cfg2)
	waitConnected(t, d1, "shared")
	waitConnected(t, d2, "shared")
	return d1, d2
}

// Two nodes with one shared_group split one feed: each message goes to
// one of them, so on stable connections nothing is lost, nothing comes
// twice, and the two nodes' counts add up to the whole feed.
func TestUpstreamSharedGroup(t *testing.T) {
	mq := startMosquitto(t, "")
	topic := uniq("upstream-shared")
	up := sharedUpstream(mq, topic)
	d1, d2 := startSharedNodes(t, up)

	const n = 2000
	want := payloads("s", 0, n)
	mosquittoPub(t, mq.port, "sh/a", want)
	if dups := checkNoneLost(t, countPayloads(t, d1.bootstrap, topic, want, 30*time.Second), want); dups != 0 {
		t.Errorf("%d messages produced twice: both nodes got them", dups)
	}
	if recs := settledRecords(t, d1.bootstrap, topic); len(recs) != n {
		t.Errorf("%d records in %s, want %d", len(recs), topic, n)
	}
	produced := func(d *testDaemon) int {
		return upstreamCount(t, d, "tributary_upstream_records_produced_total", "shared")
	}
	// A record can be read from Kafka a moment before its producer has
	// the acknowledgement that counts it.
	waitFor(t, 10*time.Second, "the two nodes' counts to reach the feed", func() bool { return produced(d1)+produced(d2) >= n })
	n1, n2 := produced(d1), produced(d2)
	t.Logf("node 1 produced %d, node 2 produced %d", n1, n2)
	if n1 == 0 || n2 == 0 {
		t.Fatalf("the feed was not split: node 1 %d, node 2 %d", n1, n2)
	}
	if n1+n2 != n {
		t.Errorf("node 1 produced %d and node 2 %d: %d in all, want %d", n1, n2, n1+n2, n)
	}
	for i, d := range []*testDaemon{d1, d2} {
		connects := upstreamCount(t, d, "tributary_upstream_connects_total", "shared")
		redelivered := upstreamCount(t, d, "tributary_upstream_redelivered_total", "shared")
		if connects != 1 || redelivered != 0 {
			t.Errorf("node %d connected %d times and got %d redeliveries, want 1 and 0: the connections were not stable", i+1, connects, redelivered)
		}
	}
}

// oldSession leaves the remote broker a persistent session for clientID
// subscribed to filter, as an earlier configuration would have.
func oldSession(t *testing.T, mq *mosquittoBroker, clientID, filter string) {
	t.Helper()
	bin := needTool(t, "mosquitto_sub")
	out, err := exec.Command(bin, "-h", "127.0.0.1", "-p", strconv.Itoa(mq.port), "-c", "-i", clientID, "-q", "1", "-t", filter, "-E").CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_sub: %v\n%s", err, out)
	}
}

// A persistent session keeps the subscriptions of an earlier
// configuration. Messages of one the configuration no longer has are not
// produced; a session kept from before shared_group was set does not
// deliver the whole feed to one node besides its share.
func TestUpstreamSessionKeepsOldSubscriptions(t *testing.T) {
	t.Run("a filter removed", func(t *testing.T) {
		mq := startMosquitto(t, "")
		cfg := testConfig(t)
		topic := uniq("upstream-narrowed")
		up := testUpstream("plant", mq.url(), "plant/line1/#")
		up.KafkaTopic = topic
		oldSession(t, mq, up.ClientID, "plant/#")
		cfg.Upstreams = []config.UpstreamConfig{up}
		d := startDaemon(t, cfg)
		waitConnected(t, d, "plant")
		mosquittoPub(t, mq.port, "plant/line2/x", []string{"not-subscribed"})
		mosquittoPub(t, mq.port, "plant/line1/x", []string{"subscribed"})
		kafkaRecords(t, d.bootstrap, topic, 1, 20*time.Second)
		for _, r := range settledRecords(t, d.bootstrap, topic) {
			if string(r.Value) != "subscribed" {
				t.Errorf("record %q from a subscription the configuration does not have", r.Value)
			}
		}
		if m := metricsText(t, d.httpAddr()); !strings.Contains(m, `tributary_upstream_messages_skipped_total{reason="not_subscribed",upstream="plant"} 1`) {
			t.Errorf("not counted as not_subscribed:\n%s", grepLines(m, "tributary_upstream_messages_skipped_total"))
		}
	})
	t.Run("shared_group added", func(t *testing.T) {
		mq := startMosquitto(t, "")
		topic := uniq("upstream-now-shared")
		up := sharedUpstream(mq, topic)
		oldSession(t, mq, up.ClientID, "sh/#")
		d1, _ := startSharedNodes(t, up)

		want := payloads("s", 0, 200)
		mosquittoPub(t, mq.port, "sh/a", want)
		counts := countPayloads(t, d1.bootstrap, topic, want, 30*time.Second)
		if dups := checkNoneLost(t, counts, want); dups != 0 {
			t.Fatalf("%d messages produced twice: the old plain subscription still delivers to node 1", dups)
		}
	})
}

// An upstream reached over MQTT-over-WebSocket (ws://) works like tcp://.
func TestUpstreamOverWebSocket(t *testing.T) {
	wsPort := freePort(t)
	mq := startMosquitto(t, fmt.Sprintf("listener %d 127.0.0.1\nprotocol websockets\n", wsPort))
	cfg := testConfig(t)
	topic := uniq("ws-feed")
	up := testUpstream("wsfeed", fmt.Sprintf("ws://127.0.0.1:%d/mqtt", wsPort), "feed/#")
	up.KafkaTopic = topic
	cfg.Upstreams = []config.UpstreamConfig{up}
	d := startDaemon(t, cfg)
	waitConnected(t, d, "wsfeed")
	want := payloads("ws", 0, 300)
	mosquittoPub(t, mq.port, "feed/a", want)
	counts := countPayloads(t, d.bootstrap, topic, want, 30*time.Second)
	checkNoneLost(t, counts, want)
}

// Kafka becomes unavailable while an upstream feed flows: the remote broker
// keeps what Tributary has not acknowledged, and once Kafka is back every
// message is in Kafka.
func TestUpstreamKafkaOutageLosesNothing(t *testing.T) {
	o := newOutage(t)
	mq := startMosquitto(t, "")
	cfg := testConfig(t)
	cfg.Kafka.Bootstrap = o.bootstrap
	topic := uniq("up-outage")
	up := testUpstream("feed", mq.url(), "feed/#")
	up.KafkaTopic = topic
	cfg.Upstreams = []config.UpstreamConfig{up}
	d := startDaemon(t, cfg)
	waitConnected(t, d, "feed")

	first, second := payloads("o", 0, 500), payloads("o", 500, 1000)
	produced := func(n int) string {
		return fmt.Sprintf(`tributary_upstream_records_produced_total{upstream="feed"} %d`, n)
	}
	mosquittoPub(t, mq.port, "feed/a", first)
	waitFor(t, 30*time.Second, "the first 500 to be in Kafka", func() bool {
		return strings.Contains(metricsText(t, d.httpAddr()), produced(500)+"\n")
	})
	o.down(t)
	mosquittoPub(t, mq.port, "feed/a", second) // the remote broker takes them; Kafka cannot
	time.Sleep(time.Second)                    // an outage of a while: nothing more may be confirmed
	if body := metricsText(t, d.httpAddr()); !strings.Contains(body, produced(500)+"\n") {
		t.Fatalf("records were confirmed while Kafka was down")
	}
	o.up(t)
	all := append(first, second...)
	counts := countPayloads(t, d.bootstrap, topic, all, 60*time.Second)
	dups := checkNoneLost(t, counts, all)
	t.Logf("all %d messages in Kafka after the outage, %d duplicates", len(all), dups)
}

// A Kafka outage longer than the upstream's keepalive, with the in-flight
// budget used up: Tributary stops reading the connection, but keeps it,
// and the remote broker (mosquitto ends a client silent for 1.5 times its
// keepalive) keeps it too. Nothing is redelivered for a reconnect, and
// every message is in Kafka once it is back.
func TestUpstreamLongKafkaOutageKeepsConnection(t *testing.T) {
	o := newOutage(t)
	mq := startMosquitto(t, "")
	cfg := testConfig(t)
	cfg.Kafka.Bootstrap = o.bootstrap
	cfg.Kafka.MaxMessageBytes = 1 << 10
	cfg.Kafka.InflightBudgetBytes = 4 << 10 // a few dozen records
	topic := uniq("up-long-outage")
	up := testUpstream("feed", mq.url(), "feed/#")
	up.KafkaTopic = topic
	up.KeepAlive = time.Second
	cfg.Upstreams = []config.UpstreamConfig{up}
	d := startDaemon(t, cfg)
	waitConnected(t, d, "feed")

	first, second := payloads("l", 0, 200), payloads("l", 200, 500)
	mosquittoPub(t, mq.port, "feed/a", first)
	waitFor(t, 30*time.Second, "the first 200 to be in Kafka", func() bool {
		return strings.Contains(metricsText(t, d.httpAddr()), `tributary_upstream_records_produced_total{upstream="feed"} 200`+"\n")
	})
	o.down(t)
	mosquittoPub(t, mq.port, "feed/a", second)
	waitFor(t, 10*time.Second, "the in-flight budget to be used up", func() bool {
		return d.producer.InflightBytes() > 3<<10
	})
	time.Sleep(5 * up.KeepAlive) // paho alone would drop the connection after about 2.25s
	o.up(t)
	all := append(first, second...)
	counts := countPayloads(t, d.bootstrap, topic, all, 60*time.Second)
	dups := checkNoneLost(t, counts, all)
	body := metricsText(t, d.httpAddr())
	for _, m := range []string{
		`tributary_upstream_disconnects_total{upstream="feed"} 0`,
		`tributary_upstream_connects_total{upstream="feed"} 1`,
	} {
		if !strings.Contains(body, m+"\n") {
			t.Errorf("metrics lack %s:\n%s", m, grepLines(body, "tributary_upstream_"))
		}
	}
	if dups > 0 {
		t.Errorf("%d duplicates: the connection was not kept", dups)
	}
}
