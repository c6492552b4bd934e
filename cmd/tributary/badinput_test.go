package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"
)

// Bad input never hurts: while well-behaved clients publish, a corpus of
// malformed and hostile input is thrown at both MQTT listeners. Each bad
// connection must be closed or refused, nothing from it may reach Kafka,
// the good clients keep their connections and every acknowledged record,
// the daemon stays healthy and ends with no more connection goroutines
// than it had before.
func TestBadInput(t *testing.T) {
	cfg := testConfig(t)
	goodTopic, badTopic := uniq("good"), uniq("bad")
	// Everything that is not a good client's publish, an empty topic
	// included, maps to badTopic: whatever slips through is seen there.
	cfg.Mapping.TopicRegexList = goodTopic + ":good/.*, " + badTopic + ":.*"
	cfg.Kafka.MaxMessageBytes = 10000
	d := startDaemon(t, cfg)
	// The broker allows an MQTT packet 64 KiB over the Kafka record limit
	// (broker.packetHeadroom) and the same as the WebSocket read limit.
	maxPacket := cfg.Kafka.MaxMessageBytes + 64<<10

	good := startGoodPublishers(t, d)
	waitFor(t, 20*time.Second, "the good clients to get acknowledgements", func() bool { return good.minAcked() >= 5 })
	baseline, _ := connGoroutines()

	for _, tr := range []badTransport{
		{name: "tcp", dial: func(t *testing.T) badConn { return dialBadTCP(t, d.mqttAddr()) }},
		{name: "ws", dial: func(t *testing.T) badConn { return dialBadWS(t, d.wsAddr(), []string{"mqtt"}) }},
	} {
		t.Run(tr.name, func(t *testing.T) {
			for _, c := range badMQTTCases(maxPacket, cfg.Kafka.MaxMessageBytes) {
				t.Run(c.name, func(t *testing.T) {
					conn := tr.dial(t)
					defer conn.close()
					if c.version != 0 {
						conn.connect(t, c.version)
					}
					got := conn.exchange(c.send, c.chunk, c.version == 5, c.awaitAck)
					if !slices.Equal(got, c.want) {
						t.Errorf("server answered %v, want %v (%s)", got, c.want, c.why)
					}
				})
			}
		})
	}

	t.Run("ws-only", func(t *testing.T) {
		for _, c := range badWSCases(d.wsAddr(), maxPacket) {
			t.Run(c.name, func(t *testing.T) {
				if got := c.run(t); !slices.Equal(got, c.want) {
					t.Errorf("server answered %v, want %v (%s)", got, c.want, c.why)
				}
			})
		}
	})

	// The daemon is unharmed.
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get("http://" + d.httpAddr() + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %s after the bad input", path, resp.Status)
		}
	}
	waitFor(t, 20*time.Second, "only the good clients to be counted as connected", func() bool {
		m := metricsText(t, d.httpAddr())
		return strings.Contains(m, `tributary_mqtt_connections{listener="mqtt-tcp"} 1`) &&
			strings.Contains(m, `tributary_mqtt_connections{listener="mqtt-ws"} 1`)
	})
	// Every kind of rejection was counted.
	m := metricsText(t, d.httpAddr())
	for _, want := range []string{
		`tributary_mqtt_connections_rejected_total{listener="mqtt-tcp",reason="malformed"}`,
		`tributary_mqtt_connections_rejected_total{listener="mqtt-tcp",reason="protocol_violation"}`,
		`tributary_mqtt_connections_rejected_total{listener="mqtt-tcp",reason="packet_too_large"}`,
		`tributary_mqtt_connections_rejected_total{listener="mqtt-ws",reason="text_frame"}`,
		`tributary_mqtt_connections_rejected_total{listener="mqtt-ws",reason="packet_too_large"}`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metric %s missing after the bad input", want)
		}
	}
	http.DefaultClient.CloseIdleConnections()
	var stacks string
	var n int
	deadline := time.Now().Add(30 * time.Second)
	for n, stacks = connGoroutines(); n > baseline && time.Now().Before(deadline); n, stacks = connGoroutines() {
		time.Sleep(50 * time.Millisecond)
	}
	if n > baseline {
		t.Errorf("%d connection goroutines 30s after the bad input, %d before it:\n%s", n, baseline, stacks)
	}
	acked := good.stop(t)

	// Every acknowledged record of the good clients is in Kafka, and
	// nothing else is anywhere.
	recs := kafkaRecords(t, d.bootstrap, goodTopic, len(acked), 30*time.Second)
	inKafka := map[string]bool{}
	for _, r := range recs {
		inKafka[string(r.Value)] = true
	}
	for _, p := range acked {
		if !inKafka[p] {
			t.Errorf("acknowledged publish %q is not in Kafka", p)
		}
	}
	if bad := settledRecords(t, d.bootstrap, badTopic); len(bad) != 0 {
		for _, r := range bad {
			t.Errorf("bad input reached Kafka: key %q value %.40q", r.Key, r.Value)
		}
	}
}

// connGoroutines counts the daemon's goroutines that serve a client
// connection (mochi's per-client goroutines, the ingest's ack writers,
// the WebSocket listener's HTTP connections) and returns their stacks.
// The rest of the process (Kafka clients, paho, the test) is left out:
// its goroutines come and go for reasons of their own.
func connGoroutines() (int, string) {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var n int
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "mochi-mqtt/server/v2.(*Server).attachClient") ||
			strings.Contains(g, "mochi-mqtt/server/v2.(*Client).WriteLoop") ||
			strings.Contains(g, "tributary/broker.(*session).run") ||
			strings.Contains(g, "net/http.(*conn).serve") {
			n++
			out = append(out, g)
		}
	}
	return n, strings.Join(out, "\n\n")
}

// goodPublishers are well-behaved paho clients, one per listener,
// publishing QoS 1 at a steady pace and keeping what was acknowledged.
type goodPublishers struct {
	stopc chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	acked map[string][]string // by client
	errs  []string
}

func startGoodPublishers(t *testing.T, d *testDaemon) *goodPublishers {
	t.Helper()
	g := &goodPublishers{stopc: make(chan struct{}), acked: map[string][]string{}}
	for name, url := range map[string]string{"tcp": "tcp://" + d.mqttAddr(), "ws": "ws://" + d.wsAddr() + "/mqtt"} {
		c := mqttClient(t, url, uniq("good-"+name), func(o *paho.ClientOptions) {
			o.SetConnectionLostHandler(func(_ paho.Client, err error) {
				g.fail(fmt.Sprintf("%s client lost its connection: %v", name, err))
			})
		})
		g.acked[name] = nil
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-g.stopc:
					return
				case <-tick.C:
				}
				p := fmt.Sprintf("%s-%06d", name, i)
				tok := c.Publish("good/"+name, 1, false, p)
				if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
					g.fail(fmt.Sprintf("%s client: publish %s not acknowledged: %v", name, p, tok.Error()))
					return
				}
				g.mu.Lock()
				g.acked[name] = append(g.acked[name], p)
				g.mu.Unlock()
			}
		}()
	}
	t.Cleanup(func() { g.stopOnce() })
	return g
}

func (g *goodPublishers) fail(msg string) {
	g.mu.Lock()
	g.errs = append(g.errs, msg)
	g.mu.Unlock()
}

func (g *goodPublishers) minAcked() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := -1
	for _, a := range g.acked {
		if n < 0 || len(a) < n {
			n = len(a)
		}
	}
	return n
}

func (g *goodPublishers) stopOnce() {
	select {
	case <-g.stopc:
	default:
		close(g.stopc)
	}
	g.wg.Wait()
}

// stop ends publishing, fails t for any trouble the clients had, and
// returns every acknowledged payload.
func (g *goodPublishers) stop(t *testing.T) []string {
	t.Helper()
	g.stopOnce()
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, e := range g.errs {
		t.Error(e)
	}
	var all []string
	for name, a := range g.acked {
		if len(a) == 0 {
			t.Errorf("%s client got no acknowledgement", name)
		}
		all = append(all, a...)
	}
	t.Logf("good clients had %d publishes acknowledged during the bad input", len(all))
	return all
}

// badTransport opens raw connections to one MQTT listener.
type badTransport struct {
	name string
	dial func(t *testing.T) badConn
}

// badConn is a raw MQTT byte stream over TCP or WebSocket.
type badConn struct {
	write func(b []byte) error // one TCP write or one binary WebSocket message
	r     *bufio.Reader
	setRD func(time.Time) error
	close func()
}

func dialBadTCP(t *testing.T, addr string) badConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	return badConn{
		write: func(b []byte) error {
			_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			_, err := c.Write(b)
			return err
		},
		r:     bufio.NewReader(c),
		setRD: c.SetReadDeadline,
		close: func() { c.Close() },
	}
}

func dialBadWS(t *testing.T, addr string, subprotocols []string) badConn {
	t.Helper()
	dl := websocket.Dialer{HandshakeTimeout: 5 * time.Second, Subprotocols: subprotocols}
	c, _, err := dl.Dial("ws://"+addr+"/mqtt", nil)
	if err != nil {
		t.Fatalf("dial ws://%s/mqtt: %v", addr, err)
	}
	return wsBadConn(c)
}

func wsBadConn(c *websocket.Conn) badConn {
	return badConn{
		write: func(b []byte) error {
			_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			return c.WriteMessage(websocket.BinaryMessage, b)
		},
		r:     bufio.NewReader(&wsStream{c: c}),
		setRD: c.SetReadDeadline,
		close: func() { c.Close() },
	}
}

// wsStream reads the binary messages of a WebSocket as one byte stream.
type wsStream struct {
	c *websocket.Conn
	r io.Reader
}

func (s *wsStream) Read(p []byte) (int, error) {
	for {
		if s.r == nil {
			_, r, err := s.c.NextReader()
			if err != nil {
				return 0, err
			}
			s.r = r
		}
		n, err := s.r.Read(p)
		if errors.Is(err, io.EOF) {
			s.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

// connect sends a valid CONNECT and expects a successful CONNACK.
func (c badConn) connect(t *testing.T, version byte) {
	t.Helper()
	if got := c.exchange(mqttConnect(version, "MQTT", 0x02, uniq("bad")), 0, version == 5, false); got[0] != "CONNACK:00" {
		t.Fatalf("valid CONNECT v%d answered %v", version, got)
	}
}

// badInputPatience is how long a bad connection may stay open without an
// answer before the test calls it held open ("silent").
const badInputPatience = 15 * time.Second

// exchange sends b (in writes of at most chunk bytes, 0 for one) followed
// by a PINGREQ, and reads what the server answers until it closes the
// connection, answers the PINGREQ (the connection survived: "PINGRESP"),
// or stays quiet for badInputPatience ("silent": the connection is held
// open). The PINGREQ goes in the same write as the end of b so that a
// server closing at once does not turn it into a reset that hides its
// answer. A write the server refuses by closing is not an error here.
//
// With awaitAck, b holds a QoS 1 PUBLISH that may be answered only once
// Kafka has answered, before or after the PINGRESP: reading goes on until
// its PUBACK arrives or the connection ends, and then another PINGREQ
// shows whether the connection survived. The first PINGRESP only marks
// time and is left out: the answer is ["PUBACK:95", "PINGRESP"] or
// ["closed"], whatever the timing.
func (c badConn) exchange(b []byte, chunk int, v5, awaitAck bool) []string {
	b = append(slices.Clip(b), 0xc0, 0x00)
	if chunk <= 0 {
		chunk = len(b)
	}
	for len(b) > 0 {
		n := min(chunk, len(b))
		if err := c.write(b[:n]); err != nil {
			break
		}
		b = b[n:]
	}
	if !awaitAck {
		return c.answers(v5, "PINGRESP")
	}
	var out []string
	acked := false
	for _, until := range []string{"PINGRESP", "PUBACK"} {
		if acked && until == "PUBACK" {
			break
		}
		for _, a := range c.answers(v5, until) {
			switch {
			case a == "PINGRESP":
				continue
			case strings.HasPrefix(a, "PUBACK"):
				acked = true
			case a == "closed" || a == "silent" || strings.HasPrefix(a, "ws-close"):
				return append(out, a)
			}
			out = append(out, a)
		}
	}
	if err := c.write([]byte{0xc0, 0x00}); err != nil {
		return append(out, "closed")
	}
	return append(out, c.answers(v5, "PINGRESP")...)
}

// answers reads and names the server's packets until one named until
// (with any reason code), the end of the connection, or silence.
func (c badConn) answers(v5 bool, until string) []string {
	var out []string
	_ = c.setRD(time.Now().Add(badInputPatience))
	for {
		name, err := readMQTT(c.r, v5)
		if err != nil {
			return append(out, closeOutcome(err))
		}
		out = append(out, name)
		if strings.HasPrefix(name, until) {
			return out
		}
	}
}

// closeOutcome names how a connection ended: "closed" (EOF, reset, or a
// WebSocket torn down without a close frame), "ws-close:<code>" for a
// WebSocket close frame, "silent" when nothing came before the deadline.
func closeOutcome(err error) string {
	var ce *websocket.CloseError
	if errors.As(err, &ce) && ce.Code != websocket.CloseAbnormalClosure {
		return fmt.Sprintf("ws-close:%d", ce.Code)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "silent"
	}
	return "closed"
}

// readMQTT reads one MQTT packet and names it with its reason code:
// "CONNACK:84", "SUBACK:80", "PUBACK:95", "PUBREC:90", "DISCONNECT:82",
// "PINGRESP".
func readMQTT(r *bufio.Reader, v5 bool) (string, error) {
	first, err := r.ReadByte()
	if err != nil {
		return "", err
	}
	var n, shift int
	for i := 0; ; i++ {
		b, err := r.ReadByte()
		if err != nil {
			return "", err
		}
		n |= int(b&0x7f) << shift
		shift += 7
		if b&0x80 == 0 {
			break
		}
		if i == 3 {
			return "", fmt.Errorf("server sent a malformed remaining length")
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return "", err
	}
	code := func(i int) string {
		if i < len(body) {
			return fmt.Sprintf("%02x", body[i])
		}
		return "00" // absent means success (MQTT 5 short forms)
	}
	switch first >> 4 {
	case 2:
		return "CONNACK:" + code(1), nil
	case 4:
		return "PUBACK:" + code(2), nil
	case 5:
		return "PUBREC:" + code(2), nil
	case 9:
		i := 2
		if v5 && len(body) > 2 {
			l, w := uvarint(body[2:])
			i += w + l
		}
		return "SUBACK:" + code(i), nil
	case 13:
		return "PINGRESP", nil
	case 14:
		return "DISCONNECT:" + code(0), nil
	}
	return fmt.Sprintf("type%d", first>>4), nil
}

// A publish to a reserved topic ($SYS/..., $share/...), which mochi drops
// without an answer, is refused like any publish the bridge does not take:
// MQTT 5 gets 0x90, in order behind the publishes before it, and keeps its
// connection; MQTT 3 is disconnected; QoS 0 is dropped and counted.
func TestReservedTopicPublishIsRefused(t *testing.T) {
	cfg := testConfig(t)
	topic := uniq("reserved")
	cfg.Mapping.TopicRegexList = topic + ":.*"
	d := startDaemon(t, cfg)
	for _, tc := range []struct {
		v     byte
		first byte // PUBLISH with its QoS
		topic string
		want  []string
	}{
		{4, 0x32, "$SYS/x", []string{"closed"}},
		{4, 0x34, "$share", []string{"closed"}},
		{5, 0x32, "$SYS/x", []string{"PUBACK:90", "PINGRESP"}},
		{5, 0x34, "$sys/lower", []string{"PUBREC:90", "PINGRESP"}},
		{5, 0x32, "$share/g", []string{"PUBACK:90", "PINGRESP"}},
		{5, 0x30, "$SYS/x", []string{"PINGRESP"}},
		// Malformed as well (QoS 1 without a packet id): mochi's protocol
		// error, with no PUBACK before it.
		{5, 0x32, "$SYS/y", []string{"DISCONNECT:82", "closed"}},
	} {
		c := dialBadTCP(t, d.mqttAddr())
		c.connect(t, tc.v)
		id := uint16(7)
		if tc.first&0x06 == 0 {
			id = 0
		}
		pk := mqttPublish(tc.first, tc.topic, id, tc.v == 5, nil, []byte("x"))
		if tc.topic == "$SYS/y" {
			pk = mqttPacket(tc.first, mqttString(tc.topic), []byte{0, 0}, []byte{0}, []byte("x")) // packet id 0
		}
		got := c.exchange(pk, 0, tc.v == 5, false)
		if !slices.Equal(got, tc.want) {
			t.Errorf("MQTT v%d PUBLISH %#x to %q: server answered %v, want %v", tc.v, tc.first, tc.topic, got, tc.want)
		}
		c.close()
	}
	// Behind a publish awaiting Kafka, the refusal waits its turn, and the
	// connection goes on.
	c := dialBadTCP(t, d.mqttAddr())
	defer c.close()
	c.connect(t, 5)
	two := append(mqttPublish(0x32, "a/b", 1, true, nil, []byte("first")), mqttPublish(0x32, "$SYS/x", 2, true, nil, []byte("x"))...)
	if err := c.write(two); err != nil {
		t.Fatal(err)
	}
	var acks []string
	for len(acks) < 2 {
		got := c.answers(true, "PUBACK")
		if last := got[len(got)-1]; !strings.HasPrefix(last, "PUBACK") {
			t.Fatalf("after %v: %v", acks, got)
		}
		acks = append(acks, got[len(got)-1])
	}
	if !slices.Equal(acks, []string{"PUBACK:00", "PUBACK:90"}) {
		t.Fatalf("PUBACKs %v, want the success first, then 0x90", acks)
	}
	if got := c.exchange(mqttPublish(0x32, "a/c", 3, true, nil, []byte("second")), 0, true, true); !slices.Equal(got, []string{"PUBACK:00", "PINGRESP"}) {
		t.Fatalf("a publish after the refusal: %v", got)
	}
	if recs := settledRecords(t, d.bootstrap, topic); len(recs) != 2 {
		t.Fatalf("%d records in Kafka, want the 2 valid publishes", len(recs))
	}
	if m := metricsText(t, d.httpAddr()); !strings.Contains(m, `tributary_mqtt_rejected_total{reason="reserved_topic"} 7`) {
		t.Errorf("reserved topic refusals not counted:\n%s", linesWith(m, "rejected_total"))
	}
}

// uvarint decodes an MQTT variable byte integer: value and width.
func uvarint(b []byte) (int, int) {
	var v, shift int
	for i, c := range b {
		v |= int(c&0x7f) << shift
		shift += 7
		if c&0x80 == 0 {
			return v, i + 1
		}
	}
	return v, len(b)
}

// mqttPacket builds a packet from its first byte and body, with the
// remaining length encoded properly.
func mqttPacket(first byte, body ...[]byte) []byte {
	b := bytes.Join(body, nil)
	out := []byte{first}
	n := len(b)
	for {
		d := byte(n & 0x7f)
		n >>= 7
		if n > 0 {
			d |= 0x80
		}
		out = append(out, d)
		if n == 0 {
			break
		}
	}
	return append(out, b...)
}

// mqttString is a length-prefixed MQTT string of raw bytes.
func mqttString(s string) []byte {
	return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...)
}

// mqttConnect builds a CONNECT with keepalive 30; version 5 gets an empty
// property list.
func mqttConnect(version byte, protocol string, flags byte, clientID string) []byte {
	var props []byte
	if version == 5 {
		props = []byte{0}
	}
	return mqttPacket(0x10, mqttString(protocol), []byte{version, flags, 0, 30}, props, mqttString(clientID))
}

// mqttPublish builds a PUBLISH; id 0 leaves the packet id out (QoS 0).
func mqttPublish(first byte, topic string, id uint16, v5 bool, props []byte, payload []byte) []byte {
	var idb []byte
	if id != 0 {
		idb = []byte{byte(id >> 8), byte(id)}
	}
	var pb []byte
	if v5 {
		pb = append([]byte{byte(len(props))}, props...)
	}
	return mqttPacket(first, mqttString(topic), idb, pb, payload)
}

func garbage(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// badMQTTCase is bad input at the MQTT level, the same over TCP and
// WebSocket.
type badMQTTCase struct {
	name    string
	version byte   // 4 or 5: a valid CONNECT first; 0: none
	send    []byte // the bad input
	chunk   int    // write size (WebSocket message size); 0: one write
	// awaitAck: send holds a QoS 1 PUBLISH answered after Kafka is
	// (see badConn.exchange).
	awaitAck bool
	want     []string
	why      string // the rule the answer follows
}

func badMQTTCases(maxPacket, maxRecord int) []badMQTTCase {
	closed := []string{"closed"}
	alive := "PINGRESP"
	pub := func(v5 bool, topic string, props []byte) []byte {
		return mqttPublish(0x32, topic, 1, v5, props, []byte("bad"))
	}
	return []badMQTTCase{
		{name: "garbage-before-connect-1", send: garbage(1, 512), want: closed,
			why: "the first packet must be a CONNECT [MQTT-3.1.0-1]"},
		{name: "garbage-before-connect-2", send: garbage(2, 4096), want: closed, why: "the first packet must be a CONNECT"},
		{name: "garbage-before-connect-3", send: garbage(3, 64), want: closed, why: "the first packet must be a CONNECT"},
		{name: "garbage-after-connect-v4", version: 4, send: garbage(4, 512), want: closed, why: "malformed packet"},
		{name: "garbage-after-connect-v5", version: 5, send: garbage(5, 512), want: closed, why: "malformed packet; mochi sends no DISCONNECT for read errors"},
		{name: "truncated-connect", send: mqttConnect(4, "MQTT", 0x02, "truncated")[:8], want: closed,
			why: "a CONNECT that never completes must not hold the connection"},
		{name: "connect-bad-protocol-name", send: mqttConnect(4, "MQTX", 0x02, uniq("bad")), want: []string{"CONNACK:82", "closed"},
			why: "protocol name must be MQTT [MQTT-3.1.2-1]; mochi answers 0x82 even to 3.1.1"},
		{name: "connect-bad-protocol-level", send: mqttConnect(9, "MQTT", 0x02, uniq("bad")), want: []string{"CONNACK:82", "closed"},
			why: "[MQTT-3.1.2-2] asks for return code 0x01; mochi sends 0x82, which a 3.1.1 client reads as an unknown refusal"},
		{name: "connect-v5-bad-protocol-name", send: mqttConnect(5, "MQIsdp", 0x02, uniq("bad")), want: []string{"CONNACK:82", "closed"},
			why: "MQIsdp is only level 3"},
		{name: "connect-reserved-flag", send: mqttConnect(4, "MQTT", 0x03, uniq("bad")), want: []string{"CONNACK:82", "closed"},
			why: "the CONNECT reserved flag must be 0 [MQTT-3.1.2-3]"},
		{name: "publish-before-connect", send: pub(false, "bad/early", nil), want: closed,
			why: "the first packet must be a CONNECT [MQTT-3.1.0-1]"},
		{name: "second-connect-v4", version: 4, send: mqttConnect(4, "MQTT", 0x02, uniq("bad")), want: closed,
			why: "a second CONNECT is a protocol violation [MQTT-3.1.0-2]"},
		{name: "second-connect-v5", version: 5, send: mqttConnect(5, "MQTT", 0x02, uniq("bad")), want: []string{"DISCONNECT:82", "closed"},
			why: "a second CONNECT is a protocol error 0x82"},
		{name: "length-5-bytes-before-connect", send: []byte{0x10, 0xff, 0xff, 0xff, 0xff, 0xff}, want: closed,
			why: "a remaining length has at most 4 bytes"},
		{name: "length-5-bytes-v4", version: 4, send: []byte{0x30, 0xff, 0xff, 0xff, 0xff, 0xff}, want: closed, why: "malformed remaining length"},
		{name: "length-5-bytes-v5", version: 5, send: []byte{0x30, 0xff, 0xff, 0xff, 0xff, 0xff}, want: closed, why: "malformed remaining length"},
		{name: "length-256MB-before-connect", send: []byte{0x10, 0xff, 0xff, 0xff, 0x7f}, want: closed,
			why: "over the maximum packet size, refused before reading the body"},
		{name: "length-256MB-v4", version: 4, send: []byte{0x30, 0xff, 0xff, 0xff, 0x7f}, want: closed, why: "over the maximum packet size"},
		{name: "length-256MB-v5", version: 5, send: []byte{0x30, 0xff, 0xff, 0xff, 0x7f}, want: closed,
			why: "over the maximum packet size; mochi closes without DISCONNECT 0x95"},
		{name: "publish-over-max-packet-v4", version: 4, chunk: 16 << 10,
			send: mqttPublish(0x30, "bad/huge", 0, false, nil, make([]byte, maxPacket)), want: closed, why: "over the maximum packet size"},
		{name: "publish-over-max-packet-v5", version: 5, chunk: 16 << 10,
			send: mqttPublish(0x30, "bad/huge", 0, true, nil, make([]byte, maxPacket)), want: closed, why: "over the maximum packet size"},
		{name: "publish-over-kafka-limit-v4", version: 4, awaitAck: true,
			send: mqttPublish(0x32, "bad/big", 1, false, nil, make([]byte, 2*maxRecord)), want: closed,
			why: "QoS 1 over the Kafka record limit: MQTT 3 has no negative PUBACK, so the connection is closed"},
		{name: "publish-over-kafka-limit-v5", version: 5, awaitAck: true,
			send: mqttPublish(0x32, "bad/big", 1, true, nil, make([]byte, 2*maxRecord)), want: []string{"PUBACK:95", alive},
			why: "QoS 1 over the Kafka record limit: PUBACK 0x95 packet too large, the connection stays"},
		{name: "subscribe-invalid-filter-v4", version: 4, send: mqttPacket(0x82, []byte{0, 1}, mqttString("a/#/b"), []byte{1}),
			want: []string{"SUBACK:80", alive}, why: "mochi answers an invalid filter with a failing SUBACK, not a disconnect"},
		{name: "subscribe-invalid-filter-v5", version: 5, send: mqttPacket(0x82, []byte{0, 1, 0}, mqttString("a/#/b"), []byte{1}),
			want: []string{"SUBACK:8f", alive}, why: "SUBACK 0x8F topic filter invalid"},
		{name: "subscribe-no-options-v5", version: 5, send: mqttPacket(0x82, []byte{0, 1, 0}, mqttString("a")), want: closed,
			why: "a filter with no subscription options byte after it is malformed (mochi alone would panic and end the process)"},
		{name: "subscribe-no-options-v5-split", version: 5, chunk: 1, send: mqttPacket(0x82, []byte{0, 1, 0}, mqttString("a"), []byte{1}, mqttString("bc")),
			want: closed, why: "the same, in the second filter, sent a byte at a time"},
		{name: "subscribe-no-options-v4", version: 4, send: mqttPacket(0x82, []byte{0, 1}, mqttString("a")), want: closed,
			why: "a filter with no requested QoS byte after it is malformed"},
		{name: "publish-wildcard-topic-v4", version: 4, send: pub(false, "bad/+/x", nil), want: closed,
			why: "a topic name has no wildcards [MQTT-3.3.2-2]"},
		{name: "publish-wildcard-topic-v5", version: 5, send: pub(true, "bad/#", nil), want: []string{"DISCONNECT:82", "closed"},
			why: "protocol error 0x82"},
		{name: "publish-invalid-utf8-v4", version: 4, send: pub(false, "bad/\xff\xfe", nil), want: closed,
			why: "a topic name is UTF-8 [MQTT-1.5.3-1]"},
		{name: "publish-invalid-utf8-v5", version: 5, send: pub(true, "bad/\xc0\x80", nil), want: closed,
			why: "malformed packet; mochi closes without DISCONNECT"},
		{name: "publish-nul-in-topic-v4", version: 4, send: pub(false, "bad/\x00", nil), want: closed,
			why: "U+0000 is not allowed [MQTT-1.5.3-2]"},
		{name: "publish-empty-topic-v4", version: 4, send: pub(false, "", nil), want: closed,
			why: "a topic name is at least one character [MQTT-4.7.3-1]"},
		{name: "publish-empty-topic-no-alias-v5", version: 5, send: pub(true, "", nil), want: []string{"DISCONNECT:82", "closed"},
			why: "empty topic without a topic alias: protocol error"},
		{name: "publish-empty-topic-unknown-alias-v5", version: 5, send: pub(true, "", []byte{0x23, 0, 7}), awaitAck: true,
			want: []string{"DISCONNECT:82", "closed"},
			why:  "a topic alias the client never set is a protocol error [MQTT-3.3.2-7]"},
		{name: "publish-no-packet-id-v4", version: 4, send: mqttPacket(0x32, mqttString("bad/noid"), []byte{0, 0}, []byte("x")), want: closed,
			why: "QoS 1 needs a non-zero packet id [MQTT-2.2.1-3]"},
		{name: "publish-qos3-flags-v4", version: 4, send: mqttPublish(0x36, "bad/qos3", 1, false, nil, []byte("x")), want: closed,
			why: "QoS 3 is malformed [MQTT-3.3.1-4]"},
		{name: "publish-qos3-flags-v5", version: 5, send: mqttPublish(0x36, "bad/qos3", 1, true, nil, []byte("x")), want: closed,
			why: "QoS 3 is malformed; read error, no DISCONNECT"},
		{name: "pingreq-reserved-flags", version: 4, send: []byte{0xc1, 0x00}, want: closed,
			why: "reserved flags must be 0 [MQTT-2.2.2-2]"},
		{name: "subscribe-reserved-flags", version: 4, send: mqttPacket(0x80, []byte{0, 1}, mqttString("a/b"), []byte{1}), want: closed,
			why: "SUBSCRIBE flags must be 0010 [MQTT-3.8.1-1]"},
		{name: "reserved-packet-type-0", version: 4, send: []byte{0x00, 0x00}, want: closed, why: "packet type 0 is reserved"},
	}
}

// badWSCase is bad input at the WebSocket level.
type badWSCase struct {
	name string
	run  func(t *testing.T) []string
	want []string
	why  string
}

func badWSCases(addr string, maxPacket int) []badWSCase {
	connectThen := func(t *testing.T, c *websocket.Conn, typ int, b []byte) []string {
		t.Helper()
		conn := wsBadConn(c)
		conn.connect(t, 4)
		_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if err := c.WriteMessage(typ, b); err != nil {
			return []string{"write: " + err.Error()}
		}
		return conn.answers(false, "PINGRESP")
	}
	dial := func(t *testing.T, protos []string) (*websocket.Conn, string) {
		t.Helper()
		dl := websocket.Dialer{HandshakeTimeout: 5 * time.Second, Subprotocols: protos}
		c, resp, err := dl.Dial("ws://"+addr+"/mqtt", nil)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		return c, resp.Header.Get("Sec-WebSocket-Protocol")
	}
	return []badWSCase{
		{name: "text-frame-connect", want: []string{"closed"}, why: "MQTT over WebSocket is binary [MQTT-6.0.0-1]",
			run: func(t *testing.T) []string {
				c, _ := dial(t, []string{"mqtt"})
				if err := c.WriteMessage(websocket.TextMessage, mqttConnect(4, "MQTT", 0x02, uniq("bad"))); err != nil {
					return []string{"write: " + err.Error()}
				}
				return wsBadConn(c).answers(false, "PINGRESP")
			}},
		{name: "text-frame-after-connect", want: []string{"closed"}, why: "MQTT over WebSocket is binary",
			run: func(t *testing.T) []string {
				c, _ := dial(t, []string{"mqtt"})
				return connectThen(t, c, websocket.TextMessage, []byte{0xc0, 0x00})
			}},
		{name: "frame-over-read-limit", want: []string{"ws-close:1009"}, why: "gorilla's read limit: close 1009 message too big, before the payload is read",
			run: func(t *testing.T) []string {
				c, _ := dial(t, []string{"mqtt"})
				conn := wsBadConn(c)
				conn.connect(t, 4)
				// Only the header of a binary frame one byte over the read
				// limit (masked, as from a client): the server refuses it
				// on the length, without waiting for the payload, and
				// nothing unread is left to turn its close into a reset.
				hdr := []byte{0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}
				for i, n := 9, maxPacket+1; n > 0; i, n = i-1, n>>8 {
					hdr[i] = byte(n)
				}
				if _, err := c.UnderlyingConn().Write(hdr); err != nil {
					return []string{"write: " + err.Error()}
				}
				return conn.answers(false, "PINGRESP")
			}},
		{name: "wrong-subprotocol", want: []string{"selected=\"\"", "CONNACK:00", "PINGRESP"},
			why: "the upgrader selects no subprotocol for a client not offering mqtt, and serves MQTT anyway",
			run: func(t *testing.T) []string {
				c, selected := dial(t, []string{"bogus"})
				conn := wsBadConn(c)
				return append([]string{fmt.Sprintf("selected=%q", selected)},
					conn.exchange(mqttConnect(4, "MQTT", 0x02, uniq("bad")), 0, false, false)...)
			}},
		{name: "http-without-upgrade", want: []string{"400"}, why: "the upgrader answers 400 to a plain GET",
			run: func(t *testing.T) []string {
				resp, err := http.Get("http://" + addr + "/mqtt")
				if err != nil {
					return []string{err.Error()}
				}
				resp.Body.Close()
				return []string{fmt.Sprint(resp.StatusCode)}
			}},
		{name: "idle-http-keep-alive", want: []string{"HTTP/1.1 404 Not Found", "closed"},
			why: "an HTTP connection left idle after a request must not be held for ever",
			run: func(t *testing.T) []string {
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				if _, err := io.WriteString(c, "GET /nope HTTP/1.1\r\nHost: "+addr+"\r\n\r\n"); err != nil {
					t.Fatal(err)
				}
				br := bufio.NewReader(c)
				_ = c.SetReadDeadline(time.Now().Add(badInputPatience))
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					return []string{err.Error()}
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				_, err = br.ReadByte()
				return []string{resp.Proto + " " + resp.Status, closeOutcome(err)}
			}},
		{name: "unknown-path", want: []string{"404"}, why: "MQTT is served on /mqtt and / only",
			run: func(t *testing.T) []string {
				resp, err := http.Get("http://" + addr + "/nope")
				if err != nil {
					return []string{err.Error()}
				}
				resp.Body.Close()
				return []string{fmt.Sprint(resp.StatusCode)}
			}},
	}
}

// MQTT 5 topic aliases: a publish that sets an alias and one that uses it
// both land under the full topic.
func TestTopicAliasPublishes(t *testing.T) {
	cfg := testConfig(t)
	topic := uniq("alias")
	cfg.Mapping.TopicRegexList = topic + ":.*"
	d := startDaemon(t, cfg)
	c := dialBadTCP(t, d.mqttAddr())
	defer c.close()
	c.connect(t, 5)
	alias := []byte{3, 0x23, 0, 1} // property length 3: topic alias (0x23) = 1
	set := mqttPublish(0x32, "dev/aliased", 1, true, alias[1:], []byte("first"))
	use := mqttPublish(0x32, "", 2, true, alias[1:], []byte("second"))
	for i, pk := range [][]byte{set, use} {
		if got := c.exchange(pk, 0, true, true); len(got) == 0 || got[0] != "PUBACK:00" {
			t.Fatalf("publish %d: server answered %v, want PUBACK:00", i+1, got)
		}
	}
	recs := kafkaRecords(t, d.bootstrap, topic, 2, 10*time.Second)
	if len(recs) != 2 {
		t.Fatalf("%d records in Kafka, want 2", len(recs))
	}
	// Both records, the second published by alias only, carry the
	// aliased topic as header and as key, in order.
	for i, r := range recs {
		if v, _ := header(r, "mqtt.topic"); v != "dev/aliased" || string(r.Key) != "dev/aliased" {
			t.Fatalf("record %q has mqtt.topic %q and key %q, want dev/aliased for both", r.Value, v, r.Key)
		}
		if want := []string{"first", "second"}[i]; string(r.Value) != want {
			t.Fatalf("record %d is %q, want %q", i, r.Value, want)
		}
	}
}
