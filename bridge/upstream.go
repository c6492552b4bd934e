package bridge

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tributary-io/tributary/mapping"
)

// Upstream sources: Tributary as an MQTT subscriber of remote brokers.
//
// The delivery contract is the same as for devices: the remote broker gets
// its PUBACK (or PUBREC) only after Kafka acknowledged the record. paho runs
// with auto-ack disabled, and each message is acknowledged by the
// connection's ack writer once its delivery report is back.
//
// Acknowledgements go out in the order the messages arrived on the
// connection, not in the order Kafka answered: delivery reports of
// different partitions complete out of order, and MQTT 3.1.1 (4.6) asks a
// receiver to acknowledge QoS 1 PUBLISHes in arrival order. Brokers that
// track in-flight windows as queues (and the remote's redelivery after a
// reconnect) then see exactly the prefix Kafka has. The cost is that a
// slow partition holds back acks of faster ones, which only delays them.
//
// paho connects, subscribes, keeps the connection alive and answers
// PUBRELs; the messages themselves do not go through it. ackConn, the
// connection paho reads, takes each PUBLISH out of the stream as it is read
// and calls the handler (conn.handle) with it on paho's reading goroutine,
// in arrival order; paho is handed the other packets only. paho would pass
// each message through four goroutines and unbuffered channels, and
// allocate a packet, a message and an acknowledgement closure for it,
// before its handler saw it: about a fifth of the CPU of draining a feed
// (measured, docs/performance.md).
//
// Acknowledgements do not go through paho either: the ack writer writes
// PUBACKs (QoS 1) and PUBRECs (QoS 2) itself, a burst of them in one write
// to the connection, where paho would write each with a system call of its
// own (15 % of the CPU of draining a feed, measured). paho's own writes and
// these never interleave (ackConn), and MQTT only asks for acknowledgements
// in the order of their PUBLISHes, which the writer keeps. paho answers the
// remote's PUBREL with PUBCOMP. paho's store is a no-op (noStore): every
// connection is a new paho client, so a MemoryStore would never outlive
// the connection it was kept for.
//
// The handler does no waiting of its own: it maps the message, queues it
// for acknowledgement and hands it to Producer.Produce, which blocks only
// while the shared in-flight budget is used up or a new topic's metadata
// is awaited (and paho reads nothing meanwhile, SUBACKs and PINGRESPs
// included: see waitReply and keepalive). Records
// from one remote topic therefore reach the producer in arrival order, with
// the same key (the MQTT topic, unless a rule says otherwise), so they keep
// their order in Kafka. The remote broker's own in-flight window bounds how
// much is queued here.
//
// Each connection is a new paho client with its own acknowledgement queue
// and writer goroutine. Acks of a connection that is gone are dropped; the
// remote broker redelivers those messages on the next connection
// (persistent session), with the DUP flag, and they are produced again:
// at-least-once; messages that came with the DUP flag are counted in
// upstream_redelivered_total.

// UpstreamProducer is what upstream sources need of the producer.
type UpstreamProducer interface {
	Produce(ctx context.Context, rec *Record, h DeliveryHandler) error
	TryProduce(ctx context.Context, rec *Record, h DeliveryHandler) error
	EnsureTopic(ctx context.Context, topic string) error
}

var _ UpstreamProducer = (*Producer)(nil)

// RetainedPolicy says which retained messages from an upstream are produced.
type RetainedPolicy string

// The retained-message policies.
const (
	// RetainedFirst produces a retained value once: when the remote broker
	// sends the same topic and payload again (as it does on every
	// resubscribe) and that payload is still the last one produced on the
	// topic, it is acknowledged without producing.
	RetainedFirst RetainedPolicy = "first"
	// RetainedAlways produces every retained message.
	RetainedAlways RetainedPolicy = "always"
	// RetainedNever produces no retained message; live messages are produced.
	RetainedNever RetainedPolicy = "never"
)

// UpstreamSubscription is one topic filter and its requested QoS.
type UpstreamSubscription struct {
	Filter string
	QoS    byte
}

// UpstreamConfig configures one upstream source.
type UpstreamConfig struct {
	Name     string
	URL      string
	ClientID string
	Username string
	// Credentials, when set, is called at every connection attempt (the
	// first and each reconnect) for the password and the TLS
	// configuration (nil: paho's default, the system roots for ssl://), so
	// that files rotated meanwhile (a password, a renewed client
	// certificate) are used from the next connect on. Unset: no password,
	// no TLS configuration. An error fails that attempt like a refused
	// connect: it is logged, becomes the last error, and the attempt is
	// retried with backoff. Its error should name what to fix.
	Credentials   func() (password string, tc *tls.Config, err error)
	CleanSession  bool
	Subscriptions []UpstreamSubscription
	// SharedGroup, when set, subscribes as $share/<group>/<filter>.
	SharedGroup string
	// KafkaTopic, when set, receives every message, keyed by MQTT topic;
	// otherwise the mapper decides, with Name as the source.
	KafkaTopic     string
	IngestRetained RetainedPolicy
	KeepAlive      time.Duration
	ConnectTimeout time.Duration
	ReconnectMin   time.Duration
	ReconnectMax   time.Duration
}

// Upstreams runs the configured upstream sources.
type Upstreams struct {
	list    []*upstream
	metrics *upstreamMetrics
	wg      sync.WaitGroup
	started atomic.Bool
	once    sync.Once
}

// NewUpstreams builds the upstream sources; Start connects them.
func NewUpstreams(cfgs []UpstreamConfig, p UpstreamProducer, mapper *mapping.Mapper, reg prometheus.Registerer, log *slog.Logger) *Upstreams {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	us := &Upstreams{metrics: newUpstreamMetrics(reg)}
	for _, c := range cfgs {
		if c.IngestRetained == "" {
			c.IngestRetained = RetainedFirst
		}
		u := &upstream{
			cfg:     c,
			p:       p,
			mapper:  mapper,
			log:     log.With("upstream", c.Name),
			m:       us.metrics.forUpstream(c.Name),
			closing: make(chan struct{}),
			seed:    maphash.MakeSeed(),
			maxBody: maxPublishBody(p),

			refusedLog: LogEvery{Interval: 10 * time.Second},
			strayLog:   LogEvery{Interval: 10 * time.Second},
			drainLog:   LogEvery{Interval: 10 * time.Second},
		}
		u.ctx, u.cancel = context.WithCancel(context.Background())
		u.produceCtx, u.stopProducing = context.WithCancel(context.Background())
		if c.CleanSession && slices.ContainsFunc(c.Subscriptions, func(s UpstreamSubscription) bool { return s.QoS > 0 }) {
			// Redelivery is how a Kafka error, a lost connection or a
			// restart is recovered from, and a clean session has none.
			u.log.Warn("clean_session is true: QoS 1 and 2 messages not yet acknowledged when a connection ends (Kafka error, network, restart) are lost, since the remote broker discards the session on reconnect; set clean_session: false to have them redelivered",
				"url", c.URL)
		}
		us.list = append(us.list, u)
	}
	return us
}

// maxPublishBody is the largest PUBLISH body an upstream reads into
// memory: the largest payload p produces (its MaxMessageBytes) with the
// longest topic and a packet id. A remote broker could otherwise have a
// connection allocate whatever length its fixed header claims, up to
// 256 MiB, before sending any of it. A longer PUBLISH is read and thrown
// away as it arrives, and refused as too large, as it would be anyway.
// 0 (no limit) for a producer that does not say its limit.
func maxPublishBody(p UpstreamProducer) int {
	if m, ok := p.(interface{ MaxMessageBytes() int }); ok && m.MaxMessageBytes() > 0 {
		return m.MaxMessageBytes() + 2 + math.MaxUint16 + 2
	}
	return 0
}

// topicCheckWait bounds Start's check of an upstream's kafka_topic.
const topicCheckWait = 15 * time.Second

// Start connects every upstream in the background; connection failures
// are retried with backoff, not returned.
func (us *Upstreams) Start() {
	us.started.Store(true)
	for _, u := range us.list {
		us.wg.Add(1)
		go func() {
			defer us.wg.Done()
			if u.cfg.KafkaTopic != "" {
				// Before subscribing, so a missing permission shows early;
				// a failure is retried on the first message.
				u.checkingTopic.Store(true)
				ctx, cancel := context.WithTimeout(u.ctx, topicCheckWait)
				if err := u.p.EnsureTopic(ctx, u.cfg.KafkaTopic); err != nil {
					u.log.Warn("Kafka topic not ready at start-up; will retry on first message", "topic", u.cfg.KafkaTopic, "error", err)
				}
				cancel()
				u.checkingTopic.Store(false)
			}
			u.run()
		}()
	}
}

// Drain stops producing new messages: from now on they are left
// unacknowledged, for the remote broker to redeliver. Call it before
// flushing the producer, so that the flush ends the set of records whose
// acknowledgements are still to go out.
func (us *Upstreams) Drain() {
	for _, u := range us.list {
		u.draining.Store(true)
		u.stopProducing()
	}
}

// Close acknowledges what Kafka has confirmed, then disconnects. Call it
// after Drain and the producer's flush, before closing the producer. It is
// idempotent.
func (us *Upstreams) Close() {
	us.once.Do(func() {
		us.Drain()
		for _, u := range us.list {
			u.closeAckers()
		}
		for _, u := range us.list {
			u.cancel()
		}
		us.wg.Wait()
	})
}

// Check reports the upstreams that have never connected, with their last
// error, for /readyz.
func (us *Upstreams) Check() error {
	var bad []string
	for _, u := range us.list {
		if !u.everConnected.Load() {
			msg := u.cfg.Name
			if e := u.lastError(); e != "" {
				msg += " (" + e + ")"
			} else if u.checkingTopic.Load() {
				msg += fmt.Sprintf(" (not connecting yet: first checking its Kafka topic %q, for up to %s)", u.cfg.KafkaTopic, topicCheckWait)
			}
			bad = append(bad, msg)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("upstreams never connected: %s", strings.Join(bad, "; "))
	}
	return nil
}

// Connected reports whether the named upstream is connected with its
// subscriptions made.
func (us *Upstreams) Connected(name string) bool {
	for _, u := range us.list {
		if u.cfg.Name == name {
			return u.connected.Load()
		}
	}
	return false
}

// LastError returns the named upstream's last connection or subscription
// error, or "".
func (us *Upstreams) LastError(name string) string {
	for _, u := range us.list {
		if u.cfg.Name == name {
			return u.lastError()
		}
	}
	return ""
}

type upstream struct {
	cfg    UpstreamConfig
	p      UpstreamProducer
	mapper *mapping.Mapper
	log    *slog.Logger
	m      upstreamCounters

	ctx           context.Context // ends the connection loop (Close)
	cancel        context.CancelFunc
	produceCtx    context.Context // ends waits in Produce (Drain)
	stopProducing context.CancelFunc
	draining      atomic.Bool
	connected     atomic.Bool
	// maxBody is the largest PUBLISH body (remaining length) read into
	// memory; 0 for no limit (see maxPublishBody).
	maxBody int
	// lastOrder is the Order of the last connection made; newConn, on
	// run's goroutine, makes the next one continue it.
	lastOrder     *Order
	everConnected atomic.Bool
	checkingTopic atomic.Bool // Start checks kafka_topic before the first connect
	// refusedLog limits the log line of records Kafka refuses for good: a
	// misconfiguration (a missing topic, an ACL) refuses every message of
	// a feed, which the metric counts.
	refusedLog LogEvery
	strayLog   LogEvery // messages of a subscription no longer configured
	drainLog   LogEvery // QoS 0 messages arriving while shutting down

	mu      sync.Mutex
	lastErr string
	closed  bool          // ackers are closing; no new connection starts one
	closing chan struct{} // closed by closeAckers
	ackers  sync.WaitGroup

	// retained maps each topic the remote broker sent a retained message
	// on (ingest_retained: first) to its *retainedTopic, until a message
	// with an empty payload clears it. A sync.Map, not
	// the mutex: live messages look their topic up, and the handlers of an
	// old and a new connection, and their ack writers, can overlap.
	retained    sync.Map
	anyRetained atomic.Bool // retained has an entry
	seed        maphash.Seed
}

// retainedTopic is what ingest_retained: first knows of a topic with a
// retained value: the hash of the payload last produced on it, retained or
// live, so that a resent retained value is skipped only while it is still
// what Kafka has last. 0 until Kafka acknowledged one.
type retainedTopic struct{ last atomic.Uint64 }

func (u *upstream) lastError() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.lastErr
}

func (u *upstream) setError(err error) {
	u.mu.Lock()
	u.lastErr = err.Error()
	u.mu.Unlock()
	u.m.lastError.SetToCurrentTime()
}

func (u *upstream) closeAckers() {
	u.mu.Lock()
	if !u.closed {
		u.closed = true
		close(u.closing)
	}
	u.mu.Unlock()
	u.ackers.Wait()
}

// backoff returns the wait before connection attempt n (n ≥ 1): doubling
// from ReconnectMin up to ReconnectMax, with "equal jitter" (half fixed,
// half random) so a fleet of nodes does not reconnect in step.
func (u *upstream) backoff(n int) time.Duration {
	d := u.cfg.ReconnectMin
	for i := 1; i < n && d < u.cfg.ReconnectMax; i++ {
		d *= 2
	}
	d = min(d, u.cfg.ReconnectMax)
	half := d / 2
	return half + rand.N(half+1)
}

// run connects, waits for the connection to end, and reconnects, until
// Close (or Drain: a draining upstream does not reconnect).
func (u *upstream) run() {
	failures := 0
	for u.ctx.Err() == nil && !u.draining.Load() {
		c, err := u.connect()
		if err != nil && (u.ctx.Err() != nil || u.draining.Load()) {
			return // shutting down: the attempt was cut short, it did not fail
		}
		if err != nil {
			failures++
			wait := u.backoff(failures)
			u.setError(err)
			u.m.connectErrors.Inc()
			u.log.Warn("connecting to upstream failed; retrying", "url", u.cfg.URL, "attempt", failures, "retry_in", wait.Round(time.Millisecond), "error", err)
			if !u.sleep(wait) {
				return
			}
			continue
		}
		up := time.Now()
		select {
		case <-c.lost:
		case <-u.ctx.Done():
		}
		u.connected.Store(false)
		u.m.connected.Set(0)
		// Disconnect after the acknowledgement writer's last pass (Close
		// runs it first), so acks for what Kafka has still go out.
		c.client.Disconnect(250)
		c.lose(nil)
		if u.ctx.Err() != nil {
			return
		}
		u.m.disconnects.Inc()
		// A connection lost before it showed it works counts as a failed
		// attempt: when every connection ends right away (Kafka refusing
		// each record, another client taking the client id over), the
		// reconnects back off instead of redelivering the window every
		// reconnect_min.
		if c.delivered.Load() || time.Since(up) >= u.cfg.ReconnectMax {
			failures = 0
		}
		failures++
		wait := u.backoff(failures)
		u.log.Warn("upstream connection lost; reconnecting", "url", u.cfg.URL, "attempt", failures, "retry_in", wait.Round(time.Millisecond), "error", c.lostErr())
		if !u.sleep(wait) {
			return
		}
	}
}

func (u *upstream) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-u.ctx.Done():
		return false
	}
}

// connect makes one connection and its subscriptions. A refused
// subscription is logged and counted; the connection stays up for the
// others.
func (u *upstream) connect() (*conn, error) {
	var password string
	var tc *tls.Config
	if u.cfg.Credentials != nil {
		var err error
		if password, tc, err = u.cfg.Credentials(); err != nil {
			return nil, fmt.Errorf("reading credentials for %s: %w", u.cfg.URL, err)
		}
	}
	c := newConn(u)
	opts := paho.NewClientOptions().
		AddBroker(u.cfg.URL).
		SetClientID(u.cfg.ClientID).
		SetUsername(u.cfg.Username).
		SetPassword(password).
		SetCleanSession(u.cfg.CleanSession).
		SetProtocolVersion(4).
		SetAutoReconnect(false). // run reconnects, with backoff and jitter
		SetConnectRetry(false).
		SetResumeSubs(false). // connect subscribes on every connection
		SetAutoAckDisabled(true).
		SetOrderMatters(true).
		SetKeepAlive(u.cfg.KeepAlive).
		// paho's keepalive would end a connection whose PINGRESP its
		// reader has not taken while the handler waits for Kafka; c's
		// keepalive decides instead.
		SetPingTimeout(time.Duration(math.MaxInt64)).
		SetConnectTimeout(u.cfg.ConnectTimeout).
		SetWriteTimeout(u.cfg.ConnectTimeout).
		// No message handler: c.dial's connection hands every PUBLISH
		// to c.handle before paho reads it, those of a resumed session
		// that arrive before the subscriptions are renewed included.
		SetConnectionLostHandler(func(_ paho.Client, err error) { c.lose(err) }).
		SetCustomOpenConnectionFn(c.dial).
		SetStore(noStore{})
	if tc != nil {
		opts.SetTLSConfig(tc)
	}
	c.client = paho.NewClient(opts)

	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		c.lose(nil)
		return nil, errors.New("upstream closing")
	}
	u.ackers.Add(1)
	u.mu.Unlock()
	go c.writeAcks()

	tok := c.client.Connect()
	if err := u.wait(tok, u.cfg.ConnectTimeout+time.Second); err != nil {
		c.lose(err)
		c.client.Disconnect(0)
		hint := u.refusalHint(err)
		if hint == "" {
			hint = u.schemeHint(err, c.nc.Load() != nil)
		}
		return nil, fmt.Errorf("connecting to %s: %w%s", u.cfg.URL, err, hint)
	}
	u.m.connects.Inc()
	if nc := c.nc.Load(); nc != nil && u.cfg.KeepAlive > 0 {
		go c.keepalive(nc)
	}
	present := tok.(*paho.ConnectToken).SessionPresent()
	switch {
	case present || u.cfg.CleanSession:
		u.log.Info("connected to upstream", "url", u.cfg.URL, "client_id", u.cfg.ClientID, "session_present", present)
	case u.everConnected.Load():
		u.log.Warn("connected to upstream, which lost this client id's session: messages it held for Tributary (published while disconnected, or not yet acknowledged) are lost",
			"url", u.cfg.URL, "client_id", u.cfg.ClientID, "session_present", present)
	default:
		u.log.Warn("connected to upstream, which has no session for this client id: expected the first time the client id is used; otherwise the remote broker discarded it and what it held for Tributary is lost",
			"url", u.cfg.URL, "client_id", u.cfg.ClientID, "session_present", present)
	}

	for _, s := range u.cfg.Subscriptions {
		filter := s.Filter
		if u.cfg.SharedGroup != "" {
			filter = "$share/" + u.cfg.SharedGroup + "/" + filter
		}
		st := c.client.Subscribe(filter, s.QoS, nil)
		if err := c.waitReply(st, u.cfg.ConnectTimeout); err != nil {
			c.lose(err)
			c.client.Disconnect(0)
			return nil, fmt.Errorf("subscribing to %q: %w", filter, err)
		}
		granted := byte(0x80)
		for _, q := range st.(*paho.SubscribeToken).Result() {
			granted = q
		}
		switch {
		case granted == 0x80:
			err := fmt.Errorf("subscription to %q refused by the remote broker (SUBACK 0x80)", filter)
			u.setError(err)
			u.m.refused.WithLabelValues(u.cfg.Name, filter).Inc()
			u.log.Error("upstream refused a subscription; check its ACLs", "filter", filter)
		case granted < s.QoS:
			u.log.Warn("upstream granted a lower QoS than requested", "filter", filter, "requested", s.QoS, "granted", granted)
		default:
			u.log.Debug("subscribed", "filter", filter, "qos", granted)
		}
	}
	if present && u.cfg.SharedGroup != "" {
		// A session kept from before shared_group was set still holds
		// the plain subscriptions, which would deliver every message to
		// this node too. Unsubscribing a filter the session lacks is
		// harmless.
		plain := make([]string, len(u.cfg.Subscriptions))
		for i, s := range u.cfg.Subscriptions {
			plain[i] = s.Filter
		}
		if err := c.waitReply(c.client.Unsubscribe(plain...), u.cfg.ConnectTimeout); err != nil {
			u.log.Warn("unsubscribing the session's plain subscriptions (shared_group is set)", "filters", plain, "error", err)
		}
	}
	u.connected.Store(true)
	u.everConnected.Store(true)
	u.m.connected.Set(1)
	return c, nil
}

// refusalHint says what to check when the remote broker refused the
// CONNECT: paho's words for the CONNACK code ("not Authorized", which
// mosquitto answers a wrong password with) do not.
func (u *upstream) refusalHint(err error) string {
	switch {
	case errors.Is(err, packets.ErrorRefusedNotAuthorised), errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword):
		if u.cfg.Username == "" {
			return " (the remote broker refused the login; it may need a username and password, or password_file)"
		}
		return fmt.Sprintf(" (the remote broker refused the login; check username and password, or password_file, and that the broker allows user %q)", u.cfg.Username)
	case errors.Is(err, packets.ErrorRefusedIDRejected):
		return fmt.Sprintf(" (the remote broker refused client_id %q; MQTT 3.1.1 brokers need only accept 1 to 23 letters and digits: set a client_id it accepts)", u.cfg.ClientID)
	}
	return ""
}

// schemeHint says what to check when a connection failed the way one
// fails whose URL scheme does not match what the port speaks. A TLS
// server cannot read a plain CONNECT and closes the connection (OpenSSL,
// as in mosquitto, with a reset; Go with an EOF) before any CONNACK. A
// plain MQTT port answers a TLS ClientHello with bytes that are no TLS
// record (tls.RecordHeaderError), or closes the connection during the
// handshake, as mosquitto does. handshook says whether the connection,
// with its TLS or WebSocket handshake, was made: a connection closed
// after that is no sign of a wrong scheme.
func (u *upstream) schemeHint(err error, handshook bool) string {
	p, perr := url.Parse(u.cfg.URL)
	if perr != nil {
		return ""
	}
	as := func(scheme string) string {
		q := *p
		q.Scheme = scheme
		return q.String()
	}
	var rh tls.RecordHeaderError
	notTLS := errors.As(err, &rh)
	closed := errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
	switch p.Scheme {
	case "tcp", "mqtt":
		if closed {
			return fmt.Sprintf(" (the remote closed the connection without a CONNACK: if %s expects TLS, as port 8883 usually does, the url must be %s, or wss:// for MQTT over WebSocket with TLS)", p.Host, as("ssl"))
		}
	case "ws":
		if closed && !handshook {
			return fmt.Sprintf(" (the remote closed the connection during the WebSocket handshake: if %s expects TLS, the url must be %s)", p.Host, as("wss"))
		}
	case "ssl", "tls", "mqtts", "tcps":
		switch {
		case notTLS:
			return fmt.Sprintf(" (the remote did not answer in TLS: %s looks like a plain MQTT port, as port 1883 usually is, and the url must then be %s)", p.Host, as("tcp"))
		case closed && !handshook:
			return fmt.Sprintf(" (the remote closed the connection during the TLS handshake: if %s is a plain MQTT port, as port 1883 usually is, the url must be %s)", p.Host, as("tcp"))
		}
	case "wss":
		switch {
		case notTLS:
			return fmt.Sprintf(" (the remote did not answer in TLS: %s looks like a plain WebSocket port, and the url must then be %s)", p.Host, as("ws"))
		case closed && !handshook:
			return fmt.Sprintf(" (the remote closed the connection during the TLS handshake: if %s is a plain WebSocket port, the url must be %s)", p.Host, as("ws"))
		}
	}
	return ""
}

// wait waits for tok, at most d, and returns its error.
func (u *upstream) wait(tok paho.Token, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-tok.Done():
		return tok.Error()
	case <-t.C:
		return fmt.Errorf("no answer within %s", d)
	case <-u.ctx.Done():
		return u.ctx.Err()
	}
}

// pingreq is an MQTT PINGREQ packet.
var pingreq = []byte{packets.Pingreq << 4, 0}

// keepalive keeps the connection alive and ends it when the remote
// broker stops answering, as paho's keepalive would, with one
// difference: time the message handler spends waiting for Kafka does not
// count against the remote broker. paho reads nothing meanwhile (see
// waitReply), so the PINGRESP waits in the socket behind the remote's
// publishes; paho's own ping timeout would end the connection, and the
// remote broker would then resend its whole window on the next one.
//
// Every keepalive/4 (5s at most) it looks at what nc read and wrote. It
// sends a PINGREQ when nothing was read for keepalive, or nothing was
// written for keepalive, so that the remote broker's keepalive does not
// end the connection while Tributary has no PUBACKs to send. (It sees a
// write up to one interval late, and its ticks come a little early or
// late, so it pings once the write it saw is keepalive less one and a
// half intervals old.) A PINGREQ answered by nothing read for
// max(keepalive/2, 1s), while the handler is not waiting, ends the
// connection. It stops when the connection ends.
func (c *conn) keepalive(nc *ackConn) {
	ka := c.u.cfg.KeepAlive
	timeout := max(ka/2, time.Second)
	interval := min(ka/4, 5*time.Second)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	start := time.Now()
	readAt, wroteAt := start, start
	reads, writes := nc.reads.Load(), nc.writes.Load()
	mark := c.producerCalls.Load()
	var pingAt time.Time // the first PINGREQ not answered yet; zero: none
	for {
		var now time.Time
		select {
		case now = <-tick.C:
		case <-c.lost:
			return
		case <-c.u.ctx.Done():
			return
		}
		if r := nc.reads.Load(); r != reads {
			reads, readAt, pingAt = r, now, time.Time{}
		}
		if w := nc.writes.Load(); w != writes {
			writes, wroteAt = w, now
		}
		if c.inProducerSince(&mark) {
			// The answer may be in the socket; paho reads it once the
			// handler returns.
			readAt = now
			if !pingAt.IsZero() {
				pingAt = now
			}
		}
		if !pingAt.IsZero() && now.Sub(pingAt) >= timeout {
			c.lose(fmt.Errorf("the remote broker answered no PINGREQ within %s (keepalive %s): it or the network is gone", timeout, ka))
			return
		}
		if now.Sub(wroteAt) >= ka-interval*3/2 || (pingAt.IsZero() && now.Sub(readAt) >= ka) {
			if _, err := nc.Write(pingreq); err != nil {
				c.lose(fmt.Errorf("writing PINGREQ: %w", err))
				return
			}
			writes, wroteAt = nc.writes.Load(), now
			if pingAt.IsZero() {
				pingAt = now
			}
		}
	}
}

// inProducerSince reports whether handle is in the producer, or has been
// since *mark was taken, and takes a new mark.
func (c *conn) inProducerSince(mark *uint64) bool {
	n := c.producerCalls.Load()
	was := n != *mark || n%2 == 1
	*mark = n
	return was
}

// waitReply waits for the remote broker's answer to a SUBSCRIBE or
// UNSUBSCRIBE, for d, or for as long as the message handler is waiting
// in the producer: paho reads nothing while it does, once the few
// messages its channels hold are taken, so an answer queued behind the
// messages of a resumed session is not read until Kafka takes them
// (Kafka unreachable, the in-flight budget used up). That is no fault
// of the remote broker or the connection, and giving up on the
// connection would only make the remote broker send it all again. So
// each d the handler spent in the producer, even in part, starts the wait
// over: a handler that has just returned from a long wait is still taking
// the messages in front of the answer. The wait ends with the connection.
func (c *conn) waitReply(tok paho.Token, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	mark := c.producerCalls.Load()
	for {
		select {
		case <-tok.Done():
			err := tok.Error()
			if err == nil {
				return nil
			}
			// paho fails the token ("connection lost before Subscribe
			// completed") before it reports why the connection was lost
			// (a malformed packet, say); that reason is what to log.
			select {
			case <-c.lost:
				if lerr := c.lostErr(); lerr != nil {
					return fmt.Errorf("connection lost: %w", lerr)
				}
			case <-time.After(time.Second):
			}
			return err
		case <-t.C:
			if !c.inProducerSince(&mark) {
				return fmt.Errorf("no answer within %s", d)
			}
			t.Reset(d)
		case <-c.lost:
			if err := c.lostErr(); err != nil {
				return fmt.Errorf("connection lost: %w", err)
			}
			return errors.New("connection lost")
		case <-c.u.ctx.Done():
			return c.u.ctx.Err()
		}
	}
}

// conn is one connection: its client, and its messages awaiting Kafka in
// arrival order.
type conn struct {
	u      *upstream
	client paho.Client

	mu       sync.Mutex
	queue    []*inflight
	gone     bool  // the connection ended
	err      error // why it ended
	broken   bool  // a record failed transiently: nothing more is acknowledged here
	notify   chan struct{}
	lost     chan struct{}
	lostOnce sync.Once

	// delivered is set once Kafka acknowledged a record of this
	// connection; run then starts the backoff over.
	delivered atomic.Bool
	// producerCalls counts handle's calls into the producer (which can
	// wait, see waitReply) and its returns: odd while it is in one.
	producerCalls atomic.Uint64

	// nc is the network connection paho opened through dial; the ack
	// writer writes PUBACKs to it directly.
	nc    atomic.Pointer[ackConn]
	acks  []byte // PUBACKs of the current burst; ack writer only
	rec   Record // reused by handle
	order Order  // this connection's records in order across the lanes; used by handle
	// awaiting has a bit for each packet id of a QoS 1 or 2 message queued
	// on this connection (see handle), and acking one for each the ack
	// writer has taken off the queue and is acknowledging: a copy resent
	// while its PUBACK is being written is a copy too. Under mu.
	awaiting, acking idSet

	// produceCtx ends handle's waits in the producer for a QoS 1 or 2
	// message (for budget, queue space or a topic's metadata): at Drain,
	// and, under a persistent session, when the connection ends (lose).
	produceCtx context.Context
	endWaits   context.CancelFunc
}

// errConnectionEnded is the error of a message whose wait in the producer
// ended with its connection: not produced, it stays with the remote
// broker, which resends it on the next connection.
var errConnectionEnded = errors.New("the upstream connection ended before the record was produced")

func newConn(u *upstream) *conn {
	c := &conn{u: u, lost: make(chan struct{}), notify: make(chan struct{}, 1)}
	c.order.Aggregate = true // a remote broker's feed, not one publisher's
	// The previous connection's records may still await Kafka in the
	// acknowledged lane; a QoS 0 record of this one would otherwise take
	// the best-effort lane and could reach a partition before them.
	// Awaiting first drops what the last one continued, if nothing there
	// awaits Kafka, so that connections that come and go do not make a
	// chain that keeps each of them in memory. The last one is followed
	// even when nothing of it awaits now: a read loop of it may still be
	// producing (under a clean session, what it had read).
	if u.lastOrder != nil {
		u.lastOrder.Awaiting()
		c.order.Follow(u.lastOrder)
	}
	u.lastOrder = &c.order
	c.produceCtx, c.endWaits = u.produceCtx, func() {}
	if !u.cfg.CleanSession {
		// The remote broker resends what this connection leaves
		// unacknowledged: a message still waiting for the producer when
		// it ends must not reach Kafka after, and among, the resent ones.
		// Under a clean session nothing is resent, so it is produced.
		c.produceCtx, c.endWaits = context.WithCancel(u.produceCtx)
	}
	return c
}

// inflight is one QoS 1 or 2 message awaiting its acknowledgement.
type inflight struct {
	c        *conn
	msg      *wireMessage
	received time.Time
	err      error
	topic    *retainedTopic // the topic's retained state to update once produced; nil if it has none
	hash     uint64         // the payload's hash, when topic is set
	done     bool
	produced bool // false: acknowledged without a record (see handle)
}

// lose marks the connection as ended and wakes run and the ack writer.
func (c *conn) lose(err error) {
	c.lostOnce.Do(func() {
		c.mu.Lock()
		c.gone, c.err = true, err
		c.mu.Unlock()
		c.endWaits()
		close(c.lost)
		c.wake()
	})
}

func (c *conn) lostErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *conn) wake() {
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// handle runs on paho's reading goroutine for every message, in arrival
// order (ackConn.Read). See the package notes above on why it may block in
// Produce.
func (c *conn) handle(msg *wireMessage) {
	u := c.u
	received := time.Now()
	u.m.received.Inc()
	u.m.bytes.Add(float64(len(msg.Payload()) + msg.skipped))
	if msg.Duplicate() {
		u.m.redelivered.Inc()
	}
	if u.draining.Load() {
		if msg.Qos() > 0 && !u.cfg.CleanSession {
			return // unacknowledged: the remote broker keeps it for the next connection
		}
		// Nothing resends a QoS 0 message, nor one of a clean session,
		// which the remote broker forgets with the connection: it is
		// lost, and counted.
		u.m.failed.WithLabelValues(u.cfg.Name, "shutting_down").Inc()
		if u.drainLog.Allow() {
			u.log.Warn("messages arriving while shutting down are not produced, and neither QoS 0 ones nor those of a clean session are resent: lost (counted in tributary_upstream_records_failed_total{reason=\"shutting_down\"}; logged at most every 10s)",
				"topic", msg.Topic(), "qos", msg.Qos(), "clean_session", u.cfg.CleanSession)
		}
		return
	}
	qos := msg.Qos()
	if qos > 0 && msg.Duplicate() && c.isAwaiting(msg.MessageID()) {
		// A copy of a message this connection has taken and not yet
		// acknowledged, resent on the same connection (MQTT 3.1.1 lets a
		// broker do so; EMQX does after its retry interval): the first
		// copy is produced once and acknowledged once Kafka has it, and
		// the remote broker keeps the packet id until then. Produced and
		// acknowledged again, the copy's PUBACK could reach the remote
		// broker after it gave the id to a new message, and stand for
		// that message before Kafka had it. A DUP message whose id awaits
		// nothing here (left by an earlier connection, or passed on with
		// its flag by a shared subscription) is produced.
		u.m.skipped.WithLabelValues(u.cfg.Name, "resent_copy").Inc()
		return
	}
	e := &inflight{c: c, msg: msg, received: received}
	if !u.subscribed(msg.Topic()) {
		// A persistent session can keep subscriptions the configuration
		// no longer has; their messages are not this feed's.
		u.m.skipped.WithLabelValues(u.cfg.Name, "not_subscribed").Inc()
		if u.strayLog.Allow() {
			u.log.Warn("the remote session delivers a topic no configured subscription matches (a filter removed from the configuration stays in a persistent session): acknowledged, not produced; use a new client_id, or connect once with clean_session: true, to end it (logged at most every 10s)",
				"topic", msg.Topic(), "client_id", u.cfg.ClientID)
		}
		c.finish(e, qos)
		return
	}
	switch u.cfg.IngestRetained {
	case RetainedNever:
		if msg.Retained() {
			u.m.skipped.WithLabelValues(u.cfg.Name, "retained").Inc()
			c.finish(e, qos)
			return
		}
	case RetainedFirst:
		// A payload not read (msg.skipped) has no hash to compare.
		if msg.skipped == 0 && u.retainedSeen(e) {
			u.m.skipped.WithLabelValues(u.cfg.Name, "retained_seen").Inc()
			c.finish(e, qos)
			return
		}
	}

	// The producer copies the record during the call, so one per
	// connection is reused; handle runs on one goroutine at a time.
	rec := &c.rec
	defer c.clearRecord()
	if reason := u.record(msg, received, rec); reason != "" {
		u.m.skipped.WithLabelValues(u.cfg.Name, reason).Inc()
		c.finish(e, qos)
		return
	}
	if msg.skipped > 0 {
		// Too large to be produced, and not read into memory: refused
		// as a record over kafka.max_message_bytes is (see complete).
		err := fmt.Errorf("producing to %q: a payload of %d bytes: %w", rec.Topic, msg.skipped, ErrRecordTooLarge)
		if qos == 0 {
			u.m.failed.WithLabelValues(u.cfg.Name, failReason(err)).Inc()
			return
		}
		if c.enqueue(e) {
			e.Delivered(Delivery{Topic: rec.Topic, Err: err})
		}
		return
	}
	rec.Order = &c.order
	if qos == 0 {
		// Best effort, as MQTT QoS 0 is: never waits, drops are counted.
		// With no acknowledgement to wait for, ingest_retained: first
		// takes a record handed to the producer as Kafka's.
		c.producerCalls.Add(1)
		// Not resent either, so not cut short by the connection's end.
		err := u.p.TryProduce(u.produceCtx, rec, bestEffort{u})
		c.producerCalls.Add(1)
		if err != nil {
			u.m.failed.WithLabelValues(u.cfg.Name, failReason(err)).Inc()
		} else if e.topic != nil {
			e.topic.last.Store(e.hash)
		}
		return
	}
	e.produced = true
	if !c.enqueue(e) {
		return
	}
	c.producerCalls.Add(1)
	err := u.p.Produce(c.produceCtx, rec, e)
	c.producerCalls.Add(1)
	if errors.Is(err, context.Canceled) && c.produceCtx.Err() != nil && u.produceCtx.Err() == nil {
		err = errConnectionEnded
	}
	if err != nil {
		e.Delivered(Delivery{Topic: rec.Topic, Err: err})
	}
}

// subscribed reports whether topic matches one of the configured
// subscriptions' filters.
func (u *upstream) subscribed(topic string) bool {
	for _, s := range u.cfg.Subscriptions {
		if SubscriptionMatches(s.Filter, topic) {
			return true
		}
	}
	return false
}

// SubscriptionMatches reports whether a subscription to filter delivers
// messages on topic, as an upstream decides which messages are its
// feed's: the filter's wildcards match topic, and a shared subscription
// ($share/<group>/<filter>, or EMQX's $queue/<filter>) matches by its
// plain filter, since its messages arrive on their own topics.
func SubscriptionMatches(filter, topic string) bool {
	return matchFilter(topicFilter(filter), topic)
}

// topicFilter returns the filter that topics of messages a subscription
// delivers match: a shared subscription ($share/<group>/<filter>, or
// EMQX's $queue/<filter>) delivers its plain filter's messages under
// their own topics.
func topicFilter(f string) string {
	if rest, ok := strings.CutPrefix(f, "$share/"); ok {
		if _, filter, ok := strings.Cut(rest, "/"); ok {
			return filter
		}
		return f
	}
	if filter, ok := strings.CutPrefix(f, "$queue/"); ok {
		return filter
	}
	return f
}

// matchFilter reports whether an MQTT topic filter matches topic: "+"
// matches one level, a trailing "#" any number of levels including
// none, and a topic starting with "$" matches no filter that starts
// with a wildcard (MQTT 3.1.1 section 4.7).
func matchFilter(filter, topic string) bool {
	if topic != "" && topic[0] == '$' && filter != "" && (filter[0] == '+' || filter[0] == '#') {
		return false
	}
	for {
		fl, frest, fmore := strings.Cut(filter, "/")
		if fl == "#" {
			return true
		}
		tl, trest, tmore := strings.Cut(topic, "/")
		if fl != "+" && fl != tl {
			return false
		}
		switch {
		case !fmore && !tmore:
			return true
		case !tmore:
			return frest == "#" // "a/#" matches "a"
		case !fmore:
			return false
		}
		filter, topic = frest, trest
	}
}

// retainedSeen applies ingest_retained: first to e's message. A retained
// message whose payload is the last one produced on its topic is seen. A
// message produced on a topic that has a retained value, whatever its
// retain flag, carries the topic's state and hash in e, to become the
// topic's last once Kafka has it: a live message changes the state the
// retained value is compared with. An empty payload, which clears a
// retained value, forgets the topic. A topic never retained costs a map
// lookup, and nothing while no topic of the upstream is.
func (u *upstream) retainedSeen(e *inflight) bool {
	msg := e.msg
	if len(msg.Payload()) == 0 {
		// An empty payload is how a retained value is cleared: the topic
		// is forgotten, so that topics that come and go (a vehicle's
		// trip, a device's session) do not pile up here. A value retained
		// on it again is new.
		if u.anyRetained.Load() {
			u.retained.Delete(msg.Topic())
		}
		return false
	}
	if !msg.Retained() {
		if !u.anyRetained.Load() {
			return false
		}
		v, ok := u.retained.Load(msg.Topic())
		if !ok {
			return false
		}
		e.topic = v.(*retainedTopic)
		e.hash = maphash.Bytes(u.seed, msg.Payload()) | 1 // never 0, which means nothing produced
		return false
	}
	v, ok := u.retained.Load(msg.Topic())
	if !ok {
		v, _ = u.retained.LoadOrStore(msg.Topic(), &retainedTopic{})
		u.anyRetained.Store(true)
	}
	e.topic = v.(*retainedTopic)
	e.hash = maphash.Bytes(u.seed, msg.Payload()) | 1
	return e.topic.last.Load() == e.hash
}

// finish acknowledges a message that produces no record, in its turn.
func (c *conn) finish(e *inflight, qos byte) {
	if qos == 0 {
		return
	}
	e.done = true
	if c.enqueue(e) {
		c.wake()
	}
}

// enqueue queues e for its acknowledgement, unless the connection is gone
// and its session persistent: the remote broker then resends e's message
// on the next connection, so producing it here would only add a duplicate
// that interleaves with the resent ones. Under a clean session nothing is
// resent, and what paho still hands over is produced.
func (c *conn) enqueue(e *inflight) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gone && !c.u.cfg.CleanSession {
		return false
	}
	c.queue = append(c.queue, e)
	c.awaiting.add(e.msg.MessageID())
	return true
}

// isAwaiting reports whether a message with packet id is queued on c,
// its acknowledgement not written yet.
func (c *conn) isAwaiting(id uint16) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.awaiting.has(id) || c.acking.has(id)
}

// idSet is a set of MQTT packet ids.
type idSet [1 << 10]uint64

func (s *idSet) add(id uint16)      { s[id>>6] |= 1 << (id & 63) }
func (s *idSet) remove(id uint16)   { s[id>>6] &^= 1 << (id & 63) }
func (s *idSet) has(id uint16) bool { return s[id>>6]&(1<<(id&63)) != 0 }

// clearRecord drops the reused record's references to the last message.
func (c *conn) clearRecord() {
	clear(c.rec.Headers)
	c.rec = Record{Headers: c.rec.Headers[:0]}
}

// record fills rec with the Kafka record for msg, or returns the reason
// it is not produced. Its fields point into msg and the configuration:
// rec is only good until msg is handed on. Messages the rules send nowhere, drop or refuse, or
// that cannot be mapped, are acknowledged without a record and counted:
// MQTT 3.1.1 has no negative acknowledgement, and holding them back would
// stall the remote broker's window for good.
func (u *upstream) record(msg *wireMessage, at time.Time, rec *Record) string {
	topic := msg.Topic()
	var key []byte
	kafkaTopic := u.cfg.KafkaTopic
	var extra []mapping.Header
	if kafkaTopic == "" {
		res, err := u.mapper.Map(u.cfg.Name, topic)
		if err != nil {
			u.log.Warn("message not produced: mapping failed", "topic", topic, "error", err)
			return "mapping_error"
		}
		switch res.Action {
		case mapping.ActionNone:
			return "unmatched"
		case mapping.ActionDrop:
			return "mapping_drop"
		case mapping.ActionReject:
			return "mapping_reject"
		}
		kafkaTopic, key, extra = res.Topic, res.Key, res.Headers
	}
	if key == nil {
		key = View(topic)
	}
	hs := AppendMQTTHeaders(rec.Headers[:0], topic, msg.Qos(), msg.Retained(), u.cfg.ClientID)
	hs = append(hs, Header{Key: "mqtt.source", Value: View(u.cfg.Name)})
	for _, h := range extra {
		hs = append(hs, Header{Key: h.Key, Value: View(h.Value)})
	}
	*rec = Record{Topic: kafkaTopic, Key: key, Value: msg.Payload(), Headers: hs, Timestamp: at}
	return ""
}

// Delivered records Kafka's answer. It runs on the producer's event
// goroutine and only wakes the ack writer.
func (e *inflight) Delivered(d Delivery) {
	c := e.c
	c.mu.Lock()
	e.done, e.err = true, d.Err
	head := len(c.queue) > 0 && c.queue[0].done
	c.mu.Unlock()
	if head {
		c.wake()
	}
}

// writeAcks acknowledges finished messages in arrival order. It ends once
// the connection is gone and nothing is pending, or at Close after one
// last pass (the producer was flushed by then).
func (c *conn) writeAcks() {
	u := c.u
	defer u.ackers.Done()
	var ready []*inflight
	for {
		closing := false
		select {
		case <-c.notify:
		case <-u.closing:
			closing = true
		}
		c.mu.Lock()
		i := 0
		for i < len(c.queue) && c.queue[i].done {
			i++
		}
		ready = append(ready[:0], c.queue[:i]...)
		for _, e := range ready {
			c.awaiting.remove(e.msg.MessageID())
			c.acking.add(e.msg.MessageID())
		}
		clear(c.queue[:i])
		c.queue = c.queue[i:]
		finished := closing || (c.gone && len(c.queue) == 0)
		left := len(c.queue) // read under the lock: handle may still be queueing
		c.mu.Unlock()
		for _, e := range ready {
			c.complete(e)
		}
		c.flushAcks()
		if len(ready) > 0 {
			c.mu.Lock()
			for _, e := range ready {
				c.acking.remove(e.msg.MessageID())
			}
			c.mu.Unlock()
		}
		if finished {
			if left > 0 && u.cfg.CleanSession {
				u.log.Warn("upstream messages left unacknowledged at shutdown are lost: with clean_session the remote broker forgets them with the connection", "messages", left)
			} else if left > 0 {
				u.log.Warn("upstream messages left unacknowledged at shutdown; the remote broker will redeliver them", "messages", left)
			}
			return
		}
	}
}

func (c *conn) complete(e *inflight) {
	u := c.u
	if e.err == nil && e.produced {
		// In Kafka, whether or not it can still be acknowledged.
		u.m.produced.Inc()
		u.m.ackLatency.Observe(time.Since(e.received).Seconds())
		if e.topic != nil {
			e.topic.last.Store(e.hash)
		}
		if !c.delivered.Load() {
			c.delivered.Store(true)
		}
	}
	if c.broken {
		return
	}
	if e.err == nil {
		c.ack(e.msg)
		return
	}
	if errors.Is(e.err, errConnectionEnded) {
		// Nothing after it can be acknowledged in order, and the
		// connection that would carry the acknowledgements is gone.
		c.broken = true
		return
	}
	u.m.failed.WithLabelValues(u.cfg.Name, failReason(e.err)).Inc()
	// With kafka_topic set, every message of the upstream goes to that one
	// topic: acknowledging when Kafka refuses the topic would drop the
	// whole feed, a persistent session's backlog included, until someone
	// noticed. So such a refusal is handled as a transient failure: the
	// messages stay with the remote broker, and the upstream reconnects,
	// with backoff, until the topic exists or may be written.
	if Permanent(e.err) && !(u.cfg.KafkaTopic != "" && topicRefused(e.err)) {
		// It can never succeed; holding its ack would stall the feed.
		if u.refusedLog.Allow() {
			u.log.Error("messages dropped: the record can never be produced, refused for good by Kafka or as larger than kafka.max_message_bytes (logged at most every 10s; tributary_upstream_records_failed_total counts them)", "topic", e.msg.Topic(), "error", e.err)
		}
		c.ack(e.msg)
		return
	}
	// Acknowledging later messages would let this one be overtaken when it
	// is redelivered, so nothing more is acknowledged here; the PUBACKs
	// already gathered are for records before it that Kafka has, and go
	// out first, or the remote broker would resend those too.
	c.flushAcks()
	c.broken = true
	if u.draining.Load() {
		return
	}
	// Reconnecting makes the remote broker resend it and all that follow.
	u.setError(e.err)
	u.log.Warn("Kafka did not take an upstream message; reconnecting so the remote broker redelivers it", "topic", e.msg.Topic(), "error", e.err)
	c.lose(fmt.Errorf("producing: %w", e.err))
}

// ack acknowledges msg, a QoS 1 or 2 message: its PUBACK (QoS 1) or
// PUBREC (QoS 2) joins the burst that flushAcks writes to the connection
// it came on (every message comes through c.dial's connection). paho
// answers the PUBREL that follows a PUBREC with PUBCOMP.
func (c *conn) ack(msg *wireMessage) {
	typ := byte(packets.Puback << 4)
	if msg.Qos() == 2 {
		typ = packets.Pubrec << 4
	}
	id := msg.MessageID()
	c.acks = append(c.acks, typ, 2, byte(id>>8), byte(id))
}

// flushAcks writes the PUBACKs gathered so far in one write. When that
// fails the connection is lost: the remote broker redelivers whatever it
// did not get acknowledged.
func (c *conn) flushAcks() {
	if len(c.acks) == 0 {
		return
	}
	b := c.acks
	c.acks = c.acks[:0]
	if _, err := c.nc.Load().Write(b); err != nil {
		c.broken = true
		c.u.log.Debug("writing PUBACKs to the upstream broker", "url", c.u.cfg.URL, "error", err)
		c.lose(fmt.Errorf("writing PUBACKs: %w", err))
	}
}

// bestEffort counts the outcome of QoS 0 records.
type bestEffort struct{ u *upstream }

func (b bestEffort) Delivered(d Delivery) {
	if d.Err != nil {
		b.u.m.failed.WithLabelValues(b.u.cfg.Name, failReason(d.Err)).Inc()
		return
	}
	b.u.m.produced.Inc()
}

func failReason(err error) string {
	switch {
	case errors.Is(err, ErrBudgetExhausted):
		return "budget_exhausted"
	case errors.Is(err, ErrRecordTooLarge):
		return "too_large"
	case errors.Is(err, ErrUnknownTopic):
		return "unknown_topic"
	case errors.Is(err, ErrTooManyTopics):
		return "too_many_topics"
	case errors.Is(err, ErrClosed), errors.Is(err, context.Canceled):
		return "shutting_down"
	}
	return "kafka_error"
}

type upstreamMetrics struct {
	connected   *prometheus.GaugeVec
	connects    *prometheus.CounterVec
	connectErrs *prometheus.CounterVec
	disconnects *prometheus.CounterVec
	received    *prometheus.CounterVec
	bytes       *prometheus.CounterVec
	redelivered *prometheus.CounterVec
	produced    *prometheus.CounterVec
	failed      *prometheus.CounterVec
	skipped     *prometheus.CounterVec
	refused     *prometheus.CounterVec
	lastError   *prometheus.GaugeVec
	ackLatency  *prometheus.HistogramVec
}

// upstreamCounters are one upstream's series.
type upstreamCounters struct {
	connected     prometheus.Gauge
	connects      prometheus.Counter
	connectErrors prometheus.Counter
	disconnects   prometheus.Counter
	received      prometheus.Counter
	bytes         prometheus.Counter
	redelivered   prometheus.Counter
	produced      prometheus.Counter
	lastError     prometheus.Gauge
	ackLatency    prometheus.Observer
	failed        *prometheus.CounterVec
	skipped       *prometheus.CounterVec
	refused       *prometheus.CounterVec
}

func newUpstreamMetrics(reg prometheus.Registerer) *upstreamMetrics {
	opts := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: "tributary", Subsystem: "upstream", Name: name, Help: help}
	}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts(opts(name, help)), append([]string{"upstream"}, labels...))
	}
	gauge := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts(opts(name, help)), []string{"upstream"})
	}
	m := &upstreamMetrics{
		connected:   gauge("connected", "1 while connected to the upstream with its subscriptions requested (one it refused is counted in tributary_upstream_subscriptions_refused_total), else 0."),
		connects:    counter("connects_total", "Successful connections to the upstream."),
		connectErrs: counter("connect_errors_total", "Connection attempts to the upstream that failed (each is retried after a backoff)."),
		disconnects: counter("disconnects_total", "Connections to the upstream that ended other than at shutdown."),
		received:    counter("messages_received_total", "Messages received from the upstream."),
		bytes:       counter("received_bytes_total", "Payload bytes received from the upstream."),
		redelivered: counter("redelivered_total", "Messages received with the DUP flag (resent by the upstream; may be duplicates in Kafka)."),
		produced:    counter("records_produced_total", "Records from the upstream that Kafka acknowledged."),
		failed:      counter("records_failed_total", "Records from the upstream that Kafka did not take, by reason.", "reason"),
		skipped:     counter("messages_skipped_total", "Messages not produced, by reason: acknowledged without a record (not_subscribed, retained, retained_seen, unmatched, mapping_drop, mapping_reject, mapping_error), or, for resent_copy, a copy the upstream resent on the same connection of a QoS 1 or 2 message taken there and not yet acknowledged, which is produced and acknowledged once.", "reason"),
		refused:     counter("subscriptions_refused_total", "Subscriptions the upstream refused (SUBACK 0x80), by filter.", "filter"),
		lastError:   gauge("last_error_timestamp_seconds", "Unix time of the upstream's last connection, subscription or produce error (the message is in the log and /readyz)."),
		ackLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "tributary", Subsystem: "upstream", Name: "ack_latency_seconds",
			Help:    "Time from receiving an upstream message to Kafka acknowledging its record.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"upstream"}),
	}
	reg.MustRegister(m.connected, m.connects, m.connectErrs, m.disconnects, m.received, m.bytes, m.redelivered,
		m.produced, m.failed, m.skipped, m.refused, m.lastError, m.ackLatency)
	return m
}

func (m *upstreamMetrics) forUpstream(name string) upstreamCounters {
	c := upstreamCounters{
		connected:     m.connected.WithLabelValues(name),
		connects:      m.connects.WithLabelValues(name),
		connectErrors: m.connectErrs.WithLabelValues(name),
		disconnects:   m.disconnects.WithLabelValues(name),
		received:      m.received.WithLabelValues(name),
		bytes:         m.bytes.WithLabelValues(name),
		redelivered:   m.redelivered.WithLabelValues(name),
		produced:      m.produced.WithLabelValues(name),
		lastError:     m.lastError.WithLabelValues(name),
		ackLatency:    m.ackLatency.WithLabelValues(name),
		failed:        m.failed,
		skipped:       m.skipped,
		refused:       m.refused,
	}
	c.connected.Set(0)
	return c
}

// dial opens the network connection for paho and reads it through a
// buffer: paho reads each packet's fixed header a byte at a time, which
// straight from the socket costs three or four read system calls per
// message (a third of the CPU of draining a feed, measured).
func (u *upstream) dial(uri *url.URL, opts paho.ClientOptions) (*ackConn, error) {
	d := &net.Dialer{Timeout: u.cfg.ConnectTimeout}
	var c net.Conn
	var err error
	switch uri.Scheme {
	case "tcp", "mqtt":
		c, err = d.Dial("tcp", uri.Host)
	case "ssl", "tls", "mqtts", "tcps":
		c, err = tls.DialWithDialer(d, "tcp", uri.Host, opts.TLSConfig)
	case "ws", "wss":
		target := *uri
		target.User = nil
		var tlsc *tls.Config
		if uri.Scheme == "wss" {
			tlsc = opts.TLSConfig
		}
		c, err = paho.NewWebsocket(target.String(), tlsc, u.cfg.ConnectTimeout, opts.HTTPHeaders, opts.WebsocketOptions)
	default:
		return nil, fmt.Errorf("unsupported URL scheme %q", uri.Scheme)
	}
	if err != nil {
		return nil, err
	}
	a := newAckConn(c, 32<<10)
	a.maxBody, a.writeTimeout = u.maxBody, u.cfg.ConnectTimeout
	return a, nil
}

// dial is upstream.dial, keeping the connection for the ack writer.
func (c *conn) dial(uri *url.URL, opts paho.ClientOptions) (net.Conn, error) {
	nc, err := c.u.dial(uri, opts)
	if err != nil {
		return nil, err
	}
	nc.publish = c.handle
	c.nc.Store(nc)
	return nc, nil
}

// ackConn is a net.Conn whose reads go through a bufio.Reader and whose
// writes are whole: paho writes every packet with one Write, and the ack
// writer its PUBACKs with one Write too, so holding a lock per Write keeps
// the two from interleaving within a packet. It counts the reads from
// and writes to the network for the keepalive.
type ackConn struct {
	net.Conn
	r  *bufio.Reader
	mu sync.Mutex

	reads, writes atomic.Uint64

	// publish, once set, takes every PUBLISH read from the connection, on
	// paho's reading goroutine; paho gets the other packets only. It is
	// set before paho's first read.
	publish func(*wireMessage)
	// pass is how much of the packet being read is still paho's to read.
	pass int
	// maxBody, when positive, is the largest PUBLISH body read into
	// memory (see maxPublishBody).
	maxBody int
	// writeTimeout, when positive, bounds each Write (see Write).
	writeTimeout time.Duration
}

func newAckConn(c net.Conn, size int) *ackConn {
	a := &ackConn{Conn: c}
	a.r = bufio.NewReaderSize(countedReads{a}, size)
	return a
}

// Read hands paho the connection's packets other than PUBLISH: each
// PUBLISH is read here, whole, and given to a.publish, once one is set (see
// the package notes).
func (a *ackConn) Read(p []byte) (int, error) {
	if a.publish == nil {
		return a.r.Read(p)
	}
	for a.pass == 0 {
		n, err := a.next()
		if err != nil {
			return 0, err
		}
		a.pass = n
	}
	n, err := a.r.Read(p[:min(len(p), a.pass)])
	a.pass -= n
	return n, err
}

// next reads packets up to the next one that is not a PUBLISH, handing each
// PUBLISH to a.publish, and returns that packet's length, header included,
// for paho to read.
func (a *ackConn) next() (int, error) {
	for {
		// The fixed header: the type and flags, then the remaining length
		// in one to four bytes (MQTT 3.1.1 section 2.2.3). Peeked a byte at
		// a time: a packet of two bytes may be all the remote has sent.
		b, err := a.r.Peek(2)
		if err != nil {
			return 0, err
		}
		first, c := b[0], b[1]
		size, hlen := int(c&0x7f), 2
		for shift := 7; c&0x80 != 0; shift += 7 {
			if hlen == 5 {
				return 0, fmt.Errorf("malformed packet from the remote broker: its remaining length runs past 4 bytes")
			}
			if b, err = a.r.Peek(hlen + 1); err != nil {
				return 0, err
			}
			c = b[hlen]
			size |= int(c&0x7f) << shift
			hlen++
		}
		if first>>4 != packets.Publish {
			if err := checkControl(first>>4, size); err != nil {
				return 0, err
			}
			return hlen + size, nil
		}
		if err := a.readPublish(first, hlen, size); err != nil {
			return 0, err
		}
	}
}

// checkControl refuses a packet other than PUBLISH that paho must not
// read: one a broker does not send to a client, or one whose remaining
// length is not what MQTT 3.1.1 gives that type (section 3). paho indexes
// a SUBACK's return codes by the filters of its SUBSCRIBE, one here (see
// upstream.connect), and would panic on a second code; and it would read
// whatever length a packet claims into memory.
func checkControl(typ byte, size int) error {
	want := 2 // CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK: a packet id or the CONNACK flags and code
	switch typ {
	case packets.Connack, packets.Puback, packets.Pubrec, packets.Pubrel, packets.Pubcomp, packets.Unsuback:
	case packets.Suback:
		// A packet id and one return code per filter; a SUBACK with none
		// is read as a refusal.
		if size == 2 || size == 3 {
			return nil
		}
		return fmt.Errorf("malformed SUBACK from the remote broker: %d return codes for a SUBSCRIBE of one filter", size-2)
	case packets.Pingresp:
		want = 0
	default:
		return fmt.Errorf("malformed stream from the remote broker: a packet of type %d, which a broker does not send to a client", typ)
	}
	if size != want {
		return fmt.Errorf("malformed %s from the remote broker: a remaining length of %d bytes, want %d", packets.PacketNames[typ], size, want)
	}
	return nil
}

// readPublish reads a PUBLISH of size bytes after its fixed header of hlen
// bytes and hands it to a.publish. The payload handed over is a view of
// the read buffer, good until a.publish returns.
func (a *ackConn) readPublish(first byte, hlen, size int) error {
	if a.maxBody > 0 && size > a.maxBody {
		return a.skipPublish(first, hlen, size)
	}
	total := hlen + size
	var pk []byte
	buffered := total <= a.r.Size()
	if buffered {
		b, err := a.r.Peek(total)
		if err != nil {
			return err
		}
		pk = b
	} else {
		pk = make([]byte, total)
		if _, err := io.ReadFull(a.r, pk); err != nil {
			return err
		}
	}
	m, err := parsePublish(first, pk[hlen:])
	if err != nil {
		return err
	}
	a.publish(m)
	m.payload = nil // handle copied what it keeps; the buffer is read on
	if buffered {
		_, _ = a.r.Discard(total)
	}
	return nil
}

// skipPublish reads a PUBLISH whose body of size bytes is over a.maxBody:
// its topic and packet id, for its acknowledgement, and then the payload,
// which is thrown away as it is read. The message handed to a.publish has
// no payload, only its length (wireMessage.skipped).
func (a *ackConn) skipPublish(first byte, hlen, size int) error {
	head := make([]byte, hlen+min(size, 2+math.MaxUint16+2))
	if _, err := io.ReadFull(a.r, head); err != nil {
		return err
	}
	m, err := parsePublish(first, head[hlen:])
	if err != nil {
		return err
	}
	rest := size - (len(head) - hlen)
	m.skipped, m.payload = len(m.payload)+rest, nil
	if _, err := a.r.Discard(rest); err != nil {
		return err
	}
	a.publish(m)
	return nil
}

// parsePublish reads a PUBLISH's variable header and payload (MQTT 3.1.1
// section 3.3). The payload is a view of body.
func parsePublish(first byte, body []byte) (*wireMessage, error) {
	m := &wireMessage{qos: first >> 1 & 3, dup: first&8 != 0, retained: first&1 != 0}
	if m.qos == 3 {
		return nil, errors.New("malformed PUBLISH from the remote broker: QoS 3")
	}
	if len(body) < 2 {
		return nil, fmt.Errorf("malformed PUBLISH from the remote broker: %d bytes, no room for a topic", len(body))
	}
	n := int(body[0])<<8 | int(body[1])
	if 2+n > len(body) {
		return nil, fmt.Errorf("malformed PUBLISH from the remote broker: a topic of %d bytes in a packet of %d", n, len(body))
	}
	m.topic, body = string(body[2:2+n]), body[2+n:]
	if m.qos > 0 {
		if len(body) < 2 {
			return nil, fmt.Errorf("malformed PUBLISH from the remote broker: QoS %d with no packet id", m.qos)
		}
		m.id, body = uint16(body[0])<<8|uint16(body[1]), body[2:]
	}
	m.payload = body
	return m, nil
}

// wireMessage is a PUBLISH as ackConn reads it, handed to conn.handle.
// It is acknowledged by the ack writer (conn.ack).
type wireMessage struct {
	topic    string
	payload  []byte
	skipped  int // the length of a payload too large to read into memory (see ackConn.skipPublish), which payload then lacks
	id       uint16
	qos      byte
	retained bool
	dup      bool
}

func (m *wireMessage) Duplicate() bool   { return m.dup }
func (m *wireMessage) Qos() byte         { return m.qos }
func (m *wireMessage) Retained() bool    { return m.retained }
func (m *wireMessage) Topic() string     { return m.topic }
func (m *wireMessage) MessageID() uint16 { return m.id }
func (m *wireMessage) Payload() []byte   { return m.payload }

// countedReads reads from the network for the buffer, counting reads that
// brought something.
type countedReads struct{ a *ackConn }

func (c countedReads) Read(p []byte) (int, error) {
	n, err := c.a.Conn.Read(p)
	if n > 0 {
		c.a.reads.Add(1)
	}
	return n, err
}

// Write writes one of paho's packets, or the ack writer's PUBACKs, or the
// keepalive's PINGREQ, whole, giving up after a.writeTimeout. paho writes
// some packets (PUBCOMP, SUBSCRIBE, DISCONNECT) with no deadline, and sets
// and clears its own around others outside this lock: a remote broker
// that stopped reading would then hold a write, and this lock, for good,
// and with it the keepalive's PINGREQ that would end the connection, and
// Close. So each write here sets its own deadline, and paho's are
// ignored (SetWriteDeadline).
func (a *ackConn) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.writeTimeout > 0 {
		_ = a.Conn.SetWriteDeadline(time.Now().Add(a.writeTimeout))
		// Cleared after: a TLS connection also writes from Read (a key
		// update's answer), which a deadline left past would fail.
		defer a.Conn.SetWriteDeadline(time.Time{})
	}
	a.writes.Add(1)
	return a.Conn.Write(p)
}

// SetWriteDeadline ignores paho's write deadlines: Write sets its own,
// under the lock.
func (a *ackConn) SetWriteDeadline(time.Time) error { return nil }

// SetDeadline sets the read deadline only (see SetWriteDeadline).
func (a *ackConn) SetDeadline(t time.Time) error { return a.Conn.SetReadDeadline(t) }

// noStore is a paho Store that keeps nothing (see the package notes on
// upstream sources).
type noStore struct{}

func (noStore) Open()                             {}
func (noStore) Put(string, packets.ControlPacket) {}
func (noStore) Get(string) packets.ControlPacket  { return nil }
func (noStore) All() []string                     { return nil }
func (noStore) Del(string)                        {}
func (noStore) Close()                            {}
func (noStore) Reset()                            {}
