package bridge

import (
	"bytes"
	"errors"
	"io"
	"net"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// wirePublish encodes a PUBLISH as a remote broker sends it.
func wirePublish(t *testing.T, qos byte, id uint16, dup, retain bool, topic string, payload []byte) []byte {
	t.Helper()
	pk := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	pk.Qos, pk.MessageID, pk.Dup, pk.Retain, pk.TopicName, pk.Payload = qos, id, dup, retain, topic, payload
	var b bytes.Buffer
	if err := pk.Write(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// feed writes stream to a pipe a few bytes at a time, so that packets and
// their fixed headers arrive split across reads, and returns the reading
// end read through an ackConn with a read buffer of size bytes.
func feed(t *testing.T, stream []byte, size int) *ackConn {
	t.Helper()
	local, remote := net.Pipe()
	t.Cleanup(func() { local.Close() })
	go func() {
		defer remote.Close()
		for len(stream) > 0 {
			n := min(3, len(stream))
			if _, err := remote.Write(stream[:n]); err != nil {
				return
			}
			stream = stream[n:]
		}
	}()
	return newAckConn(local, size)
}

// The upstream connection takes each PUBLISH out of the stream, whole and
// in order, and paho reads every other packet exactly as sent: the
// packets around the publishes, split across reads, and a publish larger
// than the read buffer.
func TestAckConnTakesPublishes(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789"), 30) // larger than the 64-byte buffer
	connack := []byte{packets.Connack << 4, 2, 0, 0}
	suback := []byte{packets.Suback << 4, 3, 0, 1, 1}
	pubrel := []byte{packets.Pubrel<<4 | 2, 2, 0, 9}
	pingresp := []byte{packets.Pingresp << 4, 0}
	var stream []byte
	for _, b := range [][]byte{
		connack,
		wirePublish(t, 0, 0, false, false, "a/b", []byte("x")),
		wirePublish(t, 1, 7, true, true, "plant/line1/temp", []byte("21.5")),
		suback,
		wirePublish(t, 2, 9, false, false, "big", big),
		pubrel,
		wirePublish(t, 1, 8, false, false, "empty", nil),
		pingresp,
	} {
		stream = append(stream, b...)
	}
	a := feed(t, stream, 64)
	type got struct {
		topic, payload string
		id             uint16
		qos            byte
		dup, retained  bool
	}
	var pubs []got
	a.publish = func(m *wireMessage) {
		pubs = append(pubs, got{m.Topic(), string(m.Payload()), m.MessageID(), m.Qos(), m.Duplicate(), m.Retained()})
	}
	var other [][]byte
	for {
		cp, err := packets.ReadPacket(a)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("paho's read: %v", err)
		}
		var b bytes.Buffer
		if err := cp.Write(&b); err != nil {
			t.Fatal(err)
		}
		other = append(other, b.Bytes())
	}
	want := []got{
		{"a/b", "x", 0, 0, false, false},
		{"plant/line1/temp", "21.5", 7, 1, true, true},
		{"big", string(big), 9, 2, false, false},
		{"empty", "", 8, 1, false, false},
	}
	if len(pubs) != len(want) {
		t.Fatalf("%d publishes taken, want %d: %+v", len(pubs), len(want), pubs)
	}
	for i := range want {
		if pubs[i] != want[i] {
			t.Errorf("publish %d: %+v, want %+v", i, pubs[i], want[i])
		}
	}
	wantOther := [][]byte{connack, suback, pubrel, pingresp}
	if len(other) != len(wantOther) {
		t.Fatalf("paho read %d packets, want %d: % x", len(other), len(wantOther), other)
	}
	for i := range wantOther {
		if !bytes.Equal(other[i], wantOther[i]) {
			t.Errorf("paho's packet %d: % x, want % x", i, other[i], wantOther[i])
		}
	}
}

// A malformed PUBLISH, or a remaining length longer than MQTT allows, ends
// paho's read with an error that says what is wrong, and nothing is handed
// over.
func TestAckConnMalformedPublish(t *testing.T) {
	for _, tc := range []struct {
		name   string
		stream []byte
		want   string
	}{
		{"remaining length of five bytes", []byte{packets.Publish << 4, 0xff, 0xff, 0xff, 0xff, 0x01}, "remaining length runs past 4 bytes"},
		{"QoS 3", []byte{packets.Publish<<4 | 6, 5, 0, 1, 'a', 0, 1}, "QoS 3"},
		{"no topic length", []byte{packets.Publish << 4, 1, 0}, "no room for a topic"},
		{"topic past the packet", []byte{packets.Publish << 4, 4, 0, 9, 'a', 'b'}, "a topic of 9 bytes in a packet of 4"},
		{"QoS 1 without a packet id", []byte{packets.Publish<<4 | 2, 4, 0, 1, 'a', 0}, "QoS 1 with no packet id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := feed(t, tc.stream, 64)
			taken := 0
			a.publish = func(*wireMessage) { taken++ }
			_, err := packets.ReadPacket(a)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
			if taken != 0 {
				t.Errorf("%d malformed publishes handed over", taken)
			}
		})
	}
}

// A packet other than PUBLISH that paho must not read ends the read with
// an error naming it, before paho sees any of it: a SUBACK with more
// return codes than its SUBSCRIBE had filters (paho indexes them by
// filter and would panic), a control packet of the wrong length (paho
// would read whatever length is claimed into memory), and a packet type a
// broker does not send.
func TestAckConnRefusesMalformedControlPackets(t *testing.T) {
	for _, tc := range []struct {
		name   string
		stream []byte
		want   string
	}{
		{"SUBACK with two return codes", []byte{packets.Suback << 4, 4, 0, 1, 0, 0}, "2 return codes for a SUBSCRIBE of one filter"},
		{"CONNACK of 3 bytes", []byte{packets.Connack << 4, 3, 0, 0, 0}, "malformed CONNACK from the remote broker: a remaining length of 3 bytes, want 2"},
		{"CONNACK claiming 256 MiB", []byte{packets.Connack << 4, 0xff, 0xff, 0xff, 0x7f}, "a remaining length of 268435455 bytes, want 2"},
		{"PUBREL of 1 byte", []byte{packets.Pubrel<<4 | 2, 1, 0}, "malformed PUBREL"},
		{"PINGRESP with a body", []byte{packets.Pingresp << 4, 1, 0}, "malformed PINGRESP"},
		{"SUBSCRIBE", []byte{packets.Subscribe<<4 | 2, 6, 0, 1, 0, 1, 'a', 0}, "a packet of type 8, which a broker does not send to a client"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := feed(t, tc.stream, 64)
			a.publish = func(*wireMessage) { t.Error("a publish handed over") }
			_, err := packets.ReadPacket(a)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
	// A SUBACK with no return code is left to paho, which reads it as a
	// refused subscription.
	a := feed(t, []byte{packets.Suback << 4, 2, 0, 1}, 64)
	a.publish = func(*wireMessage) {}
	if pk, err := packets.ReadPacket(a); err != nil {
		t.Fatalf("SUBACK without return codes: %v", err)
	} else if sa, ok := pk.(*packets.SubackPacket); !ok || len(sa.ReturnCodes) != 0 {
		t.Fatalf("paho read %v, want a SUBACK without return codes", pk)
	}
}

// A PUBLISH longer than the connection's limit is read and thrown away as
// it arrives: its topic and packet id are handed over with the payload's
// length and no payload, and the packets after it are read as usual. One
// whose fixed header claims 256 MiB has no more memory allocated for it
// than the reading takes, whatever it claims.
func TestAckConnSkipsPublishOverTheLimit(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 1000)
	pingresp := []byte{packets.Pingresp << 4, 0}
	var stream []byte
	for _, b := range [][]byte{
		wirePublish(t, 1, 3, false, false, "too/big", big),
		wirePublish(t, 1, 4, false, false, "fits", []byte("ok")),
		pingresp,
	} {
		stream = append(stream, b...)
	}
	a := feed(t, stream, 64)
	a.maxBody = 100
	type got struct {
		topic, payload string
		id             uint16
		skipped        int
	}
	var pubs []got
	a.publish = func(m *wireMessage) {
		pubs = append(pubs, got{m.Topic(), string(m.Payload()), m.MessageID(), m.skipped})
	}
	pk, err := packets.ReadPacket(a)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := pk.(*packets.PingrespPacket); !ok {
		t.Fatalf("paho read %v, want the PINGRESP", pk)
	}
	want := []got{{"too/big", "", 3, 1000}, {"fits", "ok", 4, 0}}
	if !slices.Equal(pubs, want) {
		t.Fatalf("handed over %+v, want %+v", pubs, want)
	}

	t.Run("a length of 256 MiB claimed", func(t *testing.T) {
		claim := []byte{packets.Publish<<4 | 2, 0xff, 0xff, 0xff, 0x7f, 0, 1, 't', 0, 9}
		a := feed(t, append(claim, bytes.Repeat([]byte("y"), 1<<20)...), 32<<10)
		a.maxBody = 1 << 20
		a.publish = func(*wireMessage) { t.Error("a publish cut short was handed over") }
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		if _, err := packets.ReadPacket(a); !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("read: %v, want the end of the stream", err)
		}
		runtime.ReadMemStats(&after)
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 8<<20 {
			t.Fatalf("%d MiB allocated reading 1 MiB of a PUBLISH that claims 256 MiB", grew>>20)
		}
	})
}

// The limit is the producer's largest record with the longest topic and a
// packet id; a producer that does not say its limit sets none.
func TestMaxPublishBody(t *testing.T) {
	p := kfakeProducer(t, ProducerConfig{MaxMessageBytes: 4096, InflightBudgetBytes: 1 << 20, AckLinger: time.Millisecond}, "t")
	if got, want := maxPublishBody(p), 4096+2+65535+2; got != want {
		t.Fatalf("maxPublishBody = %d, want %d", got, want)
	}
	if got := maxPublishBody(&fakeProducer{}); got != 0 {
		t.Fatalf("maxPublishBody of a producer with no limit = %d, want 0", got)
	}
}

// A remote broker that stops reading cannot hold one of paho's writes,
// and the lock the keepalive's PINGREQ needs, for good: each Write has its
// own deadline, whatever paho set or cleared.
func TestAckConnWriteEndsWhenTheRemoteStopsReading(t *testing.T) {
	local, remote := net.Pipe() // a write waits until the other end reads; remote never does
	t.Cleanup(func() { local.Close(); remote.Close() })
	a := newAckConn(local, 64)
	a.writeTimeout = 100 * time.Millisecond
	_ = a.SetWriteDeadline(time.Time{}) // as paho does after its writes
	done := make(chan error, 2)
	go func() {
		_, err := a.Write([]byte{packets.Pubcomp << 4, 2, 0, 1})
		done <- err
	}()
	go func() {
		_, err := a.Write(pingreq) // as the keepalive does
		done <- err
	}()
	for range 2 {
		select {
		case err := <-done:
			if err == nil {
				t.Fatal("a write to a remote that reads nothing succeeded")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a write to a remote that reads nothing still blocks after 5s")
		}
	}
}
