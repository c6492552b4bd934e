package websocket

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// countingListener counts the bytes the server reads from its connections
// and closes done once one of them is closed.
type countingListener struct {
	net.Listener
	read atomic.Int64
	once sync.Once
	done chan struct{}
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &readCountingConn{Conn: c, l: l}, nil
}

type readCountingConn struct {
	net.Conn
	l *countingListener
}

func (c *readCountingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.l.read.Add(int64(n))
	return n, err
}

func (c *readCountingConn) Close() error {
	c.l.once.Do(func() { close(c.l.done) })
	return c.Conn.Close()
}

// A refused socket waits a moment for the client's close frame, but does
// not read whatever the client sends meanwhile into memory: a client
// streaming a large frame at a refusal is cut off after a few kilobytes.
func TestRefusedSocketReadsLittle(t *testing.T) {
	a := NewAPI(APIConfig{}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	mux := http.NewServeMux()
	a.routes(mux, func(h http.Handler) http.Handler { return h })
	srv := httptest.NewUnstartedServer(mux)
	l := &countingListener{Listener: srv.Listener, done: make(chan struct{})}
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)

	// No clientId: refused.
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/socket/in?topic=t", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	const big = 32 << 20
	go func() {
		_ = ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
		_ = ws.WriteMessage(websocket.BinaryMessage, make([]byte, big))
	}()
	select {
	case <-l.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the refused socket was not closed within 10 s")
	}
	if n := l.read.Load(); n > 1<<20 {
		t.Fatalf("the server read %d bytes from a refused socket, want at most 1 MiB", n)
	}
}
