package broker

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// fakeClock is a settable time source for the gate.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// gateServer is a loopback listener wrapped by a gate, with an accept
// loop handing admitted connections to accepted.
type gateServer struct {
	addr     string
	accepted chan net.Conn
	acceptEr chan error
}

func serveGate(t *testing.T, g *connGate, id string) *gateServer {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := g.wrap(raw, id)
	s := &gateServer{addr: raw.Addr().String(), accepted: make(chan net.Conn, 64), acceptEr: make(chan error, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				s.acceptEr <- err
				return
			}
			s.accepted <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		for {
			select {
			case c := <-s.accepted:
				c.Close()
			default:
				return
			}
		}
	})
	return s
}

// dialFrom connects to addr from local address from ("" for any).
func dialFrom(t *testing.T, addr, from string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %q: %v", addr, from, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// expectAdmitted waits for the server side of one admitted connection.
func (s *gateServer) expectAdmitted(t *testing.T) net.Conn {
	t.Helper()
	select {
	case c := <-s.accepted:
		return c
	case err := <-s.acceptEr:
		t.Fatalf("Accept returned %v; it must keep serving", err)
	case <-time.After(5 * time.Second):
		t.Fatal("connection not admitted")
	}
	return nil
}

// expectRefused checks that the server closed c without handing it to the
// accept loop.
func (s *gateServer) expectRefused(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(make([]byte, 1))
	var ne net.Error
	if n != 0 || err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("refused connection: read %d bytes, error %v; want it closed at once", n, err)
	}
	select {
	case sc := <-s.accepted:
		t.Fatalf("refused connection from %s reached the accept loop", sc.RemoteAddr())
	case err := <-s.acceptEr:
		t.Fatalf("Accept returned %v on a refusal; it must keep serving", err)
	default:
	}
}

// gathered returns the series of metric name in reg, each as its label
// pairs ("listener=mqtt-tcp,reason=...") mapped to its counter value.
// (prometheus/testutil would need a go.mod entry for its diff library.)
func gathered(t *testing.T, reg prometheus.Gatherer, name string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			v := m.GetCounter().GetValue()
			if m.GetGauge() != nil {
				v = m.GetGauge().GetValue()
			}
			out[strings.Join(ls, ",")] = v
		}
	}
	return out
}

// refusedCount reads the refusal counter of listener and reason.
func refusedCount(t *testing.T, g *connGate, listener, reason string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(g.refused)
	return gathered(t, reg, "tributary_mqtt_connections_refused_total")["listener="+listener+",reason="+reason]
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestConnGateMaxConns(t *testing.T) {
	reg := prometheus.NewRegistry()
	g := newConnGate(ConnLimits{MaxConns: 2}, reg, discardLog())
	tcp, ws := serveGate(t, g, "mqtt-tcp"), serveGate(t, g, "mqtt-ws")

	dialFrom(t, tcp.addr, "")
	a := tcp.expectAdmitted(t)
	dialFrom(t, ws.addr, "")
	ws.expectAdmitted(t)
	// The limit is across listeners: the third, on either, is refused.
	tcp.expectRefused(t, dialFrom(t, tcp.addr, ""))
	ws.expectRefused(t, dialFrom(t, ws.addr, ""))
	if got := refusedCount(t, g, "mqtt-tcp", reasonMaxConns); got != 1 {
		t.Errorf("mqtt-tcp max_connections refusals = %v, want 1", got)
	}
	if got := refusedCount(t, g, "mqtt-ws", reasonMaxConns); got != 1 {
		t.Errorf("mqtt-ws max_connections refusals = %v, want 1", got)
	}

	a.Close()
	dialFrom(t, tcp.addr, "")
	tcp.expectAdmitted(t)
	tcp.expectRefused(t, dialFrom(t, tcp.addr, ""))

	// Every series exists from the start, so a rate() sees the first one.
	series := gathered(t, reg, "tributary_mqtt_connections_refused_total")
	if len(series) != 6 || series["listener=mqtt-ws,reason=connection_rate"] != 0 {
		t.Errorf("refusal series %v, want 3 reasons x 2 listeners", series)
	}
}

func TestConnGatePerIP(t *testing.T) {
	g := newConnGate(ConnLimits{MaxConnsPerIP: 2}, prometheus.NewRegistry(), discardLog())
	s := serveGate(t, g, "mqtt-tcp")
	dialFrom(t, s.addr, "127.0.0.1")
	first := s.expectAdmitted(t)
	dialFrom(t, s.addr, "127.0.0.1")
	s.expectAdmitted(t)
	s.expectRefused(t, dialFrom(t, s.addr, "127.0.0.1"))
	// Another source is not affected.
	dialFrom(t, s.addr, "127.0.0.2")
	s.expectAdmitted(t)
	if got := refusedCount(t, g, "mqtt-tcp", reasonMaxConnsPerIP); got != 1 {
		t.Errorf("max_connections_per_ip refusals = %v, want 1", got)
	}
	first.Close()
	dialFrom(t, s.addr, "127.0.0.1")
	s.expectAdmitted(t)
}

func TestConnGateRateWithBurst(t *testing.T) {
	clock := newFakeClock()
	g := newConnGate(ConnLimits{RatePerIP: 2, BurstPerIP: 3}, prometheus.NewRegistry(), discardLog())
	g.now = clock.now
	s := serveGate(t, g, "mqtt-tcp")
	for range 3 {
		dialFrom(t, s.addr, "127.0.0.1")
		s.expectAdmitted(t)
	}
	s.expectRefused(t, dialFrom(t, s.addr, "127.0.0.1"))
	dialFrom(t, s.addr, "127.0.0.2")
	s.expectAdmitted(t)

	clock.advance(500 * time.Millisecond) // one token at 2/s
	dialFrom(t, s.addr, "127.0.0.1")
	s.expectAdmitted(t)
	s.expectRefused(t, dialFrom(t, s.addr, "127.0.0.1"))
	if got := refusedCount(t, g, "mqtt-tcp", reasonRate); got != 2 {
		t.Errorf("connection_rate refusals = %v, want 2", got)
	}

	clock.advance(time.Hour) // refills to the burst, not beyond
	for range 3 {
		dialFrom(t, s.addr, "127.0.0.1")
		s.expectAdmitted(t)
	}
	s.expectRefused(t, dialFrom(t, s.addr, "127.0.0.1"))
}

func TestConnGateDefaultBurst(t *testing.T) {
	for _, tc := range []struct {
		rate float64
		want float64
	}{{0.1, 1}, {1, 1}, {2.5, 3}, {100, 100}} {
		g := newConnGate(ConnLimits{RatePerIP: tc.rate}, nil, discardLog())
		if g.burst != tc.want {
			t.Errorf("rate %v: burst %v, want %v", tc.rate, g.burst, tc.want)
		}
	}
}

func TestConnGateCloseReleasesOnce(t *testing.T) {
	g := newConnGate(ConnLimits{MaxConns: 1, MaxConnsPerIP: 1}, prometheus.NewRegistry(), discardLog())
	s := serveGate(t, g, "mqtt-tcp")
	dialFrom(t, s.addr, "")
	a := s.expectAdmitted(t)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.Close()
		}()
	}
	wg.Wait()
	if n := g.open.Load(); n != 0 {
		t.Fatalf("open connections after closing one 4 times = %d, want 0", n)
	}
	dialFrom(t, s.addr, "")
	b := s.expectAdmitted(t)
	// Had the closes released more than once, this one would get in.
	s.expectRefused(t, dialFrom(t, s.addr, ""))
	b.Close()
	b.Close()
	if n := g.open.Load(); n != 0 {
		t.Fatalf("open connections = %d, want 0", n)
	}
	g.mu.Lock()
	left := len(g.sources)
	g.mu.Unlock()
	if left != 0 {
		t.Errorf("%d sources tracked with no connection and no rate limit, want 0", left)
	}
}

func TestConnGateSourcesBounded(t *testing.T) {
	clock := newFakeClock()
	g := newConnGate(ConnLimits{MaxConnsPerIP: 5, RatePerIP: 0.001}, nil, discardLog())
	g.now = clock.now
	g.maxIdle, g.nextSweep = 256, 256

	addr := func(i int) netip.Addr {
		return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 12: byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)})
	}
	// Connections that stay open keep their sources.
	const held = 300
	for i := range held {
		if r := g.admit(addr(i), clock.now()); r != "" {
			t.Fatalf("admit %d: %s", i, r)
		}
	}
	// A spray of addresses, each connecting once and leaving with its
	// bucket empty (refilling takes 1000s at this rate).
	for i := held; i < held+100_000; i++ {
		ip := addr(i)
		if r := g.admit(ip, clock.now()); r != "" {
			t.Fatalf("admit %d: %s", i, r)
		}
		g.releaseSource(ip, clock.now())
		g.open.Add(-1)
		if i%1000 == 0 {
			clock.advance(time.Millisecond)
		}
	}
	g.mu.Lock()
	n := len(g.sources)
	heldLeft := 0
	for i := range held {
		if s := g.sources[addr(i)]; s != nil && s.conns == 1 {
			heldLeft++
		}
	}
	g.mu.Unlock()
	if n > held+g.maxIdle {
		t.Errorf("%d sources tracked after a spray of 100000 addresses, want at most %d", n, held+g.maxIdle)
	}
	if heldLeft != held {
		t.Errorf("%d of %d sources with an open connection kept, want all", heldLeft, held)
	}
	// Idle entries go as soon as they are idle.
	clock.advance(time.Hour)
	for i := range held {
		g.release(addr(i))
	}
	g.mu.Lock()
	g.sweepLocked(clock.now())
	n = len(g.sources)
	g.mu.Unlock()
	if n != 0 || g.open.Load() != 0 {
		t.Errorf("after everything closed and refilled: %d sources, %d open; want 0, 0", n, g.open.Load())
	}
}

// countHandler counts log records and keeps the last one's attributes.
type countHandler struct {
	mu    sync.Mutex
	n     int
	attrs map[string]string
}

func (h *countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *countHandler) WithGroup(string) slog.Handler            { return h }
func (h *countHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.n++
	h.attrs = map[string]string{}
	r.Attrs(func(a slog.Attr) bool {
		h.attrs[a.Key] = a.Value.String()
		return true
	})
	return nil
}

func TestConnGateRefusalLogThrottled(t *testing.T) {
	clock := newFakeClock()
	h := &countHandler{}
	g := newConnGate(ConnLimits{MaxConns: 1}, prometheus.NewRegistry(), slog.New(h))
	g.now = clock.now
	remote := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 1234}
	for range 1000 {
		g.refuse("mqtt-tcp", reasonMaxConns, remote)
	}
	g.refuse("mqtt-tcp", reasonRate, remote) // another reason has its own allowance
	if h.n != 2 {
		t.Fatalf("%d log lines for a flood of 1000 refusals and 1 of another reason, want 2", h.n)
	}
	clock.advance(time.Second)
	g.refuse("mqtt-tcp", reasonMaxConns, remote)
	if h.n != 3 || h.attrs["suppressed"] != "999" || h.attrs["reason"] != reasonMaxConns {
		t.Errorf("after a second: %d lines, last %v; want 3 lines, the last with suppressed=999", h.n, h.attrs)
	}
	if got := refusedCount(t, g, "mqtt-tcp", reasonMaxConns); got != 1001 {
		t.Errorf("refusals counted %v, want all 1001", got)
	}
}

func TestConnGateConnectTimeout(t *testing.T) {
	g := newConnGate(ConnLimits{ConnectTimeout: 100 * time.Millisecond}, nil, discardLog())
	s := serveGate(t, g, "mqtt-tcp")
	dialFrom(t, s.addr, "")
	c := s.expectAdmitted(t)
	start := time.Now()
	_, err := c.Read(make([]byte, 1))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read from a silent client: %v, want the connect deadline", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("connect deadline hit after %s", d)
	}
}

// flakyListener fails Accept with the queued errors before returning conns.
type flakyListener struct {
	errs  chan error
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *flakyListener) Accept() (net.Conn, error) {
	select {
	case err := <-l.errs:
		return nil, err
	default:
	}
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *flakyListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *flakyListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

func TestGatedListenerRetriesTransientErrors(t *testing.T) {
	fl := &flakyListener{errs: make(chan error, 4), conns: make(chan net.Conn, 1), done: make(chan struct{})}
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	fl.errs <- emfile
	fl.errs <- emfile
	a, b := net.Pipe()
	defer b.Close()
	fl.conns <- a
	ln := newConnGate(ConnLimits{}, nil, discardLog()).wrap(fl, "mqtt-tcp")
	c, err := ln.Accept()
	if err != nil {
		t.Fatalf("Accept after two EMFILE: %v, want the next connection", err)
	}
	c.Close()

	// Closing ends the retrying.
	fl.errs <- emfile
	done := make(chan error, 1)
	go func() {
		_, err := ln.Accept()
		done <- err
	}()
	ln.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Accept on a closed listener returned a connection")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
}

func TestRemoteIP(t *testing.T) {
	for _, tc := range []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 1}, "192.0.2.7"},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.7"), Port: 1}, "192.0.2.7"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 1}, "2001:db8::"},
		// One /64 is one source: a host can use any address in it.
		{&net.TCPAddr{IP: net.ParseIP("2001:db8::ffff:1:2:3"), Port: 1}, "2001:db8::"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:0:1::1"), Port: 1}, "2001:db8:0:1::"},
		{&net.UDPAddr{IP: net.ParseIP("192.0.2.8"), Port: 1}, "192.0.2.8"},
		{&net.UnixAddr{Name: "/tmp/x", Net: "unix"}, "invalid IP"},
		{nil, "invalid IP"},
	} {
		if got := remoteIP(tc.addr).String(); got != tc.want {
			t.Errorf("remoteIP(%v) = %s, want %s", tc.addr, got, tc.want)
		}
	}
}

func selfSignedCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// The TLS state stays reachable whichever way round TLS and the gate are.
func TestGatedConnKeepsTLSReachable(t *testing.T) {
	cfg := &tls.Config{Certificates: []tls.Certificate{selfSignedCert(t)}}
	for _, order := range []string{"tls-outside-gate", "gate-outside-tls"} {
		t.Run(order, func(t *testing.T) {
			g := newConnGate(ConnLimits{MaxConns: 10}, nil, discardLog())
			raw, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			var ln net.Listener
			if order == "tls-outside-gate" {
				ln = tls.NewListener(g.wrap(raw, "mqtts"), cfg)
			} else {
				ln = g.wrap(tls.NewListener(raw, cfg), "mqtts")
			}
			defer ln.Close()
			go func() {
				c, err := tls.Dial("tcp", raw.Addr().String(), &tls.Config{InsecureSkipVerify: true})
				if err == nil {
					_, _ = c.Write([]byte("x"))
					defer c.Close()
					_, _ = c.Read(make([]byte, 1))
				}
			}()
			c, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
			tc := tlsConn(c)
			if tc == nil {
				t.Fatalf("tlsConn(%T) found no *tls.Conn", c)
			}
			if !tc.ConnectionState().HandshakeComplete {
				t.Error("TLS handshake not complete")
			}
			// Stripping the gate never strips TLS.
			if u, ok := unwrapConn(c).(*tls.Conn); !ok || u != tc {
				t.Errorf("unwrapConn(%T) = %T, want the *tls.Conn", c, unwrapConn(c))
			}
			if order == "tls-outside-gate" {
				if _, ok := unwrapConn(tc.NetConn()).(*net.TCPConn); !ok {
					t.Errorf("unwrapConn(tls.NetConn()) = %T, want *net.TCPConn", unwrapConn(tc.NetConn()))
				}
			}
			if g.open.Load() != 1 {
				t.Errorf("open = %d, want 1", g.open.Load())
			}
			c.Close()
			if g.open.Load() != 0 {
				t.Errorf("open after close = %d, want 0", g.open.Load())
			}
		})
	}
}

func TestPublishLimiterUnlimitedIsNil(t *testing.T) {
	p := newPublishLimiter(PublishLimits{})
	if p != nil {
		t.Fatalf("unlimited limiter = %+v, want nil", p)
	}
	now := time.Now()
	for range 1000 {
		if !p.allow(now, 1<<20) || p.delay(now, 1<<20) != 0 {
			t.Fatal("nil limiter limited a publish")
		}
	}
}

func TestPublishLimiterMessages(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	p := newPublishLimiter(PublishLimits{MessagesPerSecond: 10, MessageBurst: 3})
	steps := []struct {
		at   time.Duration
		want bool
	}{
		{0, true}, {0, true}, {0, true}, // the burst
		{0, false}, {50 * time.Millisecond, false}, // half a token
		{100 * time.Millisecond, true}, {100 * time.Millisecond, false},
		{90 * time.Millisecond, false},                                              // the clock going back gives nothing
		{time.Hour, true}, {time.Hour, true}, {time.Hour, true}, {time.Hour, false}, // refilled to the burst only
	}
	for i, s := range steps {
		if got := p.allow(t0.Add(s.at), 100); got != s.want {
			t.Fatalf("step %d at +%s: allow = %v, want %v", i, s.at, got, s.want)
		}
	}
}

func TestPublishLimiterBytes(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	p := newPublishLimiter(PublishLimits{BytesPerSecond: 1000})
	if !p.allow(t0, 600) || !p.allow(t0, 400) {
		t.Fatal("the burst of 1000 bytes was not allowed")
	}
	if p.allow(t0, 1) {
		t.Fatal("a byte over the burst was allowed")
	}
	if !p.allow(t0.Add(100*time.Millisecond), 100) || p.allow(t0.Add(100*time.Millisecond), 1) {
		t.Fatal("refill of 100 bytes in 100ms not applied exactly")
	}

	// A publish larger than the burst goes through on a full bucket and
	// leaves a debt that holds the sustained rate.
	p = newPublishLimiter(PublishLimits{BytesPerSecond: 1000})
	if !p.allow(t0, 5000) {
		t.Fatal("a publish larger than the burst was refused on a full bucket")
	}
	if p.allow(t0.Add(3*time.Second), 1) {
		t.Fatal("allowed while 2000 bytes in debt")
	}
	if !p.allow(t0.Add(5*time.Second), 1) {
		t.Fatal("refused after the debt was repaid")
	}
}

func TestPublishLimiterBoth(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	p := newPublishLimiter(PublishLimits{MessagesPerSecond: 100, MessageBurst: 100, BytesPerSecond: 1000, ByteBurst: 1000})
	for i := range 10 {
		if !p.allow(t0, 100) {
			t.Fatalf("publish %d refused within both limits", i)
		}
	}
	if p.allow(t0, 100) {
		t.Fatal("byte limit not applied with messages to spare")
	}
	// A refusal takes no tokens: the same publish passes once refilled.
	if !p.allow(t0.Add(100*time.Millisecond), 100) {
		t.Fatal("refused after a refill")
	}
}

func TestPublishLimiterDelay(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	p := newPublishLimiter(PublishLimits{MessagesPerSecond: 10, MessageBurst: 1})
	for i, want := range []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond, 300 * time.Millisecond} {
		if got := p.delay(t0, 10); got != want {
			t.Fatalf("delay %d = %s, want %s", i, got, want)
		}
	}
	// The caller waited as told: the next one is on time.
	if got := p.delay(t0.Add(400*time.Millisecond), 10); got != 0 {
		t.Fatalf("delay after waiting = %s, want 0", got)
	}
	p = newPublishLimiter(PublishLimits{BytesPerSecond: 1000, ByteBurst: 1000})
	if got := p.delay(t0, 3000); got != 2*time.Second {
		t.Fatalf("delay for 3000 bytes at 1000 B/s with a 1000 burst = %s, want 2s", got)
	}
}

func TestPublishLimitMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newPublishLimitMetrics(reg)
	for range 3 {
		m.listener("mqtt-tcp").Inc()
	}
	m.listener("mqtt-ws").Inc()
	got := gathered(t, reg, "tributary_mqtt_publish_rate_limited_total")
	if len(got) != 2 || got["listener=mqtt-tcp"] != 3 || got["listener=mqtt-ws"] != 1 {
		t.Errorf("tributary_mqtt_publish_rate_limited_total = %v, want mqtt-tcp 3, mqtt-ws 1", got)
	}
	if m.listener("mqtt-tcp") != m.listener("mqtt-tcp") {
		t.Error("listener counter not cached")
	}
}

// The gate costs nothing on reads and writes; this measures the accept
// and close path it does cost, against a gate with no limits.
func BenchmarkConnGateAdmitRelease(b *testing.B) {
	for _, tc := range []struct {
		name string
		l    ConnLimits
	}{
		{"unlimited", ConnLimits{}},
		{"max-conns", ConnLimits{MaxConns: 1 << 20}},
		{"per-ip-and-rate", ConnLimits{MaxConns: 1 << 20, MaxConnsPerIP: 100, RatePerIP: 1e9}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			g := newConnGate(tc.l, nil, discardLog())
			now := time.Now()
			ips := make([]netip.Addr, 256)
			for i := range ips {
				ips[i] = netip.MustParseAddr(fmt.Sprintf("10.0.0.%d", i))
			}
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				ip := ips[i&255]
				if g.admit(ip, now) == "" {
					g.release(ip)
				}
			}
		})
	}
}
