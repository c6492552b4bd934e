package bridge

import (
	"context"
	"strconv"
	"testing"
	"time"
)

// A source stays in the lane its records awaiting Kafka are in, and moves
// to the lane a record wants only once none are.
func TestOrderMovesLanesOnlyWhenDrained(t *testing.T) {
	var o Order
	if got := o.take(laneBestEffort); got != laneBestEffort {
		t.Fatalf("first record: lane %d, want %d", got, laneBestEffort)
	}
	if got := o.take(laneAcked); got != laneBestEffort {
		t.Fatalf("acknowledged record behind a best-effort one: lane %d, want %d", got, laneBestEffort)
	}
	o.pending.Add(-1)
	if got := o.take(laneAcked); got != laneBestEffort {
		t.Fatalf("with one record still awaiting Kafka: lane %d, want %d", got, laneBestEffort)
	}
	o.pending.Add(-2)
	if got := o.take(laneAcked); got != laneAcked {
		t.Fatalf("after all were delivered: lane %d, want %d", got, laneAcked)
	}
}

// Best-effort and acknowledged records of one source, interleaved, reach
// their partition in the order they were produced, although the two
// lanes linger differently: here the best-effort lane for 20 ms, the
// acknowledged one for 1 ms, so without an Order each acknowledged record
// would overtake the best-effort one before it.
func TestOrderKeepsMixedRecordsInOrder(t *testing.T) {
	p := kfakeProducer(t, ProducerConfig{
		MaxMessageBytes: 1 << 20, InflightBudgetBytes: 1 << 24,
		AckLinger: time.Millisecond, Properties: map[string]string{"linger.ms": "20"},
	}, "mixed")
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
		// Bursts of best-effort records, each followed by one
		// acknowledged record, as a device mixing QoS 0 and QoS 1 sends.
		produce := p.TryProduce
		if i%4 == 3 {
			produce = p.Produce
		}
		if err := produce(ctx, rec, h); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		if i%40 == 39 {
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
}
