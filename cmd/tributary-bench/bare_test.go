package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// TestMain lets the test binary be the bare endpoint, as the bench binary
// is when runBare starts it.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == bareEndpointArg {
		os.Exit(bareEndpointMain(os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func TestNextBarePacket(t *testing.T) {
	pub, _, err := encodePublish("bench/a", []byte("hello"), 1)
	if err != nil {
		t.Fatal(err)
	}
	// Every prefix short of the whole packet is "not yet".
	for i := range len(pub) {
		if _, _, size, err := nextBarePacket(pub[:i]); size != 0 || err != nil {
			t.Fatalf("prefix of %d of %d bytes: size %d, error %v", i, len(pub), size, err)
		}
	}
	two := append(append([]byte{}, pub...), packets.Pingreq<<4, 0)
	typ, body, size, err := nextBarePacket(two)
	if err != nil || size != len(pub) || typ != pub[0] || !bytes.Equal(body, pub[2:]) {
		t.Fatalf("got type %#x, %d-byte body, size %d, error %v; want the publish of %d bytes", typ, len(body), size, err, len(pub))
	}
	if typ, _, size, err := nextBarePacket(two[size:]); err != nil || size != 2 || typ>>4 != packets.Pingreq {
		t.Fatalf("second packet: type %#x, size %d, error %v", typ, size, err)
	}

	for _, c := range []struct {
		name string
		in   []byte
		want string
	}{
		{"a remaining length of five bytes", []byte{0x30, 0x80, 0x80, 0x80, 0x80, 0x01}, "longer than 4 bytes"},
		{"a packet larger than the buffer allows", []byte{0x30, 0x80, 0x80, 0x03}, "more than the"},
	} {
		if _, _, _, err := nextBarePacket(c.in); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
}

func TestAnswerBare(t *testing.T) {
	pub1, _, _ := encodePublish("tt", []byte("x"), 1) // a topic length with bit 1 set
	pub1[len(pub1)-3], pub1[len(pub1)-2] = 0x12, 0x34 // packet id 0x1234
	pub0, _, _ := encodePublish("t", []byte("x"), 0)
	for _, c := range []struct {
		name string
		typ  byte
		body []byte
		out  []byte
		done bool
		err  string
	}{
		{"CONNECT", packets.Connect << 4, nil, []byte{packets.Connack << 4, 2, 0, 0}, false, ""},
		{"QoS 1 PUBLISH", pub1[0], pub1[2:], []byte{packets.Puback << 4, 2, 0x12, 0x34}, false, ""},
		{"QoS 0 PUBLISH", pub0[0], pub0[2:], nil, false, ""},
		{"PINGREQ", packets.Pingreq << 4, nil, []byte{packets.Pingresp << 4, 0}, false, ""},
		{"DISCONNECT", packets.Disconnect << 4, nil, nil, true, ""},
		{"QoS 2 PUBLISH", packets.Publish<<4 | 2<<1, pub1[2:], nil, false, "QoS 2"},
		{"PUBLISH with no packet id", pub1[0], []byte{0, 1, 't'}, nil, false, "too short"},
		{"PUBLISH with no topic length", pub1[0], []byte{0}, nil, false, "without a topic length"},
		{"SUBSCRIBE", packets.Subscribe<<4 | 2, []byte{0, 1}, nil, false, "unexpected packet type 8"},
	} {
		out, done, err := answerBare(nil, c.typ, c.body)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: error %v, want one containing %q", c.name, err, c.err)
			}
			continue
		}
		if err != nil || done != c.done || !bytes.Equal(out, c.out) {
			t.Errorf("%s: got %x, done %v, error %v; want %x, done %v", c.name, out, done, err, c.out, c.done)
		}
	}
}

// TestBareEndpointServesThePublishers runs the bench's own publishers
// against the endpoint: every QoS 1 publish gets its PUBACK, a QoS 0
// publisher's DISCONNECT ends its connection without a protocol error,
// and every publish of either is counted by the time its publisher is
// done.
func TestBareEndpointServesThePublishers(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var mu sync.Mutex
	var fails []error
	var received atomic.Int64
	go serveBare(l, &received, func(err error) { mu.Lock(); fails = append(fails, err); mu.Unlock() })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p1, err := dialPublisher(ctx, l.Addr().String(), "q1", "bench/q1", make([]byte, 100), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer p1.Close()
	lat, err := p1.publishAcked(ctx, 5000, 10)
	if err != nil || len(lat) != 5000 {
		t.Fatalf("QoS 1: %d PUBACKs, error %v; want 5000", len(lat), err)
	}
	if n := received.Load(); n != 5000 {
		t.Fatalf("after the QoS 1 publisher, the endpoint counted %d publishes, want 5000", n)
	}
	p0, err := dialPublisher(ctx, l.Addr().String(), "q0", "bench/q0", make([]byte, 100), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer p0.Close()
	if err := p0.publishUnacked(ctx, 5000); err != nil {
		t.Fatalf("QoS 0: %v", err)
	}
	if n := received.Load(); n != 10000 {
		t.Fatalf("after the QoS 0 publisher, the endpoint counted %d publishes, want 10000", n)
	}
	p1.Close()
	time.Sleep(100 * time.Millisecond) // the endpoint's side of p1 ends
	mu.Lock()
	defer mu.Unlock()
	if len(fails) != 0 {
		t.Fatalf("the endpoint reported %v", fails)
	}
}

// TestRunBare runs the scenarios as the bench does, the endpoint in a
// child process: every record is acknowledged (QoS 1) or counted by the
// endpoint (QoS 0), and the child's CPU and the harness's are measured.
func TestRunBare(t *testing.T) {
	for _, name := range []string{"bare-qos1", "bare-qos0"} {
		t.Run(name, func(t *testing.T) {
			b := &bench{opts: options{records: 2000, timeout: 30 * time.Second}, payload: make([]byte, 100)}
			s, ok := scenarioNamed(name)
			if !ok {
				t.Fatalf("no scenario %s", name)
			}
			r := b.runBare(context.Background(), s)
			if !r.OK || r.Found != 2000 || r.CPU == nil || r.HarnessCPU == nil || r.SendSeconds == nil {
				t.Fatalf("got OK %v, found %d, CPU %v, harness CPU %v, send seconds %v, error %q; want all 2000 counted and CPU measured",
					r.OK, r.Found, r.CPU, r.HarnessCPU, r.SendSeconds, r.Error)
			}
		})
	}
}
