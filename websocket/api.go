package websocket

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tributary-io/tributary/auth"
	"github.com/tributary-io/tributary/bridge"
)

// APIConfig configures the JSON WebSocket API (/socket/in, /socket/out,
// /kafka/cluster/info).
type APIConfig struct {
	// AllowedOrigins are browser origins (scheme://host[:port], a bare
	// host[:port], or "*" for any) allowed besides the server's own.
	// Requests without an Origin header (non-browser clients) are allowed.
	AllowedOrigins []string
	// MaxFrameBytes is the largest frame a client may send; larger ones
	// close the socket with 1009. Default 4 MiB.
	MaxFrameBytes int64
	// PingInterval is how often the server pings; a socket that sends
	// nothing (pongs included) for two intervals is closed. Default 30s.
	PingInterval time.Duration
	// MaxInflight is how many records one /socket/in socket may have
	// awaiting Kafka; past it the server stops reading that socket. Default 1000.
	MaxInflight int
	// ProduceRate limits records per second per /socket/in socket; records
	// over it get error 42901. 0 means unlimited. Default 0.
	ProduceRate float64
	// SendQueue is how many records wait for one /socket/out socket before
	// its partitions are paused. Default 1000.
	SendQueue int
	// FlushTimeout is kafka.flush_timeout, the longest the daemon's
	// shutdown flush takes. A produce socket closing at shutdown sends the
	// results that come until Close, which the daemon calls once the flush
	// is over; it gives up shutdownGrace past FlushTimeout if Close does
	// not come. Default 30s.
	FlushTimeout time.Duration
	// Consumer is the template for each /socket/out socket's consumer:
	// bootstrap, properties and session timeout.
	Consumer   bridge.ConsumerConfig
	Registerer prometheus.Registerer
	// Auth applies the per-user Kafka topic ACLs; nil allows every topic.
	Auth *Authenticator
}

// API serves the JSON WebSocket API, wire-compatible with
// kafka-websocket-proxy 2.x.
type API struct {
	cfg      APIConfig
	log      *slog.Logger
	producer *bridge.Producer
	upgrader websocket.Upgrader
	metrics  *apiMetrics

	mu       sync.Mutex
	sessions map[string]*session // "in/<user>/<clientId>" or "out/<user>/<clientId>"
	all      map[*session]struct{}
	closing  bool
	wg       sync.WaitGroup
	// flushed is closed by Close: the daemon's flush is over, so produce
	// sockets stop waiting for results that have not come.
	flushed     chan struct{}
	flushedOnce sync.Once
	// produceCtx, the parent of every produce socket's context, ends at
	// Drain: a record read from then on is not produced (see
	// bridge.Producer.Produce), or it could reach Kafka after the flush
	// with no result frame to follow, and its resend be a duplicate.
	produceCtx    context.Context
	stopProducing context.CancelFunc
	// closeWait bounds how long a produce socket the server closes for
	// another reason than shutdown (a newer socket with its clientId,
	// revoked credentials) waits for the results still due; shutdownWait,
	// how long one closing at shutdown waits for them if Close does not
	// come.
	closeWait, shutdownWait time.Duration
}

// shutdownGrace is how much longer than the flush a produce socket waits
// at shutdown for Close: the daemon calls it only after the flush and the
// closing of the MQTT side.
const shutdownGrace = time.Minute

// session is one open socket, as the registry sees it.
type session struct {
	key  string
	stop func(code int, reason string) // asks the socket to close; idempotent
	done chan struct{}                 // closed when the socket is gone
	// check repeats the socket's authentication and authorization against
	// the users and tokens files in force, returning why they no longer
	// allow it, or "". Nil: nothing to check.
	check func() string
}

// NewAPI builds the API over the shared producer.
func NewAPI(cfg APIConfig, producer *bridge.Producer, log *slog.Logger) *API {
	if cfg.MaxFrameBytes <= 0 {
		cfg.MaxFrameBytes = 4 << 20
	}
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = 30 * time.Second
	}
	if cfg.MaxInflight <= 0 {
		cfg.MaxInflight = 1000
	}
	if cfg.SendQueue <= 0 {
		cfg.SendQueue = 1000
	}
	if cfg.FlushTimeout <= 0 {
		cfg.FlushTimeout = 30 * time.Second
	}
	reg := cfg.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	a := &API{
		cfg:          cfg,
		log:          log,
		producer:     producer,
		metrics:      newAPIMetrics(reg),
		sessions:     map[string]*session{},
		all:          map[*session]struct{}{},
		flushed:      make(chan struct{}),
		closeWait:    30 * time.Second,
		shutdownWait: cfg.FlushTimeout + shutdownGrace,
	}
	a.produceCtx, a.stopProducing = context.WithCancel(context.Background())
	a.upgrader = websocket.Upgrader{
		HandshakeTimeout: 10 * time.Second,
		ReadBufferSize:   64 << 10,
		WriteBufferSize:  64 << 10,
		CheckOrigin:      a.checkOrigin,
		// Browsers pass a token as "bearer.<token>" beside this one,
		// which is the one selected, so the token is never echoed.
		Subprotocols:      []string{TokenSubprotocol},
		EnableCompression: false,
		Error:             a.upgradeError,
	}
	return a
}

// upgradeError answers a request the upgrader refused, in plain text
// saying what is wrong: gorilla's own answer is the bare status text
// ("Bad Request"), which leaves someone who opened /socket/in in a browser
// tab or with curl guessing.
func (a *API) upgradeError(w http.ResponseWriter, r *http.Request, status int, reason error) {
	msg := reason.Error()
	switch {
	case !websocket.IsWebSocketUpgrade(r):
		// RFC 9110: a 426 names the protocol to upgrade to.
		status = http.StatusUpgradeRequired
		w.Header().Set("Upgrade", "websocket")
		w.Header().Set("Connection", "Upgrade")
		msg = r.URL.Path + " is a WebSocket endpoint: it needs a WebSocket upgrade request (Connection: Upgrade, Upgrade: websocket), " +
			"such as a WebSocket client (wscat, a browser's WebSocket) sends, not a plain HTTP request; the JSON WebSocket API is described in docs/websocket.md"
	case status == http.StatusForbidden: // the only refusal checkOrigin causes
		msg = "WebSocket origin " + strconv.Quote(r.Header.Get("Origin")) +
			" is not allowed: only the server's own origin and those in websocket.allowed_origins are"
	}
	w.Header().Set("Sec-WebSocket-Version", "13")
	http.Error(w, msg, status)
}

func (a *API) routes(mux *http.ServeMux, guard func(http.Handler) http.Handler) {
	mux.Handle("GET /socket/in", guard(http.HandlerFunc(a.serveProduce)))
	mux.Handle("GET /socket/out", guard(http.HandlerFunc(a.serveConsume)))
	mux.Handle("GET /kafka/cluster/info", guard(http.HandlerFunc(a.clusterInfo)))
}

func (a *API) clusterInfo(w http.ResponseWriter, r *http.Request) {
	brokers, err := a.producer.Brokers(r.Context())
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, produceError{Error: errorBody{Code: 50302, Message: err.Error()}})
		return
	}
	if brokers == nil {
		brokers = []bridge.Broker{}
	}
	writeJSON(w, http.StatusOK, brokers)
}

// checkOrigin allows non-browser clients, the server's own origin and the
// configured allow-list.
func (a *API) checkOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if auth.OriginAllowed(origin, r.Host, a.cfg.AllowedOrigins) {
		return true
	}
	a.log.Info("WebSocket origin refused; add it to websocket.allowed_origins to allow it", "origin", origin, "host", r.Host)
	return false
}

// register makes s the socket for its key, closing and waiting for any
// socket already there: a reconnect with the same clientId replaces the
// old connection. It returns false when the API is shutting down.
func (a *API) register(ctx context.Context, s *session) bool {
	for {
		a.mu.Lock()
		if a.closing {
			a.mu.Unlock()
			return false
		}
		old, ok := a.sessions[s.key]
		if !ok {
			a.sessions[s.key] = s
			a.all[s] = struct{}{}
			a.wg.Add(1)
			a.mu.Unlock()
			// The socket was authorized by the files in force before it
			// was listed; a reload in between was not seen by Revoke,
			// which lists the sockets after swapping the files.
			a.revokeIfDenied(s)
			return true
		}
		a.mu.Unlock()
		old.stop(4001, "replaced by a newer connection with the same clientId")
		select {
		case <-old.done:
		case <-ctx.Done():
			return false
		case <-time.After(15 * time.Second):
			a.log.Warn("replaced WebSocket did not close in time", "key", s.key)
			a.mu.Lock()
			if a.sessions[s.key] == old {
				delete(a.sessions, s.key)
			}
			a.mu.Unlock()
		}
	}
}

func (a *API) unregister(s *session) {
	a.mu.Lock()
	if a.sessions[s.key] == s {
		delete(a.sessions, s.key)
	}
	delete(a.all, s)
	a.mu.Unlock()
	close(s.done)
	a.wg.Done()
}

// Revoke closes every open socket whose credentials or topics the users
// and tokens files in force no longer allow: call it after a reload. A
// socket opened with HTTP Basic closes when its user is no longer in the
// users file or its password changed, one opened with a token when the
// token is no longer listed (for the same user), and any socket when the
// Kafka ACLs no longer allow its topics or consumer group. Each closes as
// at shutdown (a produce socket first sends the results still due; a
// consume socket commits and leaves its group), with close code 1008 and
// the reason. It returns how many sockets it closed.
func (a *API) Revoke() int {
	a.mu.Lock()
	all := make([]*session, 0, len(a.all))
	for s := range a.all {
		all = append(all, s)
	}
	a.mu.Unlock()
	n := 0
	for _, s := range all {
		if a.revokeIfDenied(s) {
			n++
		}
	}
	return n
}

// revokeIfDenied closes s if the files in force no longer allow it, and
// reports whether it did.
func (a *API) revokeIfDenied(s *session) bool {
	if s.check == nil {
		return false
	}
	why := s.check()
	if why == "" {
		return false
	}
	a.log.Info("closing a WebSocket API socket the reloaded users or tokens file no longer allows", "socket", s.key, "reason", why)
	s.stop(websocket.ClosePolicyViolation, why)
	return true
}

// Drain refuses new sockets and asks every open one to finish: produce
// sockets stop reading and send the results still due, consume sockets
// commit and leave their groups. It returns at once; Close waits.
func (a *API) Drain() {
	a.mu.Lock()
	a.closing = true
	all := make([]*session, 0, len(a.all))
	for s := range a.all {
		all = append(all, s)
	}
	a.mu.Unlock()
	for _, s := range all {
		s.stop(websocket.CloseGoingAway, "server shutting down")
	}
	// After the stops: a produce socket whose read loop sees its context
	// end must find itself closing, and send the results still due.
	a.stopProducing()
}

// Close drains and waits for every socket to close, until ctx ends. The
// caller has flushed the producer: a result still missing will not come
// (Kafka did not acknowledge the record by the flush deadline), so produce
// sockets send the results they have and close without waiting for it.
// Idempotent.
func (a *API) Close(ctx context.Context) {
	a.Drain()
	a.flushedOnce.Do(func() { close(a.flushed) })
	done := make(chan struct{})
	go func() {
		a.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		a.log.Warn("WebSocket clients still open at shutdown deadline")
	}
}

// readEnded records why a socket's read loop ended, when that was the
// client's fault.
func (a *API) readEnded(err error, r *http.Request) {
	if errors.Is(err, websocket.ErrReadLimit) {
		a.metrics.tooLarge.Inc()
		a.log.Info("WebSocket API socket closed: frame larger than websocket.max_frame_bytes", "remote", r.RemoteAddr, "path", r.URL.Path, "limit", a.cfg.MaxFrameBytes)
	}
}

type apiMetrics struct {
	connections *prometheus.GaugeVec
	// produced and sent are records_total{direction="in"} and {"out"}:
	// records Kafka acknowledged for /socket/in sockets, and records
	// written to /socket/out sockets.
	produced prometheus.Counter
	sent     prometheus.Counter
	errors   *prometheus.CounterVec
	pauses   prometheus.Counter
	tooLarge prometheus.Counter
}

func newAPIMetrics(reg prometheus.Registerer) *apiMetrics {
	m := &apiMetrics{
		connections: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "tributary", Subsystem: "websocket", Name: "connections",
			Help: "Open JSON WebSocket API sockets, by path.",
		}, []string{"path"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tributary", Subsystem: "websocket", Name: "error_frames_total",
			Help: "Error frames sent, by error code.",
		}, []string{"code"}),
		pauses: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "tributary", Subsystem: "websocket", Name: "consumer_pauses_total",
			Help: "Times a /socket/out socket's partitions were paused because its send queue was full.",
		}),
		tooLarge: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "tributary", Subsystem: "websocket", Name: "frames_too_large_total",
			Help: "Sockets closed (1009) for sending a frame larger than websocket.max_frame_bytes.",
		}),
	}
	records := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "tributary", Subsystem: "websocket", Name: "records_total",
		Help: "Records produced (in: Kafka acknowledged them, whether or not the result reached the client) or sent to clients (out) through the JSON WebSocket API.",
	}, []string{"direction"})
	m.produced, m.sent = records.WithLabelValues("in"), records.WithLabelValues("out")
	reg.MustRegister(m.connections, records, m.errors, m.pauses, m.tooLarge)
	return m
}
