package broker

import (
	"bytes"
	"encoding/binary"
	"net"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tributary-io/tributary/auth"
)

// mochi v2.7.9 decodes an MQTT 5 SUBSCRIBE's subscription options byte
// without checking that the packet holds it (packets.SubscribeDecode): a
// SUBSCRIBE whose topic filter ends the packet panics on the connection's
// goroutine, which nothing recovers, and one client would end the whole
// process with every connection and every record in flight
// (mochi-mqtt/server#501, unreleased as of v2.7.9).
//
// guardConn sits between every MQTT connection and mochi. It follows the
// packets' framing as mochi reads them, holds back the body of an MQTT 5
// SUBSCRIBE until all of it is in (at most mochi's maximum packet size),
// and in one cut short that way makes that filter one mochi refuses: its
// length more than the packet holds or, for a filter of the largest
// length, a NUL as its first character. mochi then refuses the packet as
// the malformed packet it is, and ends the connection as for any other
// (its will and Tributary's hooks included). Every other byte passes as
// read, without a copy; only a SUBSCRIBE's body, and what arrives behind
// it in the same read, is copied.
type guardConn struct {
	net.Conn
	f framer
	// q[off:] holds bytes read and not yet returned: from the start of an
	// MQTT 5 SUBSCRIBE's body not yet complete, and what followed it.
	q     []byte
	off   int
	ready int   // q[off:ready] is checked and may be returned
	err   error // from the read that last filled q

	// login is the users file the connection's login was decided by
	// (authHook.OnConnect), for OnSessionEstablished to compare with the
	// one in force then. Set and read on the connection's goroutine.
	login *auth.Users
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
	if g.q == nil {
		if g.err != nil {
			return 0, g.err
		}
		n, err := g.Conn.Read(p)
		held := g.f.feed(p[:n])
		if held == n {
			return n, err
		}
		// The framer stays at the held body's first byte.
		g.q = append(make([]byte, 0, max(4096, n-held)), p[held:n]...)
		g.off, g.ready, g.err = 0, 0, err
		if held > 0 {
			return held, nil
		}
	}
	for g.ready == g.off {
		if g.err != nil {
			// The connection ended inside the SUBSCRIBE, whose body mochi
			// never sees: it gets the error.
			return 0, g.err
		}
		if g.off > 0 {
			g.q = g.q[:copy(g.q, g.q[g.off:])]
			g.off, g.ready = 0, 0
		}
		if cap(g.q)-len(g.q) < 512 {
			g.q = append(g.q, make([]byte, 4096)...)[:len(g.q)]
		}
		n, err := g.Conn.Read(g.q[len(g.q):cap(g.q)])
		g.q = g.q[:len(g.q)+n]
		g.err = err
		g.ready = g.f.feed(g.q)
	}
	n := copy(p, g.q[g.off:g.ready])
	g.off += n
	if g.off == len(g.q) {
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
	// holdBody: body is an MQTT 5 SUBSCRIBE's, to be checked whole.
	holdBody bool
	packets  int // packets whose fixed header was read
	// The start of the first packet's body, to read a CONNECT's protocol
	// version from: a 2-byte name length, a name of at most 6 bytes, the
	// version.
	connect [9]byte
	got     int
}

// feed follows b, the next bytes of the stream (mochi's view of them,
// since the guard returns every byte it does not hold), and returns how
// many of them may go to mochi now. A shorter count is where the body of
// an MQTT 5 SUBSCRIBE starts that b does not hold whole: the framer then
// stays there, and the caller feeds it again from there once more has
// arrived. A whole MQTT 5 SUBSCRIBE body in b is checked, and patched in
// place.
func (f *framer) feed(b []byte) int {
	i := 0
	for i < len(b) && !f.inert {
		switch {
		case f.holdBody:
			if len(b)-i < f.body {
				return i
			}
			patchSubscribe(b[i : i+f.body])
			i += f.body
			f.body, f.holdBody = 0, false
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
	// mochi refuses a packet over its maximum from the fixed header, and
	// never reads its body.
	f.holdBody = f.typ == packets.Subscribe && f.v5 && f.body > 0 &&
		(f.maxPacket == 0 || f.body+1 <= f.maxPacket)
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

// patchSubscribe finds, in an MQTT 5 SUBSCRIBE's body, a topic filter that
// ends the packet with no subscription options byte after it, reading the
// body as packets.SubscribeDecode does, and makes mochi refuse the packet
// as malformed (packets.ErrMalformedTopic) where it would index past the
// body's end: it sets the filter's length to 0xFFFF, more than the body
// holds, or, if that is its length already, its first character to NUL,
// which no topic filter may hold. It reports whether it patched.
func patchSubscribe(body []byte) bool {
	off := 2 // the packet id
	if len(body) < off {
		return false
	}
	props, used, err := packets.DecodeLength(bytes.NewReader(body[off:]))
	if err != nil {
		return false
	}
	off += used + props
	for off < len(body) {
		if off+2 > len(body) {
			return false
		}
		end := off + 2 + int(binary.BigEndian.Uint16(body[off:]))
		if end == len(body) {
			if end-off-2 == 0xffff {
				body[off+2] = 0
			} else {
				body[off], body[off+1] = 0xff, 0xff
			}
			return true
		}
		if end > len(body) {
			return false
		}
		off = end + 1
	}
	return false
}
