package broker

import (
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// serveFunc is a listener whose Serve is the function itself.
type serveFunc func(listeners.EstablishFn)

func (f serveFunc) Init(*slog.Logger) error         { return nil }
func (f serveFunc) Serve(est listeners.EstablishFn) { f(est) }
func (f serveFunc) ID() string                      { return "test" }
func (f serveFunc) Address() string                 { return "" }
func (f serveFunc) Protocol() string                { return "tcp" }
func (f serveFunc) Close(listeners.CloseFn)         {}

// A connection is counted in the wait group while it is served, so a Wait
// begun meanwhile waits for it; once admission is closed, a connection
// that still arrives is closed without being served.
func TestAdmissionCountsAndTurnsAway(t *testing.T) {
	var wg sync.WaitGroup
	a := &admission{wg: &wg}
	served := 0
	var waited chan struct{}
	establish := func(_ string, c net.Conn) error {
		served++
		waited = make(chan struct{})
		go func() { wg.Wait(); close(waited) }()
		select {
		case <-waited:
			t.Error("a Wait returned while a connection was being served")
		case <-time.After(50 * time.Millisecond):
		}
		return nil
	}
	var peer net.Conn
	admittingListener{Listener: serveFunc(func(est listeners.EstablishFn) {
		c, p := net.Pipe()
		defer p.Close()
		_ = est("test", c)
		select {
		case <-waited:
		case <-time.After(5 * time.Second):
			t.Error("the Wait did not return once the connection ended")
		}
		a.close()
		c, peer = net.Pipe()
		_ = est("test", c)
	}), admit: a}.Serve(establish)
	if served != 1 {
		t.Fatalf("%d connections served, want 1: none after admission closed", served)
	}
	_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := peer.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("the connection turned away: read %v, want EOF (closed)", err)
	}
}
