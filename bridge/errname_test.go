package bridge

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// records_failed_total's error label names the error, not its number.
func TestErrorName(t *testing.T) {
	for code, want := range map[kafka.ErrorCode]string{
		kafka.ErrMsgTimedOut:              "msg_timed_out",
		kafka.ErrTopicAuthorizationFailed: "topic_authorization_failed",
		kafka.ErrMsgSizeTooLarge:          "msg_size_too_large",
		kafka.ErrUnknownTopicOrPart:       "unknown_topic_or_part",
	} {
		for range 2 { // the second time from the cache
			if got := errorName(code); got != want {
				t.Errorf("errorName(%d) = %q, want %q", code, got, want)
			}
		}
	}
	if got := errorName(kafka.ErrorCode(31999)); got != "code_31999" {
		t.Errorf("a code librdkafka does not know: %q, want code_31999", got)
	}
}

// A record whose topic was deleted is counted under the Kafka error's
// name, not "unknown": ErrTopicGone keeps the error it wraps.
func TestTopicGoneKeepsTheKafkaError(t *testing.T) {
	p := &Producer{cfg: ProducerConfig{CreateTopics: true}}
	p.topics = &topics{p: p, known: map[string]*topicState{}}
	err := p.topicGone("t", kafka.NewError(kafka.ErrUnknownTopicOrPart, "Broker: Unknown topic or partition", false))
	if !errors.Is(err, ErrTopicGone) {
		t.Fatalf("%v is not ErrTopicGone", err)
	}
	// Whatever Kafka's code, the record is sent again: the topic is
	// created again for it.
	for _, code := range []kafka.ErrorCode{kafka.ErrUnknownTopicOrPart, kafka.ErrUnknownTopic} {
		gone := p.topicGone("t", kafka.NewError(code, "gone", false))
		if Permanent(gone) || topicRefused(gone) {
			t.Errorf("a deleted topic's %v: Permanent %v, topicRefused %v; want neither", code, Permanent(gone), topicRefused(gone))
		}
	}
	m := newProducerMetrics(prometheus.NewRegistry(), newBudget(1), new(atomic.Int64), new(atomic.Int64))
	m.observe(Delivery{Topic: "t", Err: err}, time.Time{}, nil)
	var got dto.Metric
	if err := m.failed.WithLabelValues("t", "unknown_topic_or_part").Write(&got); err != nil {
		t.Fatal(err)
	}
	if got.GetCounter().GetValue() != 1 {
		t.Fatalf("records_failed_total{error=\"unknown_topic_or_part\"} = %v, want 1", got.GetCounter().GetValue())
	}
}
