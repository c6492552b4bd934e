package broker

import (
	"net"
	"strings"
	"testing"

	"github.com/tributary-io/tributary/mapping"
)

// A Start that fails after binding some listeners leaves none bound: the
// caller may retry on the same ports, or exit without a listener left
// accepting connections nobody serves.
func TestFailedStartReleasesListeners(t *testing.T) {
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := free.Addr().String()
	free.Close()
	m, err := mapping.New(mapping.Config{})
	if err != nil {
		t.Fatal(err)
	}
	// A TLS listener without a certificate fails after the TCP one is bound.
	b, err := New(Config{Addr: addr, TLSAddr: "127.0.0.1:0", MaxMessageBytes: 1 << 20}, newFakeProducer(), m, discardLog())
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err == nil || !strings.Contains(err.Error(), "no TLS certificate") {
		t.Fatalf("Start: %v, want the missing certificate named", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("the MQTT port is still taken after the failed start: %v", err)
	}
	ln.Close()
}
