package bridge

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/tributary-io/tributary/internal/testutil"
)

// With Kafka unreachable, the readiness poll waits up to 3s in a metadata
// request. Close must not destroy the handle under it (a full test run
// crashed with SIGSEGV there once; this test did not reproduce that), and
// must not wait for the poll forever either: the poll holds the handles'
// read lock that Close takes for writing, so a poll that blocked on it
// would deadlock Close. Each round closes at a different point of the
// poll's wait.
func TestCloseDuringReadinessPoll(t *testing.T) {
	for _, after := range []time.Duration{0, 300 * time.Millisecond} {
		p := unreachableProducer(t) // its cleanup's Close does nothing more
		time.Sleep(after)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		start := time.Now()
		p.Close(ctx)
		cancel()
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("closing %v after the start took %v", after, d)
		}
	}
}

// A fatal error leaves the producer unable to take records. Fatal says
// so, for the daemon to stop; the records it refuses are not Permanent
// failures, so no face acknowledges one as done with (an upstream would
// otherwise PUBACK and drop each).
func TestFatalErrorIsSignalledAndNotPermanent(t *testing.T) {
	p := unreachableProducer(t)
	var err error
	if p.FatalErr() != nil {
		t.Fatal("FatalErr before any fatal error")
	}
	if code := p.lanes[laneAcked].TestFatalError(kafka.ErrOutOfOrderSequenceNumber, "test: sequence broken"); code != kafka.ErrNoError {
		t.Fatalf("TestFatalError: %v", code)
	}
	select {
	case <-p.Fatal():
	case <-time.After(10 * time.Second):
		t.Fatal("Fatal not closed after a fatal error")
	}
	if err := p.FatalErr(); err == nil || !strings.Contains(err.Error(), "sequence broken") {
		t.Fatalf("FatalErr = %v", err)
	}
	topic := "t"
	err = p.lanes[laneAcked].Produce(&kafka.Message{TopicPartition: kafka.TopicPartition{Topic: &topic, Partition: kafka.PartitionAny}, Value: []byte("v")}, nil)
	if err == nil {
		t.Fatal("a producer in a fatal state took a record")
	}
	for _, err := range []error{err, p.FatalErr()} {
		if Permanent(err) {
			t.Errorf("Permanent(%v) = true: the record is not at fault", err)
		}
	}
}

// A topic lookup whose caller has already given up (a publish at
// shutdown) starts no metadata request: one would hold the handles, and
// Close with them, for its whole timeout while Kafka does not answer.
func TestLookupAfterCancelHoldsNothing(t *testing.T) {
	p := unreachableProducer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	cancel()
	if err := p.topics.lookup(ctx, "t"); !errors.Is(err, context.Canceled) {
		t.Fatalf("lookup after cancel: %v", err)
	}
	if !p.handles.TryLock() {
		t.Fatal("a lookup nobody waits for still holds the handles")
	}
	p.handles.Unlock()
}

// unreachableProducer is a producer whose Kafka never answers, closed at
// cleanup.
func unreachableProducer(t *testing.T) *Producer {
	t.Helper()
	p, err := NewProducer(ProducerConfig{
		Bootstrap:           testutil.FreeAddr(t), // nothing listens there
		MaxMessageBytes:     1 << 20,
		InflightBudgetBytes: 1 << 20,
		AckLinger:           time.Millisecond,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		p.Close(ctx)
	})
	return p
}

// Close with a context already over (the daemon's, after a slow flush)
// does not destroy the client under a caller still in its produce call:
// every caller gets its answer, ErrClosed at the latest, and nothing
// crashes. Callers race Close here; a caller that read "not closing" just
// before Close began is the case the wait is for. The window is a few
// instructions wide, so this is a stress check that the old code passed
// almost always, not a reproduction.
func TestCloseWithAnEndedContextWaitsForProduceCalls(t *testing.T) {
	p := kfakeProducer(t, ProducerConfig{MaxMessageBytes: 1 << 10, InflightBudgetBytes: 1 << 30, AckLinger: time.Millisecond}, "t")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan error, 4)
	for range 4 {
		go func() {
			for {
				err := p.TryProduce(context.Background(), &Record{Topic: "t", Value: []byte("v")}, DeliveryFunc(func(Delivery) {}))
				if errors.Is(err, ErrClosed) {
					done <- nil
					return
				}
				if err != nil && !errors.Is(err, ErrBudgetExhausted) {
					done <- err
					return
				}
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	p.Close(ctx)
	for range 4 {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("a caller racing Close: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a caller did not get ErrClosed after Close")
		}
	}
}
