package bridge

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
)

// topics remembers which Kafka topics are known to exist, creating them
// when creation is enabled. Creating topics explicitly (rather than relying
// on auto-creation by a metadata request) matters for the embedded Kafka,
// which persists a topic's existence at once only when it is created that
// way. Concurrent callers for the same topic share one request; failures
// are remembered briefly so a storm of publishes does not become a storm
// of admin requests.
type topics struct {
	p     *Producer
	ok    sync.Map // topic -> struct{}: known to exist; the per-record fast path
	mu    sync.Mutex
	known map[string]*topicState
	// max bounds inUse (0: no limit): a topic beyond it is refused with
	// ErrTooManyTopics. inUse counts the topics of known that exist or are
	// being checked; a failed topic gives its place back, and is dropped
	// from known once it may be retried (swept at most once per
	// topicFailureTTL). Configured topics are neither counted nor refused.
	max       int
	inUse     int
	exempt    map[string]bool
	lastSweep time.Time
	limitLog  LogEvery
	// listOffsets is the admin client's ListOffsets; tests watch its calls.
	listOffsets func(context.Context, map[kafka.TopicPartition]kafka.OffsetSpec, ...kafka.ListOffsetsAdminOption) (kafka.ListOffsetsResult, error)
}

type topicState struct {
	done   chan struct{}
	err    error
	until  time.Time // failures are retried after this
	gaveUp bool      // the caller that checked went away first: err is its context's
}

const topicFailureTTL = 5 * time.Second

func newTopics(p *Producer) *topics {
	t := &topics{p: p, known: map[string]*topicState{}, max: p.cfg.MaxTopics, exempt: map[string]bool{},
		limitLog: LogEvery{Interval: 10 * time.Second}, listOffsets: p.admin.ListOffsets}
	for _, name := range p.cfg.ConfiguredTopics {
		t.exempt[name] = true
	}
	return t
}

// take gives topic a place under max, unless it is configured. It is
// called with t.mu held, for a topic about to be checked.
func (t *topics) take(topic string) error {
	if t.exempt[topic] {
		return nil
	}
	if t.max > 0 && t.inUse >= t.max {
		if t.limitLog.Allow() {
			t.p.log.Error("Kafka topic refused: kafka.max_topics distinct topics are already in use; records for other topics are refused (logged at most every 10s)",
				"topic", topic, "max_topics", t.max)
		}
		return fmt.Errorf("producing to %q: %w: %d topics in use", topic, ErrTooManyTopics, t.max)
	}
	t.inUse++
	return nil
}

// sweep drops failures that may be retried, at most once per
// topicFailureTTL, so that names that never existed do not pile up. It
// is called with t.mu held.
func (t *topics) sweep(now time.Time) {
	if now.Sub(t.lastSweep) < topicFailureTTL {
		return
	}
	t.lastSweep = now
	for name, st := range t.known {
		select {
		case <-st.done:
			if st.err != nil && now.After(st.until) {
				delete(t.known, name)
			}
		default:
		}
	}
}

// forget drops what is known of topic once it was found or made, so
// that the next ensure checks (and creates) it again.
func (t *topics) forget(topic string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st, ok := t.known[topic]
	if !ok {
		return
	}
	select {
	case <-st.done:
	default:
		return // a check is under way
	}
	if st.err != nil {
		return // not in use; forgotten in its time
	}
	t.ok.Delete(topic)
	delete(t.known, topic)
	if !t.exempt[topic] {
		t.inUse--
	}
}

func (t *topics) ensure(ctx context.Context, topic string) error {
	if _, ok := t.ok.Load(topic); ok {
		return nil
	}
	for {
		st, err := t.ensureOnce(ctx, topic)
		if st == nil || !st.gaveUp || ctx.Err() != nil {
			return err
		}
		// The check this call waited for ended with its caller (a
		// connection that closed), which says nothing about the topic:
		// check again for this one.
	}
}

// ensureOnce checks topic, or waits for the check under way. It returns
// the state waited for, or nil when it checked itself or needed no check.
func (t *topics) ensureOnce(ctx context.Context, topic string) (*topicState, error) {
	t.mu.Lock()
	st, ok := t.known[topic]
	if ok {
		select {
		case <-st.done:
			if st.err == nil || time.Now().Before(st.until) {
				t.mu.Unlock()
				return nil, st.err
			}
			ok = false
		default:
		}
	}
	if !ok {
		if err := t.take(topic); err != nil {
			t.mu.Unlock()
			return nil, err
		}
		t.sweep(time.Now())
		st = &topicState{done: make(chan struct{})}
		t.known[topic] = st
		t.mu.Unlock()
		st.err = t.check(ctx, topic)
		if st.err == nil {
			t.ok.Store(topic, struct{}{})
		} else if !t.exempt[topic] {
			t.mu.Lock()
			t.inUse--
			t.mu.Unlock()
		}
		st.until = time.Now().Add(topicFailureTTL)
		if st.err != nil && ctx.Err() != nil {
			// The caller gave up; that says nothing about the topic.
			st.until, st.gaveUp = time.Now(), true
		}
		close(st.done)
		return nil, st.err
	}
	t.mu.Unlock()
	select {
	case <-st.done:
		return st, st.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (t *topics) check(ctx context.Context, topic string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return retryRetired(ctx, func() error {
		err := t.checkOnce(ctx, topic)
		if brokerRetired(err) {
			t.p.log.Debug("a Kafka topic check failed because librdkafka retired the broker connection its request used; it is made up to 4 times", "topic", topic, "error", err)
		}
		return err
	})
}

// retryRetired calls fn again while it fails with librdkafka's
// ErrDestroyBroker, up to four calls in all, 100, 200 and 400 ms apart,
// unless ctx ends first. librdkafka fails a request with that error when
// it retires the broker connection the request went out on: the
// bootstrap connection once Kafka has named its brokers, or a broker a
// metadata answer left out for a moment (fenced while it restarts).
// Kafka refused nothing then, so the request is worth making again.
func retryRetired(ctx context.Context, fn func() error) error {
	wait := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := fn()
		if attempt == 4 || !brokerRetired(err) {
			return err
		}
		select {
		case <-time.After(wait):
			wait *= 2
		case <-ctx.Done():
			return err
		}
	}
}

// brokerRetired reports whether err is librdkafka's ErrDestroyBroker.
func brokerRetired(err error) bool {
	var ke kafka.Error
	return errors.As(err, &ke) && ke.Code() == kafka.ErrDestroyBroker
}

func (t *topics) checkOnce(ctx context.Context, topic string) error {
	cfg := t.p.cfg
	if cfg.CreateTopics {
		err := t.create(ctx, topic)
		if err == nil {
			return nil
		}
		// Clusters often refuse CREATE to clients but have the topic made
		// beforehand: a topic that exists is all producing needs.
		if lookupErr := t.lookup(ctx, topic); lookupErr == nil {
			return nil
		}
		return err
	}
	if err := t.lookup(ctx, topic); err != nil {
		if errors.Is(err, ErrUnknownTopic) {
			return fmt.Errorf("%w, and kafka.create_topics is false", err)
		}
		return err
	}
	return nil
}

func (t *topics) create(ctx context.Context, topic string) error {
	cfg := t.p.cfg
	ctx, release, err := t.p.useHandles(ctx)
	if err != nil {
		return fmt.Errorf("creating Kafka topic %q: %w", topic, err)
	}
	defer release()
	res, err := t.p.admin.CreateTopics(ctx, []kafka.TopicSpecification{{
		Topic:             topic,
		NumPartitions:     cfg.TopicPartitions,
		ReplicationFactor: cfg.TopicReplicationFactor,
	}}, kafka.SetAdminOperationTimeout(20*time.Second))
	if err != nil {
		return fmt.Errorf("creating Kafka topic %q: %w", topic, err)
	}
	for _, r := range res {
		switch r.Error.Code() {
		case kafka.ErrNoError:
			t.p.log.Info("created Kafka topic", "topic", topic, "partitions", cfg.TopicPartitions)
			t.awaitLeaders(ctx, topic, cfg.TopicPartitions)
		case kafka.ErrTopicAlreadyExists:
		default:
			return fmt.Errorf("creating Kafka topic %q: %w", topic, r.Error)
		}
	}
	return nil
}

// awaitLeaders waits, for a few seconds at most, until every partition of
// a topic just created answers a ListOffsets request from its leader. A
// new topic's metadata names leaders a moment before they take writes, and
// produce requests in that moment fail with "not leader" (which the
// idempotent producer then has to untangle); waiting here avoids that. It
// is best effort: producing retries anyway. It is called with the
// handles in use (see Producer.useHandles), ctx ending when Close begins.
//
// It asks for ListOffsets only once a metadata request has named a leader
// for every partition, which puts them in librdkafka's metadata cache.
// ListOffsets looks the leaders up in that cache on the calling thread;
// when one is missing it waits for the cache asynchronously, and a cache
// update from another thread can then finish that lookup while the calling
// thread still uses it. A full test run died once with SIGSEGV at address
// 0x10 inside rd_kafka_ListOffsets, with the handles held, while topics
// were being created; with the leaders cached first that path is not taken.
func (t *topics) awaitLeaders(ctx context.Context, topic string, partitions int) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := retry(ctx, func() error { return t.leadersNamed(ctx, topic, partitions) }); err != nil {
		t.p.log.Debug("partitions of a new topic have no leader yet; producing anyway", "topic", topic, "error", err)
		return
	}
	req := make(map[kafka.TopicPartition]kafka.OffsetSpec, partitions)
	for i := range partitions {
		req[kafka.TopicPartition{Topic: &topic, Partition: int32(i)}] = kafka.LatestOffsetSpec
	}
	if err := retry(ctx, func() error { return t.offsetsListed(ctx, req) }); err != nil {
		t.p.log.Debug("partitions of a new topic not all writable yet; producing anyway", "topic", topic, "error", err)
	}
}

// retry calls try every 50 ms until it returns nil, or until ctx ends,
// when it returns try's last error.
func retry(ctx context.Context, try func() error) error {
	for {
		err := try()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// offsetsListed returns nil when every partition in req answers
// ListOffsets from its leader.
func (t *topics) offsetsListed(ctx context.Context, req map[kafka.TopicPartition]kafka.OffsetSpec) error {
	res, err := t.listOffsets(ctx, req)
	if err != nil {
		return err
	}
	if len(res.ResultInfos) != len(req) {
		return fmt.Errorf("ListOffsets answered for %d of %d partitions", len(res.ResultInfos), len(req))
	}
	for tp, info := range res.ResultInfos {
		if info.Error.Code() != kafka.ErrNoError {
			return fmt.Errorf("partition %d: %w", tp.Partition, info.Error)
		}
	}
	return nil
}

// leadersNamed returns nil when topic's metadata names all of its
// partitions (at least partitions of them) and a leader for each. It asks
// for half a second at most, as long as it can hold up Close: like
// awaitLeaders it runs with the handles in use.
func (t *topics) leadersNamed(ctx context.Context, topic string, partitions int) error {
	tm, err := t.metadata(ctx, topic, 500*time.Millisecond)
	if err != nil {
		return err
	}
	if len(tm.Partitions) < partitions {
		return fmt.Errorf("metadata names %d of %d partitions", len(tm.Partitions), partitions)
	}
	for _, pm := range tm.Partitions {
		if pm.Leader < 0 {
			return fmt.Errorf("partition %d has no leader", pm.ID)
		}
	}
	return nil
}

// lookup checks that topic exists.
func (t *topics) lookup(ctx context.Context, topic string) error {
	_, err := t.metadata(ctx, topic, 10*time.Second)
	return err
}

// metadata asks Kafka for topic's metadata, waiting maxWait at most, and
// returns an error wrapping ErrUnknownTopic when the topic does not exist.
func (t *topics) metadata(ctx context.Context, topic string, maxWait time.Duration) (kafka.TopicMetadata, error) {
	if err := ctx.Err(); err != nil {
		// Ended already (shutdown): a lookup nobody waits for would
		// still hold the handles, and Close with them, for its timeout.
		return kafka.TopicMetadata{}, fmt.Errorf("looking up Kafka topic %q: %w", topic, err)
	}
	// GetMetadata takes a timeout, not a context, and a negative one
	// means no timeout at all: never pass one.
	wait := maxWait
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl))
	}
	if wait < time.Millisecond {
		return kafka.TopicMetadata{}, fmt.Errorf("looking up Kafka topic %q: %w", topic, context.DeadlineExceeded)
	}
	// The call cannot be cancelled, so it runs on its own: a caller whose
	// context ends (a publish at shutdown, while Kafka does not answer)
	// returns at once instead of holding its client's read loop, and the
	// broker's close, for the rest of the timeout. The producer's Close
	// waits for such calls before it destroys the handle they use.
	type answer struct {
		md  *kafka.Metadata
		err error
	}
	ch := make(chan answer, 1)
	if !t.p.handles.TryRLock() {
		return kafka.TopicMetadata{}, fmt.Errorf("looking up Kafka topic %q: %w", topic, ErrClosed)
	}
	go func() {
		defer t.p.handles.RUnlock()
		md, err := t.p.admin.GetMetadata(&topic, false, int(wait/time.Millisecond))
		ch <- answer{md, err}
	}()
	var md *kafka.Metadata
	select {
	case a := <-ch:
		if a.err != nil {
			return kafka.TopicMetadata{}, fmt.Errorf("looking up Kafka topic %q: %w", topic, a.err)
		}
		md = a.md
	case <-ctx.Done():
		return kafka.TopicMetadata{}, fmt.Errorf("looking up Kafka topic %q: %w", topic, ctx.Err())
	}
	tm, ok := md.Topics[topic]
	if !ok || tm.Error.Code() == kafka.ErrUnknownTopicOrPart || tm.Error.Code() == kafka.ErrUnknownTopic {
		return kafka.TopicMetadata{}, fmt.Errorf("Kafka topic %q: %w", topic, ErrUnknownTopic)
	}
	if tm.Error.Code() != kafka.ErrNoError {
		return kafka.TopicMetadata{}, fmt.Errorf("looking up Kafka topic %q: %w", topic, tm.Error)
	}
	return tm, nil
}
