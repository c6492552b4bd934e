package bridge

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A record whose context has ended before the producer counts it is not
// produced, though the budget has room for it: its caller (a connection
// drained for shutdown) will not acknowledge it, and its client sends it
// again. Produced anyway, it could reach Kafka after the shutdown's flush
// and become a duplicate. The offsets show what Kafka got: the records
// produced before and after it are 0 and 1.
func TestProduceWithAnEndedContextProducesNothing(t *testing.T) {
	p := kfakeProducer(t, ProducerConfig{MaxMessageBytes: 1 << 10, InflightBudgetBytes: 1 << 20, AckLinger: time.Millisecond}, "t")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	produce := func(ctx context.Context, value string) (Delivery, error) {
		t.Helper()
		done := make(chan Delivery, 1)
		if err := p.Produce(ctx, &Record{Topic: "t", Value: []byte(value)}, DeliveryFunc(func(d Delivery) { done <- d })); err != nil {
			return Delivery{}, err
		}
		select {
		case d := <-done:
			return d, nil
		case <-time.After(30 * time.Second):
			t.Fatal("no delivery report")
			return Delivery{}, nil
		}
	}
	if d, err := produce(ctx, "first"); err != nil || d.Err != nil || d.Offset != 0 {
		t.Fatalf("first record: %+v, %v; want offset 0", d, err)
	}
	// The handler runs before the record stops counting as outstanding
	// and its bytes go back to the budget.
	for p.outstanding.Load() != 0 || p.budget.Used() != 0 {
		if ctx.Err() != nil {
			t.Fatalf("%d records outstanding, %d budget bytes used after the first's delivery", p.outstanding.Load(), p.budget.Used())
		}
		time.Sleep(time.Millisecond)
	}
	ended, end := context.WithCancel(context.Background())
	end()
	if _, err := produce(ended, "after the end"); !errors.Is(err, context.Canceled) {
		t.Fatalf("record with an ended context: %v, want context.Canceled", err)
	}
	if n := p.outstanding.Load(); n != 0 {
		t.Fatalf("%d records outstanding after the refused one", n)
	}
	if used := p.budget.Used(); used != 0 {
		t.Fatalf("%d budget bytes still held after the refused one", used)
	}
	if d, err := produce(ctx, "second"); err != nil || d.Err != nil || d.Offset != 1 {
		t.Fatalf("second record: %+v, %v; want offset 1, after only the first", d, err)
	}
}
