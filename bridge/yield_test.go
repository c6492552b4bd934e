package bridge

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// heldProducer returns a Producer on a one-broker kfake cluster holding
// topic "t", whose produce requests Kafka holds until release is called:
// no delivery report comes before it, so what awaits its report is
// exactly what was produced. Both are closed at cleanup, the producer
// first.
func heldProducer(t *testing.T, cfg ProducerConfig) (p *Producer, release func()) {
	t.Helper()
	c := kfakeCluster(t, "t")
	held := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(held) }) }
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		c.SleepControl(func() { <-held })
		return nil, nil, false
	})
	p = producerOn(t, c, cfg)
	t.Cleanup(release) // before the producer's Close: a test that failed early leaves nothing held
	return p, release
}

// While more records await their delivery reports than the backlog
// bound, or more than half the in-flight budget is in use, each record
// produced has its goroutine yield to the goroutines that handle the
// reports, and is counted; otherwise nothing yields. (The test sees the
// count, not the scheduler's pass: that the reports then keep up with a
// flood is measured by tributary-bench, docs/performance.md session 23.)
func TestProducerYieldsPastDeliveryBacklog(t *testing.T) {
	for _, tc := range []struct {
		name      string
		records   int
		value     int
		bound     int64 // yieldAbove
		budget    int64
		wantYield int
	}{
		// Records 6 to 12 find more than 5 awaiting their reports,
		// themselves included.
		{name: "records", records: 12, value: 1, bound: 5, budget: 8 << 20, wantYield: 7},
		// 1000 bytes each against 4000: the third and fourth take more
		// than half.
		{name: "bytes", records: 4, value: 1000, bound: deliveryBacklogYield, budget: 4000, wantYield: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, release := heldProducer(t, ProducerConfig{
				MaxMessageBytes:     1 << 20,
				InflightBudgetBytes: tc.budget,
				AckLinger:           time.Millisecond,
			})
			p.yieldAbove = tc.bound
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			delivered := make(chan Delivery, tc.records+1)
			handler := DeliveryFunc(func(d Delivery) { delivered <- d })
			for i := range tc.records {
				rec := &Record{Topic: "t", Value: make([]byte, tc.value)}
				produce := p.TryProduce // a QoS 0 record's way in
				if i%2 == 1 {
					produce = p.Produce // a QoS 1 record's
				}
				if err := produce(ctx, rec, handler); err != nil {
					t.Fatalf("record %d: %v", i, err)
				}
			}
			if got := metricValue(t, p, "tributary_kafka_produce_yields_total"); got != float64(tc.wantYield) {
				t.Fatalf("produce_yields_total = %v, want %d", got, tc.wantYield)
			}
			if got := metricValue(t, p, "tributary_kafka_records_awaiting_delivery"); got != float64(tc.records) {
				t.Fatalf("records_awaiting_delivery = %v with Kafka holding every record, want %d", got, tc.records)
			}

			release()
			for i := range tc.records {
				select {
				case d := <-delivered:
					if d.Err != nil {
						t.Fatalf("delivery %d: %v", i, d.Err)
					}
				case <-ctx.Done():
					t.Fatalf("%d of %d delivery reports", i, tc.records)
				}
			}
			for p.outstanding.Load() != 0 || p.budget.Used() != 0 { // counted down right after each handler, budget in batches
				if ctx.Err() != nil {
					t.Fatalf("%d records, %d bytes still awaiting delivery after all were reported", p.outstanding.Load(), p.budget.Used())
				}
				time.Sleep(time.Millisecond)
			}
			if got := metricValue(t, p, "tributary_kafka_records_awaiting_delivery"); got != 0 {
				t.Fatalf("records_awaiting_delivery = %v after every report, want 0", got)
			}
			if err := p.TryProduce(ctx, &Record{Topic: "t", Value: make([]byte, tc.value)}, handler); err != nil {
				t.Fatal(err)
			}
			if got := metricValue(t, p, "tributary_kafka_produce_yields_total"); got != float64(tc.wantYield) {
				t.Fatalf("produce_yields_total = %v after a record under both bounds, want still %d", got, tc.wantYield)
			}
		})
	}
}

// metricValue reads one unlabelled counter or gauge of the producer's.
func metricValue(t *testing.T, p *Producer, name string) float64 {
	t.Helper()
	var c prometheus.Collector
	switch name {
	case "tributary_kafka_produce_yields_total":
		c = p.metrics.yields
	case "tributary_kafka_records_awaiting_delivery":
		c = p.metrics.awaiting
	case "tributary_kafka_records_prompt_total":
		c = p.metrics.prompt
	case "tributary_kafka_prompt_leaves_total":
		c = p.metrics.promptLeaves
	default:
		t.Fatalf("no metric %s", name)
	}
	ch := make(chan prometheus.Metric, 1)
	c.Collect(ch)
	var m dto.Metric
	if err := (<-ch).Write(&m); err != nil {
		t.Fatal(err)
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

// Every func given to AfterDeliveries is called on a lane's event
// goroutine after the delivery reports of each of its bursts: once the
// last report of the lane has been handled, a call follows that sees it.
// Each case uses one lane only, so that the other's calls cannot stand in.
func TestAfterDeliveriesFollowsTheReports(t *testing.T) {
	for _, lane := range []string{"acknowledged", "best effort"} {
		t.Run(lane, func(t *testing.T) {
			p, release := heldProducer(t, ProducerConfig{MaxMessageBytes: 1 << 20, InflightBudgetBytes: 8 << 20, AckLinger: time.Millisecond})
			produce := p.Produce
			if lane == "best effort" {
				produce = p.TryProduce
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var delivered, failed atomic.Int64
			handler := DeliveryFunc(func(d Delivery) {
				if d.Err != nil {
					failed.Add(1)
				}
				delivered.Add(1)
			})
			var seen [2]chan int64 // what each func saw handled, call by call
			for i := range seen {
				ch := make(chan int64, 1024)
				seen[i] = ch
				p.AfterDeliveries(func() {
					select {
					case ch <- delivered.Load():
					default:
					}
				})
			}
			const n = 20
			for i := range n {
				if err := produce(ctx, &Record{Topic: "t", Value: []byte("v")}, handler); err != nil {
					t.Fatalf("record %d: %v", i, err)
				}
			}
			for i, ch := range seen {
				select {
				case got := <-ch:
					t.Fatalf("func %d called with %d reports handled before Kafka answered any", i, got)
				case <-time.After(200 * time.Millisecond):
				}
			}
			release()
			for i, ch := range seen {
				for got := int64(0); got < n; {
					select {
					case got = <-ch:
					case <-ctx.Done():
						t.Fatalf("func %d: no call after the last of %d reports (%d handled)", i, n, delivered.Load())
					}
				}
			}
			if f := failed.Load(); f > 0 {
				t.Fatalf("%d of %d records failed", f, n)
			}
		})
	}
}
