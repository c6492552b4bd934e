package websocket

import (
	"bytes"
	"encoding/json"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

// sock is what produce and consume sockets share: the close handshake,
// deadlines, pings and write bursts. Only the socket's writer goroutine
// writes data frames; control frames go through WriteControl, which
// gorilla allows concurrently.
type sock struct {
	ws   *websocket.Conn
	conn *burstConn
	ping time.Duration

	closing   atomic.Bool
	closed    chan struct{} // closed by the first requestClose
	closeMu   sync.Mutex
	code      int
	reason    string
	finish    chan struct{} // closed when the writer should send the close frame and stop
	finishOne sync.Once
	writerOut chan struct{} // closed when the writer has stopped
}

func newSock(ws *websocket.Conn, conn *burstConn, maxFrame int64, ping time.Duration) *sock {
	s := &sock{ws: ws, conn: conn, ping: ping, code: websocket.CloseNormalClosure, closed: make(chan struct{}),
		finish: make(chan struct{}), writerOut: make(chan struct{})}
	ws.SetReadLimit(maxFrame)
	ws.SetPongHandler(func(string) error {
		// Set, then check, as armRead does: a requestClose between a
		// check and the set would have its deadline (now) overwritten,
		// and the reader would wait two ping intervals instead of stopping.
		_ = ws.SetReadDeadline(time.Now().Add(2 * ping))
		if s.closing.Load() {
			_ = ws.SetReadDeadline(time.Now())
		}
		return nil
	})
	return s
}

// requestClose asks the socket to close with code and reason: the reader
// stops at once, and the writer sends the close frame when the socket's
// owner calls stopWriter. The first request's code wins.
func (s *sock) requestClose(code int, reason string) {
	s.closeMu.Lock()
	if !s.closing.Load() {
		s.code, s.reason = code, reason
		s.closing.Store(true)
		close(s.closed)
	}
	s.closeMu.Unlock()
	_ = s.ws.SetReadDeadline(time.Now())
}

// armRead sets the read deadline for the next frame; it returns false when
// the socket is closing.
func (s *sock) armRead() bool {
	_ = s.ws.SetReadDeadline(time.Now().Add(2 * s.ping))
	return !s.closing.Load()
}

func (s *sock) stopWriter() {
	s.finishOne.Do(func() { close(s.finish) })
	<-s.writerOut
}

// closeFrame is sent by the writer as its last frame.
func (s *sock) writeClose() {
	s.closeMu.Lock()
	code, reason := s.code, s.reason
	s.closeMu.Unlock()
	_ = s.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, closeReason(reason)), time.Now().Add(time.Second))
}

// closeReason fits a reason into a close frame (123 bytes), on a rune boundary.
func closeReason(r string) string {
	if len(r) <= 123 {
		return r
	}
	r = r[:123]
	for len(r) > 0 && !utf8.ValidString(r) {
		r = r[:len(r)-1]
	}
	return r
}

func (s *sock) pingNow() error {
	return s.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(s.ping))
}

func (s *sock) writeJSON(v any) error {
	b, err := marshal(v)
	if err != nil {
		return err
	}
	return s.writeText(b)
}

// marshal is json.Marshal without HTML escaping, as the hand-written
// frames are (see encode.go): an error frame echoes a messageId or
// wsProxyMessageId as the client sent it.
func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// writeText sends b as one text frame. b is copied or written before
// WriteMessage returns, so the caller may reuse it.
func (s *sock) writeText(b []byte) error {
	_ = s.ws.SetWriteDeadline(time.Now().Add(2 * s.ping))
	if err := s.ws.WriteMessage(websocket.TextMessage, b); err != nil {
		return err
	}
	// A burst of large frames goes out as it grows.
	return s.conn.spill()
}

// beginBurst holds the frames the writer writes from now on, to send them
// in one write when endBurst is called. The writer calls endBurst as soon
// as it has no further frame ready: a burst never waits for one.
func (s *sock) beginBurst() { s.conn.begin() }

// endBurst writes the burst's frames. Only when it returns nil are they
// on the socket.
func (s *sock) endBurst() error { return s.conn.end() }

// errorFrame is a produce or consume error frame.
type errorFrame interface{ errorCode() int }

func (e produceError) errorCode() int { return e.Error.Code }
func (e consumeError) errorCode() int { return e.Error.Code }

// refuse sends one error frame and closes the socket with a policy
// violation: the browser WebSocket API cannot read an HTTP error body, so
// bad parameters are reported after the upgrade.
func (a *API) refuse(ws *websocket.Conn, frame errorFrame, reason string) {
	a.refuseWith(ws, frame, websocket.ClosePolicyViolation, reason)
}

// refusedReadLimit bounds what a refused socket's client can make the
// server read while it waits for the close handshake.
const refusedReadLimit = 4096

// refuseWith is refuse with another close code (1001 when the server is
// shutting down: nothing was wrong with the request).
func (a *API) refuseWith(ws *websocket.Conn, frame errorFrame, code int, reason string) {
	a.metrics.errors.WithLabelValues(strconv.Itoa(frame.errorCode())).Inc()
	if b, err := marshal(frame); err == nil {
		_ = ws.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_ = ws.WriteMessage(websocket.TextMessage, b)
	}
	_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, closeReason(reason)), time.Now().Add(time.Second))
	// Give the client a moment to answer the close frame, then drop it.
	// The socket has no read limit yet (newSock sets it), and ReadMessage
	// would hold a whole frame in memory: a refused client gets a small
	// one, past which gorilla ends the read.
	ws.SetReadLimit(refusedReadLimit)
	_ = ws.SetReadDeadline(time.Now().Add(2 * time.Second))
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			break
		}
	}
	ws.Close()
}

// bucket is a token bucket: rate tokens per second, at most burst saved.
type bucket struct {
	rate, burst, tokens float64
	last                time.Time
}

func newBucket(rate, burst float64) *bucket {
	return &bucket{rate: rate, burst: burst, tokens: burst, last: time.Now()}
}

func (b *bucket) refill(now time.Time) {
	b.tokens += now.Sub(b.last).Seconds() * b.rate
	if b.tokens > b.burst {
		b.tokens = b.burst
	}
	b.last = now
}

// allow takes one token if there is one.
func (b *bucket) allow() bool {
	b.refill(time.Now())
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	return false
}

// reserve takes n tokens, going into debt, and returns how long to wait
// before acting on them.
func (b *bucket) reserve(n float64) time.Duration {
	b.refill(time.Now())
	b.tokens -= n
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / b.rate * float64(time.Second))
}
