package broker

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// failWrites is a connection whose writes fail, as one its peer reset
// right after sending its CONNECT.
type failWrites struct{ net.Conn }

func (failWrites) Write([]byte) (int, error) { return 0, errors.New("connection reset by peer") }

// A connection whose CONNACK could not be written is closed by mochi but
// left in its client list. A client resuming with that id and an MQTT 5
// session that ends with its connection still gets in, with a new
// session, before the wait for the previous connection runs out.
func TestResumeAfterACONNACKThatFailed(t *testing.T) {
	b := startBroker(t, newFakeProducer())
	b.ingest.takeoverWait = 6 * time.Second // longer than connectRaw waits for the CONNACK
	srv, peer := net.Pipe()
	t.Cleanup(func() { srv.Close(); peer.Close() })
	connect := encodeConnect(t, "MQTT", 5, "lost", func(c *packets.ConnectParams) { c.Clean = false })
	go func() { _, _ = peer.Write(connect) }()
	if err := b.server.EstablishConnection("mqtt-tcp", failWrites{srv}); err == nil {
		t.Fatal("the connection whose writes fail was established")
	}
	if cl, ok := b.server.Clients.Get("lost"); !ok || !cl.Closed() {
		t.Fatalf("listed %v: want mochi to have left the closed connection listed", ok)
	}

	start := time.Now()
	_, ack := connectRaw(t, b.Addr("mqtt-tcp"), rawConnect{version: 5, id: "lost", keep: true, noExpiry: true})
	if ack.ReasonCode != 0 || ack.SessionPresent {
		t.Fatalf("CONNACK reason %#x, session present %v after %v; want 0 and a new session", ack.ReasonCode, ack.SessionPresent, time.Since(start))
	}
}

// A connection that was established is never taken for a leftover, even
// closed seconds ago and no longer live: mochi unlists it itself, after
// OnDisconnect, and would then unlist a new connection listed meanwhile.
func TestEstablishedConnectionIsNoLeftover(t *testing.T) {
	b := startBroker(t, newFakeProducer())
	conn, ack := connectRaw(t, b.Addr("mqtt-tcp"), rawConnect{version: 5, id: "kept", keep: true, noExpiry: true})
	if ack.ReasonCode != 0 {
		t.Fatalf("CONNACK reason %#x", ack.ReasonCode)
	}
	cl, ok := b.server.Clients.Get("kept")
	if !ok {
		t.Fatal("the connection is not listed")
	}
	conn.Close()
	deadline := time.Now().Add(5 * time.Second)
	for _, live := b.ingest.live.Load(cl); live || !cl.Closed(); _, live = b.ingest.live.Load(cl) {
		if time.Now().After(deadline) {
			t.Fatal("the connection did not end")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(leftoverAfter * time.Second)
	if b.ingest.dropLeftover(cl) {
		t.Fatal("an established connection was taken for one mochi left behind")
	}
}

// A connection mochi left behind is forgotten once another connection
// with its id replaces it in mochi's list, however that one connects.
func TestLeftoverReplacedIsForgotten(t *testing.T) {
	b := startBroker(t, newFakeProducer())
	srv, peer := net.Pipe()
	t.Cleanup(func() { srv.Close(); peer.Close() })
	connect := encodeConnect(t, "MQTT", 5, "lost", nil)
	go func() { _, _ = peer.Write(connect) }()
	if err := b.server.EstablishConnection("mqtt-tcp", failWrites{srv}); err == nil {
		t.Fatal("the connection whose writes fail was established")
	}
	_, ack := connectRaw(t, b.Addr("mqtt-tcp"), rawConnect{version: 5, id: "lost"})
	if ack.ReasonCode != 0 {
		t.Fatalf("CONNACK reason %#x", ack.ReasonCode)
	}
	// The new connection leaves attaching just after its CONNACK.
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := 0
		b.ingest.attaching.Range(func(any, any) bool { n++; return true })
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still held as attaching, want none", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
