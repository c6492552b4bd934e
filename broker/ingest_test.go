package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tributary-io/tributary/bridge"
	"github.com/tributary-io/tributary/mapping"
)

// fakeProducer holds records until the test decides their fate, so that
// delivery reports can arrive in any order.
type fakeProducer struct {
	mu      sync.Mutex
	pending []bridge.DeliveryHandler
	values  []string
	changed chan struct{}
	confirm bool // confirm each record as it is produced
	after   []func()
	// burstFrom is the first record deliverBurst has not confirmed.
	burstFrom int
}

// AfterDeliveries keeps f, called after each report, a burst of one, as
// the producer's event goroutine calls it after each burst.
func (f *fakeProducer) AfterDeliveries(fn func()) {
	f.mu.Lock()
	f.after = append(f.after, fn)
	f.mu.Unlock()
}

// deliverBurst confirms every record not confirmed yet, then ends the
// burst once.
func (f *fakeProducer) deliverBurst() {
	f.mu.Lock()
	hs := f.pending[f.burstFrom:]
	f.burstFrom = len(f.pending)
	f.mu.Unlock()
	for _, h := range hs {
		h.Delivered(bridge.Delivery{Topic: "mqtt"})
	}
	f.endBurst()
}

// report hands h its report and ends the burst.
func (f *fakeProducer) report(h bridge.DeliveryHandler, d bridge.Delivery) {
	h.Delivered(d)
	f.endBurst()
}

// endBurst calls the AfterDeliveries funcs.
func (f *fakeProducer) endBurst() {
	f.mu.Lock()
	after := f.after
	f.mu.Unlock()
	for _, fn := range after {
		fn()
	}
}

func newFakeProducer() *fakeProducer { return &fakeProducer{changed: make(chan struct{}, 1)} }

func (f *fakeProducer) Produce(_ context.Context, rec *bridge.Record, h bridge.DeliveryHandler) error {
	f.mu.Lock()
	f.pending = append(f.pending, h)
	f.values = append(f.values, string(rec.Value))
	confirm := f.confirm
	f.mu.Unlock()
	if confirm {
		f.report(h, bridge.Delivery{Topic: "mqtt"})
	}
	select {
	case f.changed <- struct{}{}:
	default:
	}
	return nil
}

func (f *fakeProducer) TryProduce(ctx context.Context, rec *bridge.Record, h bridge.DeliveryHandler) error {
	return errors.New("QoS 0 not used in this test")
}

func (f *fakeProducer) waitFor(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		f.mu.Lock()
		got := len(f.pending)
		f.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-f.changed:
		case <-deadline:
			t.Fatalf("producer got %d records, want %d", got, n)
		}
	}
}

func (f *fakeProducer) deliver(i int, err error) {
	f.mu.Lock()
	h := f.pending[i]
	f.mu.Unlock()
	f.report(h, bridge.Delivery{Topic: "mqtt", Err: err})
}

func startBroker(t *testing.T, p Producer) *Broker {
	t.Helper()
	return startWithMapping(t, p, mapping.Config{})
}

// startWithMapping starts a broker on a free port whose publishes are
// mapped by mc, closed at cleanup.
func startWithMapping(t *testing.T, p Producer, mc mapping.Config) *Broker {
	t.Helper()
	return startConfigured(t, p, mc, Config{})
}

// startConfigured is startWithMapping with cfg for the rest (its address
// and message limit are filled in).
func startConfigured(t *testing.T, p Producer, mc mapping.Config, cfg Config) *Broker {
	t.Helper()
	m, err := mapping.New(mc)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Addr, cfg.MaxMessageBytes = "127.0.0.1:0", 1<<20
	b, err := New(cfg, p, m, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// dial connects a raw MQTT client of the given protocol version (4 or 5).
func dial(t *testing.T, addr string, version byte) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	name := []byte("MQTT")
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: version,
		Connect: packets.ConnectParams{
			ProtocolName: name, Clean: true, Keepalive: 30, ClientIdentifier: t.Name(),
		},
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	fh := readPacket(t, conn, 5*time.Second)
	if fh[0] != 0x20 {
		t.Fatalf("want CONNACK, got % x", fh)
	}
	return conn
}

// readPacket reads one whole MQTT packet (remaining length < 128).
func readPacket(t *testing.T, conn net.Conn, timeout time.Duration) []byte {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(timeout))
	head := make([]byte, 2)
	if _, err := io.ReadFull(conn, head); err != nil {
		t.Fatalf("reading a packet: %v", err)
	}
	body := make([]byte, head[1])
	if _, err := io.ReadFull(conn, body); err != nil {
		t.Fatalf("reading a packet body: %v", err)
	}
	return append(head, body...)
}

func publishes(t *testing.T, version byte, qos byte, n int) []byte {
	t.Helper()
	var buf bytes.Buffer
	for i := 1; i <= n; i++ {
		pk := packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: qos},
			ProtocolVersion: version,
			TopicName:       "dev/order",
			PacketID:        uint16(i),
			Payload:         []byte{byte(i)},
		}
		if err := pk.PublishEncode(&buf); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

// Kafka answers the last record first: no PUBACK may leave until the
// first record is confirmed, and then all leave in arrival order.
func TestAcksInArrivalOrderWhenKafkaAnswersOutOfOrder(t *testing.T) {
	for _, version := range []byte{4, 5} {
		t.Run(map[byte]string{4: "MQTT 3.1.1", 5: "MQTT 5"}[version], func(t *testing.T) {
			const n = 10
			p := newFakeProducer()
			b := startBroker(t, p)
			conn := dial(t, b.Addr("mqtt-tcp"), version)
			if _, err := conn.Write(publishes(t, version, 1, n)); err != nil {
				t.Fatal(err)
			}
			p.waitFor(t, n) // the whole window is in the producer at once
			for i := n - 1; i >= 1; i-- {
				p.deliver(i, nil)
			}
			_ = conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			if k, err := conn.Read(make([]byte, 1)); err == nil || k > 0 {
				t.Fatal("a PUBACK left before Kafka confirmed the first publish")
			}
			p.deliver(0, nil)
			for want := 1; want <= n; want++ {
				pk := readPacket(t, conn, 5*time.Second)
				if pk[0] != 0x40 || int(pk[2])<<8|int(pk[3]) != want {
					t.Fatalf("ack %d: got % x, want PUBACK for packet %d", want, pk, want)
				}
			}
		})
	}
}

// A record Kafka refuses for good: MQTT 5 gets a negative PUBACK in its
// place in the order; MQTT 3.1.1 has none, so the connection is closed and
// nothing after it is acknowledged as a success.
func TestKafkaFailureIsNeverASuccess(t *testing.T) {
	t.Run("MQTT 5", func(t *testing.T) {
		p := newFakeProducer()
		b := startBroker(t, p)
		conn := dial(t, b.Addr("mqtt-tcp"), 5)
		if _, err := conn.Write(publishes(t, 5, 1, 3)); err != nil {
			t.Fatal(err)
		}
		p.waitFor(t, 3)
		p.deliver(0, nil)
		p.deliver(1, bridge.ErrRecordTooLarge)
		p.deliver(2, nil)
		if pk := readPacket(t, conn, 5*time.Second); pk[0] != 0x40 || pk[3] != 1 || pk[1] != 2 {
			t.Fatalf("first ack % x, want a plain PUBACK for 1", pk)
		}
		pk := readPacket(t, conn, 5*time.Second)
		if pk[0] != 0x40 || pk[3] != 2 || pk[1] < 3 || pk[4] != packets.ErrPacketTooLarge.Code {
			t.Fatalf("second ack % x, want PUBACK for 2 with reason 0x95", pk)
		}
		if pk := readPacket(t, conn, 5*time.Second); pk[0] != 0x40 || pk[3] != 3 {
			t.Fatalf("third ack % x, want PUBACK for 3", pk)
		}
	})
	t.Run("MQTT 3.1.1", func(t *testing.T) {
		p := newFakeProducer()
		b := startBroker(t, p)
		conn := dial(t, b.Addr("mqtt-tcp"), 4)
		if _, err := conn.Write(publishes(t, 4, 1, 3)); err != nil {
			t.Fatal(err)
		}
		p.waitFor(t, 3)
		p.deliver(1, errors.New("broker transport failure"))
		p.deliver(2, nil)
		p.deliver(0, nil)
		if pk := readPacket(t, conn, 5*time.Second); pk[0] != 0x40 || pk[3] != 1 {
			t.Fatalf("first ack % x, want PUBACK for 1", pk)
		}
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		rest, _ := io.ReadAll(conn)
		if len(rest) != 0 {
			t.Fatalf("after the failed publish the client got % x, want the connection closed with nothing more", rest)
		}
	})
}

// Closing with many clients on both listeners, while more keep arriving,
// finishes: mochi's own close path can deadlock on its client list when
// clients come and go during it.
func TestCloseWithClientsComingAndGoing(t *testing.T) {
	for round := range 5 {
		m, err := mapping.New(mapping.Config{})
		if err != nil {
			t.Fatal(err)
		}
		b, err := New(Config{Addr: "127.0.0.1:0", WSAddr: "127.0.0.1:0", MaxMessageBytes: 1 << 20}, newFakeProducer(), m,
			slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Start(); err != nil {
			t.Fatal(err)
		}
		var conns []*websocket.Conn
		var raws []net.Conn
		for i := range 30 {
			raws = append(raws, dialNamed(t, b.Addr("mqtt-tcp"), fmt.Sprintf("tcp-%d-%d", round, i)))
			conns = append(conns, dialWS(t, b.Addr("mqtt-ws"), fmt.Sprintf("ws-%d-%d", round, i)))
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { // keep connecting and dropping while the broker closes
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				c, err := net.DialTimeout("tcp", b.Addr("mqtt-tcp"), time.Second)
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		closed := make(chan error, 1)
		go func() { closed <- b.Close() }()
		select {
		case err := <-closed:
			if err != nil {
				t.Fatalf("round %d: Close: %v", round, err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("round %d: Close did not return", round)
		}
		close(stop)
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
		for _, c := range raws {
			c.Close()
		}
	}
}

func dialNamed(t *testing.T, addr, id string) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(connectPacket(t, id)); err != nil {
		t.Fatal(err)
	}
	if pk := readPacket(t, conn, 5*time.Second); pk[0] != 0x20 {
		t.Fatalf("want CONNACK, got % x", pk)
	}
	return conn
}

func dialWS(t *testing.T, addr, id string) *websocket.Conn {
	t.Helper()
	d := websocket.Dialer{Subprotocols: []string{"mqtt"}, HandshakeTimeout: 5 * time.Second}
	c, _, err := d.Dial("ws://"+addr+"/mqtt", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WriteMessage(websocket.BinaryMessage, connectPacket(t, id)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, msg, err := c.ReadMessage(); err != nil || len(msg) < 4 || msg[0] != 0x20 {
		t.Fatalf("want CONNACK over WebSocket, got % x, %v", msg, err)
	}
	return c
}

func connectPacket(t *testing.T, id string) []byte {
	t.Helper()
	return encodeConnect(t, "MQTT", 4, id, nil)
}

// encodeConnect encodes a clean-session CONNECT with protocol name and
// version for client id; edit, if not nil, changes its parameters first.
func encodeConnect(t *testing.T, name string, version byte, id string, edit func(*packets.ConnectParams)) []byte {
	t.Helper()
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: version,
		Connect:         packets.ConnectParams{ProtocolName: []byte(name), Clean: true, Keepalive: 30, ClientIdentifier: id},
	}
	if edit != nil {
		edit(&pk.Connect)
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
