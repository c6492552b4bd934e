package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/packets"
)

// publisher is a minimal MQTT 3.1.1 client that only publishes, built so
// the load generator is never what limits a run: one PUBLISH is encoded
// once and copied into a buffered writer for every message (only its
// packet id changes), writes are flushed only when the in-flight window is
// full or nothing is left to send, and a reader goroutine matches PUBACKs
// to the packets in flight. Paho and similar clients spend a goroutine
// hand-off and an allocation per message, which on a two-core machine
// costs the bridge a measurable share of the CPU it is being measured on.
type publisher struct {
	conn net.Conn
	w    *bufio.Writer
	r    *bufio.Reader
	qos  byte
	tmpl []byte // one encoded PUBLISH
	idAt int    // offset of the packet id in tmpl (QoS 1)
	// payloadAt is the offset of the payload in tmpl, where a paced
	// publisher stamps the time it sends each message.
	payloadAt int
}

const ioBufferBytes = 64 << 10

// mqttDial says how a bench client connects to a broker.
type mqttDial struct {
	// ws connects with MQTT over WebSocket: path /mqtt, subprotocol mqtt,
	// binary frames.
	ws bool
	// local is the source address; nil lets the kernel choose.
	local net.Addr
	// keepalive is the CONNECT keepalive in seconds; 0 means 60.
	keepalive uint16
}

// mqttWSDialer dials MQTT over WebSocket with large buffers and no
// compression.
var mqttWSDialer = websocket.Dialer{
	HandshakeTimeout: 10 * time.Second,
	ReadBufferSize:   ioBufferBytes,
	WriteBufferSize:  ioBufferBytes,
	Subprotocols:     []string{"mqtt"},
}

// dial opens the byte stream MQTT runs over to the broker at addr.
func (m mqttDial) dial(ctx context.Context, addr string) (net.Conn, error) {
	nd := net.Dialer{}
	if m.local != nil {
		nd.LocalAddr = m.local
	}
	if !m.ws {
		conn, err := nd.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("connecting to MQTT %s: %w", addr, err)
		}
		return conn, nil
	}
	wd := mqttWSDialer
	wd.NetDialContext = nd.DialContext
	u := "ws://" + addr + "/mqtt"
	ws, _, err := wd.DialContext(ctx, u, nil)
	if err != nil {
		return nil, fmt.Errorf("connecting to MQTT over WebSocket %s: %w", u, err)
	}
	if ws.Subprotocol() != "mqtt" {
		ws.Close()
		return nil, fmt.Errorf("connecting to MQTT over WebSocket %s: the server chose subprotocol %q, not mqtt", u, ws.Subprotocol())
	}
	return &wsStream{Conn: ws}, nil
}

// dialPublisher connects to the broker at addr over TCP as clientID, waits
// for a successful CONNACK, and prepares PUBLISH packets of payload to topic.
func dialPublisher(ctx context.Context, addr, clientID, topic string, payload []byte, qos byte) (*publisher, error) {
	return mqttDial{}.publisher(ctx, addr, clientID, topic, payload, qos)
}

// publisher connects as dialPublisher does, the way m says.
func (m mqttDial) publisher(ctx context.Context, addr, clientID, topic string, payload []byte, qos byte) (*publisher, error) {
	if qos > 1 {
		return nil, fmt.Errorf("QoS %d is not supported by the bench client", qos)
	}
	conn, err := m.dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	p := &publisher{
		conn: conn,
		w:    bufio.NewWriterSize(conn, ioBufferBytes),
		r:    bufio.NewReaderSize(conn, ioBufferBytes),
		qos:  qos,
	}
	if err := handshake(conn, p.r, clientID, m.keepalive); err != nil {
		conn.Close()
		return nil, err
	}
	p.tmpl, p.idAt, err = encodePublish(topic, payload, qos)
	if err != nil {
		conn.Close()
		return nil, err
	}
	p.payloadAt = len(p.tmpl) - len(payload)
	return p, nil
}

// idle connects as clientID and returns the connection once the broker
// accepted it, holding no buffers: for many connections that stay idle.
func (m mqttDial) idle(ctx context.Context, addr, clientID string) (net.Conn, error) {
	conn, err := m.dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	// The broker sends nothing after CONNACK, so a small reader that is
	// then dropped loses nothing.
	if err := handshake(conn, bufio.NewReaderSize(conn, 16), clientID, m.keepalive); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// handshake sends CONNECT (MQTT 3.1.1, clean session) on conn and reads a
// successful CONNACK from r, which reads conn.
func handshake(conn net.Conn, r *bufio.Reader, clientID string, keepalive uint16) error {
	if keepalive == 0 {
		keepalive = 60
	}
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 4,
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			Clean:            true,
			Keepalive:        keepalive,
			ClientIdentifier: clientID,
		},
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		return fmt.Errorf("encoding CONNECT: %w", err)
	}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	defer conn.SetDeadline(time.Time{})
	if _, err := conn.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("writing CONNECT: %w", err)
	}
	hdr, body, err := readPacket(r, nil)
	if err != nil {
		return fmt.Errorf("reading CONNACK: %w", err)
	}
	if hdr>>4 != packets.Connack {
		return fmt.Errorf("reading CONNACK: got packet type %d", hdr>>4)
	}
	ack := packets.Packet{ProtocolVersion: 4}
	if err := ack.ConnackDecode(body); err != nil {
		return fmt.Errorf("decoding CONNACK: %w", err)
	}
	if ack.ReasonCode != 0 {
		return fmt.Errorf("broker refused the connection: CONNACK return code %d", ack.ReasonCode)
	}
	return nil
}

// encodePublish encodes one PUBLISH with mochi's encoder and returns it
// with the offset of its packet id (QoS 1; -1 for QoS 0), so callers can
// stamp a new id into the same bytes for every message.
func encodePublish(topic string, payload []byte, qos byte) ([]byte, int, error) {
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: qos},
		ProtocolVersion: 4,
		TopicName:       topic,
		Payload:         payload,
	}
	if qos > 0 {
		pk.PacketID = 1
	}
	var buf bytes.Buffer
	if err := pk.PublishEncode(&buf); err != nil {
		return nil, 0, fmt.Errorf("encoding PUBLISH: %w", err)
	}
	b := buf.Bytes()
	if qos == 0 {
		return b, -1, nil
	}
	// The packet id sits between the topic and the payload.
	return b, len(b) - len(payload) - 2, nil
}

// readPacket reads one MQTT packet: its first header byte and its body
// (reusing buf when it is large enough).
func readPacket(r *bufio.Reader, buf []byte) (byte, []byte, error) {
	hdr, err := r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mul := 0, 1
	for i := 0; ; i++ {
		if i == 4 {
			return 0, nil, errors.New("malformed remaining length")
		}
		b, err := r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(b&0x7f) * mul
		mul <<= 7
		if b&0x80 == 0 {
			break
		}
	}
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		return 0, nil, err
	}
	return hdr, buf, nil
}

// idTable holds, per packet id, when the PUBLISH carrying it was written
// (nanoseconds since the run's base time, plus one so zero means free).
// The writer takes ids and the reader releases them.
type idTable struct {
	sent [1 << 16]atomic.Int64
	next uint16
}

// take returns the next free packet id after the last one taken, cycling
// through 1..65535 and skipping ids still in flight, and marks it sent at at.
func (t *idTable) take(at int64) uint16 {
	for {
		t.next++
		if t.next == 0 {
			t.next = 1
		}
		if t.sent[t.next].CompareAndSwap(0, at) {
			return t.next
		}
	}
}

// release frees id and returns when it was sent; false if it was not in
// flight.
func (t *idTable) release(id uint16) (int64, bool) {
	at := t.sent[id].Swap(0)
	return at, at != 0
}

// closeOnDone closes the connection when ctx ends, which unblocks any read
// or write in progress; the returned function stops that.
func (p *publisher) closeOnDone(ctx context.Context) func() bool {
	return context.AfterFunc(ctx, func() { p.conn.Close() })
}

// publishAcked sends n QoS 1 publishes with at most window unacknowledged
// at a time and returns each one's PUBACK latency (written to the socket
// buffer → PUBACK read).
//
// One goroutine does both halves: it fills the window, flushes, reads one
// PUBACK (waiting for it) and every further packet already buffered, and
// refills the slots they freed. With a separate reader handing each freed
// slot to the writer (as publishPaced does), the harness spent about
// 0.3 µs more per mqtt-qos1 record and 0.5 µs more per mqtt-qos1-single
// record, on the cores the bridge is measured on. Not reading while
// flushing cannot deadlock: the broker owes at most window PUBACKs.
func (p *publisher) publishAcked(ctx context.Context, n, window int) ([]time.Duration, error) {
	if err := p.checkAcked(window); err != nil {
		return nil, err
	}
	stop := p.closeOnDone(ctx)
	defer stop()
	ids := new(idTable)
	lat := make([]time.Duration, 0, n)
	base := time.Now()
	fail := func(err error) ([]time.Duration, error) {
		p.conn.Close()
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (after %d of %d acknowledgements)", ctx.Err(), len(lat), n)
		}
		return nil, err
	}
	var buf [8]byte
	sent := 0
	for len(lat) < n {
		for ; sent < n && sent-len(lat) < window; sent++ {
			p.stampID(ids.take(int64(time.Since(base)) + 1))
			if _, err := p.w.Write(p.tmpl); err != nil {
				return fail(fmt.Errorf("writing PUBLISH: %w", err))
			}
		}
		if err := p.w.Flush(); err != nil {
			return fail(fmt.Errorf("writing PUBLISH: %w", err))
		}
		// Wait for one packet, then take the ones already here.
		for first := true; len(lat) < n && (first || packetBuffered(p.r)); first = false {
			hdr, body, err := readPacket(p.r, buf[:0])
			if err != nil {
				return fail(fmt.Errorf("reading PUBACK (%d of %d received): %w", len(lat), n, err))
			}
			if err := ackPacket(hdr, body, ids, base, &lat); err != nil {
				return fail(err)
			}
		}
	}
	_ = p.disconnect()
	return lat, nil
}

// checkAcked says whether p can publish with acknowledgements and window.
func (p *publisher) checkAcked(window int) error {
	if p.qos != 1 {
		return errors.New("publishAcked needs a QoS 1 publisher")
	}
	if window < 1 || window > 65535 {
		return fmt.Errorf("in-flight window %d outside 1..65535", window)
	}
	return nil
}

// stampID writes id into the encoded PUBLISH.
func (p *publisher) stampID(id uint16) {
	binary.BigEndian.PutUint16(p.tmpl[p.idAt:], id)
}

// packetBuffered says whether r holds a whole MQTT packet, so that reading
// it does not wait for the network.
func packetBuffered(r *bufio.Reader) bool {
	have := r.Buffered()
	if have < 2 {
		return false
	}
	hdr, _ := r.Peek(min(have, 5))
	n, mul := 0, 1
	for i := 1; i < len(hdr); i++ {
		n += int(hdr[i]&0x7f) * mul
		mul <<= 7
		if hdr[i]&0x80 == 0 {
			return have >= i+1+n
		}
	}
	// The remaining length is not all here (or is malformed, which
	// readPacket reports).
	return false
}

// pace makes publishPaced send on a schedule rather than as fast as the
// window allows.
type pace struct {
	// rate is this connection's publishes per second.
	rate float64
	// tick is how often the publishes that have come due are sent.
	tick time.Duration
	// delay comes before the first publish, to spread connections over
	// a tick.
	delay time.Duration
	// stamp writes the wall-clock time of sending, as big-endian Unix
	// nanoseconds, into the first 8 bytes of each payload.
	stamp bool
}

// due returns how many of n publishes are due elapsed after the first.
func (pc *pace) due(elapsed time.Duration, n int) int {
	return min(n, int(pc.rate*elapsed.Seconds())+1)
}

// publishPaced is publishAcked, sending on pc's schedule when pc is not
// nil. A schedule the broker cannot keep up with is throttled by window,
// so window should leave room for the latencies being measured.
func (p *publisher) publishPaced(ctx context.Context, n, window int, pc *pace) ([]time.Duration, error) {
	if err := p.checkAcked(window); err != nil {
		return nil, err
	}
	if pc != nil && pc.stamp && len(p.tmpl)-p.payloadAt < 8 {
		return nil, fmt.Errorf("a payload of %d bytes has no room for an 8-byte send time", len(p.tmpl)-p.payloadAt)
	}
	stop := p.closeOnDone(ctx)
	defer stop()

	ids := new(idTable)
	slots := make(chan struct{}, window)
	lat := make([]time.Duration, 0, n)
	base := time.Now()
	var readErr error
	readDone := make(chan struct{})
	go func() {
		readErr = p.readAcks(n, ids, slots, base, &lat)
		close(readDone)
	}()

	fail := func(err error) ([]time.Duration, error) {
		p.conn.Close()
		<-readDone
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (after %d of %d acknowledgements)", ctx.Err(), len(lat), n)
		}
		return nil, err
	}
	// ackFailed is the error when the reader ended before the writer.
	ackFailed := func() error {
		if readErr == nil {
			return errors.New("more PUBACKs than publishes")
		}
		return readErr
	}
	due := n
	var tick <-chan time.Time
	var first time.Time
	if pc != nil {
		select {
		case <-time.After(pc.delay):
		case <-readDone:
			return fail(ackFailed())
		}
		t := time.NewTicker(pc.tick)
		defer t.Stop()
		tick, first = t.C, time.Now()
		due = pc.due(0, n)
	}
	for i := range n {
		for i >= due {
			// Send what is due, then wait for the next tick.
			if err := p.w.Flush(); err != nil {
				return fail(fmt.Errorf("writing PUBLISH: %w", err))
			}
			select {
			case <-tick:
			case <-readDone:
				return fail(ackFailed())
			}
			due = pc.due(time.Since(first), n)
		}
		select {
		case slots <- struct{}{}:
		default:
			// The window is full: send what is buffered, then wait for
			// a PUBACK to free a slot.
			if err := p.w.Flush(); err != nil {
				return fail(fmt.Errorf("writing PUBLISH: %w", err))
			}
			select {
			case slots <- struct{}{}:
			case <-readDone:
				return fail(ackFailed())
			}
		}
		p.stampID(ids.take(int64(time.Since(base)) + 1))
		if pc != nil && pc.stamp {
			binary.BigEndian.PutUint64(p.tmpl[p.payloadAt:], uint64(time.Now().UnixNano()))
		}
		if _, err := p.w.Write(p.tmpl); err != nil {
			return fail(fmt.Errorf("writing PUBLISH: %w", err))
		}
	}
	if err := p.w.Flush(); err != nil {
		return fail(fmt.Errorf("writing PUBLISH: %w", err))
	}
	<-readDone
	if readErr != nil {
		return fail(readErr)
	}
	_ = p.disconnect()
	return lat, nil
}

// readAcks reads until n PUBACKs arrived, recording each latency and
// freeing a window slot per PUBACK.
func (p *publisher) readAcks(n int, ids *idTable, slots chan struct{}, base time.Time, lat *[]time.Duration) error {
	var buf [8]byte
	for len(*lat) < n {
		hdr, body, err := readPacket(p.r, buf[:0])
		if err != nil {
			return fmt.Errorf("reading PUBACK (%d of %d received): %w", len(*lat), n, err)
		}
		acked := len(*lat)
		if err := ackPacket(hdr, body, ids, base, lat); err != nil {
			return err
		}
		if len(*lat) > acked {
			<-slots
		}
	}
	return nil
}

// ackPacket handles one packet from the broker to a QoS 1 publisher: a
// PUBACK releases its packet id and appends its latency to lat.
func ackPacket(hdr byte, body []byte, ids *idTable, base time.Time, lat *[]time.Duration) error {
	switch hdr >> 4 {
	case packets.Puback:
		if len(body) < 2 {
			return fmt.Errorf("PUBACK of %d bytes", len(body))
		}
		now := int64(time.Since(base)) + 1
		id := binary.BigEndian.Uint16(body)
		at, ok := ids.release(id)
		if !ok {
			return fmt.Errorf("PUBACK for packet id %d, which is not in flight", id)
		}
		*lat = append(*lat, time.Duration(now-at))
	case packets.Pingresp:
	default:
		return fmt.Errorf("unexpected packet type %d from the broker", hdr>>4)
	}
	return nil
}

// publishUnacked sends n QoS 0 publishes as fast as the socket takes them,
// then DISCONNECT, and returns once the broker closed the connection: by
// then it has read every publish.
func (p *publisher) publishUnacked(ctx context.Context, n int) error {
	if p.qos != 0 {
		return errors.New("publishUnacked needs a QoS 0 publisher")
	}
	stop := p.closeOnDone(ctx)
	defer stop()
	for range n {
		if _, err := p.w.Write(p.tmpl); err != nil {
			return p.ctxErr(ctx, fmt.Errorf("writing PUBLISH: %w", err))
		}
	}
	if err := p.disconnect(); err != nil {
		return p.ctxErr(ctx, err)
	}
	if _, err := io.Copy(io.Discard, p.r); err != nil {
		return p.ctxErr(ctx, fmt.Errorf("waiting for the broker to close: %w", err))
	}
	return nil
}

func (p *publisher) ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// disconnect sends DISCONNECT; the broker then closes the connection.
func (p *publisher) disconnect() error {
	p.w.Write([]byte{packets.Disconnect << 4, 0})
	if err := p.w.Flush(); err != nil {
		return fmt.Errorf("writing DISCONNECT: %w", err)
	}
	return nil
}

// Close closes the connection.
func (p *publisher) Close() error { return p.conn.Close() }

// subscriber is a minimal MQTT 3.1.1 client that subscribes to one filter
// at QoS 0 and counts the publishes it receives, reading through a large
// buffer so that it keeps up with a broker on the same machine.
type subscriber struct {
	conn net.Conn
	r    *bufio.Reader
	got  atomic.Int64
	// last is when the latest publish arrived, in Unix nanoseconds.
	last atomic.Int64
}

// subscriber connects as clientID and subscribes to filter at QoS 0.
func (m mqttDial) subscriber(ctx context.Context, addr, clientID, filter string) (*subscriber, error) {
	conn, err := m.dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	s := &subscriber{conn: conn, r: bufio.NewReaderSize(conn, ioBufferBytes)}
	if err := handshake(conn, s.r, clientID, m.keepalive); err != nil {
		conn.Close()
		return nil, err
	}
	if err := s.subscribe(filter); err != nil {
		conn.Close()
		return nil, err
	}
	return s, nil
}

// encodeSubscribe returns a SUBSCRIBE with packet id 1 for filter at QoS 0.
func encodeSubscribe(filter string) ([]byte, error) {
	if len(filter) == 0 || len(filter) > 120 {
		return nil, fmt.Errorf("subscription filter of %d bytes: the bench client takes 1 to 120", len(filter))
	}
	// Packet id, filter length and filter, requested QoS: under 128
	// bytes, so the remaining length is one byte.
	pk := []byte{packets.Subscribe<<4 | 0x02, byte(2 + 2 + len(filter) + 1), 0, 1}
	pk = binary.BigEndian.AppendUint16(pk, uint16(len(filter)))
	pk = append(pk, filter...)
	return append(pk, 0), nil
}

func (s *subscriber) subscribe(filter string) error {
	pk, err := encodeSubscribe(filter)
	if err != nil {
		return err
	}
	_ = s.conn.SetDeadline(time.Now().Add(10 * time.Second))
	defer s.conn.SetDeadline(time.Time{})
	if _, err := s.conn.Write(pk); err != nil {
		return fmt.Errorf("writing SUBSCRIBE: %w", err)
	}
	hdr, body, err := readPacket(s.r, nil)
	if err != nil {
		return fmt.Errorf("reading SUBACK: %w", err)
	}
	if hdr>>4 != packets.Suback || len(body) != 3 {
		return fmt.Errorf("reading SUBACK: got packet type %d of %d bytes", hdr>>4, len(body))
	}
	if body[2] > 2 {
		return fmt.Errorf("broker refused the subscription to %q: SUBACK return code %#x", filter, body[2])
	}
	return nil
}

// receive reads publishes until want have arrived or the connection
// fails; Close ends it early.
func (s *subscriber) receive(want int64) error {
	buf := make([]byte, 0, 512)
	for s.got.Load() < want {
		hdr, body, err := readPacket(s.r, buf[:0])
		if err != nil {
			return fmt.Errorf("reading PUBLISH (%d of %d received): %w", s.got.Load(), want, err)
		}
		buf = body
		switch hdr >> 4 {
		case packets.Publish:
			if qos := hdr >> 1 & 3; qos != 0 {
				return fmt.Errorf("PUBLISH at QoS %d on a QoS 0 subscription", qos)
			}
			s.got.Add(1)
			s.last.Store(time.Now().UnixNano())
		case packets.Pingresp:
		default:
			return fmt.Errorf("unexpected packet type %d from the broker", hdr>>4)
		}
	}
	return nil
}

// Close closes the connection.
func (s *subscriber) Close() error { return s.conn.Close() }

// wsStream presents a client WebSocket as the byte stream MQTT runs over:
// reads run across binary messages, each write is one binary message (a
// packet may span messages, as MQTT over WebSocket allows). Writes come
// from one goroutine at a time, as gorilla requires.
type wsStream struct {
	*websocket.Conn
	r io.Reader
}

var _ net.Conn = (*wsStream)(nil)

// Read reads the stream; the peer closing the WebSocket, cleanly or not,
// is io.EOF.
func (s *wsStream) Read(p []byte) (int, error) {
	for {
		if s.r == nil {
			op, r, err := s.NextReader()
			if _, closed := errors.AsType[*websocket.CloseError](err); closed {
				return 0, io.EOF
			}
			if err != nil {
				return 0, err
			}
			if op != websocket.BinaryMessage {
				return 0, fmt.Errorf("MQTT over WebSocket: got a message of type %d, not binary", op)
			}
			s.r = r
		}
		n, err := s.r.Read(p)
		if errors.Is(err, io.EOF) {
			s.r = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

func (s *wsStream) Write(p []byte) (int, error) {
	if err := s.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (s *wsStream) SetDeadline(t time.Time) error {
	return errors.Join(s.SetReadDeadline(t), s.SetWriteDeadline(t))
}
