package bridge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// kfakeProducer starts a one-broker kfake cluster holding topics, each of
// one partition, and a Producer on it; both are closed at cleanup.
func kfakeProducer(t *testing.T, cfg ProducerConfig, topics ...string) *Producer {
	t.Helper()
	return producerOn(t, kfakeCluster(t, topics...), cfg)
}

// kfakeCluster starts a one-broker kfake cluster holding topics, each of
// one partition, closed at cleanup.
func kfakeCluster(t *testing.T, topics ...string) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topics...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// producerOn starts a Producer with cfg on c, closed at cleanup (before
// c, when c was started first: cleanups run last first).
func producerOn(t *testing.T, c *kfake.Cluster, cfg ProducerConfig) *Producer {
	t.Helper()
	cfg.Bootstrap = c.ListenAddrs()[0]
	p, err := NewProducer(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p.Close(ctx)
	})
	return p
}

// A record of exactly kafka.max_message_bytes (key, value and headers)
// reaches Kafka: librdkafka, which counts the record's framing too, is
// given room for it. One byte more is refused before librdkafka, and so is
// a record within the limit whose headers' framing would not fit.
func TestRecordAtMaxMessageBytes(t *testing.T) {
	const limit = 4096
	p := kfakeProducer(t, ProducerConfig{MaxMessageBytes: limit, InflightBudgetBytes: 1 << 20, AckLinger: time.Millisecond}, "big")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	produce := func(rec *Record) error {
		t.Helper()
		done := make(chan Delivery, 1)
		if err := p.Produce(ctx, rec, DeliveryFunc(func(d Delivery) { done <- d })); err != nil {
			return err
		}
		select {
		case d := <-done:
			return d.Err
		case <-ctx.Done():
			t.Fatal("no delivery report")
			return nil
		}
	}
	headers := func(n int) []Header {
		hs := make([]Header, n)
		for i := range hs {
			hs[i] = Header{Key: fmt.Sprintf("h%02d", i), Value: []byte("v")}
		}
		return hs
	}
	withHeaders := func(n, size int) *Record {
		hs := headers(n)
		rec := &Record{Topic: "big", Key: []byte("k"), Headers: hs}
		rec.Value = []byte(strings.Repeat("x", size-rec.Size()))
		return rec
	}
	for _, n := range []int{0, 5, 40} {
		if err := produce(withHeaders(n, limit)); err != nil {
			t.Errorf("a record of exactly %d bytes with %d headers: %v", limit, n, err)
		}
	}
	if err := produce(withHeaders(0, limit+1)); !errors.Is(err, ErrRecordTooLarge) {
		t.Errorf("a record one byte over: %v, want ErrRecordTooLarge", err)
	}
	// 400 headers of 4 bytes: within the limit, but their framing is not.
	err := produce(withHeaders(400, limit))
	if !errors.Is(err, ErrRecordTooLarge) || !strings.Contains(err.Error(), "framing of its 400 headers") {
		t.Errorf("a record whose headers' framing does not fit: %v", err)
	}
}
