package websocket

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tributary-io/tributary/bridge"
)

// recordingConn is a net.Conn that records each Write and the write
// deadline it went out under.
type recordingConn struct {
	net.Conn // nil: only the methods below are called
	mu       sync.Mutex
	writes   [][]byte
	under    []time.Time
	deadline time.Time
	fail     error
}

func (c *recordingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fail != nil {
		return 0, c.fail
	}
	c.writes = append(c.writes, bytes.Clone(p))
	c.under = append(c.under, c.deadline)
	return len(p), nil
}

func (c *recordingConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return nil
}

// blockingConn's first Write waits for release.
type blockingConn struct {
	*recordingConn
	entered, release chan struct{}
	once             sync.Once
}

func (c *blockingConn) Write(p []byte) (int, error) {
	c.once.Do(func() {
		close(c.entered)
		<-c.release
	})
	return c.recordingConn.Write(p)
}

func TestBurstConn(t *testing.T) {
	t0 := time.Now().Add(time.Hour)
	t.Run("outside a burst writes go through", func(t *testing.T) {
		rc := &recordingConn{}
		c := &burstConn{Conn: rc}
		for i := range 3 {
			_ = c.SetWriteDeadline(t0.Add(time.Duration(i)))
			if n, err := c.Write([]byte{byte(i)}); n != 1 || err != nil {
				t.Fatalf("write: %d %v", n, err)
			}
		}
		if len(rc.writes) != 3 || !rc.under[2].Equal(t0.Add(2)) {
			t.Fatalf("writes %q under %v", rc.writes, rc.under)
		}
	})
	t.Run("a burst is one write under its latest deadline", func(t *testing.T) {
		rc := &recordingConn{}
		c := &burstConn{Conn: rc}
		c.begin()
		for i, d := range []time.Time{t0.Add(2), t0.Add(5), t0.Add(1)} {
			_ = c.SetWriteDeadline(d)
			_, _ = c.Write([]byte{byte('a' + i)})
		}
		if len(rc.writes) != 0 {
			t.Fatalf("%d writes during the burst", len(rc.writes))
		}
		if err := c.end(); err != nil {
			t.Fatal(err)
		}
		if len(rc.writes) != 1 || string(rc.writes[0]) != "abc" || !rc.under[0].Equal(t0.Add(5)) {
			t.Fatalf("writes %q under %v", rc.writes, rc.under)
		}
		// The next write outside a burst gets its own deadline back.
		_, _ = c.Write([]byte("d"))
		if len(rc.writes) != 2 || !rc.under[1].Equal(t0.Add(1)) {
			t.Fatalf("writes %q under %v", rc.writes, rc.under)
		}
		// An empty burst writes nothing.
		c.begin()
		if err := c.end(); err != nil || len(rc.writes) != 2 {
			t.Fatalf("empty burst: %v, %d writes", err, len(rc.writes))
		}
	})
	t.Run("no deadline wins", func(t *testing.T) {
		rc := &recordingConn{}
		c := &burstConn{Conn: rc}
		c.begin()
		_ = c.SetWriteDeadline(t0)
		_, _ = c.Write([]byte("a"))
		_ = c.SetWriteDeadline(time.Time{})
		_, _ = c.Write([]byte("b"))
		_ = c.SetWriteDeadline(t0)
		_, _ = c.Write([]byte("c"))
		_ = c.end()
		if len(rc.writes) != 1 || !rc.under[0].IsZero() {
			t.Fatalf("writes %q under %v", rc.writes, rc.under)
		}
	})
	t.Run("bounded", func(t *testing.T) {
		rc := &recordingConn{}
		c := &burstConn{Conn: rc}
		c.begin()
		frame := bytes.Repeat([]byte("x"), 1000)
		total := 0
		for total < maxBurstBytes {
			_, _ = c.Write(frame)
			total += len(frame)
			if len(rc.writes) == 0 && total < maxBurstBytes {
				if err := c.spill(); err != nil || len(rc.writes) != 0 {
					t.Fatalf("spilled %d bytes: %v", total, err)
				}
			}
		}
		if err := c.spill(); err != nil || len(rc.writes) != 1 || len(rc.writes[0]) != total {
			t.Fatalf("spill: %v, %d writes", err, len(rc.writes))
		}
		// A frame over the bound goes out on its own, after what was held.
		_, _ = c.Write(frame)
		big := bytes.Repeat([]byte("y"), maxBurstBytes)
		_, _ = c.Write(big)
		if len(rc.writes) != 3 || len(rc.writes[1]) != len(frame) || len(rc.writes[2]) != len(big) {
			t.Fatalf("%d writes", len(rc.writes))
		}
		if err := c.end(); err != nil || len(rc.writes) != 3 {
			t.Fatalf("end: %v, %d writes", err, len(rc.writes))
		}
	})
	t.Run("a write during a flush is held for the flusher", func(t *testing.T) {
		bc := &blockingConn{recordingConn: &recordingConn{}, entered: make(chan struct{}), release: make(chan struct{})}
		c := &burstConn{Conn: bc}
		c.begin()
		_ = c.SetWriteDeadline(t0)
		_, _ = c.Write([]byte("burst"))
		ended := make(chan error)
		go func() { ended <- c.end() }()
		<-bc.entered // the flush is stuck on a slow client
		_ = c.SetWriteDeadline(t0.Add(time.Second))
		if n, err := c.Write([]byte("pong")); n != 4 || err != nil {
			t.Fatalf("write during the flush: %d %v", n, err)
		}
		close(bc.release)
		if err := <-ended; err != nil {
			t.Fatal(err)
		}
		w := bc.recordingConn
		if len(w.writes) != 2 || string(w.writes[0]) != "burst" || string(w.writes[1]) != "pong" || !w.under[1].Equal(t0.Add(time.Second)) {
			t.Fatalf("writes %q under %v", w.writes, w.under)
		}
	})
	t.Run("pongs held during a flush are bounded", func(t *testing.T) {
		bc := &blockingConn{recordingConn: &recordingConn{}, entered: make(chan struct{}), release: make(chan struct{})}
		c := &burstConn{Conn: bc}
		c.begin()
		_, _ = c.Write([]byte("burst"))
		ended := make(chan error)
		go func() { ended <- c.end() }()
		<-bc.entered // the flush is stuck on a client that does not read
		pong := func(i int) []byte {
			payload := fmt.Appendf(nil, "%0125d", i)
			return append([]byte{0x80 | websocket.PongMessage, byte(len(payload))}, payload...)
		}
		const pings = 10000
		for i := range pings {
			if n, err := c.Write(pong(i)); n != 127 || err != nil {
				t.Fatalf("pong %d: %d %v", i, n, err)
			}
		}
		// A write that is not a pong keeps the pong before it.
		_, _ = c.Write([]byte("close"))
		_, _ = c.Write(pong(pings))
		close(bc.release)
		if err := <-ended; err != nil {
			t.Fatal(err)
		}
		// What was held is what the flusher wrote next.
		w := bc.recordingConn
		want := string(pong(pings-1)) + "close" + string(pong(pings))
		if len(w.writes) != 2 || string(w.writes[0]) != "burst" || string(w.writes[1]) != want {
			t.Fatalf("%d writes, the second %d bytes, want only the last pong before the close and the pong after it (%d bytes)", len(w.writes), len(w.writes[len(w.writes)-1]), len(want))
		}
	})
	t.Run("a failed flush fails every later write", func(t *testing.T) {
		rc := &recordingConn{fail: errors.New("broken pipe")}
		c := &burstConn{Conn: rc}
		c.begin()
		if _, err := c.Write([]byte("a")); err != nil {
			t.Fatalf("buffered write failed: %v", err)
		}
		if err := c.end(); err == nil {
			t.Fatal("end: no error")
		}
		rc.fail = nil
		if _, err := c.Write([]byte("b")); err == nil {
			t.Fatal("write after a failed flush succeeded")
		}
		c.begin()
		if err := c.end(); err == nil {
			t.Fatal("end after a failed flush succeeded")
		}
	})
}

// burstServer serves one WebSocket through API.upgrade and runs serve on
// it; it returns a client connected to it.
func burstServer(t testing.TB, serve func(ws *websocket.Conn, conn *burstConn)) *websocket.Conn {
	t.Helper()
	a := NewAPI(APIConfig{}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	done := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, conn, err := a.upgrade(w, r)
		if err != nil {
			return
		}
		defer close(done)
		defer ws.Close()
		serve(ws, conn)
	}))
	client, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		client.Close()
		<-done
		srv.Close()
	})
	return client
}

// Frames written in bursts arrive whole and in order, while the server's
// read loop answers the client's pings from another goroutine, in and
// out of bursts.
func TestBurstWebSocket(t *testing.T) {
	const bursts, perBurst = 50, 20
	client := burstServer(t, func(ws *websocket.Conn, conn *burstConn) {
		bye := make(chan struct{})
		go func() {
			for {
				_, msg, err := ws.ReadMessage()
				if err != nil {
					return
				}
				if string(msg) == "bye" {
					close(bye)
				}
			}
		}()
		for i := range bursts {
			conn.begin()
			for j := range perBurst {
				_ = ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
				if err := ws.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, "%d/%d", i, j)); err != nil {
					t.Error(err)
				}
			}
			if err := conn.end(); err != nil {
				t.Error(err)
			}
		}
		<-bye
		_ = ws.WriteMessage(websocket.TextMessage, []byte("bye"))
	})
	pongs := make(chan string, 1000)
	client.SetPongHandler(func(s string) error {
		pongs <- s
		return nil
	})
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if client.WriteControl(websocket.PingMessage, []byte("p"), time.Now().Add(time.Second)) != nil {
				return
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()
	for i := range bursts {
		for j, msg := range readFrames(t, client, perBurst) {
			if want := fmt.Sprintf("%d/%d", i, j); msg != want {
				t.Fatalf("got %q, want %q", msg, want)
			}
		}
	}
	close(stop)
	<-stopped
	// The server's read loop answers this ping before it reads "bye".
	if err := client.WriteControl(websocket.PingMessage, []byte("last"), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := client.WriteMessage(websocket.TextMessage, []byte("bye")); err != nil {
		t.Fatal(err)
	}
	if msg := readFrames(t, client, 1); msg[0] != "bye" {
		t.Fatalf("got %q, want bye", msg)
	}
	for {
		select {
		case s := <-pongs:
			if s == "last" {
				return
			}
		default:
			t.Fatal("no pong for the last ping")
		}
	}
}

// Writing 64 record frames one write(2) each, against one burst.
func BenchmarkWriteFrames(b *testing.B) {
	frame := appendRecord(nil, benchRecord, formatString, formatString)
	for _, burst := range []bool{false, true} {
		b.Run(map[bool]string{false: "direct", true: "burst"}[burst], func(b *testing.B) {
			type server struct {
				ws   *websocket.Conn
				conn *burstConn
			}
			got, done := make(chan server), make(chan struct{})
			client := burstServer(b, func(ws *websocket.Conn, conn *burstConn) {
				got <- server{ws, conn}
				<-done
			})
			defer close(done)
			go func() { _, _ = io.Copy(io.Discard, client.NetConn()) }()
			s := <-got
			b.ReportAllocs()
			for b.Loop() {
				if burst {
					s.conn.begin()
				}
				for range 64 {
					_ = s.ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
					if err := s.ws.WriteMessage(websocket.TextMessage, frame); err != nil {
						b.Fatal(err)
					}
				}
				if burst {
					if err := s.conn.end(); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// countingConn counts the writes that reach the connection.
type countingConn struct {
	net.Conn
	writes atomic.Int32
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// burstPair returns a client and the server end of its socket, whose
// writes are counted.
func burstPair(t *testing.T) (client, ws *websocket.Conn, conn *burstConn, count *countingConn) {
	t.Helper()
	type server struct {
		ws   *websocket.Conn
		conn *burstConn
	}
	got, done := make(chan server), make(chan struct{})
	client = burstServer(t, func(ws *websocket.Conn, conn *burstConn) {
		got <- server{ws, conn}
		<-done
	})
	t.Cleanup(func() { close(done) }) // runs before burstServer's cleanup
	s := <-got
	// Nothing reads or writes the server end yet.
	count = &countingConn{Conn: s.conn.Conn}
	s.conn.Conn = count
	return client, s.ws, s.conn, count
}

func readFrames(t *testing.T, c *websocket.Conn, n int) []string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var frames []string
	for range n {
		_, b, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("after %d frames: %v", len(frames), err)
		}
		frames = append(frames, string(b))
	}
	return frames
}

func testRecords(n int) []*bridge.ConsumedRecord {
	var recs []*bridge.ConsumedRecord
	asg := [2]*bridge.Assignment{{}, {}}
	for i := range n {
		recs = append(recs, &bridge.ConsumedRecord{Topic: "t", Partition: int32(i % 2), Offset: int64(i), Timestamp: time.UnixMilli(1), Value: fmt.Appendf(nil, "v%d", i), Assignment: asg[i%2]})
	}
	return recs
}

func TestConsumeWriteBurst(t *testing.T) {
	newConsume := func(t *testing.T, batchSize int) (*consumeConn, *websocket.Conn, *countingConn) {
		client, ws, conn, count := burstPair(t)
		a := NewAPI(APIConfig{}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
		c := &consumeConn{sock: newSock(ws, conn, 1<<20, time.Minute), a: a, batchSize: batchSize,
			parts: map[topicPartition]*sentState{}}
		return c, client, count
	}
	t.Run("records waiting go out in one write", func(t *testing.T) {
		c, client, count := newConsume(t, 1)
		recs := testRecords(6)
		ch := make(chan *bridge.ConsumedRecord, 10)
		for _, r := range recs[1:] {
			ch <- r
		}
		held, _, err := c.writeBurst(slices.Clone(recs[:1]), ch)
		if err != nil || held != nil {
			t.Fatalf("writeBurst: %v, held %d", err, len(held))
		}
		if n := count.writes.Load(); n != 1 {
			t.Fatalf("%d writes for 6 frames, want 1", n)
		}
		for i, f := range readFrames(t, client, 6) {
			if want := string(appendRecord(nil, recs[i], formatString, formatString)); f != want {
				t.Fatalf("frame %d: %s, want %s", i, f, want)
			}
		}
		if p0, p1 := c.parts[topicPartition{"t", 0}], c.parts[topicPartition{"t", 1}]; p0.last != 4 || p1.last != 5 {
			t.Fatalf("written %+v, %+v", *p0, *p1)
		}
	})
	t.Run("stops at a short batch", func(t *testing.T) {
		c, client, count := newConsume(t, 3)
		recs := testRecords(7)
		ch := make(chan *bridge.ConsumedRecord, 10)
		for _, r := range recs[3:] {
			ch <- r
		}
		if _, _, err := c.writeBurst(slices.Clone(recs[:3]), ch); err != nil {
			t.Fatal(err)
		}
		frames := readFrames(t, client, 3)
		if count.writes.Load() != 1 || len(ch) != 0 {
			t.Fatalf("%d writes, %d records left", count.writes.Load(), len(ch))
		}
		if want := string(appendRecords(nil, recs[6:], formatString, formatString)); frames[2] != want {
			t.Fatalf("last frame %s, want %s", frames[2], want)
		}
	})
	t.Run("the rate limit holds records back", func(t *testing.T) {
		c, client, _ := newConsume(t, 1)
		c.limit = newBucket(1, 2)
		c.limit.reserve(1) // the first record, as the writer reserves it
		recs := testRecords(4)
		ch := make(chan *bridge.ConsumedRecord, 10)
		for _, r := range recs[1:] {
			ch <- r
		}
		held, wait, err := c.writeBurst(slices.Clone(recs[:1]), ch)
		if err != nil || len(held) != 1 || held[0] != recs[2] || wait <= 0 || len(ch) != 1 {
			t.Fatalf("writeBurst: %v, held %v for %s, %d left", err, held, wait, len(ch))
		}
		readFrames(t, client, 2)
	})
	t.Run("bounded", func(t *testing.T) {
		c, client, _ := newConsume(t, 1)
		recs := testRecords(maxBurstFrames + 5)
		ch := make(chan *bridge.ConsumedRecord, len(recs))
		for _, r := range recs[1:] {
			ch <- r
		}
		if _, _, err := c.writeBurst(slices.Clone(recs[:1]), ch); err != nil {
			t.Fatal(err)
		}
		if len(ch) != 5 {
			t.Fatalf("%d records left, want 5", len(ch))
		}
		readFrames(t, client, maxBurstFrames)
	})
}

func TestProduceWriteBurst(t *testing.T) {
	client, ws, conn, count := burstPair(t)
	a := NewAPI(APIConfig{}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	c := &produceConn{sock: newSock(ws, conn, 1<<20, time.Minute), a: a, out: make(chan outFrame, 10)}
	for i := 1; i < 5; i++ {
		c.out <- outFrame{seq: uint64(i), id: json.RawMessage(strconv.Itoa(i)), d: bridge.Delivery{Topic: "t", Offset: int64(i)}, ts: 7}
	}
	c.out <- outFrame{seq: 5, id: json.RawMessage(`"bad"`), err: invalid("bad frame")}
	n, err := c.writeReady(&outFrame{id: json.RawMessage(`"0"`), d: bridge.Delivery{Topic: "t"}, ts: 7})
	if n != 6 || err != nil {
		t.Fatalf("writeReady: %d frames, %v", n, err)
	}
	if count.writes.Load() != 1 {
		t.Fatalf("%d writes for 6 frames, want 1", count.writes.Load())
	}
	frames := readFrames(t, client, 6)
	if frames[0] != `{"topic":"t","partition":0,"offset":0,"timestamp":7,"messageId":"0"}` ||
		frames[4] != `{"topic":"t","partition":0,"offset":4,"timestamp":7,"messageId":4}` ||
		frames[5] != `{"messageId":"bad","error":{"code":42205,"message":"bad frame"}}` {
		t.Fatalf("frames %q", frames)
	}
}
