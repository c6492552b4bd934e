package bridge

import (
	"context"
	"errors"
	"fmt"
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
)

func testProducer(t *testing.T, c *kfake.Cluster, create bool) *Producer {
	t.Helper()
	return producerOn(t, c, ProducerConfig{
		MaxMessageBytes:        1 << 20,
		InflightBudgetBytes:    8 << 20,
		CreateTopics:           create,
		TopicPartitions:        1,
		TopicReplicationFactor: 1,
		AckLinger:              time.Millisecond,
	})
}

// A cluster that refuses CreateTopics but has the topic: producing works.
// A topic that is missing then is an error naming it.
func TestEnsureTopicWhenCreationIsRefused(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "existing"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.ControlKey(int16(kmsg.CreateTopics), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		r := req.(*kmsg.CreateTopicsRequest)
		resp := r.ResponseKind().(*kmsg.CreateTopicsResponse)
		for _, rt := range r.Topics {
			st := kmsg.NewCreateTopicsResponseTopic()
			st.Topic = rt.Topic
			st.ErrorCode = kerr.TopicAuthorizationFailed.Code
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	p := testProducer(t, c, true)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.EnsureTopic(ctx, "existing"); err != nil {
		t.Fatalf("existing topic with creation refused: %v", err)
	}
	err = p.EnsureTopic(ctx, "missing")
	if err == nil {
		t.Fatal("missing topic with creation refused: no error")
	}
	if want := `"missing"`; !containsAll(err.Error(), want, "uthoriz") {
		t.Fatalf("error %q does not name the topic and the refusal", err)
	}

	// Delivered to the existing topic, end to end.
	done := make(chan Delivery, 1)
	rec := &Record{Topic: "existing", Key: []byte("k"), Value: []byte("v"), Timestamp: time.Now()}
	if err := p.Produce(ctx, rec, DeliveryFunc(func(d Delivery) { done <- d })); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-done:
		if d.Err != nil {
			t.Fatalf("delivery: %v", d.Err)
		}
	case <-ctx.Done():
		t.Fatal("no delivery report")
	}
}

func TestEnsureTopicWithCreationDisabled(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "there"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := testProducer(t, c, false)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.EnsureTopic(ctx, "there"); err != nil {
		t.Fatal(err)
	}
	err = p.Produce(ctx, &Record{Topic: "absent", Value: []byte("x")}, DeliveryFunc(func(Delivery) {}))
	if !errors.Is(err, ErrUnknownTopic) || !containsAll(err.Error(), `"absent"`) {
		t.Fatalf("produce to a missing topic: %v, want ErrUnknownTopic naming it", err)
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// A lookup whose context has already run out returns at once: librdkafka's
// metadata call takes a timeout, and a negative one would wait for ever
// (seen in CI: start-up hung on a Kafka that refused the credentials).
func TestLookupWithExpiredContextReturns(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "there"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := testProducer(t, c, false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	done := make(chan error, 1)
	go func() { done <- p.topics.lookup(ctx, "there") }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("lookup with an expired context: %v, want the deadline error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("lookup with an expired context did not return")
	}
}

// kafka.max_topics bounds the distinct topics produced to: one more is
// refused with ErrTooManyTopics naming it, while the topics in use keep
// working. Topics the configuration names do not count and are never
// refused; a topic that failed does not count, and is forgotten once it
// may be retried.
func TestMaxTopics(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "one", "two", "three", "configured"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p, err := NewProducer(ProducerConfig{
		Bootstrap: c.ListenAddrs()[0], MaxMessageBytes: 1 << 20, InflightBudgetBytes: 8 << 20,
		CreateTopics: false, MaxTopics: 2, ConfiguredTopics: []string{"configured"}, AckLinger: time.Millisecond,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ensure := func(topic string, want error) {
		t.Helper()
		if err := p.EnsureTopic(ctx, topic); !errors.Is(err, want) {
			t.Fatalf("topic %q: %v, want %v", topic, err, want)
		}
	}

	ensure("absent-1", ErrUnknownTopic)
	p.topics.mu.Lock()
	p.topics.known["absent-1"].until = time.Now().Add(-time.Second) // may be retried now
	p.topics.lastSweep = time.Time{}
	p.topics.mu.Unlock()
	ensure("absent-2", ErrUnknownTopic)
	p.topics.mu.Lock()
	_, kept := p.topics.known["absent-1"]
	p.topics.mu.Unlock()
	if kept {
		t.Fatal("a failed topic that may be retried is still remembered after a sweep")
	}

	ensure("one", nil)
	ensure("configured", nil)
	ensure("two", nil) // the failures and the configured topic took no place
	err = p.Produce(ctx, &Record{Topic: "three", Value: []byte("x")}, DeliveryFunc(func(Delivery) {}))
	if !errors.Is(err, ErrTooManyTopics) || !Permanent(err) || !containsAll(err.Error(), `"three"`, "kafka.max_topics") {
		t.Fatalf("third topic with kafka.max_topics 2: %v, want a permanent ErrTooManyTopics naming the topic and the setting", err)
	}
	ensure("absent-3", ErrTooManyTopics) // not even looked up
	ensure("one", nil)
	ensure("configured", nil)
}

// deliveryResult is a DeliveryHandler that hands the delivery to a channel.
type deliveryResult chan Delivery

func (r deliveryResult) Delivered(d Delivery) { r <- d }

// A topic deleted while Tributary runs is created again, with topic
// creation on: the records in between fail, but not permanently (an MQTT 5
// client gets no final refusal and resends), and producing then works.
func TestDeletedTopicIsCreatedAgain(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := testProducer(t, c, true)
	produce := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		res := make(deliveryResult, 1)
		if err := p.Produce(ctx, &Record{Topic: "gone", Value: []byte("v")}, res); err != nil {
			return err
		}
		select {
		case d := <-res:
			return d.Err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := produce(); err != nil {
		t.Fatalf("first record: %v", err)
	}
	res, err := p.admin.DeleteTopics(context.Background(), []string{"gone"})
	if err != nil || res[0].Error.Code() != kafka.ErrNoError {
		t.Fatalf("deleting the topic: %v %v", err, res)
	}
	deadline := time.Now().Add(60 * time.Second)
	for failures := 0; ; failures++ {
		err := produce()
		if err == nil {
			t.Logf("produced again after %d failed records", failures)
			return
		}
		if Permanent(err) {
			t.Fatalf("record for the deleted topic failed permanently: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the topic was not created again within 60s; last error %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A topic check that fails because librdkafka retired the broker
// connection its request used is made again; any other failure, and the
// fourth retired one, is returned as it is.
func TestTopicCheckRetriesRetiredBroker(t *testing.T) {
	retired := fmt.Errorf("creating Kafka topic %q: %w", "t", kafka.NewError(kafka.ErrDestroyBroker, "Broker handle destroyed without termination", false))
	other := fmt.Errorf("creating Kafka topic %q: %w", "t", kafka.NewError(kafka.ErrTopicAuthorizationFailed, "not authorized", false))
	for _, tc := range []struct {
		name  string
		errs  []error // what each call returns; nil after the last
		calls int
		want  error
	}{
		{"retired, then made", []error{retired, retired}, 3, nil},
		{"retired every time", []error{retired, retired, retired, retired, retired}, 4, retired},
		{"refused", []error{other}, 1, other},
		{"retired, then refused", []error{retired, other}, 2, other},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			err := retryRetired(context.Background(), func() error {
				calls++
				if calls <= len(tc.errs) {
					return tc.errs[calls-1]
				}
				return nil
			})
			if calls != tc.calls || err != tc.want {
				t.Errorf("%d calls returning %v; want %d returning %v", calls, err, tc.calls, tc.want)
			}
		})
	}
}

// A topic check cut short by the context of the caller that started it
// (a connection that ended) is no answer for the callers waiting on it:
// they check again, and the topic is there.
func TestTopicCheckOutlivesTheCallerThatStartedIt(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "there"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := testProducer(t, c, false)
	held, release := make(chan struct{}, 1), make(chan struct{}) // Close wakes a held control
	var once atomic.Bool
	c.ControlKey(int16(kmsg.Metadata), func(req kmsg.Request) (kmsg.Response, error, bool) {
		asks := false
		for _, rt := range req.(*kmsg.MetadataRequest).Topics {
			asks = asks || (rt.Topic != nil && *rt.Topic == "there")
		}
		if asks && once.CompareAndSwap(false, true) {
			held <- struct{}{}
			c.SleepControl(func() { <-release })
		}
		return nil, nil, false
	})
	first, leave := context.WithCancel(context.Background())
	firstErr := make(chan error, 1)
	go func() { firstErr <- p.topics.ensure(first, "there") }()
	<-held
	waiterErr := make(chan error, 1)
	go func() { waiterErr <- p.topics.ensure(context.Background(), "there") }()
	time.Sleep(100 * time.Millisecond) // the second caller waits for the first one's check
	leave()
	if err := <-firstErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("the caller that left: %v, want context.Canceled", err)
	}
	close(release) // Kafka answers the check nobody waits for any more
	select {
	case err := <-waiterErr:
		if err != nil {
			t.Fatalf("the caller that waited: %v, want the topic found", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the caller that waited got no answer in 20s")
	}
}
