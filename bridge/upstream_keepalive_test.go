package bridge

import (
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/tributary-io/tributary/internal/testutil"
)

// pingingRemote serves an upstream connection as a remote broker would:
// it sends publishes ids 1..n on d/1, answers every PINGREQ and notes
// when each packet from Tributary came and the PUBACKs' ids.
type pingingRemote struct {
	n int

	mu     sync.Mutex
	seen   []time.Time // arrival of every packet after the SUBSCRIBE
	pings  int
	pubAck []uint16
}

func (r *pingingRemote) serve(nc net.Conn) {
	for id := uint16(1); int(id) <= r.n; id++ {
		if writePublish(nc, id, "d/1", "m") != nil {
			return
		}
	}
	for {
		pk, err := packets.ReadPacket(nc)
		if err != nil {
			return
		}
		r.mu.Lock()
		r.seen = append(r.seen, time.Now())
		switch pk := pk.(type) {
		case *packets.PingreqPacket:
			r.pings++
		case *packets.PubackPacket:
			r.pubAck = append(r.pubAck, pk.MessageID)
		}
		r.mu.Unlock()
		if _, ok := pk.(*packets.PingreqPacket); ok {
			if packets.NewControlPacket(packets.Pingresp).Write(nc) != nil {
				return
			}
		}
	}
}

func (r *pingingRemote) acked() []uint16 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.pubAck)
}

// longestSilence is the longest time between two packets from Tributary
// (or from since to the first) up to until.
func (r *pingingRemote) longestSilence(since, until time.Time) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	longest, last := time.Duration(0), since
	for _, at := range append(slices.Clone(r.seen), until) {
		if at.After(until) {
			at = until
		}
		longest = max(longest, at.Sub(last))
		last = at
	}
	return longest
}

// While the message handler waits for Kafka (the in-flight budget used
// up), paho reads nothing, so the remote broker's PINGRESPs wait in the
// socket behind its publishes. That is no sign of a dead connection: it
// is kept, Tributary goes on sending PINGREQs so that the remote broker's
// own keepalive does not end it either, and once Kafka takes the
// messages they are acknowledged on the same connection.
func TestUpstreamKeepsConnectionWhileWaitingForKafka(t *testing.T) {
	const keepAlive = time.Second
	remote := &pingingRemote{n: 5} // more than paho's channels hold besides the one in the handler
	fake := startFakeRemote(t, true, remote.serve)
	p := &blockingProducer{release: make(chan struct{})}
	logs := &testutil.SyncBuffer{}
	us, _ := upstreamForTest(t, UpstreamConfig{
		URL: fake.url(), KeepAlive: keepAlive, ConnectTimeout: time.Second,
		ReconnectMin: 10 * time.Millisecond, ReconnectMax: 20 * time.Millisecond,
	}, p, slog.New(slog.NewTextHandler(logs, nil)))
	us.Start()
	connected := fake.waitConnects(t, 1)[0]

	held := 5 * keepAlive // paho alone gives up after keepalive plus its ping timeout
	time.Sleep(held)
	released := time.Now()
	close(p.release)

	want := []uint16{1, 2, 3, 4, 5}
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Equal(remote.acked(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("PUBACKs %v, want %v", remote.acked(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := len(fake.connectTimes()); n != 1 {
		t.Errorf("%d connections while the handler waited %s for Kafka, want 1; log:\n%s", n, held, logs)
	}
	// A remote broker ends a connection that sends nothing for 1.5 times
	// its keepalive (MQTT 3.1.1 §3.1.2.10); Tributary sends something
	// within the keepalive (here with 100ms for a loaded machine).
	if s := remote.longestSilence(connected, released); s > keepAlive+100*time.Millisecond {
		t.Errorf("Tributary sent nothing for %s while the handler waited, want at most the keepalive, %s", s, keepAlive)
	}
	remote.mu.Lock()
	pings := remote.pings
	remote.mu.Unlock()
	if pings < 3 {
		t.Errorf("%d PINGREQs in %s, want a few", pings, held)
	}
}

// A remote broker that stops answering, with nothing waiting on Kafka, is
// given up after the keepalive and the ping timeout, and reconnected.
func TestUpstreamSilentRemoteIsReconnected(t *testing.T) {
	const keepAlive = time.Second
	silent := func(nc net.Conn) {
		for {
			if _, err := packets.ReadPacket(nc); err != nil {
				return
			}
		}
	}
	fake := startFakeRemote(t, true, silent)
	logs := &testutil.SyncBuffer{}
	us, _ := upstreamForTest(t, UpstreamConfig{
		URL: fake.url(), KeepAlive: keepAlive, ConnectTimeout: time.Second,
		ReconnectMin: 10 * time.Millisecond, ReconnectMax: 20 * time.Millisecond,
	}, &fakeProducer{}, slog.New(slog.NewTextHandler(logs, nil)))
	us.Start()
	ts := fake.waitConnects(t, 2)
	// keepalive, then the ping timeout (keepalive/2, at least 1s), checked
	// every keepalive/4: about 2.25s; 6s leaves room for a loaded machine.
	if gap := ts[1].Sub(ts[0]); gap < keepAlive || gap > 6*time.Second {
		t.Errorf("reconnected %s after connecting to a remote that answers nothing, want between %s and 6s", gap, keepAlive)
	}
	lost := logs.Lines("upstream connection lost")
	if len(lost) == 0 || !strings.Contains(lost[0], "PINGREQ") {
		t.Errorf("the log does not say the remote broker did not answer PINGREQ: %q", lost)
	}
}

// pendingToken is a paho.Token whose flow never completes.
type pendingToken struct{ done chan struct{} }

func (t pendingToken) Wait() bool                     { <-t.done; return true }
func (t pendingToken) WaitTimeout(time.Duration) bool { return false }
func (t pendingToken) Done() <-chan struct{}          { return t.done }
func (t pendingToken) Error() error                   { return nil }

// A handler that is taking messages, one short producer call after
// another (as after a long wait for Kafka, with the remote's backlog in
// front of the SUBACK), keeps waitReply waiting, however the calls fall
// against its timer; once the handler is idle for the whole timeout, the
// answer is given up on.
func TestUpstreamWaitReplyWaitsForABusyHandler(t *testing.T) {
	_, u := upstreamForTest(t, UpstreamConfig{}, &fakeProducer{}, nil)
	c := newConn(u)
	const d, busy = 50 * time.Millisecond, 400 * time.Millisecond
	start := time.Now()
	go func() {
		for time.Since(start) < busy {
			c.producerCalls.Add(1)
			time.Sleep(time.Millisecond)
			c.producerCalls.Add(1)
			time.Sleep(4 * time.Millisecond)
		}
	}()
	err := c.waitReply(pendingToken{done: make(chan struct{})}, d)
	if took := time.Since(start); took < busy || err == nil || !strings.Contains(err.Error(), "no answer within 50ms") {
		t.Fatalf("waitReply returned %v after %s, want \"no answer within 50ms\" after the handler's %s of calls", err, took, busy)
	}
}
