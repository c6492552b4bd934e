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
}

const ioBufferBytes = 64 << 10

// dialPublisher connects to the broker at addr as clientID, waits for a
// successful CONNACK, and prepares PUBLISH packets of payload to topic.
func dialPublisher(ctx context.Context, addr, clientID, topic string, payload []byte, qos byte) (*publisher, error) {
	if qos > 1 {
		return nil, fmt.Errorf("QoS %d is not supported by the bench client", qos)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connecting to MQTT %s: %w", addr, err)
	}
	p := &publisher{
		conn: conn,
		w:    bufio.NewWriterSize(conn, ioBufferBytes),
		r:    bufio.NewReaderSize(conn, ioBufferBytes),
		qos:  qos,
	}
	if err := p.connect(clientID); err != nil {
		conn.Close()
		return nil, err
	}
	p.tmpl, p.idAt, err = encodePublish(topic, payload, qos)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return p, nil
}

func (p *publisher) connect(clientID string) error {
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 4,
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			Clean:            true,
			Keepalive:        60,
			ClientIdentifier: clientID,
		},
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		return fmt.Errorf("encoding CONNECT: %w", err)
	}
	_ = p.conn.SetDeadline(time.Now().Add(10 * time.Second))
	defer p.conn.SetDeadline(time.Time{})
	if _, err := p.conn.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("writing CONNECT: %w", err)
	}
	hdr, body, err := readPacket(p.r, nil)
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
func (p *publisher) publishAcked(ctx context.Context, n, window int) ([]time.Duration, error) {
	if p.qos != 1 {
		return nil, errors.New("publishAcked needs a QoS 1 publisher")
	}
	if window < 1 || window > 65535 {
		return nil, fmt.Errorf("in-flight window %d outside 1..65535", window)
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
	for range n {
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
				if readErr == nil {
					readErr = errors.New("more PUBACKs than publishes")
				}
				return fail(readErr)
			}
		}
		id := ids.take(int64(time.Since(base)) + 1)
		binary.BigEndian.PutUint16(p.tmpl[p.idAt:], id)
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
			<-slots
		case packets.Pingresp:
		default:
			return fmt.Errorf("unexpected packet type %d from the broker", hdr>>4)
		}
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
