package broker

import (
	"net"
	"strings"
	"sync/atomic"
)

// MQTT bridges: another broker (an edge mosquitto, say) connecting as a
// client to forward its devices' messages. mosquitto's bridges, by default
// (try_private true), set the top bit of the CONNECT's protocol version
// (0x84 for MQTT 3.1.1, 0x83 for 3.1) to say they are a bridge, and expect
// what they publish not to be sent back to their own subscriptions, so
// that a bridge in both directions does not loop. mochi refuses such a
// version as a protocol violation. The listener clears the bit before
// mochi reads it (bridgeBitConn), and the ingest hook gives the bridge's
// subscriptions No Local and Retain As Published, so that a retained
// message reaches the other broker retained, as it would from mosquitto.
// An MQTT 5 bridge sets no bridge bit: it asks for both itself.
//
// A bridge also publishes its connection state, retained, to
// $SYS/broker/connection/<client id>/state ("1", and "0" as its will).
// That one $SYS topic, under the client's own id and with one of those
// two payloads, is taken from any client whatever the ACLs: kept for
// local subscribers and never produced to Kafka. Anything else there is
// refused as any $SYS publish is, so that a client with no right to
// publish cannot retain more than a byte under it; and a client id
// longer than maxBridgeStateID bytes has no such topic, so that the
// retained topic's name stays small too (MQTT lets a client id run to
// 65535 bytes; a bridge's, mosquitto's "<host>.<bridge name>", is short).

// bridgeListener hands out bridgeBitConns.
type bridgeListener struct{ net.Listener }

func (l bridgeListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &bridgeBitConn{Conn: c}, nil
}

// bridgeBitConn clears the bridge bit of the protocol version in the
// first packet read from it, if that is a CONNECT for MQTT 3.1 or 3.1.1
// with the bit set, and remembers that it did. Every other byte passes as
// it came. The bytes are patched as they pass through Read, however the
// reads split the packet.
type bridgeBitConn struct {
	net.Conn
	scan   connectScan
	bridge atomic.Bool
}

func (c *bridgeBitConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if !c.scan.done && n > 0 && c.scan.feed(p[:n]) {
		c.bridge.Store(true)
	}
	return n, err
}

// NetConn returns the wrapped connection, as tls.Conn.NetConn does.
func (c *bridgeBitConn) NetConn() net.Conn { return c.Conn }

// isMQTTBridge reports whether c (or a connection it wraps) began with a
// CONNECT that had the bridge bit.
func isMQTTBridge(c net.Conn) bool {
	b, ok := connIn[*bridgeBitConn](c)
	return ok && b.bridge.Load()
}

// connectScan follows the start of a CONNECT packet byte by byte: the
// fixed header's type, the remaining length (1–4 bytes), the protocol
// name (a 2-byte length, then at most 6 bytes), then the protocol version.
type connectScan struct {
	state   int
	lenSeen int // remaining-length bytes seen
	nameLen int
	name    [6]byte
	nameGot int
	done    bool
}

// feed scans b, the next bytes of the stream, and clears the bridge bit in
// place when it finds one; it reports whether it did.
func (s *connectScan) feed(b []byte) bool {
	for i, x := range b {
		switch s.state {
		case 0: // fixed header: CONNECT is type 1
			if x != 0x10 {
				s.done = true
				return false
			}
			s.state = 1
		case 1: // remaining length
			s.lenSeen++
			if x&0x80 == 0 {
				s.state = 2
			} else if s.lenSeen == 4 {
				s.done = true
				return false
			}
		case 2:
			s.nameLen = int(x) << 8
			s.state = 3
		case 3:
			s.nameLen |= int(x)
			if s.nameLen == 0 || s.nameLen > len(s.name) {
				s.done = true
				return false
			}
			s.state = 4
		case 4:
			s.name[s.nameGot] = x
			s.nameGot++
			if s.nameGot == s.nameLen {
				s.state = 5
			}
		case 5: // protocol version
			s.done = true
			name := string(s.name[:s.nameLen])
			if x&0x80 != 0 && (name == "MQTT" && x&0x7f == 4 || name == "MQIsdp" && x&0x7f == 3) {
				b[i] = x & 0x7f
				return true
			}
			return false
		}
	}
	return false
}

// maxBridgeStateID is the longest client id with a connection-state
// topic exempt from the ACLs.
const maxBridgeStateID = 256

// bridgeStateTopic reports whether topic is the connection-state topic a
// bridge with this client id publishes to.
func bridgeStateTopic(clientID, topic string) bool {
	const prefix, suffix = "$SYS/broker/connection/", "/state"
	return clientID != "" && len(clientID) <= maxBridgeStateID && !strings.ContainsAny(clientID, "+#") &&
		len(topic) == len(prefix)+len(clientID)+len(suffix) &&
		strings.HasPrefix(topic, prefix) && strings.HasSuffix(topic, suffix) && topic[len(prefix):len(topic)-len(suffix)] == clientID
}

// isBridgeState reports whether a publish (or will) of payload to topic is
// the connection state a bridge with this client id sends: "1" or "0" on
// its connection-state topic.
func isBridgeState(clientID, topic string, payload []byte) bool {
	return len(payload) == 1 && (payload[0] == '0' || payload[0] == '1') && bridgeStateTopic(clientID, topic)
}
