package websocket

import (
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// hookConn runs hook, once, inside the first SetReadDeadline call for a
// deadline later than after, before that deadline is set.
type hookConn struct {
	net.Conn
	after time.Time
	hook  func()
	once  sync.Once
}

func (c *hookConn) SetReadDeadline(t time.Time) error {
	if t.After(c.after) {
		c.once.Do(c.hook)
	}
	return c.Conn.SetReadDeadline(t)
}

// A close requested while a pong is being handled stops the reader: the
// pong handler must not put back the deadline requestClose cut short.
func TestPongDoesNotCancelClose(t *testing.T) {
	client, ws, conn, _ := burstPair(t)
	const ping = time.Minute
	s := newSock(ws, conn, 1<<20, ping)
	if !s.armRead() {
		t.Fatal("closing before any request")
	}
	// The pong handler is the next to set a deadline a ping interval or
	// more away; requestClose runs just before it does.
	conn.Conn = &hookConn{Conn: conn.Conn, after: time.Now().Add(ping), hook: func() {
		s.requestClose(websocket.CloseGoingAway, "")
	}}
	if err := client.WriteControl(websocket.PongMessage, nil, time.Now().Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	read := make(chan error, 1)
	go func() {
		_, _, err := ws.ReadMessage()
		read <- err
	}()
	select {
	case err := <-read:
		if ne := net.Error(nil); !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("read ended with %v, want the close request's timeout", err)
		}
	case <-time.After(5 * time.Second):
		_ = conn.Conn.SetReadDeadline(time.Now()) // let the reader go
		<-read
		t.Fatal("the reader still waits for a frame after the close request")
	}
}
