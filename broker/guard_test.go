package broker

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

// chunkConn is a net.Conn whose reads return its data in chunks of the
// given size, then io.EOF.
type chunkConn struct {
	net.Conn
	data  []byte
	chunk int
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.data[:min(c.chunk, len(c.data))])
	c.data = c.data[n:]
	return n, nil
}

// packet frames body as an MQTT packet with first header byte first.
func packet(first byte, body ...[]byte) []byte {
	b := bytes.Join(body, nil)
	out := []byte{first}
	for n := len(b); ; {
		c := byte(n % 128)
		n /= 128
		if n > 0 {
			c |= 128
		}
		out = append(out, c)
		if n == 0 {
			break
		}
	}
	return append(out, b...)
}

func mqttStr(s string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(s))), s...)
}

func TestGuardConnPatchesASubscribeCutShort(t *testing.T) {
	pub := packet(packets.Publish<<4|2, mqttStr("a/b"), []byte{0, 7}, []byte{0}, bytes.Repeat([]byte("x"), 300))
	short := packet(packets.Subscribe<<4|2, []byte{0, 1, 0}, mqttStr("a"))                                 // no options byte
	shortSecond := packet(packets.Subscribe<<4|2, []byte{0, 1, 0}, mqttStr("a"), []byte{1}, mqttStr("bc")) // the second filter's
	good := packet(packets.Subscribe<<4|2, []byte{0, 1, 2, 0x0b, 5}, mqttStr("s/#"), []byte{1})            // a subscription identifier
	patched := func(b []byte, at int) []byte {
		b = bytes.Clone(b)
		b[at], b[at+1] = 0xff, 0xff
		return b
	}
	for _, tc := range []struct {
		name     string
		in, want []byte
	}{
		{"MQTT 5, cut short after the only filter",
			bytes.Join([][]byte{encodeConnect(t, "MQTT", 5, "guard", nil), pub, short, pub}, nil),
			bytes.Join([][]byte{encodeConnect(t, "MQTT", 5, "guard", nil), pub, patched(short, 5), pub}, nil)},
		{"MQTT 5, cut short after the second filter",
			bytes.Join([][]byte{encodeConnect(t, "MQTT", 5, "guard", nil), shortSecond, pub}, nil),
			bytes.Join([][]byte{encodeConnect(t, "MQTT", 5, "guard", nil), patched(shortSecond, 9), pub}, nil)},
		{"MQTT 5, whole SUBSCRIBEs pass unchanged",
			bytes.Join([][]byte{encodeConnect(t, "MQTT", 5, "guard", nil), good, pub, good}, nil),
			bytes.Join([][]byte{encodeConnect(t, "MQTT", 5, "guard", nil), good, pub, good}, nil)},
		{"MQTT 3.1.1: mochi checks the byte itself",
			bytes.Join([][]byte{encodeConnect(t, "MQTT", 4, "guard", nil), packet(packets.Subscribe<<4|2, []byte{0, 1}, mqttStr("a")), pub}, nil),
			bytes.Join([][]byte{encodeConnect(t, "MQTT", 4, "guard", nil), packet(packets.Subscribe<<4|2, []byte{0, 1}, mqttStr("a")), pub}, nil)},
		{"no CONNECT first: left to mochi",
			bytes.Join([][]byte{short, pub}, nil),
			bytes.Join([][]byte{short, pub}, nil)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for chunk := 1; chunk <= len(tc.in); chunk++ {
				for _, readSize := range []int{1, 3, 4096} {
					g := newGuardConn(&chunkConn{data: bytes.Clone(tc.in), chunk: chunk}, 1<<20)
					var got []byte
					buf := make([]byte, readSize)
					for {
						n, err := g.Read(buf)
						got = append(got, buf[:n]...)
						if errors.Is(err, io.EOF) {
							break
						}
						if err != nil {
							t.Fatalf("chunks of %d, reads of %d: %v", chunk, readSize, err)
						}
					}
					if !bytes.Equal(got, tc.want) {
						t.Fatalf("chunks of %d, reads of %d: mochi gets\n% x\nwant\n% x", chunk, readSize, got, tc.want)
					}
				}
			}
		})
	}
}

// The patched SUBSCRIBE is one mochi refuses as malformed, where the
// original would panic.
func TestPatchedSubscribeIsMalformedToMochi(t *testing.T) {
	decode := func(b []byte) (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = errors.New("panic")
			}
		}()
		pk := packets.Packet{ProtocolVersion: 5, FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1, Remaining: len(b)}}
		return pk.SubscribeDecode(b)
	}
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"the second filter", bytes.Join([][]byte{{0, 1, 0}, mqttStr("a"), {1}, mqttStr("bc")}, nil)},
		{"an empty filter", bytes.Join([][]byte{{0, 1, 0}, mqttStr("")}, nil)},
		// Its length is 0xFFFF already: the guard makes it hold a NUL.
		{"a filter of the largest length", bytes.Join([][]byte{{0, 1, 0}, mqttStr(strings.Repeat("a", 0xffff))}, nil)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := decode(bytes.Clone(tc.body)); err == nil || err.Error() != "panic" {
				t.Fatalf("mochi decoded the unpatched packet with %v; this guard may no longer be needed", err)
			}
			if !patchSubscribe(tc.body) {
				t.Fatal("not patched")
			}
			if err := decode(tc.body); !errors.Is(err, packets.ErrMalformedTopic) {
				t.Fatalf("the patched packet decodes with %v, want %v", err, packets.ErrMalformedTopic)
			}
		})
	}
}

// mochi reads a remaining length of any number of 0x80 bytes (their value
// stays 0). The guard passes them on as they come, holding nothing.
func TestGuardConnHoldsNoEndlessLength(t *testing.T) {
	in := append(encodeConnect(t, "MQTT", 5, "guard", nil), packets.Subscribe<<4|2)
	in = append(in, bytes.Repeat([]byte{0x80}, 1<<20)...)
	g := newGuardConn(&chunkConn{data: bytes.Clone(in), chunk: 4096}, 1<<20)
	buf := make([]byte, 2048)
	got := 0
	for {
		n, err := g.Read(buf)
		got += n
		if g.q != nil {
			t.Fatalf("holding %d bytes after %d of a header", len(g.q), got)
		}
		if err != nil {
			break
		}
	}
	if got != len(in) {
		t.Fatalf("mochi got %d bytes of %d", got, len(in))
	}
}

// A connection ending inside a held SUBSCRIBE body gives mochi the error.
func TestGuardConnEndsInsideASubscribe(t *testing.T) {
	in := bytes.Join([][]byte{encodeConnect(t, "MQTT", 5, "guard", nil), packet(packets.Subscribe<<4|2, []byte{0, 1, 0}, mqttStr("abc"), []byte{1})}, nil)
	in = in[:len(in)-2]
	g := newGuardConn(&chunkConn{data: in, chunk: 4096}, 1<<20)
	got, err := io.ReadAll(g)
	if err != nil {
		t.Fatal(err)
	}
	if want := len(encodeConnect(t, "MQTT", 5, "guard", nil)) + 2; len(got) != want {
		t.Fatalf("mochi got %d bytes, want the CONNECT's and the SUBSCRIBE's fixed header, %d", len(got), want)
	}
}

// Whatever a client sends after an MQTT 5 CONNECT, however it is split,
// mochi gets the same bytes with at most some filter lengths set to
// 0xFFFF, and no SUBSCRIBE among them makes its decoder panic.
func FuzzGuardConn(f *testing.F) {
	f.Add(packet(packets.Subscribe<<4|2, []byte{0, 1, 0}, mqttStr("a")), uint8(0))
	f.Add(bytes.Join([][]byte{packet(packets.Pingreq << 4), packet(packets.Subscribe<<4|2, []byte{0, 1, 1, 0x0b}, mqttStr("a"), []byte{1}, mqttStr("b"))}, nil), uint8(2))
	f.Add([]byte{packets.Subscribe<<4 | 2, 0x80, 0x80, 0x80, 0x80, 0x00}, uint8(1))
	const maxPacket = 70000
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		in := append(encodeConnect(t, "MQTT", 5, "guard", nil), data...)
		g := newGuardConn(&chunkConn{data: bytes.Clone(in), chunk: int(chunk) + 1}, maxPacket)
		out, err := io.ReadAll(g)
		if err != nil {
			t.Fatal(err)
		}
		if len(out) > len(in) {
			t.Fatalf("mochi got %d bytes of %d", len(out), len(in))
		}
		for i := range out {
			if out[i] != in[i] && out[i] != 0xff {
				t.Fatalf("byte %d changed from %#x to %#x", i, in[i], out[i])
			}
		}
		// Read the packets as mochi would, up to what it refuses.
		r := bytes.NewReader(out)
		for {
			first, err := r.ReadByte()
			if err != nil {
				return
			}
			n, _, err := packets.DecodeLength(r)
			if err != nil || n+1 > maxPacket || n > r.Len() {
				return
			}
			body := make([]byte, n)
			_, _ = io.ReadFull(r, body)
			if first>>4 != packets.Subscribe {
				continue
			}
			func() {
				defer func() {
					if p := recover(); p != nil {
						t.Fatalf("mochi's decoder panicked on SUBSCRIBE % x: %v", body, p)
					}
				}()
				pk := packets.Packet{ProtocolVersion: 5, FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1, Remaining: n}}
				_ = pk.SubscribeDecode(body)
			}()
		}
	})
}
