package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// startKfake starts franz-go's in-process fake Kafka on a free port.
func startKfake() (*kfake.Cluster, string, error) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(0))
	if err != nil {
		return nil, "", fmt.Errorf("starting kfake: %w", err)
	}
	addrs := c.ListenAddrs()
	if len(addrs) == 0 {
		c.Close()
		return nil, "", errors.New("starting kfake: no listen address")
	}
	return c, addrs[0], nil
}

// admin creates the benchmark's topics and counts what landed in them.
// It speaks the Kafka protocol directly through franz-go, which routes
// CreateTopics to the controller and splits ListOffsets by partition leader.
type admin struct {
	cl    *kgo.Client
	seeds []string
}

func newAdmin(bootstrap string) (*admin, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(bootstrap), kgo.ClientID("tributary-bench"))
	if err != nil {
		return nil, fmt.Errorf("creating Kafka admin client: %w", err)
	}
	return &admin{cl: cl, seeds: []string{bootstrap}}, nil
}

func (a *admin) Close() { a.cl.Close() }

// createTopic creates topic with the broker's default replication factor
// and waits until every partition answers ListOffsets.
func (a *admin) createTopic(ctx context.Context, topic string, partitions int) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	req := kmsg.NewPtrCreateTopicsRequest()
	req.TimeoutMillis = 30000
	t := kmsg.NewCreateTopicsRequestTopic()
	t.Topic = topic
	t.NumPartitions = int32(partitions)
	t.ReplicationFactor = -1
	req.Topics = append(req.Topics, t)
	resp, err := req.RequestWith(ctx, a.cl)
	if err != nil {
		return fmt.Errorf("creating Kafka topic %q: %w", topic, err)
	}
	for _, rt := range resp.Topics {
		if err := kerr.ErrorForCode(rt.ErrorCode); err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
			msg := ""
			if rt.ErrorMessage != nil {
				msg = ": " + *rt.ErrorMessage
			}
			return fmt.Errorf("creating Kafka topic %q: %w%s", topic, err, msg)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, err := a.count(ctx, topic, partitions)
		if err == nil {
			if n != 0 {
				return fmt.Errorf("new Kafka topic %q already holds %d records", topic, n)
			}
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("waiting for new Kafka topic %q: %w", topic, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// count sums the high watermarks of topic's partitions: on a fresh,
// non-transactional topic that is exactly the number of records in it.
func (a *admin) count(ctx context.Context, topic string, partitions int) (int64, error) {
	hw, err := a.watermarks(ctx, topic, partitions)
	var sum int64
	for _, o := range hw {
		sum += o
	}
	return sum, err
}

// watermarks returns the high watermark of each of topic's partitions.
func (a *admin) watermarks(ctx context.Context, topic string, partitions int) ([]int64, error) {
	req := kmsg.NewPtrListOffsetsRequest()
	req.ReplicaID = -1
	t := kmsg.NewListOffsetsRequestTopic()
	t.Topic = topic
	for i := range partitions {
		p := kmsg.NewListOffsetsRequestTopicPartition()
		p.Partition = int32(i)
		p.Timestamp = -1 // latest: the high watermark
		p.CurrentLeaderEpoch = -1
		t.Partitions = append(t.Partitions, p)
	}
	req.Topics = append(req.Topics, t)
	resp, err := req.RequestWith(ctx, a.cl)
	if err != nil {
		return nil, fmt.Errorf("listing offsets of %q: %w", topic, err)
	}
	hw := make([]int64, partitions)
	seen := 0
	for _, rt := range resp.Topics {
		for _, rp := range rt.Partitions {
			if err := kerr.ErrorForCode(rp.ErrorCode); err != nil {
				return nil, fmt.Errorf("listing offsets of %q partition %d: %w", topic, rp.Partition, err)
			}
			if rp.Partition < 0 || int(rp.Partition) >= partitions {
				return nil, fmt.Errorf("listing offsets of %q: unexpected partition %d", topic, rp.Partition)
			}
			hw[rp.Partition] = rp.Offset
			seen++
		}
	}
	if seen != partitions {
		return nil, fmt.Errorf("listing offsets of %q: %d of %d partitions answered", topic, seen, partitions)
	}
	return hw, nil
}

// firstTimestamp returns the earliest record timestamp among the first
// records of topic's non-empty partitions. The topic is new and each
// partition's records are in the order they were produced, so that is
// the earliest timestamp in the topic.
func (a *admin) firstTimestamp(ctx context.Context, topic string, partitions int) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	hw, err := a.watermarks(ctx, topic, partitions)
	if err != nil {
		return time.Time{}, err
	}
	want := map[int32]kgo.Offset{}
	for p, o := range hw {
		if o > 0 {
			want[int32(p)] = kgo.NewOffset().At(0)
		}
	}
	if len(want) == 0 {
		return time.Time{}, fmt.Errorf("reading the first records of %q: the topic is empty", topic)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(a.seeds...), kgo.ClientID("tributary-bench"),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: want}))
	if err != nil {
		return time.Time{}, fmt.Errorf("creating Kafka consumer: %w", err)
	}
	defer cl.Close()
	var first time.Time
	got := map[int32]bool{}
	for len(got) < len(want) {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return time.Time{}, fmt.Errorf("reading the first records of %q: %w", topic, ctx.Err())
		}
		if err := fs.Err(); err != nil {
			return time.Time{}, fmt.Errorf("reading the first records of %q: %w", topic, err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			if r.Offset == 0 {
				got[r.Partition] = true
				if first.IsZero() || r.Timestamp.Before(first) {
					first = r.Timestamp
				}
			}
		})
	}
	return first, nil
}

// pollInterval is how often waitForCount asks Kafka; it bounds the
// resolution of a scenario's end time.
const pollInterval = 5 * time.Millisecond

// waitForCount polls topic's high watermarks until they sum to want or
// timeout passes. It returns the last count seen and when it was seen.
func (a *admin) waitForCount(ctx context.Context, topic string, partitions int, want int64, timeout time.Duration) (int64, time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var found int64
	var lastErr error
	for {
		n, err := a.count(ctx, topic, partitions)
		at := time.Now()
		if err == nil {
			found, lastErr = n, nil
			if n >= want {
				return n, at, nil
			}
		} else {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return found, at, fmt.Errorf("counting records in Kafka: %w", lastErr)
			}
			return found, at, fmt.Errorf("only %d of %d records reached Kafka within %s", found, want, timeout)
		case <-time.After(pollInterval):
		}
	}
}

// nativeProducer is the baseline: confluent-kafka-go (librdkafka) straight
// to Kafka with acks=all and idempotence, defaults otherwise, its Events()
// channel drained as librdkafka requires.
type nativeProducer struct {
	p         *kafka.Producer
	delivered chan struct{}
	failed    atomic.Int64
	mu        sync.Mutex
	firstErr  error
	done      chan struct{}
}

func newNativeProducer(bootstrap string) (*nativeProducer, error) {
	p, err := kafka.NewProducer(&kafka.ConfigMap{
		"bootstrap.servers":  bootstrap,
		"acks":               "all",
		"enable.idempotence": true,
		"client.id":          "tributary-bench-native",
		// Like the bridge: no client telemetry push (a log line, no load).
		"enable.metrics.push": false,
	})
	if err != nil {
		return nil, fmt.Errorf("creating native Kafka producer: %w", err)
	}
	np := &nativeProducer{p: p, delivered: make(chan struct{}, 1), done: make(chan struct{})}
	go np.events()
	return np, nil
}

func (np *nativeProducer) events() {
	defer close(np.done)
	for ev := range np.p.Events() {
		switch e := ev.(type) {
		case *kafka.Message:
			if err := e.TopicPartition.Error; err != nil {
				np.failed.Add(1)
				np.setErr(err)
			}
			select {
			case np.delivered <- struct{}{}:
			default:
			}
		case kafka.Error:
			if e.IsFatal() {
				np.setErr(e)
			}
		}
	}
}

// warm makes the producer fetch topic's metadata and connect, so the
// baseline, like the already-running bridge, starts timing warm.
func (np *nativeProducer) warm(topic string) error {
	if _, err := np.p.GetMetadata(&topic, false, 10000); err != nil {
		return fmt.Errorf("fetching metadata of %q: %w", topic, err)
	}
	return nil
}

// produce queues n records of payload to topic, keyed round-robin with
// keys and, when headers is not nil, with the headers of the same index,
// waiting whenever librdkafka's local queue is full.
func (np *nativeProducer) produce(ctx context.Context, topic string, keys [][]byte, headers [][]kafka.Header, payload []byte, n int) error {
	for i := range n {
		msg := &kafka.Message{
			TopicPartition: kafka.TopicPartition{Topic: &topic, Partition: kafka.PartitionAny},
			Key:            keys[i%len(keys)],
			Value:          payload,
		}
		if headers != nil {
			msg.Headers = headers[i%len(keys)]
		}
		for {
			err := np.p.Produce(msg, nil)
			if err == nil {
				break
			}
			var ke kafka.Error
			if !errors.As(err, &ke) || ke.Code() != kafka.ErrQueueFull {
				return fmt.Errorf("producing to %q: %w", topic, err)
			}
			select {
			case <-np.delivered:
			case <-time.After(10 * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	return nil
}

func (np *nativeProducer) setErr(err error) {
	np.mu.Lock()
	if np.firstErr == nil {
		np.firstErr = err
	}
	np.mu.Unlock()
}

// err returns the first delivery or fatal error seen.
func (np *nativeProducer) err() error {
	np.mu.Lock()
	defer np.mu.Unlock()
	if np.firstErr != nil {
		return fmt.Errorf("%d deliveries failed; first: %w", np.failed.Load(), np.firstErr)
	}
	return nil
}

// Close flushes what is outstanding and closes the producer.
func (np *nativeProducer) Close() {
	np.p.Flush(10000)
	np.p.Close()
	<-np.done
}
