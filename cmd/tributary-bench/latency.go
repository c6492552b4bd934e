package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// The latency-qos1 scenario publishes at QoS 1 at a fixed rate well below
// the bridge's capacity, half of what mqtt-qos1 reached in the same round,
// and measures two latencies: PUBLISH written → PUBACK read (the device's
// wait, which includes Kafka's acknowledgement) and PUBLISH written → a
// Kafka consumer receiving the record (the first 8 payload bytes carry
// the send time). Tributary runs with its default linger settings unless
// --tributary-arg or --tributary-env change them, as for every scenario.

const (
	// latencyTick is how often each paced client sends what has come due.
	latencyTick = 5 * time.Millisecond
	// latencyWindow bounds a paced client's unacknowledged publishes. It
	// is far above rate × latency, so the schedule, not the window, sets
	// when publishes go out.
	latencyWindow = 1000
	// consumerWarmup is how long the Kafka consumer gets to fetch
	// metadata and start fetching before the first publish.
	consumerWarmup = time.Second
)

// latencyRate returns the total rate latency-qos1 paces at: --latency-rate,
// or half the last successful mqtt-qos1 rate in earlier.
func (b *bench) latencyRate(earlier []result) (float64, error) {
	if b.opts.latencyRate > 0 {
		return b.opts.latencyRate, nil
	}
	rate := 0.0
	for _, r := range earlier {
		if r.Scenario == "mqtt-qos1" && r.OK {
			rate = r.Rate / 2
		}
	}
	if rate <= 0 {
		return 0, errors.New("no mqtt-qos1 rate to pace at: mqtt-qos1 failed in this round (pass --latency-rate)")
	}
	return rate, nil
}

// runLatency runs latency-qos1 on a fresh Tributary.
func (b *bench) runLatency(ctx context.Context, s scenario, topic, name string, earlier []result) result {
	r := result{Scenario: s.name, Records: b.opts.records}
	rate, err := b.latencyRate(earlier)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	r.PacedRate = ptr(rate)
	stamp := len(b.payload) >= 8
	fmt.Fprintf(b.progress, "   pacing %d clients at %.0f publishes/s in total, every %s\n", s.clients, rate, latencyTick)
	if !stamp {
		fmt.Fprintf(b.progress, "   payloads of %d bytes have no room for a send time: publish → Kafka latency is not measured\n", len(b.payload))
	}
	d, err := startDaemon(ctx, b.daemonConfig(topic, name))
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer d.stop()

	pubs, err := dialPublishers(ctx, mqttDial{}, d.mqttAddr, s.name, s.clients, b.payload, 1, d.logPath)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer closePublishers(pubs)

	sendCtx, cancel := context.WithTimeout(ctx, b.opts.timeout)
	defer cancel()
	var kc *kafkaLatency
	if stamp {
		if kc, err = startKafkaLatency(sendCtx, b.bootstrap, topic, b.opts.partitions, int64(b.opts.records)); err != nil {
			r.Error = err.Error()
			return r
		}
		defer kc.stop()
		select {
		case <-time.After(consumerWarmup):
		case <-ctx.Done():
		}
	}

	counts := split(b.opts.records, s.clients)
	l := startLoad(pubs, func(i int, p *publisher) ([]time.Duration, error) {
		pc := &pace{
			rate:  rate / float64(s.clients),
			tick:  latencyTick,
			delay: latencyTick * time.Duration(i) / time.Duration(s.clients),
			stamp: stamp,
		}
		return p.publishPaced(sendCtx, counts[i], latencyWindow, pc)
	})
	profiled := b.profile(ctx, d, name)
	span := b.startCPU(d.cpuSeconds)
	start, sendErr := l.fire(&r)
	found, end, err := b.admin.waitForCount(ctx, topic, b.opts.partitions, int64(b.opts.records), b.pollTimeout(sendErr))
	span.end(&r)
	profiled()
	if kc != nil && err == nil && sendErr == nil {
		e2e, kerr := kc.wait(b.opts.timeout)
		err = kerr
		if len(e2e) > 0 {
			slices.Sort(e2e)
			r.KafkaP50Ms = ptr(ms(percentile(e2e, 50)))
			r.KafkaP99Ms = ptr(ms(percentile(e2e, 99)))
		}
	}
	b.endDaemonRun(&r, d, name, start, end, found, err, sendErr)
	r.setLatencies(l.latencies())
	return r
}

// kafkaLatency is a franz-go consumer reading a topic from its start, no
// group, and recording for each record how long ago its payload's stamp
// was.
type kafkaLatency struct {
	cl     *kgo.Client
	cancel context.CancelFunc
	done   chan struct{}
	lat    []time.Duration
	err    error
}

func startKafkaLatency(ctx context.Context, bootstrap, topic string, partitions int, want int64) (*kafkaLatency, error) {
	offsets := map[int32]kgo.Offset{}
	for p := range partitions {
		offsets[int32(p)] = kgo.NewOffset().At(0)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(bootstrap), kgo.ClientID("tributary-bench-latency"),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: offsets}),
		kgo.FetchMaxWait(500*time.Millisecond))
	if err != nil {
		return nil, fmt.Errorf("creating Kafka consumer: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	k := &kafkaLatency{cl: cl, cancel: cancel, done: make(chan struct{}), lat: make([]time.Duration, 0, want)}
	go k.run(ctx, want)
	return k, nil
}

func (k *kafkaLatency) run(ctx context.Context, want int64) {
	defer close(k.done)
	for int64(len(k.lat)) < want {
		fs := k.cl.PollFetches(ctx)
		now := time.Now()
		if ctx.Err() != nil {
			k.err = fmt.Errorf("the latency consumer got %d of %d records: %w", len(k.lat), want, ctx.Err())
			return
		}
		if err := fs.Err(); err != nil {
			k.err = fmt.Errorf("consuming for latency: %w", err)
			return
		}
		for it := fs.RecordIter(); !it.Done(); {
			rec := it.Next()
			if len(rec.Value) < 8 {
				k.err = fmt.Errorf("a record of %d bytes carries no send time", len(rec.Value))
				return
			}
			sent := time.Unix(0, int64(binary.BigEndian.Uint64(rec.Value)))
			k.lat = append(k.lat, now.Sub(sent))
		}
	}
}

// wait returns the latencies once every record arrived, or what arrived
// within timeout.
func (k *kafkaLatency) wait(timeout time.Duration) ([]time.Duration, error) {
	select {
	case <-k.done:
	case <-time.After(timeout):
		k.cancel()
		<-k.done
	}
	return k.lat, k.err
}

func (k *kafkaLatency) stop() {
	k.cancel()
	<-k.done
	k.cl.Close()
}
