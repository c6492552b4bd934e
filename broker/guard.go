package broker

import (
	"encoding/binary"
	"net"

	"github.com/mochi-mqtt/server/v2/packets"
)

// mochi v2.7.9 decodes an MQTT 5 SUBSCRIBE's subscription options byte
// without checking that the packet holds it (packets.SubscribeDecode): a
// SUBSCRIBE whose topic filter ends the packet panics on the connection's
// goroutine, which nothing recovers, and one client would end the whole
// process with every connection and every record in flight
// (mochi-mqtt/server#501, unreleased as of v2.7.9).
//
// guardConn sits between every MQTT connection and mochi. It follows the
// packets' framing as mochi reads them, holds back an MQTT 5 SUBSCRIBE
// until all of it is in, and in one cut short that way sets that filter's
// length to more than the packet holds. mochi then refuses the packet as
// the malformed packet it is, and ends the connection as for any other
// (its will and Tributary's hooks included). Every other byte passes as
// read, without a copy; only a SUBSCRIBE, and what arrives behind it in
// the same read, is copied.
type guardConn struct {
	net.Conn
	f framer
	// q holds bytes read and not yet returned: from the start of an MQTT 5
	// SUBSCRIBE not yet complete, and what followed it.
	q     []byte
	ready int   // q[:ready] is checked and may be returned
	err   error // from the read that last filled q
}

func newGuardConn(c net.Conn, maxPacket int) *guardConn {
	return &guardConn{Conn: c, f: framer{maxPacket: maxPacket}}
}

// NetConn returns the wrapped connection, as tls.Conn.NetConn does.
func (g *guardConn) NetConn() net.Conn { return g.Conn }

func (g *guardConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(g.q) == 0 {
		if g.err != nil {
			return 0, g.err
		}
		n, err := g.Conn.Read(p)
		held := g.f.feed(p[:n])
		if held == n {
			return n, err
		}
		g.q = append(g.q[:0], p[held:n]...)
		g.err = err
		g.ready = g.f.feed(g.q)
		if held > 0 {
			return held, nil
		}
	}
	for g.ready == 0 {
		if g.err != nil {
			// The connection ended inside the SUBSCRIBE, which mochi
			// never sees: it gets the error.
			return 0, g.err
		}
		if cap(g.q)-len(g.q) < 512 {
			g.q = append(g.q, make([]byte, 4096)...)[:len(g.q)]
		}
		n, err := g.Conn.Read(g.q[len(g.q):cap(g.q)])
		g.q = g.q[:len(g.q)+n]
		g.err = err
		// The framer was left at the held SUBSCRIBE's first byte.
		g.ready = g.f.feed(g.q)
	}
	n := copy(p, g.q[:g.ready])
	g.q = g.q[:copy(g.q, g.q[n:])]
	g.ready -= n
	if len(g.q) == 0 {
		g.q = nil // a connection holds no buffer between SUBSCRIBEs
	}
	return n, nil
}

// framer follows the packets of one connection's byte stream the way
// mochi reads them.
type framer struct {
	maxPacket int // mochi's maximum packet size; 0 for none
	// inert: the stream is one mochi refuses (it did not start with a
	// CONNECT, or a length is malformed), so nothing more is looked at.
	inert bool
	v5    bool
	// The packet being read: its type, its remaining length as far as
	// read (mochi's variable byte integer, mirrored bit for bit), and the
	// body bytes still to come.
	inLength bool
	typ      byte
	length   uint32
	shift    uint32
	body     int
	packets  int // packets whose fixed header was read
	// The start of the first packet's body, to read a CONNECT's protocol
	// version from: a 2-byte name length, a name of at most 6 bytes, the
	// version.
	connect [9]byte
	got     int
}

// feed follows b, the next bytes of the stream (mochi's view of them,
// since the guard returns every byte it does not hold), and returns how
// many of them may go to mochi now. A shorter count is where an MQTT 5
// SUBSCRIBE starts that b does not hold whole: the framer is then left at
// its first byte, and the caller feeds it again from there once more has
// arrived. A whole MQTT 5 SUBSCRIBE in b is checked, and patched in place.
func (f *framer) feed(b []byte) int {
	i := 0
	for i < len(b) && !f.inert {
		switch {
		case f.body > 0:
			n := min(f.body, len(b)-i)
			if f.packets == 1 && f.typ == packets.Connect {
				f.readConnect(b[i : i+n])
			}
			f.body -= n
			i += n
		case f.inLength:
			f.lengthByte(b[i])
			i++
		default:
			f.typ = b[i] >> 4
			if f.packets == 0 && f.typ != packets.Connect {
				f.inert = true // mochi refuses a first packet that is not a CONNECT
				break
			}
			if f.typ == packets.Subscribe && f.v5 {
				n, ok := f.subscribe(b[i:])
				if !ok {
					return i
				}
				i += n
				continue
			}
			f.packets++
			f.inLength, f.length, f.shift = true, 0, 0
			i++
		}
	}
	return len(b)
}

// lengthByte takes one byte of a fixed header's remaining length, as
// packets.DecodeLength does.
func (f *framer) lengthByte(c byte) {
	f.length |= uint32(c&127) << f.shift
	if f.length > 268435455 {
		f.inert = true // mochi: malformed variable byte integer
		return
	}
	if c&128 != 0 {
		f.shift += 7
		return
	}
	f.inLength = false
	f.body = int(f.length)
}

// readConnect takes bytes of the first packet's body, a CONNECT, up to its
// protocol version.
func (f *framer) readConnect(b []byte) {
	n := copy(f.connect[f.got:], b)
	f.got += n
	if f.got < 2 {
		return
	}
	name := int(binary.BigEndian.Uint16(f.connect[:2]))
	if name > 6 {
		f.inert = true // no protocol name mochi takes is longer than MQIsdp
		return
	}
	if f.got > 2+name {
		f.v5 = f.connect[2+name] == 5
	}
}

// subscribe handles an MQTT 5 SUBSCRIBE starting at b[0]. It returns the
// bytes of b the packet takes, or false if b does not hold all of it.
func (f *framer) subscribe(b []byte) (int, bool) {
	length, used, ok := mochiLength(b[1:])
	switch {
	case !ok && used < 0:
		f.inert = true // mochi: malformed variable byte integer
		return 1, true
	case !ok:
		return 0, false // the length is not all here
	}
	f.packets++
	end := 1 + used + length
	if f.maxPacket > 0 && length+1 > f.maxPacket {
		// mochi refuses it from its fixed header: nothing to hold.
		f.body = length
		return 1 + used, true
	}
	if end > len(b) {
		f.packets--
		return 0, false
	}
	patchSubscribe(b[1+used : end])
	return end, true
}

// mochiLength decodes a variable byte integer from the start of b as
// packets.DecodeLength does, with its quirks: no limit on the number of
// bytes, and the value only checked against the largest one allowed. ok
// is false if b ends first (used 0) or the value is malformed (used -1).
func mochiLength(b []byte) (value, used int, ok bool) {
	var v, shift uint32
	for i, c := range b {
		v |= uint32(c&127) << shift
		if v > 268435455 {
			return 0, -1, false
		}
		if c&128 == 0 {
			return int(v), i + 1, true
		}
		shift += 7
	}
	return 0, 0, false
}

// patchSubscribe finds, in an MQTT 5 SUBSCRIBE's body, a topic filter that
// ends the packet with no subscription options byte after it, reading the
// body as packets.SubscribeDecode does, and sets that filter's length to
// 0xFFFF, more than the body holds, so that mochi refuses the packet as
// malformed where it would index past the body's end. It reports whether
// it patched.
func patchSubscribe(body []byte) bool {
	off := 2 // the packet id
	if len(body) < off {
		return false
	}
	props, used, ok := mochiLength(body[off:])
	if !ok {
		return false
	}
	off += used + props
	for off < len(body) {
		if off+2 > len(body) {
			return false
		}
		end := off + 2 + int(binary.BigEndian.Uint16(body[off:]))
		if end == len(body) {
			body[off], body[off+1] = 0xff, 0xff
			return true
		}
		if end > len(body) {
			return false
		}
		off = end + 1
	}
	return false
}
