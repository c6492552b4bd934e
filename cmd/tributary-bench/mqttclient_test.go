package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tributary-io/tributary/internal/testutil"
)

func TestEncodePublishRoundTrips(t *testing.T) {
	for _, tc := range []struct {
		name    string
		qos     byte
		payload int
		id      uint16
	}{
		{"qos0 empty", 0, 0, 0},
		{"qos0 one-byte length", 0, 100, 0},
		{"qos1 two-byte length", 1, 200, 7},
		{"qos1 three-byte length", 1, 20000, 65535},
	} {
		t.Run(tc.name, func(t *testing.T) {
			payload := makePayload(tc.payload)
			b, idAt, err := encodePublish("bench/x", payload, tc.qos)
			if err != nil {
				t.Fatal(err)
			}
			if tc.qos == 0 && idAt != -1 {
				t.Fatalf("QoS 0 id offset %d, want -1", idAt)
			}
			if tc.qos == 1 {
				b[idAt], b[idAt+1] = byte(tc.id>>8), byte(tc.id)
			}
			hdr, body, err := readPacket(bufio.NewReader(bytes.NewReader(b)), nil)
			if err != nil {
				t.Fatalf("reading back: %v", err)
			}
			pk := packets.Packet{ProtocolVersion: 4}
			if err := pk.FixedHeader.Decode(hdr); err != nil {
				t.Fatal(err)
			}
			if err := pk.PublishDecode(body); err != nil {
				t.Fatalf("mochi cannot decode it: %v", err)
			}
			if pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Qos != tc.qos || pk.TopicName != "bench/x" ||
				pk.PacketID != tc.id || !bytes.Equal(pk.Payload, payload) {
				t.Fatalf("decoded type %d qos %d topic %q id %d payload %d bytes; want publish qos %d bench/x id %d %d bytes",
					pk.FixedHeader.Type, pk.FixedHeader.Qos, pk.TopicName, pk.PacketID, len(pk.Payload), tc.qos, tc.id, len(payload))
			}
		})
	}
}

func TestPacketBuffered(t *testing.T) {
	long := append([]byte{packets.Publish << 4, 0xc8, 0x01}, make([]byte, 200)...) // remaining length 200
	for _, tc := range []struct {
		name string
		in   []byte
		want bool
	}{
		{"nothing", nil, false},
		{"a header byte alone", []byte{packets.Puback << 4}, false},
		{"a PUBACK", []byte{packets.Puback << 4, 2, 0, 1}, true},
		{"a PUBACK short of a byte", []byte{packets.Puback << 4, 2, 0}, false},
		{"a PINGRESP", []byte{packets.Pingresp << 4, 0}, true},
		{"a PUBACK and part of the next", []byte{packets.Puback << 4, 2, 0, 1, packets.Puback << 4}, true},
		{"a two-byte length", long, true},
		{"a two-byte length, body short", long[:len(long)-1], false},
		{"a two-byte length cut in the middle", long[:2], false},
		{"a remaining length past four bytes", []byte{packets.Publish << 4, 0x80, 0x80, 0x80, 0x80, 0x01}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := bufio.NewReaderSize(bytes.NewReader(tc.in), 512)
			_, _ = r.Peek(len(tc.in)) // buffer everything there is
			if got := packetBuffered(r); got != tc.want {
				t.Fatalf("packetBuffered = %v, want %v", got, tc.want)
			}
			if tc.want {
				// What it promised is there: one whole packet reads.
				if _, _, err := readPacket(r, nil); err != nil {
					t.Fatalf("reading the buffered packet: %v", err)
				}
			}
		})
	}
}

func TestIDTableCyclesAndSkipsInFlight(t *testing.T) {
	var tab idTable
	if got := tab.take(10); got != 1 {
		t.Fatalf("first id %d, want 1", got)
	}
	if got := tab.take(11); got != 2 {
		t.Fatalf("second id %d, want 2", got)
	}
	// Leave 1 and 2 in flight, wrap around: 65535, then 0 is skipped and
	// so are 1 and 2.
	tab.next = 65534
	if got := tab.take(12); got != 65535 {
		t.Fatalf("id %d, want 65535", got)
	}
	if got := tab.take(13); got != 3 {
		t.Fatalf("id after wrap-around %d, want 3 (1 and 2 are in flight)", got)
	}
	if at, ok := tab.release(2); !ok || at != 11 {
		t.Fatalf("release(2) = %d, %v; want 11, true", at, ok)
	}
	if _, ok := tab.release(2); ok {
		t.Fatal("release(2) twice succeeded")
	}
	tab.next = 1
	if got := tab.take(14); got != 2 {
		t.Fatalf("id %d, want the released 2", got)
	}
}

// countingHook records the publishes a mochi server receives.
type countingHook struct {
	mqtt.HookBase
	mu       sync.Mutex
	byTopic  map[string]int
	badBytes int
	payload  []byte
}

func (h *countingHook) ID() string { return "count" }

func (h *countingHook) Provides(b byte) bool { return b == mqtt.OnPublish }

func (h *countingHook) OnPublish(_ *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	h.mu.Lock()
	h.byTopic[pk.TopicName]++
	if !bytes.Equal(pk.Payload, h.payload) {
		h.badBytes++
	}
	h.mu.Unlock()
	return pk, nil
}

func (h *countingHook) count(topic string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.byTopic[topic]
}

// startMochi runs a mochi broker on a free port that counts the
// publishes it gets.
func startMochi(t *testing.T, payload []byte) (string, *countingHook) {
	t.Helper()
	hook := &countingHook{byTopic: map[string]int{}, payload: payload}
	addr, _ := startMochiWith(t, false, hook)
	return addr, hook
}

func TestPublisherAgainstMochi(t *testing.T) {
	payload := makePayload(100)
	addr, hook := startMochi(t, payload)
	for _, tc := range []struct {
		name   string
		qos    byte
		n      int
		window int
	}{
		{"qos0", 0, 5000, 0},
		{"qos1 window 1", 1, 200, 1},
		{"qos1 window 10", 1, 5000, 10},
		// More publishes than packet ids: ids wrap around.
		{"qos1 past 65535 ids", 1, 70000, 500},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			topic := "bench/" + strings.ReplaceAll(tc.name, " ", "-")
			p, err := dialPublisher(ctx, addr, tc.name, topic, payload, tc.qos)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			if tc.qos == 0 {
				if err := p.publishUnacked(ctx, tc.n); err != nil {
					t.Fatal(err)
				}
				// publishUnacked returns after the broker closed the
				// connection, so it has read every publish already.
				if got := hook.count(topic); got != tc.n {
					t.Fatalf("broker received %d publishes, want %d", got, tc.n)
				}
			} else {
				lat, err := p.publishAcked(ctx, tc.n, tc.window)
				if err != nil {
					t.Fatal(err)
				}
				if len(lat) != tc.n {
					t.Fatalf("%d latencies, want %d", len(lat), tc.n)
				}
				for _, l := range lat {
					if l <= 0 || l > 30*time.Second {
						t.Fatalf("implausible PUBACK latency %s", l)
					}
				}
				testutil.WaitFor(t, 5*time.Second, "the broker to count every publish", func() bool { return hook.count(topic) == tc.n })
			}
			hook.mu.Lock()
			bad := hook.badBytes
			hook.mu.Unlock()
			if bad != 0 {
				t.Fatalf("%d publishes arrived with a wrong payload", bad)
			}
		})
	}
}

// fakeBroker accepts one connection, answers CONNECT with CONNACK and the
// first PUBLISH with reply, and keeps the connection until the client
// closes it.
func fakeBroker(t *testing.T, reply []byte) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		if _, _, err := readPacket(r, nil); err != nil { // CONNECT
			return
		}
		_, _ = c.Write([]byte{packets.Connack << 4, 2, 0, 0})
		_, _, _ = readPacket(r, nil) // the first PUBLISH
		_, _ = c.Write(reply)
		_, _ = io.Copy(io.Discard, r)
	}()
	return ln.Addr().String()
}

func TestPublisherRejectsBadAcks(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reply []byte
		want  string
	}{
		{"puback for an id not in flight", []byte{packets.Puback << 4, 2, 0x03, 0xe7}, "packet id 999, which is not in flight"},
		{"unexpected packet", []byte{packets.Suback << 4, 3, 0, 1, 0}, "unexpected packet type 9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			p, err := dialPublisher(ctx, fakeBroker(t, tc.reply), "c", "bench/c", []byte("x"), 1)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			_, err = p.publishAcked(ctx, 10, 1)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestDialPublisherRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _, _ = readPacket(bufio.NewReader(c), nil)
		_, _ = c.Write([]byte{packets.Connack << 4, 2, 0, 5}) // not authorised
		_, _ = io.Copy(io.Discard, c)
	}()
	_, err = dialPublisher(context.Background(), ln.Addr().String(), "c", "bench/c", nil, 1)
	if err == nil || !strings.Contains(err.Error(), "return code 5") {
		t.Fatalf("error %v, want a refusal with return code 5", err)
	}
}

// BenchmarkPublisherMochi measures QoS 1 through a plain mochi broker,
// which acknowledges at once and has no Kafka behind it: the ceiling of the
// bench client plus mochi's own per-publish cost on this machine, to set
// against the mqtt-qos1 scenarios' rates.
func BenchmarkPublisherMochi(b *testing.B) {
	payload := makePayload(100)
	addr, _ := startMochiWith(b, false)
	for _, bc := range []struct{ clients, window int }{{1, 10}, {1, 100}, {100, 10}} {
		b.Run(fmt.Sprintf("clients=%d/window=%d", bc.clients, bc.window), func(b *testing.B) {
			pubs := make([]*publisher, bc.clients)
			for i := range pubs {
				id := fmt.Sprintf("b%d-%d", bc.window, i)
				p, err := dialPublisher(context.Background(), addr, id, "bench/"+id, payload, 1)
				if err != nil {
					b.Fatal(err)
				}
				defer p.Close()
				pubs[i] = p
			}
			counts := split(b.N, bc.clients)
			errs := make([]error, bc.clients)
			b.ResetTimer()
			var wg sync.WaitGroup
			for i, p := range pubs {
				wg.Go(func() { _, errs[i] = p.publishAcked(context.Background(), counts[i], bc.window) })
			}
			wg.Wait()
			if err := firstError(errs); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "publishes/s")
		})
	}
}

// acceptPublisher accepts one bench client on ln as a fake broker: it
// reads the CONNECT and answers with a successful CONNACK.
func acceptPublisher(ln net.Listener) (net.Conn, *bufio.Reader, error) {
	c, err := ln.Accept()
	if err != nil {
		return nil, nil, err
	}
	r := bufio.NewReader(c)
	if _, _, err := readPacket(r, nil); err != nil { // CONNECT
		c.Close()
		return nil, nil, err
	}
	_, _ = c.Write([]byte{packets.Connack << 4, 2, 0, 0})
	return c, r, nil
}

// publishID returns the packet id of a QoS 1 PUBLISH's body.
func publishID(body []byte) uint16 {
	tlen := int(binary.BigEndian.Uint16(body))
	return binary.BigEndian.Uint16(body[2+tlen:])
}

// appendPuback appends a PUBACK for packet id.
func appendPuback(b []byte, id uint16) []byte {
	return append(b, packets.Puback<<4, 2, byte(id>>8), byte(id))
}

// A broker that acknowledges whatever has arrived whenever it has read all
// it was sent: the publisher never has more than its window unacknowledged.
func TestPublisherKeepsItsWindow(t *testing.T) {
	const n, window = 3000, 10
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		maxOut, publishes int
		err               error
	}
	done := make(chan result, 1)
	go func() {
		var res result
		defer func() { done <- res }()
		c, r, err := acceptPublisher(ln)
		if err != nil {
			res.err = err
			return
		}
		defer c.Close()
		var ids []uint16
		for res.publishes < n {
			hdr, body, err := readPacket(r, nil)
			if err != nil {
				res.err = err
				return
			}
			if hdr>>4 != packets.Publish {
				continue
			}
			ids = append(ids, publishID(body))
			res.publishes++
			res.maxOut = max(res.maxOut, len(ids))
			if r.Buffered() == 0 {
				var acks []byte
				for _, id := range ids {
					acks = appendPuback(acks, id)
				}
				ids = ids[:0]
				if _, err := c.Write(acks); err != nil {
					res.err = err
					return
				}
			}
		}
	}()
	ctx, p := windowPublisher(t, ln.Addr().String())
	lat, err := p.publishAcked(ctx, n, window)
	if err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.err != nil && res.publishes < n {
		t.Fatalf("broker: %v after %d publishes", res.err, res.publishes)
	}
	if len(lat) != n || res.publishes != n {
		t.Fatalf("%d acknowledged, broker read %d, want %d", len(lat), res.publishes, n)
	}
	if res.maxOut > window {
		t.Fatalf("%d publishes unacknowledged at once, window %d", res.maxOut, window)
	}
}

// A broker that withholds PUBACKs until it holds window unacknowledged
// publishes, then answers only the oldest: a publisher that keeps its
// window full sends the next publish at once, so the broker sees exactly
// window unacknowledged publishes before every answer. A publisher that
// sent one publish at a time, or waited for all its PUBACKs before
// sending more, would stop short of window and the broker, getting no
// publish for a while, fails the test.
func TestPublisherFillsItsWindow(t *testing.T) {
	const n, window = 1000, 10
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		publishes, full int // full: answers given with window unacknowledged
		err             error
	}
	done := make(chan result, 1)
	go func() {
		var res result
		defer func() { done <- res }()
		c, r, err := acceptPublisher(ln)
		if err != nil {
			res.err = err
			return
		}
		defer c.Close()
		var ids []uint16 // unacknowledged, oldest first
		for res.publishes < n {
			// A publisher that keeps its window full answers a PUBACK
			// within a round trip; 2 s without a publish means it stopped.
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			hdr, body, err := readPacket(r, nil)
			if err != nil {
				res.err = fmt.Errorf("after %d publishes, with %d unacknowledged of a window of %d: %w", res.publishes, len(ids), window, err)
				return
			}
			if hdr>>4 != packets.Publish {
				continue
			}
			ids = append(ids, publishID(body))
			res.publishes++
			if len(ids) > window {
				res.err = fmt.Errorf("%d publishes unacknowledged, window %d", len(ids), window)
				return
			}
			if len(ids) < window && res.publishes < n {
				continue
			}
			// Window full (or the last publish in): answer the oldest
			// only, and at the end all of them.
			answer := ids[:1]
			if res.publishes == n {
				answer = ids
			}
			var acks []byte
			for _, id := range answer {
				acks = appendPuback(acks, id)
			}
			if len(ids) == window {
				res.full++
			}
			ids = ids[len(answer):]
			if _, err := c.Write(acks); err != nil {
				res.err = err
				return
			}
		}
	}()
	ctx, p := windowPublisher(t, ln.Addr().String())
	pubErr := make(chan error, 1)
	go func() {
		lat, err := p.publishAcked(ctx, n, window)
		if err == nil && len(lat) != n {
			err = fmt.Errorf("%d acknowledged, want %d", len(lat), n)
		}
		pubErr <- err
	}()
	res := <-done
	if res.err != nil {
		p.Close() // release the publisher waiting for PUBACKs
		<-pubErr
		t.Fatalf("broker: %v", res.err)
	}
	if err := <-pubErr; err != nil {
		t.Fatal(err)
	}
	// From the window-th publish on, every one found the window full.
	if want := n - window + 1; res.full != want {
		t.Fatalf("%d answers with the window full, want %d", res.full, want)
	}
}

// windowPublisher dials a QoS 1 publisher to the fake broker at addr for
// the window tests, with a context that ends after 30 s; both end with
// the test.
func windowPublisher(t *testing.T, addr string) (context.Context, *publisher) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	p, err := dialPublisher(ctx, addr, "window", "bench/window", makePayload(50), 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return ctx, p
}
