package websocket

import (
	"bufio"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// maxBurstBytes bounds what a burst holds back: past it the frames go out
// at once, so a burst of large records costs no more memory than one.
const maxBurstBytes = 64 << 10

// maxBurstFrames bounds how many frames a writer puts in one burst, so a
// busy socket still gets to its pings, control frames and close request.
const maxBurstFrames = 128

// burstConn is the connection a WebSocket takes over. Gorilla writes each
// frame with one Write, and so one write(2); while the socket's writer is
// in a burst (it has several frames ready) those writes are held here and
// go out together when the burst ends. Outside a burst writes go straight
// through, so pings, pongs and close frames written from other goroutines
// are never held back; one written during a burst waits only for its end,
// which comes as soon as the writer has nothing more ready.
//
// Gorilla serializes its own Writes under its lock, so two of them never
// meet here; what they can meet is the writer flushing a burst, outside
// gorilla's lock. The flush does not hold mu while it writes: a pong the
// read loop writes meanwhile is held for the flusher to send, rather than
// kept waiting on a slow client past the deadline gorilla gave it.
type burstConn struct {
	net.Conn

	mu       sync.Mutex
	on       bool      // the writer is in a burst: writes are held
	busy     bool      // the writer is flushing: writes are held for it
	buf      []byte    // held writes
	pong     []byte    // a held pong with no held write after it; see holdLocked
	spare    []byte    // the other buffer, which a flush writes from
	deadline time.Time // the write deadline last asked for
	flushBy  time.Time // latest deadline among the held writes
	noLimit  bool      // a held write had no deadline
	err      error     // the first failed write: later ones fail the same way

	// Only the goroutine writing to Conn uses these: a Write holding mu,
	// or the flusher while busy.
	applied time.Time // the write deadline set on Conn
	isSet   bool      // applied is known: the server's own deadline is not
}

// SetWriteDeadline records t for the next write: a held frame's deadline
// applies when it is flushed.
func (c *burstConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return nil
}

func (c *burstConn) SetDeadline(t time.Time) error {
	_ = c.SetWriteDeadline(t)
	return c.Conn.SetReadDeadline(t)
}

func (c *burstConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if c.busy || (c.on && len(p) < maxBurstBytes) {
		c.holdLocked(p)
		if c.deadline.IsZero() {
			c.noLimit = true
		} else if c.deadline.After(c.flushBy) {
			c.flushBy = c.deadline
		}
		return len(p), nil
	}
	if c.on {
		// A frame this large is data, which only the writer writes: it
		// goes out after what the burst holds, without being copied.
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	if err := c.send(p, c.deadline); err != nil {
		c.err = err
		return 0, err
	}
	return len(p), nil
}

// holdLocked keeps p for the next flush. A pong replaces a pong held
// before it with no other write between them: RFC 6455 (5.5.3) lets an
// endpoint answer only the most recent of the pings it has not answered
// yet, and so a client that keeps pinging while a flush waits for it to
// read (up to two ping intervals) cannot make the socket hold more than
// one pong's bytes. Other writes keep their order, pongs included.
func (c *burstConn) holdLocked(p []byte) {
	if isPong(p) {
		c.pong = append(c.pong[:0], p...)
		return
	}
	c.buf = append(append(c.buf, c.pong...), p...)
	c.pong = c.pong[:0]
}

// isPong reports whether p is a pong frame as gorilla writes it: a server
// sends its frames unmasked and control frames whole, so the first byte
// is FIN and the opcode.
func isPong(p []byte) bool {
	return len(p) >= 2 && p[0] == 0x80|websocket.PongMessage
}

// begin starts a burst: writes are held until end.
func (c *burstConn) begin() {
	c.mu.Lock()
	c.on = true
	c.mu.Unlock()
}

// end finishes a burst, writing what it holds. Its error is the socket's
// first write error, which gorilla may not have seen: a frame it handed
// over was only held.
func (c *burstConn) end() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.on = false
	return c.flushLocked()
}

// spill writes what the burst holds once that is maxBurstBytes or more;
// the burst goes on.
func (c *burstConn) spill() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.buf) < maxBurstBytes {
		return c.err
	}
	return c.flushLocked()
}

// flushLocked writes the held bytes, releasing mu while it does. Outside
// a burst it also writes what other goroutines left meanwhile.
func (c *burstConn) flushLocked() error {
	for (len(c.buf) > 0 || len(c.pong) > 0) && c.err == nil {
		c.buf = append(c.buf, c.pong...)
		c.pong = c.pong[:0]
		out, d := c.buf, c.flushBy
		if c.noLimit {
			// Each held frame had its own deadline; none is cut short by
			// waiting for the latest of them.
			d = time.Time{}
		}
		c.buf, c.spare = c.spare[:0], nil
		c.flushBy, c.noLimit = time.Time{}, false
		c.busy = true
		c.mu.Unlock()
		err := c.send(out, d)
		c.mu.Lock()
		c.busy = false
		c.spare = out[:0]
		if err != nil {
			c.err = err
		}
		if c.on {
			break // what was held meanwhile is the burst's
		}
	}
	if c.err != nil {
		c.buf, c.pong = c.buf[:0], c.pong[:0]
	}
	return c.err
}

// send writes p to Conn under deadline. The caller holds mu, or is the
// flusher; it records an error in err.
func (c *burstConn) send(p []byte, deadline time.Time) error {
	if !c.isSet || !deadline.Equal(c.applied) {
		if err := c.Conn.SetWriteDeadline(deadline); err != nil {
			return err
		}
		c.applied, c.isSet = deadline, true
	}
	_, err := c.Conn.Write(p)
	return err
}

// hijackRecorder hands gorilla's Upgrader a burstConn instead of the
// connection itself, and keeps it for the socket's writer. With its own
// buffer sizes set, the Upgrader (gorilla v1.5.3) uses neither buffer of
// the hijacked bufio.ReadWriter after the handshake: every read and write
// of the socket goes through the burstConn.
type hijackRecorder struct {
	http.ResponseWriter
	conn *burstConn
}

func (h *hijackRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	h.conn = &burstConn{Conn: nc}
	return h.conn, brw, nil
}

// Unwrap lets http.ResponseController reach the server's writer.
func (h *hijackRecorder) Unwrap() http.ResponseWriter { return h.ResponseWriter }

var _ http.Hijacker = (*hijackRecorder)(nil)

// upgrade is the Upgrader's Upgrade, also returning the connection under
// the socket so its writer can coalesce frames.
func (a *API) upgrade(w http.ResponseWriter, r *http.Request) (*websocket.Conn, *burstConn, error) {
	h := &hijackRecorder{ResponseWriter: w}
	ws, err := a.upgrader.Upgrade(h, r, nil)
	if err != nil {
		return nil, nil, err
	}
	return ws, h.conn, nil
}
