package bridge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tributary-io/tributary/internal/testutil"
	"github.com/tributary-io/tributary/mapping"
)

// fakeProducer records what upstreams produce. It reports each record
// delivered with err at once, or, holding, keeps the handlers for the test
// to call.
type fakeProducer struct {
	mu       sync.Mutex
	produced []string // record values, in the order Produce was called
	hold     bool
	held     []DeliveryHandler
	err      error
}

var _ UpstreamProducer = (*fakeProducer)(nil)

func (p *fakeProducer) Produce(_ context.Context, rec *Record, h DeliveryHandler) error {
	p.mu.Lock()
	p.produced = append(p.produced, string(rec.Value))
	hold, err := p.hold, p.err
	if hold {
		p.held = append(p.held, h)
	}
	p.mu.Unlock()
	if !hold {
		h.Delivered(Delivery{Topic: rec.Topic, Err: err})
	}
	return nil
}

func (p *fakeProducer) TryProduce(ctx context.Context, rec *Record, h DeliveryHandler) error {
	return p.Produce(ctx, rec, h)
}

func (p *fakeProducer) EnsureTopic(context.Context, string) error { return nil }

func (p *fakeProducer) values() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.produced)
}

func (p *fakeProducer) heldHandlers() []DeliveryHandler {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.held)
}

// upstreamForTest builds one upstream producing into p, closed at cleanup.
// log may be nil.
func upstreamForTest(t testing.TB, cfg UpstreamConfig, p UpstreamProducer, log *slog.Logger) (*Upstreams, *upstream) {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "remote"
	}
	if cfg.KafkaTopic == "" {
		cfg.KafkaTopic = "remote-data"
	}
	if cfg.Subscriptions == nil {
		cfg.Subscriptions = []UpstreamSubscription{{Filter: "#", QoS: 1}}
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	us := NewUpstreams([]UpstreamConfig{cfg}, p, nil, prometheus.NewRegistry(), log)
	t.Cleanup(us.Close)
	return us, us.list[0]
}

// fixedCredentials is UpstreamConfig.Credentials for a password and TLS
// configuration that never change.
func fixedCredentials(password string, tc *tls.Config) func() (string, *tls.Config, error) {
	return func() (string, *tls.Config, error) { return password, tc, nil }
}

// writePublish writes a QoS 1 PUBLISH, as a remote broker sends it.
func writePublish(w io.Writer, id uint16, topic, payload string) error {
	pub := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	pub.Qos, pub.MessageID, pub.TopicName, pub.Payload = 1, id, topic, []byte(payload)
	return pub.Write(w)
}

// connForTest is a connection of u as connect makes it, on a pipe instead
// of paho's socket, with its ack writer running. The channel yields the
// packet id of each PUBACK written to the pipe and is closed once the
// pipe is.
func connForTest(t *testing.T, u *upstream) (*conn, net.Conn, <-chan uint16) {
	t.Helper()
	c, client, remote := pipeConn(t, u)
	acks := make(chan uint16, 100)
	go func() {
		defer close(acks)
		var b [4]byte
		for {
			if _, err := io.ReadFull(remote, b[:]); err != nil {
				return
			}
			if b[0] != packets.Puback<<4 || b[1] != 2 {
				t.Errorf("the ack writer wrote % x, not a PUBACK", b)
				return
			}
			acks <- uint16(b[2])<<8 | uint16(b[3])
		}
	}()
	return c, client, acks
}

// pipeConn is a connection of u as connect makes it, with its ack writer
// running, on a pipe whose remote end the caller reads; all closed at
// cleanup.
func pipeConn(t *testing.T, u *upstream) (c *conn, client, remote net.Conn) {
	t.Helper()
	client, remote = net.Pipe()
	c = newConn(u)
	a := newAckConn(client, 4096)
	a.writeTimeout = u.cfg.ConnectTimeout // as upstream.dial sets it
	c.nc.Store(a)
	u.ackers.Add(1)
	go c.writeAcks()
	t.Cleanup(func() {
		c.lose(nil)
		client.Close() // first: it ends a write the remote end does not read
		remote.Close()
		u.closeAckers()
	})
	return c, client, remote
}

// counterValue returns c's value.
func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func nextAck(t *testing.T, acks <-chan uint16) uint16 {
	t.Helper()
	select {
	case id, ok := <-acks:
		if !ok {
			t.Fatal("the connection closed before the PUBACK")
		}
		return id
	case <-time.After(5 * time.Second):
		t.Fatal("no PUBACK within 5s")
	}
	return 0
}

// ingest_retained: first skips a resent retained value only while it is
// the last value produced on its topic: a live message in between (retain
// flag cleared, MQTT 3.1.1 3.3.1.3) changed the state, and the resent
// value changes it back.
func TestUpstreamRetainedFirstFollowsLiveMessages(t *testing.T) {
	retainedA := testMessage{topic: "state/1", payload: []byte("A"), retained: true}
	live := func(topic, payload string) testMessage { return testMessage{topic: topic, payload: []byte(payload)} }
	for _, tc := range []struct {
		name string
		msgs []testMessage
		want []string
	}{
		{"a resent retained value is produced once", []testMessage{retainedA, retainedA}, []string{"A"}},
		{"a live change, then the retained value again", []testMessage{retainedA, live("state/1", "B"), retainedA}, []string{"A", "B", "A"}},
		{"a live message of the retained value", []testMessage{retainedA, live("state/1", "A"), retainedA}, []string{"A", "A"}},
		{"a live message on another topic", []testMessage{retainedA, live("state/2", "B"), retainedA}, []string{"A", "B"}},
		{"a cleared value, then the value retained again (as before topics were forgotten)", []testMessage{retainedA, live("state/1", ""), retainedA}, []string{"A", "", "A"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &fakeProducer{}
			_, u := upstreamForTest(t, UpstreamConfig{IngestRetained: RetainedFirst}, p, nil)
			c, _, acks := connForTest(t, u)
			for i, m := range tc.msgs {
				m.qos, m.id = 1, uint16(i+1)
				c.handle(&m)
				// Acknowledged only once Kafka has it: the next message
				// then sees what it left.
				if id := nextAck(t, acks); id != m.id {
					t.Fatalf("PUBACK %d, want %d", id, m.id)
				}
			}
			if got := p.values(); !slices.Equal(got, tc.want) {
				t.Fatalf("produced %q, want %q", got, tc.want)
			}
		})
	}
}

// At QoS 0 there is no acknowledgement to wait for: a retained value is
// remembered once handed to the producer, and skipped when it is resent.
func TestUpstreamRetainedFirstAtQoS0(t *testing.T) {
	p := &fakeProducer{}
	_, u := upstreamForTest(t, UpstreamConfig{IngestRetained: RetainedFirst}, p, nil)
	c, _, _ := connForTest(t, u)
	for _, m := range []testMessage{
		{topic: "state/1", payload: []byte("A"), retained: true},
		{topic: "state/1", payload: []byte("A"), retained: true},
		{topic: "state/1", payload: []byte("B")},
		{topic: "state/1", payload: []byte("A"), retained: true},
	} {
		c.handle(&m)
	}
	if got, want := p.values(), []string{"A", "B", "A"}; !slices.Equal(got, want) {
		t.Fatalf("produced %q, want %q", got, want)
	}
}

// A persistent session may hold a subscription the configuration no
// longer has: its messages are acknowledged, counted and not produced.
func TestUpstreamMessageOfNoConfiguredSubscription(t *testing.T) {
	p := &fakeProducer{}
	_, u := upstreamForTest(t, UpstreamConfig{Subscriptions: []UpstreamSubscription{{Filter: "plant/line1/#", QoS: 1}}}, p, nil)
	c, _, acks := connForTest(t, u)
	for i, topic := range []string{"plant/line2/x", "plant/line1/y"} {
		c.handle(&testMessage{topic: topic, payload: []byte(topic), qos: 1, id: uint16(i + 1)})
		if id := nextAck(t, acks); id != uint16(i+1) {
			t.Fatalf("PUBACK %d, want %d", id, i+1)
		}
	}
	if got, want := p.values(), []string{"plant/line1/y"}; !slices.Equal(got, want) {
		t.Fatalf("produced %q, want %q", got, want)
	}
}

// A filter written as a shared subscription ($share/<group>/<filter>,
// or EMQX's $queue/<filter>), without shared_group, delivers messages on
// the plain topics it covers: they are the feed's, and are produced.
func TestUpstreamSharedSubscriptionFilterIsSubscribed(t *testing.T) {
	for _, filter := range []string{"$share/tributary/plant/#", "$queue/plant/#"} {
		t.Run(filter, func(t *testing.T) {
			p := &fakeProducer{}
			_, u := upstreamForTest(t, UpstreamConfig{Subscriptions: []UpstreamSubscription{{Filter: filter, QoS: 1}}}, p, nil)
			c, _, acks := connForTest(t, u)
			c.handle(&testMessage{topic: "plant/line1/temp", payload: []byte("21.5"), qos: 1, id: 1})
			c.handle(&testMessage{topic: "office/temp", payload: []byte("19"), qos: 1, id: 2})
			for want := uint16(1); want <= 2; want++ {
				if id := nextAck(t, acks); id != want {
					t.Fatalf("PUBACK %d, want %d", id, want)
				}
			}
			if got, want := p.values(), []string{"21.5"}; !slices.Equal(got, want) {
				t.Fatalf("produced %q, want %q", got, want)
			}
		})
	}
}

func TestMatchFilter(t *testing.T) {
	for _, tc := range []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/b", "a/b/c", false},
		{"a/b/c", "a/b", false},
		{"a/+", "a/b", true},
		{"a/+", "a/", true},
		{"a/+", "a", false},
		{"a/+", "a/b/c", false},
		{"+/+", "/finance", true},
		{"/+", "/finance", true},
		{"+", "/finance", false},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"a/#", "ab", false},
		{"#", "a/b", true},
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/x", true},
		{"a/+/c", "a/b/c", true},
		{"a/+/c", "a/b/d", false},
		{"a/b/#", "a/b", true},
		{"a/b/#", "a/c", false},
	} {
		if got := matchFilter(tc.filter, tc.topic); got != tc.want {
			t.Errorf("matchFilter(%q, %q) = %v, want %v", tc.filter, tc.topic, got, tc.want)
		}
	}
}

// Looking up a live message's topic allocates nothing, whether or not the
// topic has a retained value.
func TestUpstreamRetainedLookupAllocatesNothing(t *testing.T) {
	_, u := upstreamForTest(t, UpstreamConfig{IngestRetained: RetainedFirst}, &fakeProducer{}, nil)
	u.retainedSeen(&inflight{msg: &testMessage{topic: "state/1", payload: []byte("A"), qos: 1, retained: true}})
	for _, topic := range []string{"state/1", "feed/never-retained"} {
		e := &inflight{msg: &testMessage{topic: topic, payload: []byte("B"), qos: 1}}
		if allocs := testing.AllocsPerRun(1000, func() { u.retainedSeen(e) }); allocs != 0 {
			t.Errorf("%s: %.1f allocations per message, want 0", topic, allocs)
		}
	}
}

// When a record fails, the PUBACKs gathered for the records before it,
// which Kafka has, still go out; only what follows is left to redeliver.
func TestUpstreamFailureKeepsEarlierAcks(t *testing.T) {
	for _, tc := range []struct {
		name     string
		err      error
		draining bool
	}{
		{"transient Kafka error", errors.New("broker transport failure"), false},
		{"producer stopped at drain", context.Canceled, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &fakeProducer{hold: true}
			_, u := upstreamForTest(t, UpstreamConfig{}, p, nil)
			c, client, acks := connForTest(t, u)
			c.handle(&testMessage{topic: "d/1", payload: []byte("m1"), qos: 1, id: 1})
			c.handle(&testMessage{topic: "d/1", payload: []byte("m2"), qos: 1, id: 2})
			if tc.draining {
				u.draining.Store(true)
			}
			held := p.heldHandlers()
			if len(held) != 2 {
				t.Fatalf("%d records produced, want 2", len(held))
			}
			// The second first: the ack writer then finds both done in
			// one pass, m1's PUBACK gathered when m2's failure comes.
			held[1].Delivered(Delivery{Err: tc.err})
			held[0].Delivered(Delivery{})
			u.closeAckers() // its last pass, and the writer has ended
			client.Close()
			var got []uint16
			for id := range acks {
				got = append(got, id)
			}
			if !slices.Equal(got, []uint16{1}) {
				t.Fatalf("PUBACKs %v, want [1]: m1 is in Kafka, m2 is not", got)
			}
		})
	}
}

// Once a connection is lost, what paho still hands over from it is left
// for the remote broker to resend on the next connection, not produced
// where it can never be acknowledged; under a clean session nothing is
// resent, so it is produced.
func TestUpstreamLostConnectionProducesNoMore(t *testing.T) {
	for _, tc := range []struct {
		name  string
		clean bool
		kafka bool // lost through a Kafka error on m1, not the network
		want  []string
	}{
		{"network, persistent session", false, false, []string{"m1"}},
		{"Kafka error, persistent session", false, true, []string{"m1"}},
		{"network, clean session", true, false, []string{"m1", "m2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &fakeProducer{}
			if tc.kafka {
				p.err = errors.New("broker transport failure")
			}
			_, u := upstreamForTest(t, UpstreamConfig{CleanSession: tc.clean}, p, nil)
			c, _, acks := connForTest(t, u)
			c.handle(&testMessage{topic: "d/1", payload: []byte("m1"), qos: 1, id: 1})
			if tc.kafka {
				select {
				case <-c.lost:
				case <-time.After(5 * time.Second):
					t.Fatal("a Kafka error did not end the connection")
				}
			} else {
				if id := nextAck(t, acks); id != 1 {
					t.Fatalf("PUBACK %d, want 1", id)
				}
				c.lose(errors.New("connection reset by peer"))
			}
			c.handle(&testMessage{topic: "d/1", payload: []byte("m2"), qos: 1, id: 2})
			if got := p.values(); !slices.Equal(got, tc.want) {
				t.Fatalf("produced %q, want %q", got, tc.want)
			}
		})
	}
}

// fakeRemote is a remote MQTT broker that accepts every connection and
// subscription, then serves it with serve and closes it.
type fakeRemote struct {
	t              *testing.T
	l              net.Listener
	sessionPresent bool
	serve          func(net.Conn)
	// suback, if set, is the SUBACK written for sub instead of one
	// granting what it asked.
	suback func(sub *packets.SubscribePacket) []byte

	mu       sync.Mutex
	connects []time.Time
}

func startFakeRemote(t *testing.T, sessionPresent bool, serve func(net.Conn)) *fakeRemote {
	t.Helper()
	return startFakeRemoteSuback(t, sessionPresent, nil, serve)
}

// startFakeRemoteSuback is startFakeRemote answering subscriptions with
// suback (see fakeRemote.suback).
func startFakeRemoteSuback(t *testing.T, sessionPresent bool, suback func(*packets.SubscribePacket) []byte, serve func(net.Conn)) *fakeRemote {
	t.Helper()
	r := &fakeRemote{t: t, l: loopback(t), sessionPresent: sessionPresent, serve: serve, suback: suback}
	serveConns(t, r.l, 0, r.session)
	return r
}

func (r *fakeRemote) url() string { return "tcp://" + r.l.Addr().String() }

func (r *fakeRemote) session(nc net.Conn) {
	defer nc.Close()
	if pk, err := packets.ReadPacket(nc); err != nil {
		return
	} else if _, ok := pk.(*packets.ConnectPacket); !ok {
		r.t.Errorf("first packet %s, want CONNECT", pk)
		return
	}
	r.mu.Lock()
	r.connects = append(r.connects, time.Now())
	r.mu.Unlock()
	ca := packets.NewControlPacket(packets.Connack).(*packets.ConnackPacket)
	ca.SessionPresent = r.sessionPresent
	if ca.Write(nc) != nil {
		return
	}
	pk, err := packets.ReadPacket(nc)
	if err != nil {
		return
	}
	sub, ok := pk.(*packets.SubscribePacket)
	if !ok {
		r.t.Errorf("packet %s, want SUBSCRIBE", pk)
		return
	}
	if r.suback != nil {
		if _, err := nc.Write(r.suback(sub)); err != nil {
			return
		}
	} else {
		sa := packets.NewControlPacket(packets.Suback).(*packets.SubackPacket)
		sa.MessageID, sa.ReturnCodes = sub.MessageID, sub.Qoss
		if sa.Write(nc) != nil {
			return
		}
	}
	r.serve(nc)
}

func (r *fakeRemote) connectTimes() []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.connects)
}

func (r *fakeRemote) waitConnects(t *testing.T, n int) []time.Time {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if ts := r.connectTimes(); len(ts) >= n {
			return ts
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections in 20s, want %d", len(r.connectTimes()), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// lastAWhile is a connection's lifetime in the fake remote: long enough
// for paho to have taken the SUBACK, far shorter than reconnect_max.
func lastAWhile(net.Conn) { time.Sleep(20 * time.Millisecond) }

// A connection lost right after each connect (Kafka refusing every
// record, another client taking the client id over) backs off up to
// reconnect_max like a refused connect; one that got a record into Kafka
// starts the backoff over.
func TestUpstreamReconnectBackoff(t *testing.T) {
	const minWait, maxWait = 10 * time.Millisecond, 320 * time.Millisecond
	deliverOne := func(nc net.Conn) {
		if writePublish(nc, 1, "d/1", "m") != nil {
			return
		}
		for {
			pk, err := packets.ReadPacket(nc)
			if err != nil {
				return
			}
			if _, ok := pk.(*packets.PubackPacket); ok {
				return
			}
		}
	}
	for _, tc := range []struct {
		name  string
		serve func(net.Conn)
		grows bool
	}{
		{"lost at once", lastAWhile, true},
		{"lost after a record is in Kafka", deliverOne, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startFakeRemote(t, true, tc.serve)
			us, _ := upstreamForTest(t, UpstreamConfig{
				URL: r.url(), ClientID: "trib-backoff", Subscriptions: []UpstreamSubscription{{Filter: "d/#", QoS: 1}},
				KeepAlive: 5 * time.Second, ConnectTimeout: 5 * time.Second, ReconnectMin: minWait, ReconnectMax: maxWait,
			}, &fakeProducer{}, nil)
			us.Start()
			// After five lost connections the wait is backoff(5) or more:
			// reconnect_max with jitter, at least half of it.
			ts := r.waitConnects(t, 7)
			last := ts[6].Sub(ts[5])
			switch {
			case tc.grows && last < maxWait/2:
				t.Fatalf("%s between the 6th and 7th connection, want at least %s: the backoff did not grow", last, maxWait/2)
			case !tc.grows && last >= maxWait/2:
				t.Fatalf("%s between the 6th and 7th connection: the backoff grew though each connection delivered", last)
			}
		})
	}
}

// A clean session loses what is unacknowledged when a connection ends,
// which the start-up log says for an upstream with QoS 1 or 2
// subscriptions.
func TestUpstreamCleanSessionWarning(t *testing.T) {
	for _, tc := range []struct {
		name  string
		clean bool
		qos   byte
		warn  bool
	}{
		{"clean session, QoS 1", true, 1, true},
		{"clean session, QoS 0", true, 0, false},
		{"persistent session, QoS 1", false, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs testutil.SyncBuffer
			upstreamForTest(t, UpstreamConfig{CleanSession: tc.clean, Subscriptions: []UpstreamSubscription{{Filter: "d/#", QoS: tc.qos}}},
				&fakeProducer{}, slog.New(slog.NewTextHandler(&logs, nil)))
			warned := len(logs.Lines("level=WARN")) > 0 && len(logs.Lines("clean_session")) > 0
			if warned != tc.warn {
				t.Fatalf("warned %v, want %v:\n%s", warned, tc.warn, strings.Join(logs.Lines(""), "\n"))
			}
		})
	}
}

// A CONNACK without a session for a persistent one is a warning: whatever
// the remote broker held for Tributary is gone.
func TestUpstreamSessionNotPresentWarning(t *testing.T) {
	for _, tc := range []struct {
		name     string
		clean    bool
		present  bool
		connects int
		want     string // in the log line of the last connect
	}{
		{"persistent session resumed", false, true, 1, "level=INFO"},
		{"persistent session not there at the first connect", false, false, 1, "level=WARN"},
		{"persistent session lost between connections", false, false, 2, "lost this client id's session"},
		{"clean session", true, false, 1, "level=INFO"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startFakeRemote(t, tc.present, func(nc net.Conn) {
				if tc.connects == 1 {
					_, _ = io.Copy(io.Discard, nc) // stays up
				} else {
					lastAWhile(nc)
				}
			})
			var logs testutil.SyncBuffer
			us, _ := upstreamForTest(t, UpstreamConfig{
				URL: r.url(), ClientID: "trib-session", CleanSession: tc.clean, Subscriptions: []UpstreamSubscription{{Filter: "d/#", QoS: 1}},
				KeepAlive: 5 * time.Second, ConnectTimeout: 5 * time.Second, ReconnectMin: 10 * time.Millisecond, ReconnectMax: 20 * time.Millisecond,
			}, &fakeProducer{}, slog.New(slog.NewTextHandler(&logs, nil)))
			us.Start()
			deadline := time.Now().Add(20 * time.Second)
			for len(logs.Lines("connected to upstream")) < tc.connects {
				if time.Now().After(deadline) {
					t.Fatalf("%d connections logged in 20s, want %d", len(logs.Lines("connected to upstream")), tc.connects)
				}
				time.Sleep(5 * time.Millisecond)
			}
			line := logs.Lines("connected to upstream")[tc.connects-1]
			if !strings.Contains(line, tc.want) {
				t.Fatalf("connect logged as\n%s\nwant %q", line, tc.want)
			}
		})
	}
}

// Records Kafka refuses for good are acknowledged (holding them would
// stall the feed) and counted, and a feed of them logs one line per
// interval, not one per message. (A refusal of the upstream's kafka_topic
// itself is not acknowledged: see TestUpstreamRefusedFixedTopicIsNotAcknowledged.)
func TestUpstreamRefusedRecordsLoggedOnceInAWhile(t *testing.T) {
	p := &fakeProducer{err: fmt.Errorf("producing: %w", ErrRecordTooLarge)}
	var logs testutil.SyncBuffer
	_, u := upstreamForTest(t, UpstreamConfig{}, p, slog.New(slog.NewTextHandler(&logs, nil)))
	c, _, acks := connForTest(t, u)
	for id := uint16(1); id <= 5; id++ {
		c.handle(&testMessage{topic: "d/1", payload: []byte("m"), qos: 1, id: id})
		if got := nextAck(t, acks); got != id {
			t.Fatalf("PUBACK %d, want %d", got, id)
		}
	}
	if n := len(logs.Lines("the record can never be produced")); n != 1 {
		t.Fatalf("%d log lines for 5 refused records, want 1", n)
	}
}

// Kafka refusing the upstream's kafka_topic, which every message goes to,
// acknowledges nothing and ends the connection, so that the remote broker
// keeps the feed; a rule's topic refused for good is acknowledged.
func TestUpstreamRefusedFixedTopicIsNotAcknowledged(t *testing.T) {
	for _, tc := range []struct {
		name       string
		kafkaTopic string // empty: the rules choose the topic
		acked      bool
	}{
		{"kafka_topic", "remote-data", false},
		{"rules", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &fakeProducer{err: fmt.Errorf("producing: %w", ErrUnknownTopic)}
			_, u := upstreamForTest(t, UpstreamConfig{}, p, nil)
			if tc.kafkaTopic == "" {
				m, err := mapping.New(mapping.Config{}) // every topic to "mqtt"
				if err != nil {
					t.Fatal(err)
				}
				u.cfg.KafkaTopic, u.mapper = "", m
			}
			c, _, acks := connForTest(t, u)
			c.handle(&testMessage{topic: "d/1", payload: []byte("m"), qos: 1, id: 1})
			if tc.acked {
				if got := nextAck(t, acks); got != 1 {
					t.Fatalf("PUBACK %d, want 1", got)
				}
				return
			}
			select {
			case <-c.lost:
			case <-time.After(5 * time.Second):
				t.Fatal("the connection was not given up")
			}
			select {
			case id, ok := <-acks:
				if ok {
					t.Fatalf("PUBACK %d for a record Kafka refused the topic of", id)
				}
			case <-time.After(100 * time.Millisecond):
			}
		})
	}
}

// A remote broker that refuses the login is reported with what to
// check, not only paho's words for the CONNACK code.
func TestUpstreamRefusedConnectSaysWhatToCheck(t *testing.T) {
	for _, tc := range []struct {
		code byte
		want []string
	}{
		{packets.ErrRefusedNotAuthorised, []string{"not Authorized", "username and password", "password_file"}},
		{packets.ErrRefusedBadUsernameOrPassword, []string{"bad user name or password", "username and password"}},
		{packets.ErrRefusedIDRejected, []string{"identifier rejected", `client_id "tributary-x-1"`}},
	} {
		t.Run(fmt.Sprint(tc.code), func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
			go func() {
				for {
					nc, err := l.Accept()
					if err != nil {
						return
					}
					if _, err := packets.ReadPacket(nc); err == nil {
						ca := packets.NewControlPacket(packets.Connack).(*packets.ConnackPacket)
						ca.ReturnCode = tc.code
						_ = ca.Write(nc)
					}
					nc.Close()
				}
			}()
			_, u := upstreamForTest(t, UpstreamConfig{URL: "tcp://" + l.Addr().String(), ClientID: "tributary-x-1",
				Username: "bridge", Credentials: fixedCredentials("wrong", nil), ConnectTimeout: 5 * time.Second}, &fakeProducer{}, nil)
			_, err = u.connect()
			if err == nil {
				t.Fatal("connected")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// blockingProducer holds each Produce call until release is closed, as
// the producer does while the in-flight budget is used up or a new
// topic's metadata is awaited from an unreachable Kafka.
type blockingProducer struct {
	fakeProducer
	release chan struct{}
}

func (p *blockingProducer) Produce(ctx context.Context, rec *Record, h DeliveryHandler) error {
	<-p.release
	return p.fakeProducer.Produce(ctx, rec, h)
}

// The messages a resumed session holds arrive before the SUBACK, and
// paho reads nothing more while its handler waits in Produce. A SUBACK
// that comes later than connect_timeout for that reason is not the
// remote broker's fault: the connection is kept, and works once the
// producer takes the message.
func TestUpstreamSubscribeWaitsForABusyHandler(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	subacked := make(chan struct{})
	go func() {
		nc, err := l.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		if _, err := packets.ReadPacket(nc); err != nil {
			return
		}
		ca := packets.NewControlPacket(packets.Connack).(*packets.ConnackPacket)
		ca.SessionPresent = true
		if ca.Write(nc) != nil {
			return
		}
		// More than paho's channels hold besides the one in the handler.
		for id := uint16(1); id <= 5; id++ {
			if writePublish(nc, id, "d/1", fmt.Sprint("held-", id)) != nil {
				return
			}
		}
		for {
			pk, err := packets.ReadPacket(nc)
			if err != nil {
				return
			}
			switch pk := pk.(type) {
			case *packets.SubscribePacket:
				sa := packets.NewControlPacket(packets.Suback).(*packets.SubackPacket)
				sa.MessageID, sa.ReturnCodes = pk.MessageID, pk.Qoss
				if sa.Write(nc) != nil {
					return
				}
				close(subacked)
			}
		}
	}()
	p := &blockingProducer{release: make(chan struct{})}
	_, u := upstreamForTest(t, UpstreamConfig{URL: "tcp://" + l.Addr().String(), ConnectTimeout: 200 * time.Millisecond}, p, nil)
	time.AfterFunc(time.Second, func() { close(p.release) }) // five connect timeouts
	c, err := u.connect()
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { c.client.Disconnect(0) })
	select {
	case <-subacked:
	default:
		t.Fatal("connect returned before the SUBACK")
	}
	want := []string{"held-1", "held-2", "held-3", "held-4", "held-5"}
	deadline := time.Now().Add(5 * time.Second)
	for !slices.Equal(p.values(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("produced %q, want %q", p.values(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The help of the skipped-messages counter names every reason it is
// counted with.
func TestUpstreamSkippedHelpNamesEveryReason(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newUpstreamMetrics(reg)
	reasons := []string{"retained", "retained_seen", "unmatched", "mapping_drop", "mapping_reject", "mapping_error", "not_subscribed", "resent_copy"}
	for _, r := range reasons {
		m.skipped.WithLabelValues("u", r).Inc()
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "tributary_upstream_messages_skipped_total" {
			continue
		}
		for _, r := range reasons {
			if !strings.Contains(mf.GetHelp(), r) {
				t.Errorf("help %q does not name reason %q", mf.GetHelp(), r)
			}
		}
		return
	}
	t.Fatal("no tributary_upstream_messages_skipped_total")
}

// topicWaiter is a producer whose EnsureTopic waits, as it does for a
// Kafka that cannot be reached, until the test ends.
type topicWaiter struct {
	fakeProducer
	asked chan struct{}
}

func (p *topicWaiter) EnsureTopic(ctx context.Context, _ string) error {
	close(p.asked)
	<-ctx.Done()
	return ctx.Err()
}

// While an upstream checks its kafka_topic before its first connect (up
// to 15s with Kafka unreachable), the readiness check says so, rather than
// naming the upstream with no reason.
func TestUpstreamCheckSaysItWaitsForItsTopic(t *testing.T) {
	p := &topicWaiter{asked: make(chan struct{})}
	us, _ := upstreamForTest(t, UpstreamConfig{URL: "tcp://" + testutil.FreeAddr(t), KafkaTopic: "plant-data"}, p, nil)
	us.Start()
	<-p.asked
	err := us.Check()
	if err == nil || !strings.Contains(err.Error(), `remote (not connecting yet: first checking its Kafka topic "plant-data"`) {
		t.Fatalf("Check: %v, want it to say the upstream checks its Kafka topic", err)
	}
}

// waitingProducer's Produce waits, as for a full in-flight budget, until
// release is closed or its context ends; then it produces as fakeProducer.
type waitingProducer struct {
	fakeProducer
	release chan struct{}
	waiting chan string // each record's value as its wait starts
}

func (p *waitingProducer) Produce(ctx context.Context, rec *Record, h DeliveryHandler) error {
	p.waiting <- string(rec.Value)
	select {
	case <-p.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return p.fakeProducer.Produce(ctx, rec, h)
}

// Under a persistent session, a message still waiting for the producer
// when its connection ends is left to the remote broker, which resends
// it on the next connection: it is produced once, and not after the
// messages resent before it. It is not a failure either.
func TestUpstreamWaitForProducerEndsWithConnection(t *testing.T) {
	p := &waitingProducer{release: make(chan struct{}), waiting: make(chan string, 10)}
	us, u := upstreamForTest(t, UpstreamConfig{}, p, nil)
	c1, _, acks1 := connForTest(t, u)
	handled := make(chan struct{})
	go func() {
		defer close(handled)
		c1.handle(&testMessage{topic: "plant/1", payload: []byte("M5"), qos: 1, id: 5})
	}()
	if v := recv(t, p.waiting); v != "M5" {
		t.Fatalf("waiting to produce %q, want M5", v)
	}
	c1.lose(errors.New("network gone"))
	select {
	case <-handled:
	case <-time.After(5 * time.Second):
		t.Fatal("the message still waits for the producer 5s after its connection ended")
	}
	close(p.release)
	c2, _, acks2 := connForTest(t, u)
	for i, v := range []string{"M4", "M5"} { // resent by the remote broker
		c2.handle(&testMessage{topic: "plant/1", payload: []byte(v), qos: 1, id: uint16(i + 1)})
		<-p.waiting
		if id := nextAck(t, acks2); id != uint16(i+1) {
			t.Fatalf("PUBACK %d, want %d", id, i+1)
		}
	}
	if got, want := p.values(), []string{"M4", "M5"}; !slices.Equal(got, want) {
		t.Fatalf("produced %q, want %q", got, want)
	}
	select {
	case id, ok := <-acks1:
		if ok {
			t.Fatalf("PUBACK %d on the connection that ended", id)
		}
	default:
	}
	u.closeAckers() // every ack writer has done its last pass: c1's has judged M5
	series := make(chan prometheus.Metric, 16)
	u.m.failed.Collect(series)
	if n := len(series); n != 0 {
		t.Errorf("%d failure series counted for a message the remote broker resends", n)
	}
	if e := us.LastError(u.cfg.Name); e != "" {
		t.Errorf("last error %q for a message the remote broker resends", e)
	}
}

// Once the upstreams drain for shutdown, a QoS 1 message of a persistent
// session is left unacknowledged for the remote broker to resend; a QoS 0
// message, which nothing resends, and a QoS 1 message of a clean session,
// which the remote broker forgets with the connection, are counted as
// lost and logged.
func TestUpstreamDrainingCountsQoS0Messages(t *testing.T) {
	for _, clean := range []bool{false, true} {
		t.Run(fmt.Sprintf("clean_session %v", clean), func(t *testing.T) {
			p := &fakeProducer{}
			var logs testutil.SyncBuffer
			us, u := upstreamForTest(t, UpstreamConfig{CleanSession: clean}, p, slog.New(slog.NewTextHandler(&logs, nil)))
			c, _, acks := connForTest(t, u)
			us.Drain()
			c.handle(&testMessage{topic: "plant/1", payload: []byte("Q1"), qos: 1, id: 1})
			c.handle(&testMessage{topic: "plant/1", payload: []byte("Q0a")})
			c.handle(&testMessage{topic: "plant/1", payload: []byte("Q0b")})
			if got := p.values(); len(got) != 0 {
				t.Fatalf("produced %q while draining", got)
			}
			u.closeAckers() // every ack writer has done its last pass
			select {
			case id := <-acks:
				t.Fatalf("PUBACK %d for a message not produced", id)
			default:
			}
			want := 2.0 // the QoS 0 messages
			if clean {
				want = 3 // and the QoS 1 one
			}
			if got := counterValue(t, u.m.failed.WithLabelValues(u.cfg.Name, "shutting_down")); got != want {
				t.Fatalf("records_failed_total{reason=shutting_down} = %v, want %v", got, want)
			}
			if n := strings.Count(logs.String(), "messages arriving while shutting down are not produced"); n != 1 {
				t.Fatalf("%d warnings for the lost messages, want 1 (rate-limited):\n%s", n, logs.String())
			}
		})
	}
}

// Clearing a retained value (an empty payload) forgets its topic, so that
// topics that come and go do not pile up for the life of the process.
func TestUpstreamRetainedFirstForgetsClearedTopics(t *testing.T) {
	p := &fakeProducer{}
	_, u := upstreamForTest(t, UpstreamConfig{IngestRetained: RetainedFirst}, p, nil)
	c, _, acks := connForTest(t, u)
	id := uint16(0)
	send := func(m testMessage) {
		id++
		m.qos, m.id = 1, id
		c.handle(&m)
		if got := nextAck(t, acks); got != id {
			t.Fatalf("PUBACK %d, want %d", got, id)
		}
	}
	for i := range 100 {
		topic := fmt.Sprintf("trip/%d/state", i)
		send(testMessage{topic: topic, payload: []byte("started"), retained: true})
		send(testMessage{topic: topic, retained: i%2 == 0}) // cleared, as MQTT 5 or MQTT 3.1.1 deliver it live
	}
	send(testMessage{topic: "trip/kept/state", payload: []byte("started"), retained: true})
	var left []string
	u.retained.Range(func(k, _ any) bool {
		left = append(left, k.(string))
		return true
	})
	if !slices.Equal(left, []string{"trip/kept/state"}) {
		t.Fatalf("topics remembered: %d (first %q), want only trip/kept/state", len(left), left[:min(len(left), 3)])
	}
}

// A remote broker answering the subscription with a SUBACK of two return
// codes (one filter was asked for) ended the whole process: paho indexes
// the codes by the SUBSCRIBE's filters and panicked on its own goroutine.
// The connection now fails, says why, and is made again.
func TestUpstreamMalformedSubackEndsTheConnectionOnly(t *testing.T) {
	r := startFakeRemoteSuback(t, false, func(sub *packets.SubscribePacket) []byte {
		return []byte{packets.Suback << 4, 4, byte(sub.MessageID >> 8), byte(sub.MessageID), 1, 1}
	}, func(nc net.Conn) { _, _ = io.Copy(io.Discard, nc) })
	var logs testutil.SyncBuffer
	us, _ := upstreamForTest(t, UpstreamConfig{
		URL: r.url(), ClientID: "trib-suback", Subscriptions: []UpstreamSubscription{{Filter: "d/#", QoS: 1}},
		KeepAlive: 5 * time.Second, ConnectTimeout: 2 * time.Second, ReconnectMin: 10 * time.Millisecond, ReconnectMax: 20 * time.Millisecond,
	}, &fakeProducer{}, slog.New(slog.NewTextHandler(&logs, nil)))
	us.Start()
	deadline := time.Now().Add(20 * time.Second)
	for len(r.connectTimes()) < 2 || len(logs.Lines("2 return codes for a SUBSCRIBE of one filter")) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections; log:\n%s", len(r.connectTimes()), strings.Join(logs.Lines(""), "\n"))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A copy of a message the remote broker resends on the same connection
// (DUP set, its id still awaiting its PUBACK there) is neither produced
// nor acknowledged again: its first copy's PUBACK stands for it. A second
// PUBACK for the id could reach the remote after it reused the id for a
// new message, and acknowledge that one before Kafka had it. A DUP
// message whose id awaits nothing on the connection (left by an earlier
// connection; or passed on, flag and all, by a shared subscription after
// the id's last message here was acknowledged) is produced, and so is a
// new message on a reused id.
func TestUpstreamCopyResentOnTheConnectionIsTakenOnce(t *testing.T) {
	p := &fakeProducer{hold: true}
	_, u := upstreamForTest(t, UpstreamConfig{}, p, nil)
	c, _, acks := connForTest(t, u)
	deliverAll := func(want int) {
		t.Helper()
		held := p.heldHandlers()
		if len(held) != want {
			t.Fatalf("%d records produced (%q), want %d", len(held), p.values(), want)
		}
		for _, h := range held[want-1:] {
			h.Delivered(Delivery{})
		}
	}
	c.handle(&testMessage{topic: "d/1", payload: []byte("a"), qos: 1, id: 5})
	c.handle(&testMessage{topic: "d/1", payload: []byte("a"), qos: 1, id: 5, dup: true}) // a copy: skipped
	c.handle(&testMessage{topic: "d/1", payload: []byte("c"), qos: 1, id: 7, dup: true}) // left by an earlier connection
	held := p.heldHandlers()
	if len(held) != 2 {
		t.Fatalf("%d records produced (%q), want 2: the copy of 5 was produced again", len(held), p.values())
	}
	held[0].Delivered(Delivery{})
	held[1].Delivered(Delivery{})
	for _, want := range []uint16{5, 7} {
		if id := nextAck(t, acks); id != want {
			t.Fatalf("PUBACK %d, want %d", id, want)
		}
	}
	c.handle(&testMessage{topic: "d/1", payload: []byte("d"), qos: 1, id: 5})            // id 5 reused
	c.handle(&testMessage{topic: "d/1", payload: []byte("d"), qos: 1, id: 5, dup: true}) // a copy: skipped
	deliverAll(3)
	if id := nextAck(t, acks); id != 5 {
		t.Fatalf("PUBACK %d, want 5", id)
	}
	for deadline := time.Now().Add(5 * time.Second); c.isAwaiting(5); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("id 5 still awaits its PUBACK 5s after it was written")
		}
	}
	c.handle(&testMessage{topic: "d/1", payload: []byte("e"), qos: 1, id: 5, dup: true}) // 5 awaits nothing
	deliverAll(4)
	if id := nextAck(t, acks); id != 5 {
		t.Fatalf("PUBACK %d, want 5", id)
	}
	if got := p.values(); !slices.Equal(got, []string{"a", "c", "d", "e"}) {
		t.Fatalf("produced %q, want [a c d e]", got)
	}
	select {
	case id := <-acks:
		t.Fatalf("a PUBACK %d more: a copy was acknowledged again", id)
	case <-time.After(100 * time.Millisecond):
	}
	if got := counterValue(t, u.m.skipped.WithLabelValues(u.cfg.Name, "resent_copy")); got != 2 {
		t.Fatalf("resent_copy counted %v, want 2", got)
	}
}

// A new connection's records keep the order of the previous connection's
// that still await Kafka: while one of those is pending in the
// acknowledged lane, the new connection's QoS 0 record takes that lane
// too, not the best-effort one, where it could reach the partition first.
func TestUpstreamReconnectKeepsOrderWithTheLastConnection(t *testing.T) {
	_, u := upstreamForTest(t, UpstreamConfig{}, &fakeProducer{}, nil)
	var sources atomic.Int64
	first := newConn(u)
	first.order.take(laneAcked, &sources, 0) // a record awaiting Kafka
	second := newConn(u)
	if !second.order.Awaiting() {
		t.Fatal("the new connection does not continue the last one")
	}
	if lane := second.order.take(laneBestEffort, &sources, 0); lane != laneAcked {
		t.Fatalf("the new connection's QoS 0 record took lane %d, want the acknowledged lane %d", lane, laneAcked)
	}
	// Once nothing awaits Kafka, a new connection continues only the last
	// one, which continues nothing: connections that come and go (a
	// remote that is down, a quiet feed) do not make a chain that keeps
	// each of them in memory.
	first.order.settle(&sources)
	second.order.settle(&sources)
	third := newConn(u)
	if third.order.after.Load() != &second.order || second.order.after.Load() != nil {
		t.Fatal("the chain of connections was not cut where nothing awaits Kafka")
	}
}

// A message too large to be read into memory (ackConn.skipPublish) is
// refused as a record over kafka.max_message_bytes is: not produced,
// counted as too large, and acknowledged, since it can never succeed and
// holding its PUBACK would stall the feed.
func TestUpstreamSkippedMessageIsRefusedAsTooLarge(t *testing.T) {
	p := &fakeProducer{}
	_, u := upstreamForTest(t, UpstreamConfig{}, p, nil)
	c, _, acks := connForTest(t, u)
	c.handle(&testMessage{topic: "d/1", qos: 1, id: 3, skipped: 5 << 20})
	c.handle(&testMessage{topic: "d/1", payload: []byte("next"), qos: 1, id: 4})
	for _, want := range []uint16{3, 4} {
		if id := nextAck(t, acks); id != want {
			t.Fatalf("PUBACK %d, want %d", id, want)
		}
	}
	if got := p.values(); !slices.Equal(got, []string{"next"}) {
		t.Fatalf("produced %q, want only the next message", got)
	}
	if got := counterValue(t, u.m.failed.WithLabelValues(u.cfg.Name, "too_large")); got != 1 {
		t.Fatalf("records_failed_total{reason=too_large} = %v, want 1", got)
	}
}

// A copy resent while the first copy's PUBACK is being written (taken off
// the queue, the write waiting for the remote to read) is a copy too: the
// remote sent it before it had the PUBACK.
func TestUpstreamCopyResentWhileItsPubackIsWrittenIsSkipped(t *testing.T) {
	p := &fakeProducer{}
	_, u := upstreamForTest(t, UpstreamConfig{}, p, nil)
	// The remote end reads nothing until told.
	c, _, remote := pipeConn(t, u)
	c.handle(&testMessage{topic: "d/1", payload: []byte("a"), qos: 1, id: 5}) // delivered at once
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		c.mu.Lock()
		taken := len(c.queue) == 0
		c.mu.Unlock()
		if taken {
			break // the writer has it, and waits in the write of its PUBACK
		}
		if time.Now().After(deadline) {
			t.Fatal("the ack writer did not take the message")
		}
	}
	c.handle(&testMessage{topic: "d/1", payload: []byte("a"), qos: 1, id: 5, dup: true})
	var b [4]byte
	if _, err := io.ReadFull(remote, b[:]); err != nil || b != [4]byte{packets.Puback << 4, 2, 0, 5} {
		t.Fatalf("read % x, %v; want PUBACK 5", b, err)
	}
	if got := p.values(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("produced %q, want the first copy only", got)
	}
}
