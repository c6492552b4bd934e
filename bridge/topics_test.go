package bridge

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

func testProducer(t *testing.T, c *kfake.Cluster, create bool) *Producer {
	t.Helper()
	p, err := NewProducer(ProducerConfig{
		Bootstrap:              c.ListenAddrs()[0],
		MaxMessageBytes:        1 << 20,
		InflightBudgetBytes:    8 << 20,
		CreateTopics:           create,
		TopicPartitions:        1,
		TopicReplicationFactor: 1,
		AckLinger:              time.Millisecond,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p.Close(ctx)
	})
	return p
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
// refused with ErrTooManyTopics naming it, while the topics already in use
// keep working. A topic that failed stops counting once it may be retried.
func TestMaxTopics(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "there"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p, err := NewProducer(ProducerConfig{
		Bootstrap: c.ListenAddrs()[0], MaxMessageBytes: 1 << 20, InflightBudgetBytes: 8 << 20,
		CreateTopics: false, MaxTopics: 2, AckLinger: time.Millisecond,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	if err := p.EnsureTopic(ctx, "there"); err != nil {
		t.Fatal(err)
	}
	if err := p.EnsureTopic(ctx, "absent-1"); !errors.Is(err, ErrUnknownTopic) {
		t.Fatalf("second topic: %v, want ErrUnknownTopic", err)
	}
	err = p.Produce(ctx, &Record{Topic: "absent-2", Value: []byte("x")}, DeliveryFunc(func(Delivery) {}))
	if !errors.Is(err, ErrTooManyTopics) || !Permanent(err) || !containsAll(err.Error(), `"absent-2"`, "kafka.max_topics") {
		t.Fatalf("third topic with kafka.max_topics 2: %v, want a permanent ErrTooManyTopics naming the topic and the setting", err)
	}
	if err := p.EnsureTopic(ctx, "there"); err != nil {
		t.Fatalf("a topic in use after the limit was reached: %v", err)
	}
	if err := p.EnsureTopic(ctx, "absent-1"); !errors.Is(err, ErrUnknownTopic) {
		t.Fatalf("a counted topic after the limit was reached: %v, want ErrUnknownTopic again", err)
	}

	// Once absent-1 may be retried, it no longer holds a place.
	p.topics.mu.Lock()
	p.topics.known["absent-1"].until = time.Now().Add(-time.Second)
	p.topics.lastSweep = time.Time{}
	p.topics.mu.Unlock()
	if err := p.EnsureTopic(ctx, "absent-2"); !errors.Is(err, ErrUnknownTopic) {
		t.Fatalf("third topic after a failed one expired: %v, want ErrUnknownTopic (counted, not refused)", err)
	}
}
