package broker

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// A write blocked on a peer that reads nothing holds the connection's
// write lock; a write deadline set meanwhile (a takeover, a revocation or
// shutdown does this to end such a write) must not wait behind it, and
// must end it.
func TestWSWriteDeadlineEndsABlockedWrite(t *testing.T) {
	upgraded := make(chan *websocket.Conn, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			t.Error(err)
			return
		}
		upgraded <- c
	}))
	defer srv.Close()
	peer, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close() // and never read
	c := <-upgraded
	defer c.Close()
	ws := &wsConn{Conn: c.UnderlyingConn(), c: c}

	var written atomic.Int64
	writeErr := make(chan error, 1)
	go func() {
		chunk := make([]byte, 256<<10)
		for {
			if _, err := ws.Write(chunk); err != nil {
				writeErr <- err
				return
			}
			written.Add(1)
		}
	}()
	// Blocked once the socket buffers are full: no progress for 300 ms.
	for last := int64(-1); ; {
		time.Sleep(300 * time.Millisecond)
		n := written.Load()
		if n == last {
			break
		}
		last = n
	}

	set := make(chan error, 1)
	go func() { set <- ws.SetWriteDeadline(time.Now().Add(100 * time.Millisecond)) }()
	select {
	case err := <-set:
		if err != nil {
			t.Fatalf("SetWriteDeadline: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("SetWriteDeadline waited behind the blocked write")
	}
	select {
	case <-writeErr:
	case <-time.After(5 * time.Second):
		t.Fatal("the blocked write did not end at the deadline")
	}
}
