package bridge

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// While more records await their delivery reports than the backlog
// bound, each record produced has its goroutine yield to the goroutines
// that handle the reports, and is counted; at or under the bound nothing
// yields. Kafka holds the produce requests, so the backlog is known
// exactly: each record produced adds one.
func TestProducerYieldsPastDeliveryBacklog(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "t"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close) // after the producer's Close (cleanups run last first); wakes held requests
	release := make(chan struct{})
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		c.SleepControl(func() { <-release })
		return nil, nil, false
	})
	p := testProducer(t, c, false)
	p.yieldAbove = 5
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	const n = 12
	delivered := make(chan Delivery, n+1)
	handler := DeliveryFunc(func(d Delivery) { delivered <- d })
	for i := range n {
		rec := &Record{Topic: "t", Value: []byte{byte(i)}}
		produce := p.TryProduce // a QoS 0 record's way in
		if i%2 == 1 {
			produce = p.Produce // a QoS 1 record's
		}
		if err := produce(ctx, rec, handler); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
	}
	// Records 6 to 12 found more than 5 awaiting their reports, themselves
	// included.
	if got := metricValue(t, p, "tributary_kafka_produce_yields_total"); got != n-5 {
		t.Fatalf("produce_yields_total = %v, want %d", got, n-5)
	}
	if got := metricValue(t, p, "tributary_kafka_records_awaiting_delivery"); got != n {
		t.Fatalf("records_awaiting_delivery = %v with Kafka holding every record, want %d", got, n)
	}

	close(release)
	for i := range n {
		select {
		case d := <-delivered:
			if d.Err != nil {
				t.Fatalf("delivery %d: %v", i, d.Err)
			}
		case <-ctx.Done():
			t.Fatalf("%d of %d delivery reports", i, n)
		}
	}
	for p.outstanding.Load() != 0 { // counted down right after each handler
		if ctx.Err() != nil {
			t.Fatalf("%d records still awaiting delivery after all were reported", p.outstanding.Load())
		}
		time.Sleep(time.Millisecond)
	}
	if got := metricValue(t, p, "tributary_kafka_records_awaiting_delivery"); got != 0 {
		t.Fatalf("records_awaiting_delivery = %v after every report, want 0", got)
	}
	if err := p.TryProduce(ctx, &Record{Topic: "t", Value: []byte("after")}, handler); err != nil {
		t.Fatal(err)
	}
	if got := metricValue(t, p, "tributary_kafka_produce_yields_total"); got != n-5 {
		t.Fatalf("produce_yields_total = %v after a record under the bound, want still %d", got, n-5)
	}
}

// metricValue reads one unlabelled counter or gauge of the producer's.
func metricValue(t *testing.T, p *Producer, name string) float64 {
	t.Helper()
	var cs []prometheus.Collector
	switch name {
	case "tributary_kafka_produce_yields_total":
		cs = append(cs, p.metrics.yields)
	case "tributary_kafka_records_awaiting_delivery":
		cs = append(cs, p.metrics.awaiting)
	}
	for _, c := range cs {
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
	t.Fatalf("no metric %s", name)
	return 0
}
