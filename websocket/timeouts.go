package websocket

import (
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// timeoutWatch counts the HTTP connections a server timeout cut off: a
// read that ran out of time while the server waited for a request (the
// read-header and read timeouts, the slowloris defence), while the
// connection was idle (the idle timeout), or a write that ran out of time
// (the write timeout). Connections taken over by a WebSocket are not
// counted: their deadlines are the socket's own.
type timeoutWatch struct {
	closed *prometheus.CounterVec
}

func newTimeoutWatch(reg prometheus.Registerer) *timeoutWatch {
	w := &timeoutWatch{closed: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "tributary", Subsystem: "http", Name: "timeouts_total",
		Help: "HTTP connections cut off by a server timeout: read (request not sent in time), idle (keep-alive unused) or write.",
	}, []string{"timeout"})}
	if reg != nil {
		reg.MustRegister(w.closed)
	}
	return w
}

// listener wraps ln so that its connections report timeouts. Wrap the
// plain listener, under TLS, so that net/http still sees a *tls.Conn.
func (w *timeoutWatch) listener(ln net.Listener) net.Listener { return timeoutListener{ln, w} }

// connState is the http.Server's ConnState hook: it tells each
// connection what the server is doing with it.
func (w *timeoutWatch) connState(c net.Conn, state http.ConnState) {
	if t, ok := c.(*tls.Conn); ok {
		c = t.NetConn()
	}
	if tc, ok := c.(*timeoutConn); ok {
		tc.state.Store(int32(state))
	}
}

type timeoutListener struct {
	net.Listener
	w *timeoutWatch
}

func (l timeoutListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &timeoutConn{Conn: c, w: l.w}, nil
}

type timeoutConn struct {
	net.Conn
	w       *timeoutWatch
	state   atomic.Int32 // http.ConnState
	counted atomic.Bool
	// aborting: the last read deadline set was already past. net/http
	// does that to end its own background read once a handler is done
	// with a request, on every request; the read that fails is not a
	// client being slow.
	aborting atomic.Bool
}

func (c *timeoutConn) SetReadDeadline(t time.Time) error {
	c.aborting.Store(!t.IsZero() && t.Before(time.Now()))
	return c.Conn.SetReadDeadline(t)
}

func (c *timeoutConn) SetDeadline(t time.Time) error {
	c.aborting.Store(!t.IsZero() && t.Before(time.Now()))
	return c.Conn.SetDeadline(t)
}

func (c *timeoutConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil && !c.aborting.Load() {
		switch http.ConnState(c.state.Load()) {
		case http.StateNew, http.StateActive:
			c.count(err, "read")
		case http.StateIdle:
			c.count(err, "idle")
		}
	}
	return n, err
}

func (c *timeoutConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if err != nil && http.ConnState(c.state.Load()) != http.StateHijacked {
		c.count(err, "write")
	}
	return n, err
}

func (c *timeoutConn) count(err error, label string) {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() && c.counted.CompareAndSwap(false, true) {
		c.w.closed.WithLabelValues(label).Inc()
	}
}

// NetConn returns the connection under the wrapper.
func (c *timeoutConn) NetConn() net.Conn { return c.Conn }
