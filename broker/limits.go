package broker

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tributary-io/tributary/bridge"
)

// ConnLimits bounds the connections the MQTT listeners accept. The checks
// run in Accept, before a byte of the connection is read, so a refused
// connection costs an accept and a close and nothing else.
type ConnLimits struct {
	// MaxConns is the most connections open at once across every listener
	// sharing the gate; 0 is unlimited.
	MaxConns int
	// MaxConnsPerIP is the most connections open at once from one source
	// address; 0 is unlimited.
	MaxConnsPerIP int
	// RatePerIP is how many new connections per second one source address
	// may open (refused ones count: a client hammering a full server is
	// slowed too); 0 is unlimited.
	RatePerIP float64
	// BurstPerIP is the token bucket size of RatePerIP: how many
	// connections a source may open at once after being quiet. Default
	// max(1, ceil(RatePerIP)).
	BurstPerIP int
	// ConnectTimeout is how long a new connection may take to send its
	// first packet (and finish the TLS handshake when TLS wraps the gated
	// listener): it is the read deadline set at accept, which mochi
	// replaces with the keepalive deadline once the CONNECT is accepted.
	// 0 leaves the connection without a deadline until then, which lets a
	// client that never sends CONNECT hold a connection for ever. On a
	// WebSocket listener net/http replaces this deadline while it reads
	// the upgrade request, so the listener must set it again after the
	// upgrade.
	ConnectTimeout time.Duration
}

const (
	reasonMaxConns      = "max_connections"
	reasonMaxConnsPerIP = "max_connections_per_ip"
	reasonRate          = "connection_rate"
)

// maxIdleSources bounds the per-source entries kept for connections that
// are no longer open (rate limit state). A spray of source addresses wider
// than this evicts entries whose bucket has not refilled yet, which makes
// the per-source rate limit lenient for them, never stricter; MaxConns
// still holds.
const maxIdleSources = 1 << 14

// connGate applies ConnLimits to the listeners it wraps. One gate is
// shared by all of a broker's listeners so MaxConns is a total.
type connGate struct {
	limits ConnLimits
	burst  float64
	log    *slog.Logger
	now    func() time.Time

	refused *prometheus.CounterVec
	logs    [3]bridge.Throttle // by reason: refusal lines, at most one a second each
	acceptT bridge.Throttle    // accept errors

	open atomic.Int64 // connections open through the gate

	mu        sync.Mutex
	sources   map[netip.Addr]*source
	nextSweep int // sweep idle sources when len(sources) reaches this
	maxIdle   int
}

// source is one remote address's state.
type source struct {
	conns  int       // open connections
	tokens float64   // connection rate bucket, as of last
	last   time.Time // when tokens was computed
}

func newConnGate(l ConnLimits, reg prometheus.Registerer, log *slog.Logger) *connGate {
	g := &connGate{
		limits:  l,
		log:     log,
		now:     time.Now,
		sources: map[netip.Addr]*source{},
		maxIdle: maxIdleSources,
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tributary", Subsystem: "mqtt", Name: "connections_refused_total",
			Help: "MQTT connections closed at accept by a connection limit, by listener and reason (max_connections, max_connections_per_ip, connection_rate).",
		}, []string{"listener", "reason"}),
	}
	g.nextSweep = g.maxIdle
	for i := range g.logs {
		g.logs[i].Interval = time.Second
	}
	g.acceptT.Interval = time.Second
	if l.RatePerIP > 0 {
		g.burst = float64(l.BurstPerIP)
		if l.BurstPerIP <= 0 {
			g.burst = math.Max(1, math.Ceil(l.RatePerIP))
		}
	}
	if reg != nil {
		reg.MustRegister(g.refused)
	}
	return g
}

// wrap returns ln with the gate's limits applied to what it accepts;
// listener labels the refusal metric and log lines. Wrap the plain TCP
// listener and hand the result to tls.NewListener, so a refusal costs no
// TLS handshake.
func (g *connGate) wrap(ln net.Listener, listener string) net.Listener {
	// Touch the refusal children so that the series exist, at zero, from
	// the start: a dashboard's rate() needs the first sample.
	for _, r := range []string{reasonMaxConns, reasonMaxConnsPerIP, reasonRate} {
		g.refused.WithLabelValues(listener, r)
	}
	return &gatedListener{Listener: ln, gate: g, id: listener, done: make(chan struct{})}
}

// perSource reports whether limits need per-address state.
func (g *connGate) perSource() bool {
	return g.limits.MaxConnsPerIP > 0 || g.limits.RatePerIP > 0
}

// admit takes a connection slot for a connection from ip, or returns the
// reason it is refused.
func (g *connGate) admit(ip netip.Addr, now time.Time) string {
	if g.perSource() {
		if reason := g.admitSource(ip, now); reason != "" {
			return reason
		}
	}
	if n := g.open.Add(1); g.limits.MaxConns > 0 && n > int64(g.limits.MaxConns) {
		g.open.Add(-1)
		if g.perSource() {
			g.releaseSource(ip, now)
		}
		return reasonMaxConns
	}
	return ""
}

func (g *connGate) admitSource(ip netip.Addr, now time.Time) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.sources[ip]
	if s == nil {
		if len(g.sources) >= g.nextSweep {
			g.sweepLocked(now)
		}
		s = &source{tokens: g.burst, last: now}
		g.sources[ip] = s
	}
	if g.limits.RatePerIP > 0 {
		s.refill(now, g.limits.RatePerIP, g.burst)
		if s.tokens < 1 {
			return reasonRate
		}
		s.tokens--
	}
	if g.limits.MaxConnsPerIP > 0 && s.conns >= g.limits.MaxConnsPerIP {
		return reasonMaxConnsPerIP
	}
	s.conns++
	return ""
}

// release gives back the slot of a connection from ip.
func (g *connGate) release(ip netip.Addr) {
	g.open.Add(-1)
	if g.perSource() {
		g.releaseSource(ip, g.now())
	}
}

func (g *connGate) releaseSource(ip netip.Addr, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.sources[ip]
	if s == nil {
		return
	}
	if s.conns > 0 {
		s.conns--
	}
	if g.idle(s, now) {
		delete(g.sources, ip)
	}
}

func (s *source) refill(now time.Time, rate, burst float64) {
	if dt := now.Sub(s.last).Seconds(); dt > 0 {
		s.tokens = math.Min(burst, s.tokens+dt*rate)
	}
	s.last = now
}

// idle reports whether forgetting s changes nothing: no open connection
// and a full bucket, which is also what a new entry starts with.
func (g *connGate) idle(s *source, now time.Time) bool {
	if s.conns > 0 {
		return false
	}
	if g.limits.RatePerIP <= 0 {
		return true
	}
	return s.tokens+now.Sub(s.last).Seconds()*g.limits.RatePerIP >= g.burst
}

// sweepLocked drops idle sources and, past maxIdle/2 entries, sources
// with no open connection even if their bucket is not full yet. Sources
// with open connections stay: their count is bounded by the connections
// themselves. The next sweep is due maxIdle/2 entries later, so sweeping
// costs O(1) per new source however many are connected.
func (g *connGate) sweepLocked(now time.Time) {
	for ip, s := range g.sources {
		if g.idle(s, now) || (s.conns == 0 && len(g.sources) > g.maxIdle/2) {
			delete(g.sources, ip)
		}
	}
	g.nextSweep = len(g.sources) + g.maxIdle/2
}

func (g *connGate) refuse(listener, reason string, remote net.Addr) {
	g.refused.WithLabelValues(listener, reason).Inc()
	i := 0
	switch reason {
	case reasonMaxConnsPerIP:
		i = 1
	case reasonRate:
		i = 2
	}
	if ok, suppressed := g.logs[i].Allow(g.now()); ok {
		g.log.Warn("MQTT connection refused (logged at most once a second per reason)",
			"listener", listener, "remote", addrString(remote), "reason", reason,
			"max_connections", g.limits.MaxConns, "max_connections_per_ip", g.limits.MaxConnsPerIP,
			"rate_per_ip", g.limits.RatePerIP, "suppressed", suppressed)
	}
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// gatedListener applies a connGate in Accept.
type gatedListener struct {
	net.Listener
	gate      *connGate
	id        string
	done      chan struct{}
	closeOnce sync.Once
}

var _ net.Listener = (*gatedListener)(nil)

// Accept returns the next admitted connection. Refused connections are
// closed here and never returned: the caller (mochi's accept loop, or
// http.Server) would treat an error as the end of the listener. Transient
// accept errors (out of file descriptors, a connection reset before it was
// accepted) are retried with a backoff for the same reason.
func (l *gatedListener) Accept() (net.Conn, error) {
	var backoff time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if !transientAcceptError(err) {
				return nil, err
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			if ok, suppressed := l.gate.acceptT.Allow(l.gate.now()); ok {
				l.gate.log.Warn("accepting MQTT connection failed; retrying", "listener", l.id, "error", err, "retry_in", backoff, "suppressed", suppressed)
			}
			select {
			case <-time.After(backoff):
				continue
			case <-l.done:
				return nil, err
			}
		}
		backoff = 0
		ip := remoteIP(c.RemoteAddr())
		if reason := l.gate.admit(ip, l.gate.now()); reason != "" {
			// Counted before the close, so that whoever sees the
			// connection end also sees it counted.
			l.gate.refuse(l.id, reason, c.RemoteAddr())
			_ = c.Close()
			continue
		}
		if d := l.gate.limits.ConnectTimeout; d > 0 {
			_ = c.SetReadDeadline(time.Now().Add(d))
		}
		return &gatedConn{Conn: c, gate: l.gate, ip: ip}, nil
	}
}

// Close closes the listener and ends a pending accept backoff.
func (l *gatedListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// transientAcceptError reports whether Accept may succeed if retried.
func transientAcceptError(err error) bool {
	if errors.Is(err, net.ErrClosed) {
		return false
	}
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EINTR, syscall.EAGAIN} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// remoteIP is the source a connection is limited under: the IPv4 address,
// or the IPv6 /64 (one host usually holds a whole /64, so per-address
// limits would not bind it), with IPv4-mapped IPv6 addresses unmapped.
// Addresses that are not IP (a unix socket, a test pipe) share the zero
// Addr.
func remoteIP(a net.Addr) netip.Addr {
	var ip netip.Addr
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	case nil:
		return netip.Addr{}
	default:
		ap, err := netip.ParseAddrPort(a.String())
		if err != nil {
			return netip.Addr{}
		}
		ip = ap.Addr()
	}
	ip = ip.Unmap()
	if ip.Is6() {
		if p, err := ip.Prefix(64); err == nil {
			return p.Addr()
		}
	}
	return ip
}

// gatedConn gives its slot back when closed, once, however often Close is
// called. Reads and writes go straight to the embedded conn.
type gatedConn struct {
	net.Conn
	gate   *connGate
	ip     netip.Addr
	closed atomic.Bool
}

// Close closes the connection and releases its slot the first time.
func (c *gatedConn) Close() error {
	err := c.Conn.Close()
	if c.closed.CompareAndSwap(false, true) {
		c.gate.release(c.ip)
	}
	return err
}

// NetConn returns the wrapped connection, as tls.Conn.NetConn does.
func (c *gatedConn) NetConn() net.Conn { return c.Conn }

// unwrapConn strips the gate's wrapper from c, giving back the connection
// the listener accepted (a *tls.Conn when the gate wraps a TLS listener).
func unwrapConn(c net.Conn) net.Conn {
	for {
		g, ok := c.(*gatedConn)
		if !ok {
			return c
		}
		c = g.Conn
	}
}

// tlsConn finds the *tls.Conn in c's chain of wrappers, whether TLS wraps
// the gate or the gate wraps TLS.
func tlsConn(c net.Conn) *tls.Conn {
	t, _ := connIn[*tls.Conn](c)
	return t
}

// connIn finds the connection of type T in c's chain of wrappers
// (anything with a NetConn method).
func connIn[T net.Conn](c net.Conn) (T, bool) {
	for c != nil {
		if t, ok := c.(T); ok {
			return t, true
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = u.NetConn()
	}
	var none T
	return none, false
}

// PublishLimits bounds how fast one client connection may publish.
type PublishLimits struct {
	// MessagesPerSecond is the sustained PUBLISH rate of one connection;
	// 0 is unlimited.
	MessagesPerSecond float64
	// BytesPerSecond is the sustained payload rate of one connection;
	// 0 is unlimited.
	BytesPerSecond float64
	// MessageBurst is how many publishes may arrive at once after a quiet
	// period. Default max(1, ceil(MessagesPerSecond)).
	MessageBurst int
	// ByteBurst is how many payload bytes may arrive at once after a quiet
	// period. Default max(1, ceil(BytesPerSecond)). A single publish larger
	// than ByteBurst is still let through when the bucket is full; it
	// leaves the bucket in debt, so the sustained rate holds.
	ByteBurst int
}

// publishLimiter is one connection's token buckets for messages and
// bytes. It is not safe for concurrent use: mochi calls the publish hook
// from the connection's own read goroutine, one packet at a time, so each
// connection owns its limiter and the hot path takes no lock. A nil
// *publishLimiter allows everything.
type publishLimiter struct {
	msgRate, msgBurst   float64
	byteRate, byteBurst float64
	msgs, bytes         float64 // tokens as of last; may be negative (debt)
	last                time.Time
}

// newPublishLimiter returns a limiter for one connection, or nil when l
// is unlimited.
func newPublishLimiter(l PublishLimits) *publishLimiter {
	if l.MessagesPerSecond <= 0 && l.BytesPerSecond <= 0 {
		return nil
	}
	p := &publishLimiter{}
	if l.MessagesPerSecond > 0 {
		p.msgRate = l.MessagesPerSecond
		p.msgBurst = burstOf(l.MessageBurst, l.MessagesPerSecond)
		p.msgs = p.msgBurst
	}
	if l.BytesPerSecond > 0 {
		p.byteRate = l.BytesPerSecond
		p.byteBurst = burstOf(l.ByteBurst, l.BytesPerSecond)
		p.bytes = p.byteBurst
	}
	return p
}

func burstOf(burst int, rate float64) float64 {
	if burst > 0 {
		return float64(burst)
	}
	return math.Max(1, math.Ceil(rate))
}

func (p *publishLimiter) refill(now time.Time) {
	if p.last.IsZero() {
		p.last = now
		return
	}
	dt := now.Sub(p.last).Seconds()
	if dt <= 0 {
		return
	}
	p.last = now
	if p.msgRate > 0 {
		p.msgs = math.Min(p.msgBurst, p.msgs+dt*p.msgRate)
	}
	if p.byteRate > 0 {
		p.bytes = math.Min(p.byteBurst, p.bytes+dt*p.byteRate)
	}
}

// allow reports whether a publish of n payload bytes arriving at now is
// within the limits, and if so takes its tokens. A refused publish takes
// nothing, so asking again for the same publish later is fair.
func (p *publishLimiter) allow(now time.Time, n int) bool {
	if p == nil {
		return true
	}
	p.refill(now)
	if p.msgRate > 0 && p.msgs < 1 {
		return false
	}
	if p.byteRate > 0 && p.bytes < math.Min(float64(n), p.byteBurst) {
		return false
	}
	p.take(n)
	return true
}

// delay takes the tokens of a publish of n payload bytes arriving at now
// whatever the balance, and returns how long the caller should wait before
// reading the next packet so the connection keeps to its limits: the way
// to slow an MQTT 3 client, which has no negative acknowledgement. The
// caller must bound the wait by its shutdown context.
func (p *publishLimiter) delay(now time.Time, n int) time.Duration {
	if p == nil {
		return 0
	}
	p.refill(now)
	p.take(n)
	var wait float64
	if p.msgRate > 0 && p.msgs < 0 {
		wait = -p.msgs / p.msgRate
	}
	if p.byteRate > 0 && p.bytes < 0 {
		wait = math.Max(wait, -p.bytes/p.byteRate)
	}
	return time.Duration(wait * float64(time.Second))
}

func (p *publishLimiter) take(n int) {
	if p.msgRate > 0 {
		p.msgs--
	}
	if p.byteRate > 0 {
		p.bytes -= float64(n)
	}
}

// publishLimitMetrics counts publishes a publishLimiter held back.
type publishLimitMetrics struct {
	limited   *prometheus.CounterVec
	listeners sync.Map // listener id -> prometheus.Counter
}

func newPublishLimitMetrics(reg prometheus.Registerer) *publishLimitMetrics {
	m := &publishLimitMetrics{
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tributary", Subsystem: "mqtt", Name: "publish_rate_limited_total",
			Help: "Publishes over their connection's publish rate limit (MQTT 5: disconnected with reason code 0x96; MQTT 3: read more slowly), by listener.",
		}, []string{"listener"}),
	}
	if reg != nil {
		reg.MustRegister(m.limited)
	}
	return m
}

// listener returns the counter of listener id, cached: looking a labelled
// child up costs a hash, and this is on the publish path.
func (m *publishLimitMetrics) listener(id string) prometheus.Counter {
	if v, ok := m.listeners.Load(id); ok {
		return v.(prometheus.Counter)
	}
	v, _ := m.listeners.LoadOrStore(id, m.limited.WithLabelValues(id))
	return v.(prometheus.Counter)
}
