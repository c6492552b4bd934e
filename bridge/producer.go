// Package bridge owns Tributary's Kafka core: the shared producer with
// delivery tracking and an in-flight byte budget, topic management, and the
// embedded evaluation Kafka. Every face (MQTT broker, upstream sources,
// WebSocket API) hands records to the same Producer and gets its delivery
// report back through a DeliveryHandler.
package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/prometheus/client_golang/prometheus"
)

// Record is one Kafka record to produce.
type Record struct {
	Topic     string
	Key       []byte
	Value     []byte
	Headers   []Header
	Timestamp time.Time // when the bridge received it; also the start of the ack latency
	// Order, when set, keeps the record in order with the others of its
	// source: see Order.
	Order *Order
}

// Order keeps the records of one source (an MQTT connection, an upstream
// connection) in Kafka in the order they were produced. Best-effort and
// acknowledged records take different lanes, librdkafka producers with
// their own lingers, so a QoS 1 record produced right after a QoS 0 one
// of the same MQTT topic would otherwise reach the partition first. With
// an Order, a record takes the lane its source's records still awaiting
// Kafka are in, whatever its kind, and the source moves to another lane
// only once none are. The zero value is ready; one goroutine at a time
// produces with an Order.
//
// The Producer counts the sources with records awaiting Kafka, and while
// they are few it gives an acknowledged record of a source with none
// awaiting the prompt lane (see ProducerConfig.PromptClients).
type Order struct {
	// Aggregate marks a source that carries the records of many
	// publishers, an upstream connection: its acknowledged records always
	// take the lane with AckLinger, which batches a busy feed into fewer
	// produce requests.
	Aggregate bool

	lane    atomic.Int32 // the lane of the records awaiting Kafka; set by the producing goroutine, read by a follower's (see Follow)
	stay    bool         // a drain to leave the prompt lane timed out: stay until none await (see drain); producing goroutine only
	pending atomic.Int64 // records produced with it whose delivery report is not handled yet
	// after is the Order this one continues (see Follow); dropped by the
	// first take or Awaiting that finds none of its records, nor those
	// of the Orders it continues in turn, awaiting Kafka.
	after atomic.Pointer[Order]
}

// Follow makes o continue prev: the same client's previous connection,
// say, whose records may still await Kafka. Until none of prev's (or of
// the Orders prev continues) await Kafka, o's records take the lane
// theirs are in, so that a reconnecting client's new records cannot
// overtake its earlier ones through a lane with a shorter linger. It may
// be called from any goroutine; called after o's first record, it takes
// effect once none of o's own records await Kafka. What o continued
// before, prev continues in turn, unless prev continues another already.
// A nil prev, or o itself, changes nothing.
func (o *Order) Follow(prev *Order) {
	if prev == nil || prev == o {
		return
	}
	if old := o.after.Load(); old != nil && old != prev {
		prev.after.CompareAndSwap(nil, old)
	}
	o.after.Store(prev)
}

// Awaiting reports whether records of o, or of an Order o continues (see
// Follow), may still await Kafka: whether a source continuing o has an
// order to keep.
func (o *Order) Awaiting() bool {
	_, ok := o.awaited()
	return ok
}

// maxFollowed bounds how far back awaited looks along a chain of Orders
// that continue one another.
const maxFollowed = 64

// awaited returns the lane of the first Order in o's chain (o, then the
// Orders it continues) with records awaiting Kafka. It drops o's link to
// what it continues once nothing there awaits, so that a chain of
// reconnects is not kept alive.
func (o *Order) awaited() (int, bool) {
	if o.pending.Load() > 0 {
		return int(o.lane.Load()), true
	}
	first := o.after.Load()
	// Bounded: a chain longer than that is a client reconnecting faster
	// than Kafka answers, and concurrent takeovers could in principle
	// close a loop.
	n := 0
	for a := first; a != nil && a != o && n < maxFollowed; a = a.after.Load() {
		if a.pending.Load() > 0 {
			return int(a.lane.Load()), true
		}
		n++
	}
	// Unless a Follow came meanwhile.
	o.after.CompareAndSwap(first, nil)
	return 0, false
}

// take picks the lane for a record that would take want and counts the
// record as pending. sources counts the Orders with records pending; while
// fewer than prompt others have, an acknowledged record of a plain source
// takes the prompt lane.
//
// A source that continues another (Follow) takes the lane of the records
// still awaiting there, as if they were its own.
func (o *Order) take(want int, sources *atomic.Int64, prompt int64) int {
	if o.pending.Load() == 0 {
		lane, follows := 0, false
		if o.after.Load() != nil {
			lane, follows = o.awaited()
		}
		switch {
		case follows:
			want = lane
		case want == laneAcked && !o.Aggregate && sources.Load() < prompt:
			want = lanePrompt
		}
		o.lane.Store(int32(want))
		o.stay = o.stay && follows // a timed-out drain held for what o continues too
	}
	if o.pending.Add(1) == 1 {
		sources.Add(1)
	}
	return int(o.lane.Load())
}

// leaving reports whether the source, in the prompt lane with records
// awaiting Kafka, is to leave it: now that as many as twice prompt
// sources have records awaiting. A source publishing without pause may
// never be without records awaiting Kafka, and would otherwise keep the
// prompt lane's short linger among many others. The margin keeps a
// source near the bound from moving back and forth. A source whose drain
// timed out (Kafka slow or down) stays until none of its records await.
func (o *Order) leaving(sources *atomic.Int64, prompt int64) bool {
	return o.lane.Load() == lanePrompt && !o.stay && o.pending.Load() > 0 && sources.Load() >= 2*prompt
}

// settle counts one of the source's records as no longer pending.
func (o *Order) settle(sources *atomic.Int64) {
	if o.pending.Add(-1) == 0 {
		sources.Add(-1)
	}
}

// Header is one Kafka record header ({Key string; Value []byte}). It is
// librdkafka's own type so that producing needs no per-record conversion.
type Header = kafka.Header

// Size is the record's size as the in-flight budget and the message size
// limit count it.
func (r *Record) Size() int {
	n := len(r.Key) + len(r.Value)
	for _, h := range r.Headers {
		n += len(h.Key) + len(h.Value)
	}
	return n
}

// recordFraming is the room librdkafka's message.max.bytes leaves beyond
// kafka.max_message_bytes, for a record's framing in the batch: librdkafka
// refuses a record whose size with its framing is over message.max.bytes,
// so with no room a record within kafka.max_message_bytes would be refused
// as too large.
const recordFraming = 1024

// framedSize is at least the size librdkafka counts for a record of size
// bytes with n headers: the record's own framing (lengths, timestamp and
// offset deltas, attributes) and two length varints per header.
func framedSize(size, n int) int { return size + 64 + 10*n }

// Delivery is the outcome of producing one record.
type Delivery struct {
	Topic     string
	Partition int32
	Offset    int64
	Err       error // nil when Kafka acknowledged the record
}

// DeliveryHandler receives a record's delivery report. Delivered is called
// from the producer's event goroutine and must not block.
type DeliveryHandler interface {
	Delivered(Delivery)
}

// AfterDeliveries has f called on the event goroutine of each lane after
// each burst of delivery reports it has handed to their handlers: when no
// more reports are waiting, or after 512 of them. A handler can so gather
// work across the reports of a burst (the acknowledgements of one client,
// say) and do it once. f must not block, and may be called from several
// lanes at once.
func (p *Producer) AfterDeliveries(f func()) {
	p.afterMu.Lock()
	defer p.afterMu.Unlock()
	fs := append([]func(){}, p.afterFuncs()...)
	fs = append(fs, f)
	p.after.Store(&fs)
}

func (p *Producer) afterFuncs() []func() {
	if fs := p.after.Load(); fs != nil {
		return *fs
	}
	return nil
}

// DeliveryFunc adapts a function to DeliveryHandler.
type DeliveryFunc func(Delivery)

// Delivered calls f.
func (f DeliveryFunc) Delivered(d Delivery) { f(d) }

var (
	// ErrRecordTooLarge means the record exceeds kafka.max_message_bytes.
	ErrRecordTooLarge = errors.New("record larger than kafka.max_message_bytes")
	// ErrUnknownTopic means the Kafka topic does not exist: a lookup found
	// none, or a record names one while topic creation is disabled.
	ErrUnknownTopic = errors.New("Kafka topic does not exist")
	// ErrTooManyTopics means the record names a topic beyond
	// kafka.max_topics distinct topics already produced to.
	ErrTooManyTopics = errors.New("Tributary's limit on distinct Kafka topics reached (kafka.max_topics)")
	// ErrBudgetExhausted means the in-flight byte budget is used up; only
	// TryProduce returns it.
	ErrBudgetExhausted = errors.New("in-flight budget exhausted")
	// ErrClosed means the producer is shutting down.
	ErrClosed = errors.New("producer closed")
	// ErrUnconfirmed means librdkafka reported a record delivered without
	// the offset Kafka wrote it at. The idempotent producer does that for a
	// batch that failed (say, "not leader" right after a topic was created
	// or a leader moved) when a later batch of the same partition
	// succeeded: it assumes the failed one was written too, and Kafka may
	// have accepted the later batch without it. Such a record is not
	// acknowledged: the client sends it again (at least once, never lost).
	ErrUnconfirmed = errors.New("Kafka did not confirm the record's offset; it may not have been written")
)

// ErrTopicGone means Kafka no longer has a topic that Tributary checked
// or created before (deleted, or the cluster rebuilt). With topic
// creation on, it is created again on the next record, so the error is
// not permanent: the client resends.
var ErrTopicGone = errors.New("the Kafka topic no longer exists; it is created again for the next record")

// topicGone turns librdkafka's unknown-topic error for topic into
// ErrTopicGone when topics are created on demand, and has the next record
// for topic check (and create) it again. Other errors pass unchanged.
func (p *Producer) topicGone(topic string, err error) error {
	if err == nil || !p.cfg.CreateTopics {
		return err // every delivery report passes here: nothing to allocate
	}
	if !unknownTopic(err) {
		return err
	}
	p.topics.forget(topic)
	return fmt.Errorf("%w: %w", ErrTopicGone, err) // both: records_failed_total names the Kafka error
}

// TopicDeleted reports whether err, from a delivery report, says Kafka
// does not have the record's topic although it was checked before the
// record was produced: deleted since. With kafka.create_topics false the
// error is librdkafka's (local, or the broker's) as it is; with it true,
// topicGone wraps it in ErrTopicGone, the topic is created again and the
// client resends, which this does not count.
func TopicDeleted(err error) bool {
	return !errors.Is(err, ErrTopicGone) && unknownTopic(err)
}

// unknownTopic reports whether err is librdkafka's (local) or the
// broker's error for a topic Kafka does not have.
func unknownTopic(err error) bool {
	var ke kafka.Error
	return errors.As(err, &ke) && (ke.Code() == kafka.ErrUnknownTopic || ke.Code() == kafka.ErrUnknownTopicOrPart)
}

// topicRefused reports whether err refuses the record's topic, whatever
// the record: the topic does not exist (and kafka.create_topics is
// false), or writing to it is not authorized.
func topicRefused(err error) bool {
	if errors.Is(err, ErrTopicGone) {
		return false // created again for the next record
	}
	if errors.Is(err, ErrUnknownTopic) {
		return true
	}
	var ke kafka.Error
	return errors.As(err, &ke) && (ke.Code() == kafka.ErrTopicAuthorizationFailed || ke.Code() == kafka.ErrUnknownTopic)
}

// Permanent reports whether a produce or delivery error will not go away by
// retrying the same record.
func Permanent(err error) bool {
	if errors.Is(err, ErrTopicGone) {
		return false // the topic is created again for the resend
	}
	if errors.Is(err, ErrRecordTooLarge) || errors.Is(err, ErrUnknownTopic) || errors.Is(err, ErrTooManyTopics) {
		return true
	}
	var ke kafka.Error
	if errors.As(err, &ke) {
		switch ke.Code() {
		case kafka.ErrMsgSizeTooLarge, kafka.ErrTopicAuthorizationFailed, kafka.ErrInvalidMsg,
			kafka.ErrTopicException, kafka.ErrInvalidRecord, kafka.ErrRecordListTooLarge,
			kafka.ErrUnknownTopic, kafka.ErrInvalidMsgSize:
			return true
		}
		// A fatal error is the producer's state, not the record's: the
		// record would be taken by a new producer (see Producer.Fatal).
	}
	return false
}

// ProducerConfig configures the Producer.
type ProducerConfig struct {
	Bootstrap              string
	Properties             map[string]string
	MaxMessageBytes        int
	InflightBudgetBytes    int64
	CreateTopics           bool
	TopicPartitions        int
	TopicReplicationFactor int
	// MaxTopics bounds the distinct topics produced to; 0 means no limit.
	MaxTopics int
	// ConfiguredTopics are the topics the configuration names (mapping
	// rules, the default topic, upstreams' kafka_topic): MaxTopics neither
	// counts nor refuses them.
	ConfiguredTopics []string
	// AckLinger is the linger for records whose producer-side client waits
	// for the acknowledgement (MQTT QoS 1 and 2); negative keeps
	// Properties' linger.ms.
	AckLinger time.Duration
	// PromptClients and PromptLinger make the prompt lane: while fewer
	// than PromptClients sources (Orders) have records awaiting Kafka, an
	// acknowledged record of a source with none awaiting is produced with
	// PromptLinger instead of AckLinger, and the source's records stay in
	// that lane until none await Kafka again. There is no prompt lane when
	// PromptClients is 0, AckLinger is negative or PromptLinger is not
	// shorter than AckLinger.
	//
	// A linger batches the records of many clients into one produce
	// request; a few clients each waiting for their window's
	// acknowledgements cannot fill a batch, and for them the linger is
	// most of each round trip. librdkafka's producer thread sleeps in
	// whole milliseconds, so a linger under one millisecond ends early
	// only when another record arrives after it: a short one sends a
	// client's window while its tail still arrives, where 1 ms holds the
	// whole window for the full millisecond (docs/performance.md,
	// session 25).
	PromptClients int
	PromptLinger  time.Duration
	Registerer    prometheus.Registerer
}

// The producer pool has up to three lanes, each a librdkafka producer
// sharing the budget and topic cache: records whose MQTT acknowledgement
// waits on Kafka go through a short linger, because a client with a window
// of N in flight can go no faster than N per round trip, and linger is most
// of that round trip; while few clients publish, a shorter one still (the
// prompt lane, see ProducerConfig.PromptClients); best-effort records keep
// librdkafka's batching for throughput.
const (
	laneAcked = iota
	laneBestEffort
	lanePrompt
	lanes
)

// promptEvents is the prompt lane's delivery-report channel size: the
// lane carries the records of a few clients (and the QoS 0 records they
// send between). When it is full, confluent-kafka-go's poller waits;
// nothing is lost.
const promptEvents = 65536

// Producer is the bridge's shared Kafka producer.
type Producer struct {
	cfg     ProducerConfig
	log     *slog.Logger
	lanes   [lanes]*kafka.Producer // lanes[lanePrompt] is nil without a prompt lane
	admin   *kafka.AdminClient
	budget  *budget
	topics  *topics
	metrics *producerMetrics

	// handles is read-locked by calls into librdkafka that outlive their
	// caller (topic lookups, see topics.lookup) and by admin requests (see
	// useHandles); Close write-locks it before it destroys the handles
	// they use.
	handles sync.RWMutex
	// closed is cancelled when Close begins to wait for handles, so that
	// admin requests under way return instead of holding it up.
	closed      context.Context
	closeCancel context.CancelFunc

	delivered   chan struct{}            // signalled after each delivery report, for queue-full waits
	after       atomic.Pointer[[]func()] // see AfterDeliveries
	afterMu     sync.Mutex               // serializes AfterDeliveries
	outstanding atomic.Int64             // records produced whose handler has not run yet
	sources     atomic.Int64             // Orders with records whose handler has not run yet
	prompt      int64                    // take's prompt argument: PromptClients, or 0 without a prompt lane
	// yieldAbove is the number of outstanding records above which a
	// producing goroutine yields after each record, as it does while
	// more than half the in-flight budget is in use (see
	// deliveryBacklogYield); deliveryBacklogYield unless a test sets it.
	yieldAbove int64
	drainWait  time.Duration // drainWait unless a test sets it
	inProduce  atomic.Int64  // callers inside librdkafka's produce call; Close waits for them
	ready      atomic.Bool
	closing    atomic.Bool
	closeOnce  sync.Once
	wg         sync.WaitGroup
	stop       chan struct{}

	unconfirmedLog LogEvery
	errorLog       errorLog // non-fatal error events of every lane

	fatal     chan struct{} // closed at the first fatal error
	fatalOnce sync.Once
	fatalErr  error // set before fatal is closed
}

// Fatal is closed when librdkafka reports a fatal error: the producer
// can take no more records (each fails, transiently, and nothing is
// acknowledged), and only a new one can. FatalErr then says which.
func (p *Producer) Fatal() <-chan struct{} { return p.fatal }

// FatalErr returns the fatal error once Fatal is closed, else nil.
func (p *Producer) FatalErr() error {
	select {
	case <-p.fatal:
		return p.fatalErr
	default:
		return nil
	}
}

// deliveryOf reads a delivery report. A success without an offset is
// ErrUnconfirmed, not a success: see there.
func deliveryOf(e *kafka.Message) Delivery {
	d := Delivery{Partition: e.TopicPartition.Partition, Offset: int64(e.TopicPartition.Offset), Err: e.TopicPartition.Error}
	if e.TopicPartition.Topic != nil {
		d.Topic = *e.TopicPartition.Topic
	}
	if d.Err == nil && d.Offset < 0 {
		d.Err = fmt.Errorf("producing to %s[%d]: %w", d.Topic, d.Partition, ErrUnconfirmed)
	}
	if ke, ok := d.Err.(kafka.Error); ok {
		switch ke.Code() {
		case kafka.ErrMsgSizeTooLarge, kafka.ErrInvalidMsgSize, kafka.ErrRecordListTooLarge:
			d.Err = &kafkaTooLarge{topic: d.Topic, err: ke}
		}
	}
	return d
}

// kafkaTooLarge is the delivery error of a record that fits
// kafka.max_message_bytes but that Kafka refused as too large: the
// topic's max.message.bytes, or the brokers' message.max.bytes, is
// smaller. It is ErrRecordTooLarge to whoever produced the record (MQTT 5
// clients get 0x95) and its kafka.Error to the producer's metrics.
type kafkaTooLarge struct {
	topic string
	err   kafka.Error
}

func (e *kafkaTooLarge) Error() string {
	return fmt.Sprintf("producing to %q: Kafka refused the record as too large (%v): the topic's max.message.bytes, or the brokers' message.max.bytes, is under kafka.max_message_bytes", e.topic, e.err)
}

func (e *kafkaTooLarge) Is(target error) bool { return target == ErrRecordTooLarge }

func (e *kafkaTooLarge) Unwrap() error { return e.err }

// RefusedAsTooLarge reports whether err is the delivery report of a record
// Kafka itself refused as too large, rather than one Tributary refused
// before producing it.
func RefusedAsTooLarge(err error) bool {
	var k *kafkaTooLarge
	return errors.As(err, &k)
}

type envelope struct {
	h     DeliveryHandler
	order *Order
	size  int64
	at    time.Time
}

var (
	envelopes = sync.Pool{New: func() any { return new(envelope) }}
	messages  = sync.Pool{New: func() any { return new(kafka.Message) }}
)

// NewProducer connects a producer to Kafka. It does not wait for Kafka to
// be reachable; Ready tells whether it is.
func NewProducer(cfg ProducerConfig, log *slog.Logger) (*Producer, error) {
	cm := kafka.ConfigMap{
		"bootstrap.servers":                  cfg.Bootstrap,
		"acks":                               "all",
		"enable.idempotence":                 true,
		"message.max.bytes":                  min(cfg.MaxMessageBytes+recordFraming, 1000000000), // librdkafka's maximum
		"queue.buffering.max.messages":       1000000,
		"allow.auto.create.topics":           false,
		"enable.metrics.push":                false,
		"go.delivery.report.fields":          "none",
		"go.logs.channel.enable":             true,
		"client.id":                          "tributary",
		"topic.metadata.refresh.interval.ms": 30000,
		"socket.connection.setup.timeout.ms": 10000,
		"reconnect.backoff.max.ms":           2000,
		"partitioner":                        "murmur2_random",
		"go.events.channel.size":             1000000,
	}
	for k, v := range cfg.Properties {
		if err := cm.SetKey(k, v); err != nil {
			return nil, fmt.Errorf("setting kafka.properties.%s: %w", k, err)
		}
	}
	var ps [lanes]*kafka.Producer
	closeAll := func() {
		for _, p := range ps { // nil for lanes not made
			if p != nil {
				p.Close()
			}
		}
	}
	prompt := cfg.PromptClients > 0 && cfg.AckLinger >= 0 && cfg.PromptLinger >= 0 && cfg.PromptLinger < cfg.AckLinger
	for lane := range lanes {
		if lane == lanePrompt && !prompt {
			continue
		}
		lcm := kafka.ConfigMap{}
		for k, v := range cm {
			lcm[k] = v
		}
		if _, set := cfg.Properties["client.id"]; !set {
			lcm["client.id"] = [lanes]string{"tributary-acked", "tributary-best-effort", "tributary-prompt"}[lane]
		}
		switch lane {
		case laneAcked:
			if cfg.AckLinger >= 0 {
				lcm["linger.ms"] = lingerMs(cfg.AckLinger)
			}
		case lanePrompt:
			lcm["linger.ms"] = lingerMs(cfg.PromptLinger)
			lcm["go.events.channel.size"] = promptEvents
		}
		p, err := kafka.NewProducer(&lcm)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("creating Kafka producer: %w", err)
		}
		ps[lane] = p
	}
	admin, err := kafka.NewAdminClientFromProducer(ps[laneAcked])
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("creating Kafka admin client: %w", err)
	}
	reg := cfg.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	pr := &Producer{
		cfg:       cfg,
		log:       log,
		lanes:     ps,
		admin:     admin,
		budget:    newBudget(cfg.InflightBudgetBytes),
		delivered: make(chan struct{}, 1),
		stop:      make(chan struct{}),
		fatal:     make(chan struct{}),

		unconfirmedLog: LogEvery{Interval: 10 * time.Second},
		errorLog:       errorLog{interval: errorEvery},
		yieldAbove:     deliveryBacklogYield,
		drainWait:      drainWait,
	}
	if prompt {
		pr.prompt = int64(cfg.PromptClients)
	} else if cfg.PromptClients > 0 {
		log.Info("no prompt lane: it needs a kafka.prompt_linger shorter than a non-negative kafka.ack_linger", "prompt_linger", cfg.PromptLinger, "ack_linger", cfg.AckLinger)
	}
	pr.closed, pr.closeCancel = context.WithCancel(context.Background())
	pr.metrics = newProducerMetrics(reg, pr.budget, &pr.outstanding, &pr.sources)
	pr.topics = newTopics(pr)
	pr.wg.Add(1)
	for _, p := range ps {
		if p == nil {
			continue
		}
		pr.wg.Add(2)
		go pr.events(p)
		go pr.logs(p)
	}
	go pr.watchReady()
	return pr, nil
}

// Produce hands rec to Kafka; h gets its delivery report. rec is copied
// before Produce returns, so the caller may reuse it. It blocks while
// the in-flight budget or librdkafka's queue is full, until ctx ends: that
// is the backpressure publishing sockets feel. Errors returned here mean
// the record was not produced and h will not be called.
//
// A record whose ctx has ended by the time it is counted as outstanding
// is not produced (ctx.Err() is returned), even when there is room for
// it. Its caller has given up on acknowledging it (a connection that
// ended, a daemon draining for shutdown), so producing it would only make
// a duplicate of the copy its client sends again. The check comes after
// the count, so a Flush called after ctx ended (Drain, then flush) either
// waits for the record or the record sees ctx ended: none reaches Kafka
// behind the flush, unacknowledged.
func (p *Producer) Produce(ctx context.Context, rec *Record, h DeliveryHandler) error {
	size, err := p.admit(ctx, rec)
	if err != nil {
		return err
	}
	if err := p.budget.Acquire(ctx, size); err != nil {
		return err
	}
	return p.produce(ctx, laneAcked, rec, h, size, true)
}

// TryProduce is Produce for best-effort records: it returns
// ErrBudgetExhausted instead of waiting for budget or queue space.
func (p *Producer) TryProduce(ctx context.Context, rec *Record, h DeliveryHandler) error {
	size, err := p.admit(ctx, rec)
	if err != nil {
		return err
	}
	if !p.budget.TryAcquire(size) {
		return ErrBudgetExhausted
	}
	return p.produce(ctx, laneBestEffort, rec, h, size, false)
}

func (p *Producer) admit(ctx context.Context, rec *Record) (int64, error) {
	if p.closing.Load() {
		return 0, ErrClosed
	}
	size := rec.Size()
	if size > p.cfg.MaxMessageBytes {
		return 0, fmt.Errorf("producing to %q: %d bytes: %w (%d)", rec.Topic, size, ErrRecordTooLarge, p.cfg.MaxMessageBytes)
	}
	if framed := framedSize(size, len(rec.Headers)); framed > p.cfg.MaxMessageBytes+recordFraming {
		return 0, fmt.Errorf("producing to %q: %d bytes, %d with the framing of its %d headers: %w (%d, and %d bytes of framing)",
			rec.Topic, size, framed, len(rec.Headers), ErrRecordTooLarge, p.cfg.MaxMessageBytes, recordFraming)
	}
	if err := p.topics.ensure(ctx, rec.Topic); err != nil {
		return 0, err
	}
	return p.budget.clamp(int64(size)), nil
}

// deliveryBacklogYield is the number of records awaiting their delivery
// reports above which each producing goroutine yields its processor
// after handing a record to librdkafka. It yields too while more than
// half the in-flight budget is in use, which larger records reach first.
//
// Delivery reports reach Go through one goroutine per librdkafka client
// (confluent-kafka-go's poller) and then the producer's events goroutine;
// they release the in-flight budget and acknowledge QoS 1 publishes. Go
// schedules runnable goroutines in turn, so while many connections
// produce flat out (a QoS 0 flood from ten clients), those two get a
// small share of the processors, and the reports fall behind Kafka's
// acknowledgements. On two cores, at the end of a burst of 300 000 QoS 0
// publishes up to 265 000 records that Kafka had acknowledged were still
// unreported; in a flood of a million the budget filled with such
// records, and 43–47 % of the flood was dropped as over budget while
// Kafka kept up (docs/performance.md, session 23). Yielding past this
// backlog lets the reports keep pace: producers are then read at the
// rate the whole path sustains.
//
// A backlog this large also builds up when Kafka is slow or down; the
// yield then costs a scheduler pass per record and changes nothing else.
// Pipelining alone (records in librdkafka's linger and in produce
// requests Kafka has not answered yet) stays under it in the benchmarks
// on kfake, which keep at most 1 000 QoS 1 records in flight; a client
// population that keeps more in flight against a distant cluster yields
// on every record.
const deliveryBacklogYield = 16384

func (p *Producer) produce(ctx context.Context, lane int, rec *Record, h DeliveryHandler, size int64, wait bool) error {
	env := envelopes.Get().(*envelope)
	env.h, env.size, env.at = h, size, rec.Timestamp
	if rec.Order != nil {
		if wait && rec.Order.leaving(&p.sources, p.prompt) {
			p.drain(ctx, rec.Order)
		}
		lane = rec.Order.take(lane, &p.sources, p.prompt)
		env.order = rec.Order
	}
	// librdkafka copies key, value and headers during Produce and the Go
	// client keeps only Opaque, so the message is reused.
	msg := messages.Get().(*kafka.Message)
	defer func() {
		*msg = kafka.Message{}
		messages.Put(msg)
	}()
	*msg = kafka.Message{
		TopicPartition: kafka.TopicPartition{Topic: &rec.Topic, Partition: kafka.PartitionAny},
		Key:            rec.Key,
		Value:          rec.Value,
		Headers:        rec.Headers,
		Timestamp:      rec.Timestamp,
		Opaque:         env,
	}
	p.outstanding.Add(1)
	// Checked once counted (see Produce); best-effort records are not
	// acknowledged, so their callers decide for themselves.
	var ended error
	if wait {
		ended = ctx.Err()
	}
	waited := false
	for {
		// Counted before this check: Close sets closing, then waits for
		// outstanding records, so either it waits for this call or the
		// call sees closing. A call between admit and here (waiting for
		// budget, say) must not reach a handle Close destroys.
		err := ErrClosed
		if ended != nil {
			err = ended
		} else {
			p.inProduce.Add(1) // Close waits for calls counted here, whatever its context
			if !p.closing.Load() {
				err = p.lanes[lane].Produce(msg, nil)
			}
			p.inProduce.Add(-1)
		}
		if err == nil {
			if lane == lanePrompt && wait {
				p.metrics.prompt.Inc()
			}
			if p.outstanding.Load() > p.yieldAbove || p.budget.overHalf.Load() {
				p.metrics.yields.Inc()
				runtime.Gosched()
			}
			return nil
		}
		var ke kafka.Error
		if errors.As(err, &ke) && ke.Code() == kafka.ErrQueueFull && wait {
			if !waited { // once per record, not per poll
				waited = true
				p.metrics.queueFull.Inc()
			}
			select {
			case <-p.delivered:
			case <-time.After(10 * time.Millisecond):
			case <-ctx.Done():
				err = ctx.Err()
			}
			if ctx.Err() == nil && !p.closing.Load() {
				continue
			}
			if ctx.Err() == nil {
				err = ErrClosed
			}
		} else if errors.As(err, &ke) && ke.Code() == kafka.ErrQueueFull {
			err = ErrBudgetExhausted
		} else if errors.As(err, &ke) && (ke.Code() == kafka.ErrMsgSizeTooLarge || ke.Code() == kafka.ErrInvalidMsgSize) {
			err = fmt.Errorf("producing to %q: %w: %v", rec.Topic, ErrRecordTooLarge, ke)
		} else if err != ended { // ctx's own error goes as it is, as from a wait for budget
			err = fmt.Errorf("producing to %q: %w", rec.Topic, p.topicGone(rec.Topic, err))
		}
		p.outstanding.Add(-1)
		p.budget.Release(size)
		if env.order != nil {
			env.order.settle(&p.sources)
		}
		*env = envelope{}
		envelopes.Put(env)
		return err
	}
}

// drainWait bounds how long drain holds up a producing goroutine (an MQTT
// connection's read loop): a few round trips of a healthy cluster.
const drainWait = 25 * time.Millisecond

// drain waits until none of o's records (nor those of an Order it
// continues, see Order.Follow) await Kafka, so that its next record may
// take another lane and still land after them. After
// drainWait, or when ctx ends or the producer closes, it gives up: o
// stays in its lane, which keeps the order, until none of its records
// (nor those of what it continues) await, so that a slow or unreachable
// Kafka holds the connection up once, not once per record.
func (p *Producer) drain(ctx context.Context, o *Order) {
	deadline := time.Now().Add(p.drainWait)
	for o.Awaiting() {
		if ctx.Err() != nil || p.closing.Load() || time.Now().After(deadline) {
			o.stay = true
			return
		}
		time.Sleep(100 * time.Microsecond) // a millisecond on an idle machine
	}
	p.metrics.promptLeaves.Inc()
}

func (p *Producer) events(kp *kafka.Producer) {
	defer p.wg.Done()
	produced := map[string]prometheus.Counter{} // this goroutine's cache of labelled counters
	// Budget is released in batches: one lock per burst of delivery
	// reports rather than one per record keeps this loop ahead of a flood.
	var release int64
	batched := 0
	ch := kp.Events()
	for ev := range ch {
		switch e := ev.(type) {
		case *kafka.Message:
			env, ok := e.Opaque.(*envelope)
			if !ok {
				break // not one of ours; the end of the burst is still checked below
			}
			d := deliveryOf(e)
			d.Err = p.topicGone(d.Topic, d.Err)
			if errors.Is(d.Err, ErrUnconfirmed) {
				if p.unconfirmedLog.Allow() {
					p.log.Warn("Kafka reported records delivered without their offsets; they are treated as not delivered and their clients resend them (logged at most every 10s)", "topic", d.Topic, "partition", d.Partition)
				}
			}
			release += env.size
			batched++
			p.metrics.observe(d, env.at, produced)
			h := env.h
			if env.order != nil {
				env.order.settle(&p.sources)
			}
			*env = envelope{}
			envelopes.Put(env)
			if h != nil {
				h.Delivered(d)
			}
			p.outstanding.Add(-1)
		case kafka.Error:
			p.producerError(e)
		}
		if batched > 0 && (batched >= 512 || len(ch) == 0) {
			for _, f := range p.afterFuncs() {
				f()
			}
			p.budget.Release(release)
			release, batched = 0, 0
			select {
			case p.delivered <- struct{}{}:
			default:
			}
		}
	}
	if release > 0 {
		p.budget.Release(release)
	}
}

// producerError logs an error event of a producer lane. A fatal one is
// always logged; the others at most once per errorEvery for each kind,
// since librdkafka repeats them many times a second while Kafka is down.
// That Kafka is unreachable is also logged by watchReady when it happens.
func (p *Producer) producerError(e kafka.Error) {
	if e.Code() == kafka.ErrAllBrokersDown {
		p.ready.Store(false)
	}
	if e.IsFatal() {
		p.log.Error("Kafka producer fatal error", "error", e)
		p.fatalOnce.Do(func() {
			p.fatalErr = e
			close(p.fatal)
		})
		return
	}
	if ok, skipped := p.errorLog.allow(int(e.Code()), time.Now()); ok {
		p.log.Warn("Kafka producer error (each kind logged at most every 10s)", "error", e, "code", e.Code().String(), "not_logged_since", skipped)
	}
}

func (p *Producer) logs(kp *kafka.Producer) {
	defer p.wg.Done()
	for le := range kp.Logs() {
		level := slog.LevelDebug
		switch {
		case le.Level <= 3:
			level = slog.LevelError
		case le.Level == 4:
			level = slog.LevelWarn
		case le.Level <= 6 && le.Tag != "GETSUBSCRIPTIONS":
			level = slog.LevelInfo
		}
		p.log.Log(context.Background(), level, le.Message, "librdkafka", le.Tag)
	}
}

// watchReady polls Kafka's metadata so Ready answers without a round trip.
func (p *Producer) watchReady() {
	defer p.wg.Done()
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		// Close destroys the handle once it holds handles for writing:
		// a poll it would cut short does not start, and one under way
		// (up to 3s while Kafka is unreachable) is waited for.
		if !p.handles.TryRLock() {
			return
		}
		_, err := p.lanes[laneAcked].GetMetadata(nil, false, 3000)
		p.handles.RUnlock()
		was := p.ready.Swap(err == nil)
		if err != nil && was {
			p.log.Warn("Kafka unreachable", "error", err)
		} else if err == nil && !was {
			p.log.Info("Kafka reachable", "bootstrap", p.cfg.Bootstrap)
		}
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
	}
}

// useHandles read-locks handles for calls into the admin client, which
// would otherwise use a handle that Close destroys under them: AdminClient
// methods check that the client is open only before they start, if at all
// (ListOffsets does not), and a derived client's Close swaps its handle for
// an empty one, so a call after it passes librdkafka a NULL rd_kafka_t (a
// full test run died with SIGSEGV in rd_kafka_ListOffsets that way, from
// awaitLeaders). The context returned ends also when Close begins, so Close
// waits only until the calls notice. release must be called after them.
func (p *Producer) useHandles(ctx context.Context) (_ context.Context, release func(), _ error) {
	if !p.handles.TryRLock() {
		return ctx, func() {}, ErrClosed
	}
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(p.closed, cancel)
	return ctx, func() {
		stop()
		cancel()
		p.handles.RUnlock()
	}, nil
}

// Ready reports whether Kafka answered the last metadata request.
func (p *Producer) Ready() bool { return p.ready.Load() }

// MaxMessageBytes is the largest record the producer takes
// (ProducerConfig.MaxMessageBytes).
func (p *Producer) MaxMessageBytes() int { return p.cfg.MaxMessageBytes }

// InflightBytes returns the bytes of records awaiting acknowledgement.
func (p *Producer) InflightBytes() int64 { return p.budget.Used() }

// EnsureTopic creates topic if it is missing and creation is enabled, or
// checks that it exists.
func (p *Producer) EnsureTopic(ctx context.Context, topic string) error {
	return p.topics.ensure(ctx, topic)
}

// Flush waits until every produced record's delivery handler has run, or
// ctx ends, and returns how many records are still outstanding.
func (p *Producer) Flush(ctx context.Context) int {
	for {
		n := 0
		for _, kp := range p.lanes {
			if kp != nil {
				n += kp.Len()
			}
		}
		if n == 0 && p.outstanding.Load() == 0 {
			return 0
		}
		if ctx.Err() != nil {
			return max(n, int(p.outstanding.Load()))
		}
		if n > 0 {
			ms := 100
			if dl, ok := ctx.Deadline(); ok {
				ms = max(1, min(ms, int(time.Until(dl)/time.Millisecond)))
			}
			for _, kp := range p.lanes {
				if kp != nil && kp.Len() > 0 {
					kp.Flush(ms)
				}
			}
			continue
		}
		// librdkafka is done; the event goroutine is still calling handlers.
		select {
		case <-p.delivered:
		case <-time.After(time.Millisecond):
		case <-ctx.Done():
		}
	}
}

// Close stops accepting records, flushes what is in flight until ctx ends,
// and closes the producer. It returns how many records Kafka had not
// acknowledged by then; their clients were not acknowledged either. It is
// idempotent: later calls return 0.
func (p *Producer) Close(ctx context.Context) (unacknowledged int) {
	p.closeOnce.Do(func() {
		p.closing.Store(true)
		unacknowledged = p.Flush(ctx)
		// Flush gives up when ctx ends, and a caller that saw closing
		// unset may still be in librdkafka's produce call: the handles
		// must outlive it.
		for p.inProduce.Load() > 0 {
			time.Sleep(100 * time.Microsecond)
		}
		close(p.stop)
		p.closeCancel()  // admin requests under way return
		p.handles.Lock() // no lookup, admin request or readiness poll is left running; none can start
		p.admin.Close()
		for _, kp := range p.lanes {
			if kp != nil {
				kp.Close()
			}
		}
		p.wg.Wait()
	})
	return unacknowledged
}

type producerMetrics struct {
	produced  *prometheus.CounterVec
	failed    *prometheus.CounterVec
	latency   prometheus.Histogram
	queueFull prometheus.Counter
	yields    prometheus.Counter
	prompt    prometheus.Counter
	// promptLeaves counts the times a source left the prompt lane after
	// waiting for its records (see Producer.drain).
	promptLeaves prometheus.Counter
	awaiting     prometheus.GaugeFunc
}

func newProducerMetrics(reg prometheus.Registerer, b *budget, outstanding, sources *atomic.Int64) *producerMetrics {
	m := &producerMetrics{
		produced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tributary", Subsystem: "kafka", Name: "records_produced_total",
			Help: "Records Kafka acknowledged, by Kafka topic.",
		}, []string{"topic"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tributary", Subsystem: "kafka", Name: "records_failed_total",
			Help: "Records whose delivery failed, by Kafka topic and error.",
		}, []string{"topic", "error"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "tributary", Subsystem: "kafka", Name: "ack_latency_seconds",
			Help:    "Time from receiving a publish to Kafka acknowledging its record.",
			Buckets: []float64{.001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		queueFull: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "tributary", Subsystem: "kafka", Name: "queue_full_waits_total",
			Help: "Records that waited because librdkafka's local queue was full.",
		}),
		yields: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "tributary", Subsystem: "kafka", Name: "produce_yields_total",
			Help: "Records after which the producing goroutine yielded its processor, while more than " + strconv.Itoa(deliveryBacklogYield) + " records awaited their delivery reports or more than half the in-flight budget was in use (delivery-report handling or Kafka behind).",
		}),
		prompt: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "tributary", Subsystem: "kafka", Name: "records_prompt_total",
			Help: "Acknowledged records produced with kafka.prompt_linger, while few clients had records awaiting Kafka.",
		}),
		promptLeaves: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "tributary", Subsystem: "kafka", Name: "prompt_leaves_total",
			Help: "Times a client producing with kafka.prompt_linger, once twice kafka.prompt_clients clients had records awaiting Kafka, waited for its records and moved to kafka.ack_linger.",
		}),
	}
	m.awaiting = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "tributary", Subsystem: "kafka", Name: "records_awaiting_delivery",
		Help: "Records handed to librdkafka whose delivery report has not been handled yet.",
	}, func() float64 { return float64(outstanding.Load()) })
	inflight := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "tributary", Subsystem: "kafka", Name: "inflight_bytes",
		Help: "Bytes of records awaiting Kafka's acknowledgement.",
	}, func() float64 { return float64(b.Used()) })
	budgetGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "tributary", Subsystem: "kafka", Name: "inflight_budget_bytes",
		Help: "The configured in-flight byte budget.",
	}, func() float64 { return float64(b.limit) })
	publishing := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "tributary", Subsystem: "kafka", Name: "clients_awaiting_delivery",
		Help: "MQTT connections and upstream connections with records awaiting their delivery reports.",
	}, func() float64 { return float64(sources.Load()) })
	reg.MustRegister(m.produced, m.failed, m.latency, m.queueFull, m.yields, m.prompt, m.promptLeaves, inflight, budgetGauge, m.awaiting, publishing)
	return m
}

// observe counts a delivery; cache holds the calling event goroutine's
// labelled counters.
func (m *producerMetrics) observe(d Delivery, at time.Time, cache map[string]prometheus.Counter) {
	if d.Err != nil {
		code := "unknown"
		var ke kafka.Error
		switch {
		case errors.As(d.Err, &ke):
			code = errorName(ke.Code())
		case errors.Is(d.Err, ErrUnconfirmed):
			code = "unconfirmed"
		}
		m.failed.WithLabelValues(d.Topic, code).Inc()
		return
	}
	c, ok := cache[d.Topic]
	if !ok {
		c = m.produced.WithLabelValues(d.Topic)
		cache[d.Topic] = c
	}
	c.Inc()
	if !at.IsZero() {
		m.latency.Observe(time.Since(at).Seconds())
	}
}

// lingerMs renders d as librdkafka's linger.ms, which takes fractions.
func lingerMs(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', -1, 64)
}

// LibrdkafkaVersion is the version of the librdkafka linked in.
func LibrdkafkaVersion() string {
	_, v := kafka.LibraryVersion()
	return v
}
