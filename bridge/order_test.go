package bridge

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tributary-io/tributary/internal/testutil"
)

// A source stays in the lane its records awaiting Kafka are in, and moves
// to the lane a record wants only once none are.
func TestOrderMovesLanesOnlyWhenDrained(t *testing.T) {
	var o Order
	var sources atomic.Int64
	if got := o.take(laneBestEffort, &sources, 0); got != laneBestEffort {
		t.Fatalf("first record: lane %d, want %d", got, laneBestEffort)
	}
	if got := o.take(laneAcked, &sources, 0); got != laneBestEffort {
		t.Fatalf("acknowledged record behind a best-effort one: lane %d, want %d", got, laneBestEffort)
	}
	o.settle(&sources)
	if got := o.take(laneAcked, &sources, 0); got != laneBestEffort {
		t.Fatalf("with one record still awaiting Kafka: lane %d, want %d", got, laneBestEffort)
	}
	o.settle(&sources)
	o.settle(&sources)
	if got := o.take(laneAcked, &sources, 0); got != laneAcked {
		t.Fatalf("after all were delivered: lane %d, want %d", got, laneAcked)
	}
}

// An acknowledged record of a source with nothing awaiting Kafka takes the
// prompt lane while fewer than prompt other sources have records awaiting,
// and the ack lane otherwise; the source counts once however many of its
// records await, and no more once none do. A source marked Aggregate and a
// best-effort record never take the prompt lane.
func TestOrderTakesThePromptLaneWhileFewSourcesAwait(t *testing.T) {
	const prompt = 2
	var sources atomic.Int64
	var a, b, c Order
	for i := range 3 {
		if got := a.take(laneAcked, &sources, prompt); got != lanePrompt {
			t.Fatalf("a's record %d, the only source: lane %d, want the prompt lane %d", i, got, lanePrompt)
		}
	}
	if n := sources.Load(); n != 1 {
		t.Fatalf("one source with three records awaiting counted as %d", n)
	}
	if got := b.take(laneAcked, &sources, prompt); got != lanePrompt {
		t.Fatalf("b, with one other source awaiting: lane %d, want the prompt lane %d", got, lanePrompt)
	}
	if got := c.take(laneAcked, &sources, prompt); got != laneAcked {
		t.Fatalf("c, with two other sources awaiting: lane %d, want the ack lane %d", got, laneAcked)
	}
	if n := sources.Load(); n != 3 {
		t.Fatalf("three sources awaiting counted as %d", n)
	}
	// a is in the prompt lane with records awaiting: it stays there,
	// though the sources are no longer few, so that its order holds; it
	// is to leave only at twice prompt sources, and c, in the ack lane,
	// never is.
	if a.leaving(&sources, prompt) {
		t.Fatal("a is to leave the prompt lane with three sources awaiting, under twice prompt")
	}
	if got := a.take(laneAcked, &sources, prompt); got != lanePrompt {
		t.Fatalf("a's fourth record while three await: lane %d, want the prompt lane %d", got, lanePrompt)
	}
	var d Order
	d.take(laneAcked, &sources, prompt)
	if !a.leaving(&sources, prompt) {
		t.Fatal("a is not to leave the prompt lane with four sources awaiting, twice prompt")
	}
	if c.leaving(&sources, prompt) {
		t.Fatal("c, in the ack lane, is to leave the prompt lane")
	}
	d.settle(&sources)
	for range 4 {
		a.settle(&sources)
	}
	c.settle(&sources)
	if n := sources.Load(); n != 1 {
		t.Fatalf("with only b awaiting, counted %d sources", n)
	}
	// Drained, c moves to the prompt lane now that b is the only other.
	if got := c.take(laneAcked, &sources, prompt); got != lanePrompt {
		t.Fatalf("c after its records were delivered, one other source awaiting: lane %d, want the prompt lane %d", got, lanePrompt)
	}
	c.settle(&sources)
	b.settle(&sources)
	if n := sources.Load(); n != 0 {
		t.Fatalf("nothing awaiting, counted %d sources", n)
	}
	if got := a.take(laneBestEffort, &sources, prompt); got != laneBestEffort {
		t.Fatalf("a best-effort record: lane %d, want %d", got, laneBestEffort)
	}
	a.settle(&sources)
	u := Order{Aggregate: true}
	if got := u.take(laneAcked, &sources, prompt); got != laneAcked {
		t.Fatalf("an aggregate source alone: lane %d, want the ack lane %d", got, laneAcked)
	}
	u.settle(&sources)
	if got := a.take(laneAcked, &sources, 0); got != laneAcked {
		t.Fatalf("without a prompt lane: lane %d, want the ack lane %d", got, laneAcked)
	}
}

// Best-effort and acknowledged records of one source, interleaved, reach
// their partition in the order they were produced, although the lanes
// linger differently: here the best-effort lane for 20 ms, the
// acknowledged one for 1 ms (or, with a prompt lane, 0), so without an
// Order each acknowledged record would overtake the best-effort one
// before it.
func TestOrderKeepsMixedRecordsInOrder(t *testing.T) {
	for _, tc := range []struct {
		name          string
		promptClients int
		promptLinger  time.Duration
		prompt        bool // whether a prompt lane is made
	}{
		{"ack lane", 0, 0, false},
		{"prompt lane", 4, 0, true},
		{"prompt linger not shorter than the ack linger", 4, time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			p := kfakeProducer(t, ProducerConfig{
				MaxMessageBytes: 1 << 20, InflightBudgetBytes: 1 << 24,
				AckLinger: time.Millisecond, Properties: map[string]string{"linger.ms": "20"},
				PromptClients: tc.promptClients, PromptLinger: tc.promptLinger, Registerer: reg,
			}, "mixed")
			if made := p.lanes[lanePrompt] != nil; made != tc.prompt {
				t.Fatalf("prompt lane made: %v, want %v", made, tc.prompt)
			}
			produceMixed(t, p)
			prompted := metricValue(t, p, "tributary_kafka_records_prompt_total")
			if !tc.prompt && prompted != 0 {
				t.Fatalf("%v records took a prompt lane that was not made", prompted)
			}
			if tc.prompt && prompted == 0 {
				t.Fatal("no acknowledged record of the only source took the prompt lane")
			}
		})
	}
}

func produceMixed(t *testing.T, p *Producer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	const n = 400
	var o Order
	offsets := make(chan [2]int64, n)
	for i := range n {
		rec := &Record{Topic: "mixed", Key: []byte("k"), Value: []byte(strconv.Itoa(i)), Timestamp: time.Now(), Order: &o}
		h := DeliveryFunc(func(d Delivery) {
			if d.Err != nil {
				t.Errorf("record %d: %v", i, d.Err)
			}
			offsets <- [2]int64{int64(i), d.Offset}
		})
		// Blocks of 40: bursts of best-effort records, each followed by
		// one acknowledged record, as a device mixing QoS 0 and QoS 1
		// sends; then only acknowledged records, which start with none
		// awaiting Kafka and so take the ack lane or the prompt lane.
		produce := p.TryProduce
		if i%4 == 3 || (i/40)%2 == 1 {
			produce = p.Produce
		}
		if err := produce(ctx, rec, h); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		switch i % 80 {
		case 39:
			testutil.WaitFor(t, 10*time.Second, "the mixed block to be delivered", func() bool { return o.pending.Load() == 0 })
		case 79:
			time.Sleep(5 * time.Millisecond) // some bursts drain, so the source changes lanes
		}
	}
	at := make([]int64, n)
	for range n {
		select {
		case r := <-offsets:
			at[r[0]] = r[1]
		case <-ctx.Done():
			t.Fatal("not every record was delivered")
		}
	}
	for i := 1; i < n; i++ {
		if at[i] <= at[i-1] {
			t.Fatalf("record %d is at offset %d, record %d at %d: order broken", i-1, at[i-1], i, at[i])
		}
	}
	if o.pending.Load() != 0 {
		t.Errorf("%d records still counted as awaiting Kafka after all were delivered", o.pending.Load())
	}
	if n := p.sources.Load(); n != 0 {
		t.Errorf("%d sources still counted as awaiting Kafka after all records were delivered", n)
	}
}

// A source in the prompt lane that keeps records awaiting Kafka, once
// twice PromptClients sources have records awaiting, waits for its
// records before it produces the next, which then takes the ack lane and
// lands after them. If they take longer than the drain's bound, it stays
// in the prompt lane, in order, and does not wait again while they
// await. Kafka holds every produce request here until released, so the
// source's first record is still awaiting when its next is produced; the
// other source's record lingers for a minute in the best-effort lane, so
// it still awaits Kafka after the release.
func TestOrderLeavesThePromptLaneAmongManySources(t *testing.T) {
	for _, tc := range []struct {
		name      string
		drainWait time.Duration
		leaves    bool
	}{
		{"Kafka answers within the bound", time.Minute, true},
		{"Kafka slower than the bound", time.Second, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, release := heldProducer(t, ProducerConfig{
				MaxMessageBytes: 1 << 20, InflightBudgetBytes: 1 << 24,
				AckLinger: time.Millisecond, PromptClients: 1,
				Properties: map[string]string{"linger.ms": "60000"},
			})
			p.drainWait = tc.drainWait
			leaveAmongMany(t, p, release, tc.leaves)
		})
	}
}

func leaveAmongMany(t *testing.T, p *Producer, release func(), leaves bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var a, b Order
	var firstDone atomic.Bool
	offsets := make(chan [2]int64, 3)
	record := func(o *Order, v string) *Record {
		return &Record{Topic: "t", Key: []byte("k"), Value: []byte(v), Timestamp: time.Now(), Order: o}
	}
	deliver := func(i int64, then func()) DeliveryHandler {
		return DeliveryFunc(func(d Delivery) {
			if d.Err != nil {
				t.Errorf("record %d: %v", i, d.Err)
			}
			if then != nil {
				then()
			}
			offsets <- [2]int64{i, d.Offset}
		})
	}
	if err := p.Produce(ctx, record(&a, "a1"), deliver(0, func() { firstDone.Store(true) })); err != nil {
		t.Fatal(err)
	}
	if a.lane.Load() != lanePrompt {
		t.Fatalf("the only source's record took lane %d, want the prompt lane %d", a.lane.Load(), lanePrompt)
	}
	// Delivered when the producer is closed, which flushes the linger.
	if err := p.TryProduce(ctx, record(&b, "b1"), DeliveryFunc(func(Delivery) {})); err != nil {
		t.Fatal(err)
	}
	returned := make(chan error, 1)
	go func() { returned <- p.Produce(ctx, record(&a, "a2"), deliver(1, nil)) }()
	if leaves {
		select {
		case err := <-returned:
			t.Fatalf("a's second record was produced (%v) while its first awaited Kafka among two sources", err)
		case <-time.After(100 * time.Millisecond):
		}
		release()
		if err := <-returned; err != nil {
			t.Fatal(err)
		}
		if !firstDone.Load() {
			t.Fatal("a's second record was produced before its first was delivered")
		}
		if a.lane.Load() != laneAcked {
			t.Fatalf("a's second record took lane %d, want the ack lane %d", a.lane.Load(), laneAcked)
		}
	} else {
		if err := <-returned; err != nil {
			t.Fatal(err)
		}
		if firstDone.Load() {
			t.Fatal("a's first record was delivered while Kafka held it")
		}
		if a.lane.Load() != lanePrompt {
			t.Fatalf("a's second record, after the drain gave up, took lane %d, want the prompt lane %d", a.lane.Load(), lanePrompt)
		}
		// No second wait: the third record is produced at once,
		// though both before it still await Kafka.
		start := time.Now()
		if err := p.Produce(ctx, record(&a, "a3"), deliver(2, nil)); err != nil {
			t.Fatal(err)
		}
		if waited := time.Since(start); waited >= p.drainWait || a.lane.Load() != lanePrompt {
			t.Fatalf("a's third record waited %v and took lane %d; want no wait and the prompt lane %d", waited, a.lane.Load(), lanePrompt)
		}
		release()
	}
	n := 2
	if !leaves {
		n = 3
	}
	at := map[int64]int64{}
	for range n {
		select {
		case r := <-offsets:
			at[r[0]] = r[1]
		case <-ctx.Done():
			t.Fatal("not every record was delivered")
		}
	}
	for i := int64(1); i < int64(n); i++ {
		if at[i] <= at[i-1] {
			t.Fatalf("a's records %d and %d at offsets %d and %d: order broken", i-1, i, at[i-1], at[i])
		}
	}
	want := 0.0
	if leaves {
		want = 1
	}
	if got := metricValue(t, p, "tributary_kafka_prompt_leaves_total"); got != want {
		t.Fatalf("prompt_leaves_total = %v, want %v", got, want)
	}
}

// A source that continues another (a client's new connection after its
// old one) takes the lane of the other's records while any await Kafka,
// whatever lane its own record wants, and chooses freely once none do;
// the link is then dropped. A chain of continuations follows the first
// one with records awaiting.
func TestOrderFollowsItsPredecessorsLane(t *testing.T) {
	const prompt = 4
	var sources atomic.Int64
	var old, mid, cur Order
	if got := old.take(laneBestEffort, &sources, prompt); got != laneBestEffort {
		t.Fatalf("the old source's record: lane %d, want %d", got, laneBestEffort)
	}
	mid.Follow(&old)
	cur.Follow(&mid)
	cur.Follow(&cur) // no effect
	cur.Follow(nil)  // no effect
	if !mid.Awaiting() || !cur.Awaiting() {
		t.Fatal("a continuation of a source with a record awaiting Kafka does not count as awaiting")
	}
	// With one source awaiting, an acknowledged record alone would take
	// the prompt lane; behind old's record it takes old's lane.
	if got := cur.take(laneAcked, &sources, prompt); got != laneBestEffort {
		t.Fatalf("an acknowledged record behind the predecessor's best-effort one: lane %d, want %d", got, laneBestEffort)
	}
	cur.settle(&sources)
	if got := cur.take(laneAcked, &sources, prompt); got != laneBestEffort {
		t.Fatalf("its own records delivered, the predecessor's not: lane %d, want %d", got, laneBestEffort)
	}
	cur.settle(&sources)
	old.settle(&sources)
	if cur.Awaiting() || mid.Awaiting() {
		t.Fatal("nothing awaits Kafka, yet a continuation counts as awaiting")
	}
	if cur.after.Load() != nil {
		t.Fatal("the link to the predecessors is kept after none of their records await Kafka")
	}
	if got := cur.take(laneAcked, &sources, prompt); got != lanePrompt {
		t.Fatalf("the predecessor drained: lane %d, want the prompt lane %d", got, lanePrompt)
	}
	cur.settle(&sources)
	if n := sources.Load(); n != 0 {
		t.Fatalf("nothing awaiting, counted %d sources", n)
	}

	// A second predecessor does not cut the first off: it is continued
	// in turn.
	var first, second, next Order
	first.take(laneBestEffort, &sources, prompt)
	next.Follow(&first)
	next.Follow(&second)
	if got := next.take(laneAcked, &sources, prompt); got != laneBestEffort {
		t.Fatalf("behind a new predecessor with nothing awaiting and an older one awaiting: lane %d, want %d", got, laneBestEffort)
	}
	next.settle(&sources)
	first.settle(&sources)

	// A loop of continuations, which concurrent takeovers could make,
	// ends the walk.
	var x, y Order
	x.Follow(&y)
	y.Follow(&x)
	if x.Awaiting() || y.Awaiting() {
		t.Fatal("a loop of Orders with nothing awaiting counts as awaiting")
	}
}

// A client's new connection does not overtake its old one in Kafka: its
// first acknowledged record, which alone would take the prompt lane, lands
// after the old connection's records still lingering in the ack lane
// (three seconds here, the prompt lane none), and with them.
func TestOrderFollowKeepsAReconnectsRecordsInOrder(t *testing.T) {
	for _, follow := range []bool{true, false} {
		t.Run(map[bool]string{true: "following", false: "not following"}[follow], func(t *testing.T) {
			p := kfakeProducer(t, ProducerConfig{
				MaxMessageBytes: 1 << 20, InflightBudgetBytes: 1 << 24,
				AckLinger: 3 * time.Second, PromptClients: 4,
			}, "t")
			reconnectInOrder(t, p, follow)
		})
	}
}

func reconnectInOrder(t *testing.T, p *Producer, follow bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	offsets := make(chan [2]int64, 4)
	deliver := func(i int64) DeliveryHandler {
		return DeliveryFunc(func(d Delivery) {
			if d.Err != nil {
				t.Errorf("record %d: %v", i, d.Err)
			}
			offsets <- [2]int64{i, d.Offset}
		})
	}
	record := func(o *Order, v string) *Record {
		return &Record{Topic: "t", Key: []byte("k"), Value: []byte(v), Timestamp: time.Now(), Order: o}
	}
	// The old connection's records: with five other sources awaiting,
	// they take the ack lane.
	others := make([]Order, 5)
	for i := range others {
		others[i].take(laneBestEffort, &p.sources, p.prompt)
	}
	var old Order
	for i := range 3 {
		if err := p.Produce(ctx, record(&old, "old"), deliver(int64(i))); err != nil {
			t.Fatal(err)
		}
	}
	if old.lane.Load() != laneAcked {
		t.Fatalf("the old connection's records took lane %d, want the ack lane %d", old.lane.Load(), laneAcked)
	}
	for i := range others {
		others[i].settle(&p.sources)
	}
	var cur Order
	if follow {
		cur.Follow(&old)
	}
	if err := p.Produce(ctx, record(&cur, "new"), deliver(3)); err != nil {
		t.Fatal(err)
	}
	want := laneAcked
	if !follow {
		want = lanePrompt
	}
	if got := int(cur.lane.Load()); got != want {
		t.Fatalf("the new connection's first record took lane %d, want %d", got, want)
	}
	at := map[int64]int64{}
	for range 4 {
		select {
		case r := <-offsets:
			at[r[0]] = r[1]
		case <-ctx.Done():
			t.Fatal("not every record was delivered")
		}
	}
	inOrder := true
	for i := int64(1); i < 4; i++ {
		inOrder = inOrder && at[i] > at[i-1]
	}
	// Not following, the new record overtakes the lingering ones: the
	// case shows that this test can tell.
	if inOrder != follow {
		t.Fatalf("following %v: offsets %v, in order %v", follow, at, inOrder)
	}
}
