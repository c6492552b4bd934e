package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tributary-io/tributary/internal/testutil"
)

// stampHook records, per publish, the send time stamped in its payload
// and when mochi received it.
type stampHook struct {
	mqtt.HookBase
	mu     sync.Mutex
	stamps []time.Time
	recv   []time.Time
}

func (h *stampHook) ID() string { return "stamps" }

func (h *stampHook) Provides(b byte) bool { return b == mqtt.OnPublish }

func (h *stampHook) OnPublish(_ *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(pk.Payload) >= 8 {
		h.stamps = append(h.stamps, time.Unix(0, int64(binary.BigEndian.Uint64(pk.Payload))))
		h.recv = append(h.recv, now)
	}
	return pk, nil
}

// startMochiWith runs a mochi broker with hooks on a TCP listener and, if
// ws, a WebSocket one; it returns their addresses.
func startMochiWith(t testing.TB, ws bool, hooks ...mqtt.Hook) (tcpAddr, wsAddr string) {
	t.Helper()
	s := mqtt.New(&mqtt.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	for _, h := range hooks {
		if err := s.AddHook(h, nil); err != nil {
			t.Fatal(err)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AddListener(listeners.NewNet("t", ln)); err != nil {
		t.Fatal(err)
	}
	if ws {
		if wsAddr, err = freeAddr(); err != nil {
			t.Fatal(err)
		}
		if err := s.AddListener(listeners.NewWebsocket(listeners.Config{ID: "ws", Address: wsAddr})); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return ln.Addr().String(), wsAddr
}

func TestPublisherOverWebSocket(t *testing.T) {
	payload := makePayload(100)
	hook := &countingHook{byTopic: map[string]int{}, payload: payload}
	_, wsAddr := startMochiWith(t, true, hook)
	for _, tc := range []struct {
		name   string
		qos    byte
		n      int
		window int
	}{
		{"qos1", 1, 5000, 10},
		// QoS 0 ends when the broker closes the WebSocket after
		// DISCONNECT, which the stream reads as io.EOF.
		{"qos0", 0, 5000, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			topic := "bench/ws-" + tc.name
			// Wait until the listener serves.
			var p *publisher
			var err error
			testutil.WaitFor(t, 5*time.Second, "the WebSocket listener", func() bool {
				p, err = mqttDial{ws: true}.publisher(ctx, wsAddr, "ws-"+tc.name, topic, payload, tc.qos)
				return err == nil
			})
			defer p.Close()
			if tc.qos == 0 {
				err = p.publishUnacked(ctx, tc.n)
			} else {
				var lat []time.Duration
				lat, err = p.publishAcked(ctx, tc.n, tc.window)
				if len(lat) != tc.n && err == nil {
					t.Fatalf("%d latencies, want %d", len(lat), tc.n)
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			testutil.WaitFor(t, 5*time.Second, "the broker to count every publish", func() bool { return hook.count(topic) == tc.n })
			hook.mu.Lock()
			bad := hook.badBytes
			hook.mu.Unlock()
			if bad != 0 {
				t.Fatalf("%d publishes arrived with a wrong payload", bad)
			}
		})
	}
}

func TestPublishPacedKeepsTheScheduleAndStamps(t *testing.T) {
	hook := new(stampHook)
	addr, _ := startMochiWith(t, false, hook)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := dialPublisher(ctx, addr, "paced", "bench/paced", makePayload(100), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	const n, rate = 100, 500.0
	start := time.Now()
	lat, err := p.publishPaced(ctx, n, 1000, &pace{rate: rate, tick: 5 * time.Millisecond, delay: time.Millisecond, stamp: true})
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if len(lat) != n {
		t.Fatalf("%d latencies, want %d", len(lat), n)
	}
	// The last publish is due (n-1)/rate after the first.
	if min := time.Duration(float64(n-1) / rate * float64(time.Second)); took < min {
		t.Fatalf("%d publishes at %v/s took %s, less than the schedule's %s", n, rate, took, min)
	}
	testutil.WaitFor(t, 5*time.Second, "every publish", func() bool {
		hook.mu.Lock()
		defer hook.mu.Unlock()
		return len(hook.stamps) == n
	})
	hook.mu.Lock()
	defer hook.mu.Unlock()
	for i, s := range hook.stamps {
		if s.Before(start) || s.After(hook.recv[i]) {
			t.Fatalf("publish %d stamped %s: not between the start %s and its receipt %s", i, s, start, hook.recv[i])
		}
		if i > 0 && s.Before(hook.stamps[i-1]) {
			t.Fatalf("publish %d stamped before publish %d", i, i-1)
		}
	}
}

func TestPublishPacedNeedsRoomForTheStamp(t *testing.T) {
	addr, _ := startMochiWith(t, false)
	p, err := dialPublisher(context.Background(), addr, "short", "bench/short", []byte("1234567"), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	_, err = p.publishPaced(context.Background(), 1, 1, &pace{rate: 1, tick: time.Millisecond, stamp: true})
	if err == nil || !strings.Contains(err.Error(), "no room for an 8-byte send time") {
		t.Fatalf("error %v, want one about the payload's room", err)
	}
}

func TestEncodeSubscribe(t *testing.T) {
	b, err := encodeSubscribe("bench/#")
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(bytes.NewReader(b))
	hdr, body, err := readPacket(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	var fh packets.FixedHeader
	if err := fh.Decode(hdr); err != nil {
		t.Fatal(err)
	}
	pk := packets.Packet{FixedHeader: fh, ProtocolVersion: 4}
	if err := pk.SubscribeDecode(body); err != nil {
		t.Fatal(err)
	}
	if fh.Type != packets.Subscribe || fh.Qos != 1 || pk.PacketID != 1 || len(pk.Filters) != 1 || pk.Filters[0].Filter != "bench/#" || pk.Filters[0].Qos != 0 {
		t.Fatalf("decoded %+v, %+v", fh, pk)
	}
	if _, err := encodeSubscribe(strings.Repeat("x", 121)); err == nil {
		t.Fatal("a filter too long for one length byte accepted")
	}
}

func TestSubscriberCountsPublishes(t *testing.T) {
	addr, _ := startMochiWith(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sub, err := mqttDial{}.subscriber(ctx, addr, "drain", "bench/#")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	const n = 2000
	done := make(chan error, 1)
	go func() { done <- sub.receive(n) }()
	p, err := dialPublisher(ctx, addr, "pub", "bench/pub", makePayload(100), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := p.publishAcked(ctx, n, 10); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatalf("the subscriber received %d of %d", sub.got.Load(), n)
	}
	if sub.got.Load() != n || sub.last.Load() == 0 {
		t.Fatalf("got %d, last %d", sub.got.Load(), sub.last.Load())
	}
}

func TestIdleConnectionsFromSeveralSourceAddresses(t *testing.T) {
	addr, _ := startMochiWith(t, false)
	srcs := sourceAddrs(6, 4) // two ports per address: three addresses
	if len(srcs) != 3 {
		t.Fatalf("%d source addresses, want 3", len(srcs))
	}
	for i := range 6 {
		src := srcs[i*len(srcs)/6]
		c, err := mqttDial{local: src, keepalive: idleKeepalive}.idle(context.Background(), addr, "idle-"+itoa(i))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		got := c.LocalAddr().(*net.TCPAddr).IP.String()
		if want := src.(*net.TCPAddr).IP.String(); got != want {
			t.Errorf("connection %d from %s, want %s", i, got, want)
		}
	}
}

func TestSourceAddrs(t *testing.T) {
	if got := sourceAddrs(10000, 28232); len(got) != 1 || got[0] != nil {
		t.Errorf("10 000 connections in 28 232 ports: %v, want the kernel's choice", got)
	}
	got := sourceAddrs(50000, 28232)
	if len(got) != 4 || got[0].String() != "127.0.0.1:0" || got[3].String() != "127.0.0.4:0" {
		t.Errorf("50 000 connections: %v, want 127.0.0.1 to 127.0.0.4", got)
	}
	if got := sourceAddrs(1<<30, 2); len(got) != 254 {
		t.Errorf("%d addresses, want at most 254", len(got))
	}
}

func TestParsePortRange(t *testing.T) {
	for in, want := range map[string]int{
		"32768\t60999\n": 28232,
		"1024 65535":     64512,
		"garbage":        28232,
		"5 1":            28232,
	} {
		if got := parsePortRange(in); got != want {
			t.Errorf("parsePortRange(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestRaiseFileLimit(t *testing.T) {
	var before syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &before); err != nil {
		t.Fatal(err)
	}
	if err := raiseFileLimit(before.Cur); err != nil {
		t.Fatalf("keeping the limit at %d: %v", before.Cur, err)
	}
	var after syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &after); err != nil {
		t.Fatal(err)
	}
	if after.Cur < before.Cur {
		t.Fatalf("soft limit fell from %d to %d", before.Cur, after.Cur)
	}
	if err := raiseFileLimit(1 << 62); err == nil {
		t.Fatal("an impossible limit was reported as set")
	}
}

func TestSumMetric(t *testing.T) {
	text := `# HELP tributary_mqtt_connections Open MQTT connections, by listener.
# TYPE tributary_mqtt_connections gauge
tributary_mqtt_connections{listener="tcp"} 9998
tributary_mqtt_connections{listener="ws"} 2
tributary_mqtt_connections_total 7
tributary_up 1
`
	got, err := sumMetric(strings.NewReader(text), "tributary_mqtt_connections")
	if err != nil || got != 10000 {
		t.Fatalf("sum %v, %v; want 10000", got, err)
	}
	if got, err := sumMetric(strings.NewReader(text), "tributary_up"); err != nil || got != 1 {
		t.Fatalf("unlabelled sample: %v, %v", got, err)
	}
	if _, err := sumMetric(strings.NewReader(text), "tributary_missing"); err == nil {
		t.Fatal("a missing metric was found")
	}
}

func TestParseFlagsNewScenarios(t *testing.T) {
	o, err := parseFlags([]string{"--scenarios", "connections,latency-qos1,mosquitto-qos0,mqtt-ws-qos1", "--connections", "500",
		"--latency-rate", "1000", "--tributary-arg=--http-pprof", "--profile", "3"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range o.scenarios {
		names = append(names, s.name)
	}
	if strings.Join(names, ",") != "mosquitto-qos0,mqtt-ws-qos1,latency-qos1,connections" {
		t.Errorf("scenarios %v, not in the run order", names)
	}
	if o.connections != 500 || o.latencyRate != 1000 || len(o.args) != 1 || o.args[0] != "--http-pprof" || o.profileSeconds != 3 || !o.keep {
		t.Errorf("options %+v", o)
	}
	if !strings.Contains(strings.Join(o.env, " "), "TRIBUTARY_HTTP_PPROF=true") {
		t.Errorf("--profile does not turn on Tributary's pprof: env %v", o.env)
	}
	_, err = parseFlags([]string{"--connections", "0", "--latency-rate", "-1", "--profile", "-1"}, io.Discard)
	for _, want := range []string{"--connections 0", "--latency-rate -1", "--profile -1"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not report %q", err, want)
		}
	}
}

func TestScenarioKinds(t *testing.T) {
	for _, tc := range []struct {
		name               string
		bridge, freshTopic bool
	}{
		{"native-produce", false, true},
		{"mqtt-qos0", true, true},
		{"mosquitto-qos0", false, false},
		{"bare-qos0", false, false},
		{"mqtt-ws-qos1", true, true},
		{"latency-qos1", true, true},
		{"connections", true, false},
		{"upstream", true, true},
		{"native-consume", false, false},
		{"ws-out", true, false},
	} {
		s, ok := scenarioNamed(tc.name)
		if !ok {
			t.Fatalf("no scenario %q", tc.name)
		}
		if s.needsBridge() != tc.bridge || s.needsTopic() != tc.freshTopic {
			t.Errorf("%s: needsBridge %v needsTopic %v, want %v %v", tc.name, s.needsBridge(), s.needsTopic(), tc.bridge, tc.freshTopic)
		}
	}
	seen := map[string]bool{}
	for _, s := range scenarios {
		if s.name == "latency-qos1" && !seen["mqtt-qos1"] {
			t.Error("latency-qos1 runs before mqtt-qos1, whose rate it takes")
		}
		seen[s.name] = true
	}
}

// TestScenariosSendTheirPeersLoad: a scenario that stands for another's
// load (mosquitto, the bare endpoint, the native producer's keys) names
// an MQTT scenario of Tributary's, sends it with the same clients, QoS
// and window, and names its clients, and so its topics and Kafka keys,
// exactly as that scenario does.
func TestScenariosSendTheirPeersLoad(t *testing.T) {
	for _, s := range scenarios {
		switch s.kind {
		case nativeProduce, mosquittoLoad, bareLoad:
		default:
			if s.loadOf != "" {
				t.Errorf("%s: loadOf %q on a scenario that sends its own load", s.name, s.loadOf)
			}
			continue
		}
		peer, ok := scenarioNamed(s.loadOf)
		if !ok || peer.kind != mqttLoad {
			t.Errorf("%s: loadOf %q is not a Tributary MQTT scenario", s.name, s.loadOf)
			continue
		}
		if s.kind != nativeProduce && (s.clients != peer.clients || s.qos != peer.qos || s.window != peer.window) {
			t.Errorf("%s: %d clients, QoS %d, window %d; %s has %d, %d, %d", s.name, s.clients, s.qos, s.window, peer.name, peer.clients, peer.qos, peer.window)
		}
		if s.clientPrefix() != peer.clientPrefix() {
			t.Errorf("%s: clients named %s-NNN, %s's %s-NNN", s.name, s.clientPrefix(), peer.name, peer.clientPrefix())
		}
	}
	for _, name := range []string{"native-produce", "native-produce-headers"} {
		if s, _ := scenarioNamed(name); s.loadOf != "mqtt-qos0" {
			t.Errorf("%s writes the records of %q, not mqtt-qos0's", name, s.loadOf)
		}
	}
	if id, topic := benchClient("mqtt-qos0", 7); id != "mqtt-qos0-007" || topic != "bench/mqtt-qos0-007" {
		t.Errorf("client 7 of mqtt-qos0: id %q, topic %q", id, topic)
	}
}
