package bridge

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/tributary-io/tributary/internal/testutil"
)

func testConsumer(t *testing.T, c *kfake.Cluster, cfg ConsumerConfig) *Consumer {
	t.Helper()
	cfg.Bootstrap = c.ListenAddrs()[0]
	if cfg.Topics == nil {
		cfg.Topics = []string{"t"}
	}
	cfg.SessionTimeout = 6 * time.Second // quick rebalances
	cons, err := NewConsumer(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cons.Close)
	return cons
}

func nextRecords(t *testing.T, cons *Consumer, n int) []*ConsumedRecord {
	t.Helper()
	var recs []*ConsumedRecord
	timeout := time.After(60 * time.Second)
	for len(recs) < n {
		select {
		case r := <-cons.Records():
			recs = append(recs, r)
		case <-timeout:
			t.Fatalf("%d of %d records", len(recs), n)
		}
	}
	return recs
}

func commitNow(t *testing.T, cons *Consumer, r *ConsumedRecord) {
	t.Helper()
	done := make(chan error, 1)
	if err := cons.Commit(r.Assignment, r.Offset, func(err error) { done <- err }); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A record from an earlier assignment of a partition cannot commit the
// group's offset back over what another member committed while it owned
// the partition: not by Commit, nor by Store.
func TestConsumerStaleCommitAfterRebalance(t *testing.T) {
	c := testutil.KafkaCluster(t)
	testutil.ProduceTo(t, c, 10)
	// The range assignor gives the one partition to the member whose id
	// sorts first; Kafka member ids start with the client id.
	a := testConsumer(t, c, ConsumerConfig{GroupID: "g", ClientID: "b-member"})
	old := nextRecords(t, a, 10)
	b := testConsumer(t, c, ConsumerConfig{GroupID: "g", ClientID: "a-member"})
	nextRecords(t, b, 10) // from the start: nothing was committed
	testutil.ProduceTo(t, c, 10)
	commitNow(t, b, nextRecords(t, b, 10)[9])
	b.Close()
	testutil.ProduceTo(t, c, 1)
	fresh := nextRecords(t, a, 1)[0]
	if fresh.Offset != 20 {
		t.Fatalf("back with the first member at offset %d, want 20, after the other's commit", fresh.Offset)
	}
	if old[5].Assignment.Current() || !fresh.Assignment.Current() {
		t.Fatal("a record fetched before the partition moved away counts as current")
	}
	if err := a.Commit(old[5].Assignment, old[5].Offset, nil); !errors.Is(err, ErrNotAssigned) {
		t.Fatalf("commit of a record from the first assignment: %v, want ErrNotAssigned", err)
	}
	if err := a.Commit(fresh.Assignment, 5, nil); !errors.Is(err, ErrNotAssigned) {
		t.Fatalf("commit below the current assignment's start: %v, want ErrNotAssigned", err)
	}
	a.Store(old)
	a.Close() // commits what is due
	if off := testutil.CommittedOffset(t, c, "g"); off != 20 {
		t.Fatalf("group offset %d after the first member's stale commits, want 20", off)
	}
}

// A commit Kafka refused stays due: it is retried on the next commit
// interval, without the caller asking again.
func TestConsumerRetriesFailedCommit(t *testing.T) {
	c := testutil.KafkaCluster(t)
	testutil.ProduceTo(t, c, 10)
	cons := testConsumer(t, c, ConsumerConfig{GroupID: "g", ClientID: "m", CommitInterval: 100 * time.Millisecond})
	recs := nextRecords(t, cons, 10)
	// Kafka refuses the next commit (a control function applies once).
	testutil.RefuseNextCommit(c)
	done := make(chan error, 1)
	if err := cons.Commit(recs[4].Assignment, recs[4].Offset, func(err error) { done <- err }); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err == nil {
		t.Fatal("the refused commit succeeded")
	}
	for deadline := time.Now().Add(10 * time.Second); testutil.CommittedOffset(t, c, "g") != 5; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("group offset %d, want 5 once the commit was retried", testutil.CommittedOffset(t, c, "g"))
		}
	}
}

// Errors that stop the consumer reading its topics reach OnError, once
// however often librdkafka repeats them.
func TestConsumerReportsUnreadableTopics(t *testing.T) {
	for _, tc := range []struct {
		name  string
		topic string
		setup func(c *kfake.Cluster)
		want  error
	}{
		{name: "no such topic", topic: "absent", want: ErrNoSuchTopic},
		{name: "not authorized", topic: "t", want: ErrAccessDenied, setup: func(c *kfake.Cluster) {
			c.ControlKey(int16(kmsg.Fetch), func(req kmsg.Request) (kmsg.Response, error, bool) {
				c.KeepControl()
				r := req.(*kmsg.FetchRequest)
				resp := r.ResponseKind().(*kmsg.FetchResponse)
				for _, rt := range r.Topics {
					st := kmsg.NewFetchResponseTopic()
					st.Topic, st.TopicID = rt.Topic, rt.TopicID
					for _, rp := range rt.Partitions {
						sp := kmsg.NewFetchResponseTopicPartition()
						sp.Partition = rp.Partition
						sp.ErrorCode = kerr.TopicAuthorizationFailed.Code
						sp.RecordBatches = []byte{} // librdkafka refuses a null one
						st.Partitions = append(st.Partitions, sp)
					}
					resp.Topics = append(resp.Topics, st)
				}
				return resp, nil, true
			})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testutil.KafkaCluster(t)
			testutil.ProduceTo(t, c, 1)
			if tc.setup != nil {
				tc.setup(c)
			}
			errs := make(chan error, 100)
			testConsumer(t, c, ConsumerConfig{GroupID: "g", ClientID: "m", Topics: []string{tc.topic}, OnError: func(err error) { errs <- err }})
			select {
			case err := <-errs:
				if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.topic) {
					t.Fatalf("OnError(%v), want %v naming topic %q", err, tc.want, tc.topic)
				}
				t.Logf("reported: %v", err)
			case <-time.After(30 * time.Second):
				t.Fatal("no error reported")
			}

		})
	}
}

// An error librdkafka keeps repeating reaches OnError once per errorEvery
// for each kind.
func TestConsumerReportsEachKindOnceInAWhile(t *testing.T) {
	var got []error
	c := &Consumer{cfg: ConsumerConfig{OnError: func(err error) { got = append(got, err) }},
		log: slog.New(slog.NewTextHandler(io.Discard, nil)), reported: map[kafka.ErrorCode]time.Time{}}
	denied := kafka.NewError(kafka.ErrTopicAuthorizationFailed, "Fetch failed", false)
	for range 3 {
		c.report("reading t", denied)
	}
	c.report("reading u", kafka.NewError(kafka.ErrUnknownTopicOrPart, "Subscribed topic not available", false))
	c.report("reading t", kafka.NewError(kafka.ErrAllBrokersDown, "down", false)) // recovers on its own
	if len(got) != 2 || !errors.Is(got[0], ErrAccessDenied) || !errors.Is(got[1], ErrNoSuchTopic) {
		t.Fatalf("reported %v, want one of each kind", got)
	}
	c.reported[kafka.ErrTopicAuthorizationFailed] = time.Now().Add(-errorEvery)
	c.report("reading t", denied)
	if len(got) != 3 {
		t.Fatalf("not reported again after %s", errorEvery)
	}
}

// recv waits for a value from ch.
func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatal("nothing came")
	}
	panic("unreachable")
}

// slowCommits makes c hold every OffsetCommit until the test lets it
// through, one per call of the returned function; the offset of t[0]
// each carries arrives on started first.
func slowCommits(t *testing.T, c *kfake.Cluster) (started <-chan int64, letOne func()) {
	t.Helper()
	s := make(chan int64, 10)
	release := make(chan struct{})
	stop := make(chan struct{})
	c.ControlKey(int16(kmsg.OffsetCommit), func(req kmsg.Request) (kmsg.Response, error, bool) {
		r := req.(*kmsg.OffsetCommitRequest)
		off := int64(-1)
		if len(r.Topics) > 0 && len(r.Topics[0].Partitions) > 0 {
			off = r.Topics[0].Partitions[0].Offset
		}
		s <- off
		c.SleepControl(func() {
			select {
			case <-release:
			case <-stop:
			}
		})
		return nil, nil, false // then answered as usual
	})
	// Before the consumer's Close, which commits: a failing test must not
	// leave it waiting for a commit nobody lets through.
	t.Cleanup(func() { close(stop) })
	return s, func() { release <- struct{}{} }
}

// A commit waiting for Kafka holds up neither Store nor Commit, so a
// socket keeps marking what it wrote while the broker is slow. A
// commit's acknowledgement still waits for Kafka's answer, and one asked
// for while another commit is in flight is settled by the commit that
// carries its offset, not by the one in flight.
func TestConsumerStoreDuringSlowCommit(t *testing.T) {
	c := testutil.KafkaCluster(t)
	testutil.ProduceTo(t, c, 10)
	cons := testConsumer(t, c, ConsumerConfig{GroupID: "g", ClientID: "m", CommitInterval: time.Hour})
	recs := nextRecords(t, cons, 10)
	started, letOne := slowCommits(t, c)

	first := make(chan error, 1)
	if err := cons.Commit(recs[4].Assignment, recs[4].Offset, func(err error) { first <- err }); err != nil {
		t.Fatal(err)
	}
	if off := recv(t, started); off != 5 {
		t.Fatalf("first commit carries offset %d, want 5", off)
	}
	second := make(chan error, 1)
	returned := make(chan error, 1)
	go func() {
		cons.Store(recs[5:7])
		returned <- cons.Commit(recs[8].Assignment, recs[8].Offset, func(err error) { second <- err })
	}()
	select {
	case err := <-returned:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Store and Commit waited for the commit in flight")
	}
	select {
	case err := <-first:
		t.Fatalf("commit acknowledged (%v) before Kafka answered", err)
	default:
	}

	letOne()
	if err := recv(t, first); err != nil {
		t.Fatal(err)
	}
	if off := recv(t, started); off != 9 {
		t.Fatalf("second commit carries offset %d, want 9", off)
	}
	select {
	case err := <-second:
		t.Fatalf("commit of offset 8 acknowledged (%v) before the commit carrying it was answered", err)
	default:
	}
	letOne()
	if err := recv(t, second); err != nil {
		t.Fatal(err)
	}
	if off := testutil.CommittedOffset(t, c, "g"); off != 9 {
		t.Fatalf("group offset %d, want 9", off)
	}
}

// onMessage is a slog handler that calls f, on the logging goroutine, for
// each record whose message is msg, at any level.
type onMessage struct {
	msg string
	f   func()
}

func (h onMessage) Enabled(context.Context, slog.Level) bool { return true }
func (h onMessage) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.f()
	}
	return nil
}
func (h onMessage) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h onMessage) WithGroup(string) slog.Handler      { return h }

// librdkafka keeps a partition's pause across its revocation and a later
// assignment. A consumer paused for a slow reader that catches up while
// the group rebalances, with nothing assigned, must still read the
// partitions it is given back.
func TestConsumerReadsPartitionPausedAcrossRebalance(t *testing.T) {
	c := testutil.KafkaCluster(t)
	testutil.ProduceTo(t, c, 200)
	paused := make(chan bool, 16)
	var a atomic.Pointer[Consumer] // set once NewConsumer returns, read by the handler
	drained := make(chan int, 1)
	// The reader catches up inside the revocation, on the poll goroutine:
	// the consumer resumes before the group can assign anything again.
	log := slog.New(onMessage{msg: "partitions revoked", f: func() {
		n := 0
		for len(a.Load().Records()) > 0 {
			<-a.Load().Records()
			n++
		}
		select {
		case drained <- n:
		default:
		}
	}})
	cons, err := NewConsumer(ConsumerConfig{
		Bootstrap:      c.ListenAddrs()[0],
		GroupID:        "g",
		ClientID:       "a-member", // sorts first: the range assignor gives it the partition back
		Topics:         []string{"t"},
		SessionTimeout: 6 * time.Second,
		QueueSize:      2,
		OnPause:        func(p bool) { paused <- p },
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	a.Store(cons)
	t.Cleanup(cons.Close)
	if !recv(t, paused) {
		t.Fatal("resumed before it paused")
	}
	testConsumer(t, c, ConsumerConfig{GroupID: "g", ClientID: "b-member"})
	if n := recv(t, drained); n == 0 {
		t.Fatal("nothing was queued for the reader at the revocation")
	}
	if recv(t, paused) {
		t.Fatal("paused again instead of resuming")
	}
	select {
	case r := <-cons.Records():
		if !r.Assignment.Current() {
			t.Fatalf("record %d is from the revoked assignment", r.Offset)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no record in 30s: the partition given back stayed paused")
	}
}

// A session timeout past librdkafka's default max.poll.interval.ms (5
// minutes), which websocket.session_timeout allows up to 30m, still makes
// a consumer: librdkafka refuses one whose poll interval is the shorter.
func TestConsumerWithALongSessionTimeout(t *testing.T) {
	cons, err := NewConsumer(ConsumerConfig{
		Bootstrap:      "127.0.0.1:1",
		GroupID:        "g",
		ClientID:       "c",
		Topics:         []string{"t"},
		SessionTimeout: 10 * time.Minute,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("a consumer with a 10m session timeout: %v", err)
	}
	cons.Close()
}
