package broker

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// A packet mochi writes to a client reaches the connection at once, even
// while deliveries to that client are queued: the acknowledgements
// Tributary writes to the connection itself would otherwise pass it.
func TestMochiWritesAreNotHeldBack(t *testing.T) {
	b := startBroker(t, newFakeProducer())
	srv, peer := net.Pipe()
	t.Cleanup(func() { srv.Close(); peer.Close() })
	cl := b.server.NewClient(srv, "t", "subscriber", false)
	cl.Properties.ProtocolVersion = 4
	b.server.Clients.Add(cl)
	b.server.Topics.Subscribe(cl.ID, packets.Subscription{Filter: "t/#"})

	// No write loop runs for this client, so the delivery stays queued.
	fwd := b.ingest.forwarder(cl)
	b.ingest.forward(fwd, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish},
		TopicName:   "t/x",
		Payload:     []byte("queued"),
	})
	b.ingest.forwarders.Put(fwd)
	if n := cl.State.Inflight.Len(); n != 0 {
		t.Fatalf("inflight %d, want 0 for a QoS 0 delivery", n)
	}

	got := make(chan []byte, 1)
	go func() {
		buf := make([]byte, 4)
		_ = peer.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, _ := io.ReadFull(peer, buf)
		got <- buf[:n]
	}()
	if err := cl.WritePacket(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Puback},
		PacketID:    7,
	}); err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, []byte{0x40, 0x02, 0x00, 0x07}) {
		t.Fatalf("read % x, want the PUBACK 40 02 00 07 at once", b)
	}
}
