package broker

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// wsListener serves MQTT over WebSocket on /mqtt and / with the "mqtt"
// (or MQTT 3.1's "mqttv3.1") subprotocol, on a listener the broker bound
// itself (so port 0 works and bind errors surface at start-up).
type wsListener struct {
	id        string
	ln        net.Listener
	srv       *http.Server
	log       *slog.Logger
	establish listeners.EstablishFn
	upgrader  websocket.Upgrader
	readLimit int64
	// connectTimeout bounds the time from the upgrade to the CONNECT
	// packet; mochi sets its keepalive deadline after that.
	connectTimeout time.Duration
	closed         atomic.Bool
}

var _ listeners.Listener = (*wsListener)(nil)

func newWSListener(id string, ln net.Listener, maxMessageBytes int64, connectTimeout time.Duration) *wsListener {
	l := &wsListener{
		id:             id,
		ln:             ln,
		readLimit:      maxMessageBytes,
		connectTimeout: connectTimeout,
		upgrader: websocket.Upgrader{
			// "mqtt" for MQTT 3.1.1 and 5; "mqttv3.1" is what MQTT 3.1
			// clients offer (mqtt.js with protocolVersion 3, for one). A
			// browser fails the handshake when the server selects none of
			// the subprotocols it offered.
			Subprotocols: []string{"mqtt", "mqttv3.1"},
			// MQTT authenticates at the MQTT level; browsers on any page
			// may connect, as with any MQTT-over-WebSocket broker. The
			// one credential a browser sends by itself, its client
			// certificate, counts only for trusted origins (see
			// authHook.foreignOrigin).
			CheckOrigin:     func(*http.Request) bool { return true },
			ReadBufferSize:  4096,
			WriteBufferSize: 4096,
		},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/mqtt", l.handle)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.Error(w, "MQTT over WebSocket is served on /mqtt and /", http.StatusNotFound)
			return
		}
		l.handle(w, r)
	})
	// Idle keep-alive connections that never upgrade are closed too.
	l.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 10 * time.Second}
	return l
}

func (l *wsListener) ID() string       { return l.id }
func (l *wsListener) Address() string  { return l.ln.Addr().String() }
func (l *wsListener) Protocol() string { return "ws" }

func (l *wsListener) Init(log *slog.Logger) error {
	l.log = log
	l.srv.ErrorLog = slog.NewLogLogger(log.Handler(), slog.LevelDebug)
	return nil
}

func (l *wsListener) Serve(establish listeners.EstablishFn) {
	l.establish = establish
	if err := l.srv.Serve(l.ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) && !l.closed.Load() {
		l.log.Error("MQTT WebSocket listener stopped", "listener", l.id, "error", err)
	}
}

func (l *wsListener) Close(closeClients listeners.CloseFn) {
	if l.closed.CompareAndSwap(false, true) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = l.srv.Shutdown(ctx)
		cancel()
	}
	closeClients(l.id)
}

func (l *wsListener) handle(w http.ResponseWriter, r *http.Request) {
	c, err := l.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has answered with an HTTP error
	}
	defer c.Close()
	c.SetReadLimit(l.readLimit)
	if l.connectTimeout > 0 {
		_ = c.SetReadDeadline(time.Now().Add(l.connectTimeout))
	}
	ws := &wsConn{Conn: c.UnderlyingConn(), c: c, origin: r.Header.Get("Origin"), host: r.Host}
	if err := l.establish(l.id, ws); err != nil && !errors.Is(err, io.EOF) {
		l.log.Debug("MQTT WebSocket client ended", "error", err)
	}
}

// wsConn presents a WebSocket as the byte stream mochi reads MQTT from:
// reads run across binary messages, each write is one binary message.
type wsConn struct {
	net.Conn
	c  *websocket.Conn
	r  io.Reader
	mu sync.Mutex
	// origin and host are the upgrade request's Origin and Host headers:
	// a browser's client certificate logs in only pages of trusted
	// origins (AuthConfig.CertOrigins).
	origin, host string
}

// errTextFrame is returned for a text frame: MQTT over WebSocket is binary.
var errTextFrame = errors.New("MQTT over WebSocket needs binary frames, got a text frame")

func (ws *wsConn) Read(p []byte) (int, error) {
	for {
		if ws.r == nil {
			op, r, err := ws.c.NextReader()
			if err != nil {
				return 0, err
			}
			if op != websocket.BinaryMessage {
				return 0, errTextFrame
			}
			ws.r = r
		}
		n, err := ws.r.Read(p)
		if errors.Is(err, io.EOF) {
			ws.r = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

func (ws *wsConn) Write(p []byte) (int, error) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if err := ws.c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (ws *wsConn) Close() error { return ws.c.Close() }

// NetConn returns the connection under the WebSocket (a *tls.Conn for
// MQTT over secure WebSocket), for the client certificate.
func (ws *wsConn) NetConn() net.Conn { return ws.Conn }

// SetDeadline sets both deadlines. gorilla's write deadline is state of the
// writer, so it is set under the same lock as writes.
func (ws *wsConn) SetDeadline(t time.Time) error {
	if err := ws.c.SetReadDeadline(t); err != nil {
		return err
	}
	return ws.SetWriteDeadline(t)
}

func (ws *wsConn) SetReadDeadline(t time.Time) error { return ws.c.SetReadDeadline(t) }

// SetWriteDeadline sets the deadline on the socket first: a write blocked
// on a peer that does not read holds ws.mu, and this must not wait behind
// it (a takeover, a revocation or shutdown sets a deadline precisely to
// end such a write; gorilla fails every write after one that failed).
// gorilla's own deadline, which it applies at each write, is set under
// ws.mu, as gorilla allows no write method alongside a write.
func (ws *wsConn) SetWriteDeadline(t time.Time) error {
	if err := ws.Conn.SetWriteDeadline(t); err != nil {
		return err
	}
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return ws.c.SetWriteDeadline(t)
}
