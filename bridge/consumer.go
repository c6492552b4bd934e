package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
)

// ErrNotAssigned means a commit named a record of a partition this
// consumer does not own under the assignment the record was fetched in: a
// rebalance moved the partition to another member (even if a later one
// gave it back).
var ErrNotAssigned = errors.New("partition is not assigned to this consumer")

// ErrNoSuchTopic means Kafka says a topic the consumer reads, or one of its
// partitions, does not exist.
var ErrNoSuchTopic = errors.New("topic or partition does not exist")

// ErrAccessDenied means Kafka refused the consumer access to a topic or to
// its consumer group.
var ErrAccessDenied = errors.New("Kafka refused access")

// ConsumerConfig configures one consumer-group member.
type ConsumerConfig struct {
	Bootstrap  string
	Properties map[string]string // librdkafka settings passed through (SASL, SSL, ...)
	GroupID    string
	ClientID   string
	Topics     []string
	// OffsetReset is where a partition without a committed offset starts:
	// "earliest" or "latest". Default earliest.
	OffsetReset string
	// IsolationLevel is "read_committed" or "read_uncommitted". Default
	// read_committed.
	IsolationLevel string
	// SessionTimeout is the group session timeout. Default 10s.
	SessionTimeout time.Duration
	// QueueSize is how many records wait for the reader before the
	// consumer pauses its partitions. Default 1000.
	QueueSize int
	// CommitInterval is how often offsets marked with Store are committed.
	// Default 1s.
	CommitInterval time.Duration
	// OnPause, if set, is called with true when the consumer pauses its
	// partitions for a slow reader and with false when it resumes them.
	OnPause func(paused bool)
	// OnError, if set, is called with the errors that stop the consumer
	// reading its topics: ErrNoSuchTopic, ErrAccessDenied, or partitions it
	// could not take. librdkafka retries and repeats them, so each kind is
	// reported at most once per errorEvery.
	OnError func(err error)
}

// ConsumedRecord is one record read from Kafka.
type ConsumedRecord struct {
	Topic     string
	Partition int32
	Offset    int64
	Timestamp time.Time
	Key       []byte
	Value     []byte
	Headers   []Header
	// Assignment is the assignment of the record's partition it was
	// fetched under.
	Assignment *Assignment
}

// Assignment is one assignment of a partition to a Consumer, from the
// rebalance that gave the partition to the one that took it away. A record
// fetched under an assignment that has ended is stale even when a later
// rebalance gave the partition back: another member may have read it and
// committed past it meanwhile, and committing it would move the group's
// offset back.
type Assignment struct {
	key     partitionKey
	revoked atomic.Bool
	// start is the offset of the first record fetched under the
	// assignment (-1 before one): the group's committed offset, or where
	// auto.offset.reset put the partition. Only the poll goroutine sets it.
	start atomic.Int64
	// Guarded by Consumer.mu. Offsets to commit are a record's offset + 1.
	next      int64 // the offset to commit next; above committed when a commit is due
	committed int64 // the offset Kafka last confirmed committed under this assignment
}

// Current reports whether the assignment holds: no rebalance has taken its
// partition away.
func (a *Assignment) Current() bool { return !a.revoked.Load() }

// Consumer is one member of a Kafka consumer group. It never commits on its
// own: offsets are committed only when the owner calls Commit (the record
// and everything before it in its partition) or Store (committed on the
// next interval, on a rebalance and on Close). Records wait in a bounded
// queue; when it stays full (a slow reader, not a momentary burst) the
// consumer pauses its partitions and resumes them once the reader has
// drained half of it, so a slow reader never makes memory grow.
type Consumer struct {
	cfg  ConsumerConfig
	log  *slog.Logger
	kc   *kafka.Consumer
	recs chan *ConsumedRecord

	// mu guards assigned, acks, and the assignments' next and committed.
	// It is never held across a request to Kafka, so Store and Commit do
	// not wait for a slow broker. The poll goroutine, which alone changes
	// assigned, reads it without mu.
	mu sync.Mutex
	// commitMu is held for a whole commit, round trip included, and by
	// the rebalance callback from its last commit until the revoked
	// partitions are marked so. One commit is in flight at a time, so an
	// older one can never land after a newer one and move the group's
	// offset back; and none is in flight for a partition once this
	// member has given it up. Taken before mu, never after.
	commitMu  sync.Mutex
	assigned  map[partitionKey]*Assignment
	acks      []pendingAck
	commitLog LogEvery // a failing commit is retried every interval; its warning is not

	wake      chan struct{} // signals the committer
	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup

	paused   bool
	held     []*ConsumedRecord             // polled while the queue was full; poll goroutine only
	reported map[kafka.ErrorCode]time.Time // when OnError last had each kind; poll goroutine only
}

// errorEvery is how often OnError hears about one kind of error that
// librdkafka keeps repeating while it retries.
const errorEvery = 10 * time.Second

type partitionKey struct {
	topic     string
	partition int32
}

type pendingAck struct {
	key    partitionKey
	offset int64
	done   func(error)
}

// NewConsumer creates the consumer, joins the group and starts reading.
func NewConsumer(cfg ConsumerConfig, log *slog.Logger) (*Consumer, error) {
	if cfg.OffsetReset == "" {
		cfg.OffsetReset = "earliest"
	}
	if cfg.IsolationLevel == "" {
		cfg.IsolationLevel = "read_committed"
	}
	if cfg.SessionTimeout <= 0 {
		cfg.SessionTimeout = 10 * time.Second
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 1000
	}
	if cfg.CommitInterval <= 0 {
		cfg.CommitInterval = time.Second
	}
	cm := kafka.ConfigMap{}
	for k, v := range cfg.Properties {
		if err := cm.SetKey(k, v); err != nil {
			return nil, fmt.Errorf("setting kafka.properties.%s: %w", k, err)
		}
	}
	hb := cfg.SessionTimeout / 3
	if hb > 3*time.Second {
		hb = 3 * time.Second
	}
	for k, v := range map[string]kafka.ConfigValue{
		"bootstrap.servers":        cfg.Bootstrap,
		"group.id":                 cfg.GroupID,
		"client.id":                cfg.ClientID,
		"enable.auto.commit":       false,
		"enable.auto.offset.store": false,
		"auto.offset.reset":        cfg.OffsetReset,
		"isolation.level":          cfg.IsolationLevel,
		"session.timeout.ms":       int(cfg.SessionTimeout / time.Millisecond),
		"heartbeat.interval.ms":    int(hb / time.Millisecond),
		"enable.partition.eof":     false,
		"go.logs.channel.enable":   true,
		"enable.metrics.push":      false,
		// Pause bounds what Tributary holds; this bounds what librdkafka
		// prefetches per partition.
		"queued.max.messages.kbytes": 8192,
		// A resumed partition waits for the fetch in flight; keep it short.
		"fetch.wait.max.ms": 100,
		// librdkafka refuses a consumer whose max.poll.interval.ms (default
		// 5 minutes) is below its session timeout.
		"max.poll.interval.ms": int(max(cfg.SessionTimeout, 5*time.Minute) / time.Millisecond),
	} {
		if _, userSet := cfg.Properties[k]; userSet && (k == "queued.max.messages.kbytes" || k == "heartbeat.interval.ms" || k == "fetch.wait.max.ms" || k == "max.poll.interval.ms") {
			continue
		}
		cm[k] = v
	}
	kc, err := kafka.NewConsumer(&cm)
	if err != nil {
		return nil, fmt.Errorf("creating Kafka consumer for group %q: %w", cfg.GroupID, err)
	}
	c := &Consumer{
		cfg:       cfg,
		log:       log,
		kc:        kc,
		recs:      make(chan *ConsumedRecord, cfg.QueueSize),
		assigned:  map[partitionKey]*Assignment{},
		commitLog: LogEvery{Interval: errorEvery},
		reported:  map[kafka.ErrorCode]time.Time{},
		wake:      make(chan struct{}, 1),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	if err := kc.SubscribeTopics(cfg.Topics, c.rebalance); err != nil {
		kc.Close()
		return nil, fmt.Errorf("subscribing group %q to %v: %w", cfg.GroupID, cfg.Topics, err)
	}
	c.wg.Add(3)
	go c.poll()
	go c.committer()
	go c.logs()
	return c, nil
}

// Records is where consumed records arrive, in order per partition. It is
// closed when the consumer stops.
func (c *Consumer) Records() <-chan *ConsumedRecord { return c.recs }

// Done is closed when the consumer has stopped (after Close, or after a
// fatal Kafka error).
func (c *Consumer) Done() <-chan struct{} { return c.done }

// Commit commits offset, the offset of a record fetched under a, and
// everything before it in its partition. It returns ErrNotAssigned at once
// if a has ended, or if offset is below the first record fetched under a:
// either would move the group's offset back over what another member
// committed. Otherwise done is called, from another goroutine, when the
// commit succeeded or failed. Commits are coalesced per partition; a
// failed one is retried on the next commit interval.
func (c *Consumer) Commit(a *Assignment, offset int64, done func(error)) error {
	c.mu.Lock()
	if !a.Current() {
		c.mu.Unlock()
		return fmt.Errorf("committing %s[%d]@%d: %w", a.key.topic, a.key.partition, offset, ErrNotAssigned)
	}
	if start := a.start.Load(); start < 0 || offset < start {
		c.mu.Unlock()
		return fmt.Errorf("committing %s[%d]@%d: the record is from before the partition's current assignment: %w", a.key.topic, a.key.partition, offset, ErrNotAssigned)
	}
	a.next = max(a.next, offset+1)
	if done != nil {
		c.acks = append(c.acks, pendingAck{key: a.key, offset: offset, done: done})
	}
	c.mu.Unlock()
	c.signal()
	return nil
}

// Store marks records as processed: each is committed, with everything
// before it in its partition, on the next commit interval, before its
// partition is revoked, and on Close. Records fetched under an assignment
// that has ended change nothing: only current assignments are committed.
func (c *Consumer) Store(recs []*ConsumedRecord) {
	c.mu.Lock()
	for _, r := range recs {
		r.Assignment.next = max(r.Assignment.next, r.Offset+1)
	}
	c.mu.Unlock()
}

func (c *Consumer) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Close commits what is pending, leaves the group and stops. Idempotent.
func (c *Consumer) Close() {
	c.closeOnce.Do(func() { close(c.stop) })
	<-c.done
	c.wg.Wait()
}

// poll is the only goroutine that calls Poll, so rebalance callbacks run
// here, and Close is called from here too.
func (c *Consumer) poll() {
	defer c.wg.Done()
	defer func() {
		// Commits after this point would race the group leaving; flush them now.
		c.commit(nil)
		if err := c.kc.Close(); err != nil {
			c.log.Warn("closing Kafka consumer", "group", c.cfg.GroupID, "error", err)
		}
		close(c.recs)
		close(c.done)
	}()
	for {
		select {
		case <-c.stop:
			return
		default:
		}
		if !c.drainHeld() {
			return
		}
		timeout := 100
		switch {
		case len(c.held) > 0:
			timeout = 0 // drainHeld has just waited for the reader
		case c.paused:
			timeout = 10 // soon check whether the reader has caught up
		}
		switch e := c.kc.Poll(timeout).(type) {
		case *kafka.Message:
			var topic string
			if e.TopicPartition.Topic != nil {
				topic = *e.TopicPartition.Topic
			}
			if err := e.TopicPartition.Error; err != nil {
				what := fmt.Sprintf("reading %s[%d]", topic, e.TopicPartition.Partition)
				if !c.report(what, err) {
					c.log.Warn("Kafka consumer record error", "group", c.cfg.GroupID, "error", fmt.Errorf("%s: %w", what, err))
				}
				continue
			}
			a := c.assigned[partitionKey{topic, e.TopicPartition.Partition}]
			if a == nil {
				continue // its partition was revoked since librdkafka fetched it
			}
			offset := int64(e.TopicPartition.Offset)
			if a.start.Load() < 0 {
				a.start.Store(offset)
			}
			rec := &ConsumedRecord{
				Topic:      topic,
				Partition:  e.TopicPartition.Partition,
				Offset:     offset,
				Timestamp:  e.Timestamp,
				Key:        e.Key,
				Value:      e.Value,
				Headers:    e.Headers,
				Assignment: a,
			}
			if len(c.held) == 0 {
				select {
				case c.recs <- rec:
					continue
				default:
				}
			}
			c.held = append(c.held, rec)
		case kafka.Error:
			if e.IsFatal() {
				c.log.Error("Kafka consumer fatal error", "group", c.cfg.GroupID, "error", e)
				return
			}
			if !c.report("reading "+strings.Join(c.cfg.Topics, ", "), e) {
				// librdkafka recovers from these on its own (a broker
				// down for a while).
				c.log.Debug("Kafka consumer error", "group", c.cfg.GroupID, "error", e)
			}
		}
	}
}

// report passes err, met while doing what, to reportNow if it stops the
// consumer reading its topics, and says whether it did. It runs on the
// poll goroutine.
func (c *Consumer) report(what string, err error) bool {
	var ke kafka.Error
	if !errors.As(err, &ke) {
		return false
	}
	switch ke.Code() {
	case kafka.ErrUnknownTopicOrPart, kafka.ErrUnknownTopic, kafka.ErrUnknownPartition, kafka.ErrUnknownTopicID:
		err = fmt.Errorf("%s: %w: %w", what, ErrNoSuchTopic, err)
	case kafka.ErrTopicAuthorizationFailed, kafka.ErrGroupAuthorizationFailed:
		err = fmt.Errorf("%s: %w: %w", what, ErrAccessDenied, err)
	default:
		return false
	}
	c.reportNow(ke.Code(), err)
	return true
}

// reportNow passes err to OnError and logs it, unless an error of kind
// code was reported less than errorEvery ago. It runs on the poll
// goroutine.
func (c *Consumer) reportNow(code kafka.ErrorCode, err error) {
	now := time.Now()
	if last, ok := c.reported[code]; ok && now.Sub(last) < errorEvery {
		return
	}
	c.reported[code] = now
	c.log.Warn("Kafka consumer cannot read", "group", c.cfg.GroupID, "client", c.cfg.ClientID, "topics", c.cfg.Topics, "error", err)
	if c.cfg.OnError != nil {
		c.cfg.OnError(err)
	}
}

// drainHeld moves held records to the queue, waiting for the reader up to
// heldWait so that a slow reader neither makes the loop spin nor keeps it
// from serving Kafka events (rebalances) for long. A queue that stays full
// that long pauses the partitions; they resume once it is half empty. It
// returns false when the consumer is stopping.
func (c *Consumer) drainHeld() bool {
	if len(c.held) > 0 {
		t := time.NewTimer(heldWait)
		defer t.Stop()
	deliver:
		for len(c.held) > 0 {
			select {
			case c.recs <- c.held[0]:
				c.held[0] = nil
				c.held = c.held[1:]
			case <-c.stop:
				return false
			case <-t.C:
				// The queue stayed full: the reader is slow, not just
				// momentarily behind. Pausing drops what librdkafka has
				// prefetched and costs a fetch on resume, so it is kept for
				// this case.
				c.pause()
				break deliver
			}
		}
	}
	if len(c.held) == 0 {
		c.held = nil
		if c.paused && len(c.recs) <= cap(c.recs)/2 {
			c.resume()
		}
	}
	return true
}

// heldWait is how long the poll loop waits for a slow reader at a time.
const heldWait = 50 * time.Millisecond

func (c *Consumer) assignment() []kafka.TopicPartition {
	c.mu.Lock()
	defer c.mu.Unlock()
	tps := make([]kafka.TopicPartition, 0, len(c.assigned))
	for k := range c.assigned {
		t := k.topic
		tps = append(tps, kafka.TopicPartition{Topic: &t, Partition: k.partition})
	}
	return tps
}

func (c *Consumer) pause() {
	if c.paused {
		return
	}
	c.paused = true
	if tps := c.assignment(); len(tps) > 0 {
		if err := c.kc.Pause(tps); err != nil {
			c.log.Warn("pausing Kafka partitions", "group", c.cfg.GroupID, "error", err)
		}
	}
	c.log.Debug("reader is slow: paused partitions", "group", c.cfg.GroupID, "client", c.cfg.ClientID)
	if c.cfg.OnPause != nil {
		c.cfg.OnPause(true)
	}
}

func (c *Consumer) resume() {
	c.paused = false
	if tps := c.assignment(); len(tps) > 0 {
		if err := c.kc.Resume(tps); err != nil {
			c.log.Warn("resuming Kafka partitions", "group", c.cfg.GroupID, "error", err)
		}
	}
	c.log.Debug("reader caught up: resumed partitions", "group", c.cfg.GroupID, "client", c.cfg.ClientID)
	if c.cfg.OnPause != nil {
		c.cfg.OnPause(false)
	}
}

// rebalance runs inside Poll (or Close) on the poll goroutine.
func (c *Consumer) rebalance(kc *kafka.Consumer, ev kafka.Event) error {
	switch e := ev.(type) {
	case kafka.AssignedPartitions:
		c.mu.Lock()
		for _, tp := range e.Partitions {
			if tp.Topic != nil {
				k := partitionKey{*tp.Topic, tp.Partition}
				a := &Assignment{key: k}
				a.start.Store(-1)
				c.assigned[k] = a
			}
		}
		c.mu.Unlock()
		if err := kc.Assign(e.Partitions); err != nil {
			var ke kafka.Error
			code := kafka.ErrUnknown
			if errors.As(err, &ke) {
				code = ke.Code()
			}
			c.reportNow(code, fmt.Errorf("taking partitions %v assigned by the group: %w", describe(e.Partitions), err))
		}
		// librdkafka keeps a partition's pause through its revocation, so
		// one taken away while the reader was slow comes back paused
		// however the reader is doing now: set it either way.
		if len(e.Partitions) > 0 {
			set, what := kc.Resume, "resuming"
			if c.paused {
				set, what = kc.Pause, "pausing"
			}
			if err := set(e.Partitions); err != nil {
				c.log.Warn(what+" assigned Kafka partitions", "group", c.cfg.GroupID, "error", err)
			}
		}
		c.log.Debug("partitions assigned", "group", c.cfg.GroupID, "client", c.cfg.ClientID, "partitions", describe(e.Partitions))
	case kafka.RevokedPartitions:
		revoked := map[partitionKey]bool{}
		for _, tp := range e.Partitions {
			if tp.Topic != nil {
				revoked[partitionKey{*tp.Topic, tp.Partition}] = true
			}
		}
		// Held until the partitions are marked revoked: a commit the
		// committer starts meanwhile would see them still assigned and
		// could land after the next owner's.
		c.commitMu.Lock()
		if !kc.AssignmentLost() {
			// What the client committed or the socket wrote is committed
			// before the next owner starts reading.
			c.commitDue(revoked)
		}
		c.mu.Lock()
		for k := range revoked {
			if a := c.assigned[k]; a != nil {
				a.revoked.Store(true)
			}
			delete(c.assigned, k)
		}
		acks := c.acks[:0]
		for _, a := range c.acks {
			if revoked[a.key] {
				a.done(fmt.Errorf("committing %s[%d]@%d: %w", a.key.topic, a.key.partition, a.offset, ErrNotAssigned))
				continue
			}
			acks = append(acks, a)
		}
		c.acks = acks
		c.mu.Unlock()
		c.commitMu.Unlock()
		held := c.held[:0]
		for _, r := range c.held {
			if r.Assignment.Current() {
				held = append(held, r)
			}
		}
		c.held = held
		if err := kc.Unassign(); err != nil {
			c.log.Warn("unassigning Kafka partitions", "group", c.cfg.GroupID, "error", err)
		}
		c.log.Debug("partitions revoked", "group", c.cfg.GroupID, "client", c.cfg.ClientID, "partitions", describe(e.Partitions))
	}
	return nil
}

func describe(tps []kafka.TopicPartition) []string {
	out := make([]string, 0, len(tps))
	for _, tp := range tps {
		if tp.Topic != nil {
			out = append(out, *tp.Topic+"["+strconv.Itoa(int(tp.Partition))+"]")
		}
	}
	return out
}

// committer commits pending offsets when a commit was requested and on the
// commit interval.
func (c *Consumer) committer() {
	defer c.wg.Done()
	t := time.NewTicker(c.cfg.CommitInterval)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-c.wake:
		case <-t.C:
		}
		c.commit(nil)
	}
}

// commit is commitDue under commitMu.
func (c *Consumer) commit(only map[partitionKey]bool) {
	c.commitMu.Lock()
	defer c.commitMu.Unlock()
	c.commitDue(only)
}

// commitDue commits the offsets due of the given partitions (all when
// only is nil) and settles their acknowledgements. The caller holds
// commitMu, so a rebalance cannot move a partition away between the
// ownership check and the commit, and no other commit is in flight; mu is
// taken only to read what is due and to record Kafka's answer. An offset
// Kafka did not confirm stays due.
func (c *Consumer) commitDue(only map[partitionKey]bool) {
	var tps []kafka.TopicPartition
	asgs := map[partitionKey]*Assignment{}
	c.mu.Lock()
	for k, a := range c.assigned {
		if a.next <= a.committed || (only != nil && !only[k]) {
			continue
		}
		t := k.topic
		tps = append(tps, kafka.TopicPartition{Topic: &t, Partition: k.partition, Offset: kafka.Offset(a.next)})
		asgs[k] = a
	}
	// The acknowledgements this commit settles: those asked for so far.
	// One asked for while it is in flight may be for an offset beyond
	// what it carries, and waits for the next.
	var settle []pendingAck
	acks := c.acks[:0]
	for _, a := range c.acks {
		if only != nil && !only[a.key] {
			acks = append(acks, a)
			continue
		}
		settle = append(settle, a)
	}
	clear(c.acks[len(acks):])
	c.acks = acks
	c.mu.Unlock()

	var err error
	failed := map[partitionKey]error{}
	if len(tps) > 0 {
		var res []kafka.TopicPartition
		res, err = c.kc.CommitOffsets(tps)
		if err != nil {
			err = fmt.Errorf("committing offsets of group %q: %w", c.cfg.GroupID, err)
		}
		c.mu.Lock()
		for _, tp := range res {
			if tp.Topic == nil {
				continue
			}
			k := partitionKey{*tp.Topic, tp.Partition}
			switch a := asgs[k]; {
			case tp.Error != nil:
				failed[k] = tp.Error
			case err == nil && a != nil:
				// Never back: committed only grows.
				a.committed = max(a.committed, int64(tp.Offset))
			}
		}
		c.mu.Unlock()
		if (err != nil || len(failed) > 0) && c.commitLog.Allow() {
			parts := make([]string, 0, len(failed))
			for k, perr := range failed {
				parts = append(parts, fmt.Sprintf("%s[%d]: %v", k.topic, k.partition, perr))
			}
			c.log.Warn("Kafka commit failed; retrying on the next interval", "group", c.cfg.GroupID, "error", err, "partitions", parts)
		}
	}
	for _, a := range settle {
		switch {
		case asgs[a.key] == nil:
			// Nothing was due: an earlier commit covered its offset.
			a.done(nil)
		case err != nil:
			a.done(err)
		case failed[a.key] != nil:
			a.done(fmt.Errorf("committing %s[%d]@%d: %w", a.key.topic, a.key.partition, a.offset, failed[a.key]))
		default:
			a.done(nil)
		}
	}
}

func (c *Consumer) logs() {
	defer c.wg.Done()
	for {
		select {
		case le, ok := <-c.kc.Logs():
			if !ok {
				return
			}
			level := slog.LevelDebug
			if le.Level <= 3 {
				level = slog.LevelWarn
			}
			c.log.Log(context.Background(), level, le.Message, "librdkafka", le.Tag, "group", c.cfg.GroupID)
		case <-c.done:
			return
		}
	}
}
