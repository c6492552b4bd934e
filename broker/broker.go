// Package broker owns Tributary's embedded MQTT broker (mochi-mqtt): its
// TCP and WebSocket listeners, its hooks, and the ingest path that turns
// publishes into Kafka records and acknowledges QoS 1 and 2 publishes only
// after Kafka has them, in the order they arrived.
package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tributary-io/tributary/auth"
	"github.com/tributary-io/tributary/bridge"
	"github.com/tributary-io/tributary/certs"
	"github.com/tributary-io/tributary/mapping"
)

// Producer is what the broker needs from the Kafka core.
type Producer interface {
	Produce(ctx context.Context, rec *bridge.Record, h bridge.DeliveryHandler) error
	TryProduce(ctx context.Context, rec *bridge.Record, h bridge.DeliveryHandler) error
	// AfterDeliveries has f called after each burst of delivery reports,
	// on the goroutine that handed them to their handlers.
	AfterDeliveries(f func())
}

var _ Producer = (*bridge.Producer)(nil)

// Config configures the broker.
type Config struct {
	// Addr is the MQTT over TCP listen address; empty disables it.
	Addr string
	// WSAddr is the MQTT over WebSocket listen address; empty disables it.
	WSAddr string
	// TLSAddr is the MQTT over TLS listen address; empty disables it.
	TLSAddr string
	// WSSAddr is the MQTT over secure WebSocket listen address; empty
	// disables it.
	WSSAddr string
	// TLSConfig returns the server TLS configuration for one TLS listener;
	// required when TLSAddr or WSSAddr is set. It is called once per
	// listener; certificate reloads happen behind it.
	TLSConfig func() *tls.Config
	// MessageExpiryMax bounds how long a retained message, a message
	// queued for a subscriber, or an unfinished QoS 1/2 exchange of a
	// session is kept (whole seconds); 0: no bound beyond an MQTT 5
	// publisher's own message expiry.
	MessageExpiryMax time.Duration
	// SessionExpiryMax bounds how long a disconnected client's session is
	// kept (whole seconds); 0: as long as an MQTT 5 client asks, and for an
	// MQTT 3 persistent session, forever.
	SessionExpiryMax time.Duration
	// MaxMessageBytes is the Kafka record limit; MQTT packets are allowed a
	// little more so that an oversized payload gets a reason code rather
	// than a dropped connection where the protocol allows it.
	MaxMessageBytes int
	// Auth authenticates clients and applies the ACLs; its zero value lets
	// everyone in.
	Auth AuthConfig
	// Conns bounds the connections of all MQTT listeners together.
	Conns ConnLimits
	// Publish bounds each client's publish rate.
	Publish PublishLimits
	// Registerer receives the broker's metrics; nil means none.
	Registerer prometheus.Registerer
}

// Broker is the embedded MQTT broker wired to the Kafka producer.
type Broker struct {
	cfg      Config
	log      *slog.Logger
	server   *mqtt.Server
	ingest   *ingest
	auth     *authHook
	gate     *connGate
	closes   *closeReasons
	addrs    map[string]string
	lns      []net.Listener
	ctx      context.Context
	cancel   context.CancelFunc
	serving  atomic.Bool
	admit    admission
	closeOne sync.Once
}

// packetHeadroom is what an MQTT PUBLISH may carry beyond the Kafka record
// limit (topic, properties) before the broker refuses it at the packet level.
const packetHeadroom = 64 << 10

// New builds the broker; Start binds and serves its listeners.
func New(cfg Config, producer Producer, mapper *mapping.Mapper, log *slog.Logger) (*Broker, error) {
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = uint32(cfg.MaxMessageBytes + packetHeadroom)
	// Each inbound alias keeps a topic string per connection; a few are
	// what devices use, 65535 would be memory a client could pin.
	caps.TopicAliasMaximum = 16
	// mochi's own default drops every retained message a day after it was
	// published, whatever the publisher asked, and keeps sessions forever.
	// A retained message is kept until replaced unless configured.
	caps.MaximumMessageExpiryInterval = int64(cfg.MessageExpiryMax / time.Second)
	caps.MaximumSessionExpiryInterval = math.MaxUint32
	if cfg.SessionExpiryMax > 0 {
		caps.MaximumSessionExpiryInterval = uint32(cfg.SessionExpiryMax / time.Second)
	}
	server := mqtt.New(&mqtt.Options{
		Capabilities: caps,
		// mochi holds packets back in a buffer of its own while deliveries
		// are queued for a client. Tributary writes acknowledgements to the
		// connection itself, so a PUBACK or PUBREC mochi held back would be
		// passed by a later one, and a DISCONNECT with its reason code
		// would be lost when the connection is closed right after it. Every
		// packet is at least one byte long, so with 1 nothing is held back.
		ClientNetWriteBufferSize: 1,
		Logger:                   slog.New(newMochiLogHandler(log.With("component", "mqtt").Handler())),
	})
	ctx, cancel := context.WithCancel(context.Background())
	reg := cfg.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	b := &Broker{cfg: cfg, log: log, server: server, addrs: map[string]string{}, ctx: ctx, cancel: cancel}
	b.admit.wg = &server.Listeners.ClientsWg
	b.ingest = newIngest(ctx, server, producer, mapper, log, newMetrics(reg))
	registerStateMetrics(reg, server)
	b.ingest.publishLimits = cfg.Publish
	b.ingest.limited = newPublishLimitMetrics(reg)
	b.gate = newConnGate(cfg.Conns, reg, log.With("component", "mqtt-limits"))
	b.closes = newCloseReasons(reg, log.With("component", "mqtt"))
	ac := cfg.Auth
	ac.Registerer = reg
	ah, err := newAuthHook(ac, log.With("component", "mqtt-auth"))
	if err != nil {
		cancel()
		return nil, err
	}
	ah.client = server.Clients.Get
	ah.ended = b.ingest.ended
	ah.server = server
	// Publishes are checked by the ingest, which refuses them in their
	// turn among the connection's acknowledgements.
	b.ingest.canPublish = ah.takePublishChecks()
	b.ingest.willAllowed = ah.willAllowed
	b.auth = ah
	// The auth hook replaces mochi's allow-all one: mochi lets a client or
	// topic through when any hook allows it.
	if err := server.AddHook(ah, nil); err != nil {
		cancel()
		return nil, fmt.Errorf("adding auth hook: %w", err)
	}
	if err := server.AddHook(b.ingest, nil); err != nil {
		cancel()
		return nil, fmt.Errorf("adding ingest hook: %w", err)
	}
	return b, nil
}

// ClientCertUsername returns an AuthConfig.CertUsername that takes the
// username from the verified client certificate of a TLS or secure
// WebSocket connection: its common name, or with from "san-dns",
// "san-email" or "san-uri" that subject alternative name.
func ClientCertUsername(from string) func(cl *mqtt.Client) (string, bool) {
	return func(cl *mqtt.Client) (string, bool) {
		tc := tlsConn(cl.Net.Conn)
		if tc == nil {
			return "", false
		}
		return certs.PeerUsername(tc.ConnectionState(), from)
	}
}

// mochiLogHandler passes mochi's log on, except:
//   - its debug line for every packet a hook rejected: a refused publish
//     would be a line per message, carrying the whole packet and payload;
//   - the packet in its warning for a packet that ended a connection (an
//     MQTT 5 protocol error, say): a client that reconnects and sends it
//     again would copy payloads into the log. That warning is also logged
//     at most every 10 seconds, across connections.
type mochiLogHandler struct {
	slog.Handler
	packetErrors *bridge.LogEvery
}

func newMochiLogHandler(h slog.Handler) mochiLogHandler {
	return mochiLogHandler{h, &bridge.LogEvery{Interval: 10 * time.Second}}
}

func (h mochiLogHandler) Handle(ctx context.Context, r slog.Record) error {
	switch {
	case r.Level == slog.LevelDebug && r.Message == "publish packet rejected":
		return nil
	case r.Message == "error processing packet":
		if !h.packetErrors.Allow() {
			return nil
		}
		out := slog.NewRecord(r.Time, r.Level, r.Message+" (logged at most every 10s)", r.PC)
		r.Attrs(func(a slog.Attr) bool {
			if a.Key != "pk" {
				out.AddAttrs(a)
			}
			return true
		})
		return h.Handler.Handle(ctx, out)
	}
	return h.Handler.Handle(ctx, r)
}

func (h mochiLogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return mochiLogHandler{h.Handler.WithAttrs(as), h.packetErrors}
}

func (h mochiLogHandler) WithGroup(name string) slog.Handler {
	return mochiLogHandler{h.Handler.WithGroup(name), h.packetErrors}
}

// Start binds the configured listeners and starts serving. A failure
// closes whatever was bound and is returned.
func (b *Broker) Start() (err error) {
	defer func() {
		if err != nil {
			for _, l := range b.lns {
				l.Close()
			}
			b.lns = nil
		}
	}()
	type spec struct {
		id, addr string
		ws, tls  bool
	}
	for _, s := range []spec{
		{id: "mqtt-tcp", addr: b.cfg.Addr},
		{id: "mqtt-ws", addr: b.cfg.WSAddr, ws: true},
		{id: "mqtt-tls", addr: b.cfg.TLSAddr, tls: true},
		{id: "mqtt-wss", addr: b.cfg.WSSAddr, ws: true, tls: true},
	} {
		if s.addr == "" {
			continue
		}
		if s.tls && b.cfg.TLSConfig == nil {
			return fmt.Errorf("starting MQTT listener %s on %s: no TLS certificate configured", s.id, s.addr)
		}
		ln, err := net.Listen("tcp", s.addr)
		if err != nil {
			return fmt.Errorf("starting MQTT listener %s on %s: %w", s.id, s.addr, err)
		}
		b.lns = append(b.lns, ln)
		b.addrs[s.id] = ln.Addr().String()
		served := b.gate.wrap(ln, s.id)
		if s.tls {
			// No ALPN for MQTT: a client offering a protocol the server
			// does not list would fail the handshake.
			tc := b.cfg.TLSConfig()
			if s.ws {
				tc.NextProtos = []string{"http/1.1"}
			}
			served = tls.NewListener(served, tc)
		}
		var l listeners.Listener
		if s.ws {
			l = newWSListener(s.id, served, int64(b.cfg.MaxMessageBytes+packetHeadroom), b.cfg.Conns.ConnectTimeout)
		} else {
			l = listeners.NewNet(s.id, bridgeListener{served})
		}
		l = recordingListener{Listener: l, reasons: b.closes, maxPacket: b.cfg.MaxMessageBytes + packetHeadroom}
		l = admittingListener{Listener: l, admit: &b.admit}
		if err := b.server.AddListener(l); err != nil {
			return fmt.Errorf("adding MQTT listener %s: %w", s.id, err)
		}
		b.log.Info("MQTT listener started", "listener", s.id, "addr", ln.Addr().String())
	}
	if err := b.server.Serve(); err != nil {
		return fmt.Errorf("starting MQTT server: %w", err)
	}
	b.serving.Store(true)
	return nil
}

// Addr returns the bound address of a listener ("mqtt-tcp", "mqtt-ws",
// "mqtt-tls" or "mqtt-wss"),
// or "" when it is disabled.
func (b *Broker) Addr(id string) string { return b.addrs[id] }

// Serving reports whether the listeners are up.
func (b *Broker) Serving() bool { return b.serving.Load() }

// Revoke disconnects the connected clients whose login the users file in
// force (Config.Auth.Users) no longer allows, after a reload replaced old:
// users no longer in the file, users whose password changed, and anonymous
// clients when the file no longer allows them. MQTT 5 clients get
// DISCONNECT 0x87 (not authorized) with a reason string first. It returns
// how many clients it disconnected. ACL changes need no disconnect: every
// publish, subscription and delivery is checked against the file in force,
// and the subscriptions of connected clients and kept sessions that the
// file no longer allows are removed.
func (b *Broker) Revoke(old *auth.Users) int {
	return b.auth.revoke(old, b.server.Clients.GetAll())
}

// Drain stops taking new QoS 1 and 2 publishes into Kafka: from now on they
// are left unacknowledged, so their clients keep and resend them. Records
// already in flight still get their acknowledgements when Kafka confirms.
// The broker reports itself not serving (/readyz) from here on.
func (b *Broker) Drain() {
	b.serving.Store(false) // /readyz: send new clients elsewhere
	b.ingest.draining.Store(true)
	b.ingest.stopProducing()
}

// Close stops the listeners and disconnects every client. Call Drain and
// flush the producer first so in-flight acknowledgements reach clients.
// It is idempotent.
func (b *Broker) Close() error {
	var err error
	b.closeOne.Do(func() {
		b.serving.Store(false)
		b.ingest.draining.Store(true)
		b.cancel()
		_ = b.auth.Stop() // ends logins waiting out the failure throttle
		// The ack writers' last pass acknowledges what Kafka confirmed
		// before the flush; disconnecting clients before it is written
		// would make them resend records Kafka already has.
		written := make(chan struct{})
		go func() {
			b.ingest.wait()
			close(written)
		}()
		select {
		case <-written:
		case <-time.After(2 * time.Second): // a writer blocked on a client that does not read
		}
		b.disconnectAll(5 * time.Second)
		err = b.server.Close()
		b.ingest.wait()
	})
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// disconnectAll stops accepting connections and disconnects every client,
// waiting up to timeout for their goroutines to end. mochi's own Close
// lists each listener's clients while holding its client-list read lock
// and takes that lock again inside (Clients.GetByListener calls Len); a
// client being added or removed in between makes that deadlock, and at
// shutdown the first listener's clients remove themselves while the next
// listener's are listed. With every client gone first, Close is safe.
func (b *Broker) disconnectAll(timeout time.Duration) {
	b.admit.close()
	for _, ln := range b.lns {
		_ = ln.Close()
	}
	done := make(chan struct{})
	go func() {
		b.server.Listeners.ClientsWg.Wait()
		close(done)
	}()
	deadline := time.After(timeout)
	asked := map[*mqtt.Client]bool{}
	for {
		for _, cl := range b.server.Clients.GetAll() {
			if cl.Net.Inline || cl.Closed() || asked[cl] {
				continue
			}
			asked[cl] = true
			// A client that does not read its socket leaves a write to it
			// blocked, holding the client's lock, which the DISCONNECT
			// needs: the deadline ends such a write. Each client is
			// disconnected on its own goroutine so that one slow client
			// cannot hold up the others or this deadline.
			b.ingest.ended(cl) // first: see completeAll
			_ = cl.Net.Conn.SetWriteDeadline(time.Now().Add(endingWriteTimeout))
			go b.ingest.disconnect(cl, packets.ErrServerShuttingDown)
		}
		select {
		case <-done:
			return
		case <-deadline:
			n := 0
			for _, cl := range b.server.Clients.GetAll() {
				if !cl.Net.Inline && !cl.Closed() {
					_ = cl.Net.Conn.Close()
					n++
				}
			}
			b.log.Warn("MQTT clients still connected after the shutdown timeout; their connections were closed", "timeout", timeout, "clients", n)
			select {
			case <-done:
			case <-time.After(time.Second):
			}
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// admission counts each connection into mochi's ClientsWg before mochi
// does, and turns connections away once disconnectAll has begun. mochi
// adds a connection to ClientsWg inside the connection's goroutine, which
// a connection accepted just before the listeners closed (a WebSocket
// upgrade under way, say) can reach after disconnectAll has started
// waiting on it: an Add racing the Wait, which the race detector reports
// and which could let the Wait return with a client about to start.
// Adding here, under the lock that close takes, puts every Add before the
// Wait; mochi's own Add then finds the count above zero.
type admission struct {
	mu     sync.Mutex
	closed bool
	wg     *sync.WaitGroup
}

// enter admits one connection, which must leave when it ends, or reports
// that admission is closed.
func (a *admission) enter() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return false
	}
	a.wg.Add(1)
	return true
}

func (a *admission) leave() { a.wg.Done() }

func (a *admission) close() {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
}

// admittingListener serves each connection only if admit lets it in, and
// closes it unserved otherwise.
type admittingListener struct {
	listeners.Listener
	admit *admission
}

func (l admittingListener) Serve(establish listeners.EstablishFn) {
	l.Listener.Serve(func(id string, c net.Conn) error {
		if !l.admit.enter() {
			_ = c.Close()
			return nil
		}
		defer l.admit.leave()
		return establish(id, c)
	})
}
