package main

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"time"
)

// The mosquitto scenarios send the load of an MQTT scenario (same
// clients, QoS, window, payload and topics) into Debian's mosquitto
// instead of Tributary, with one QoS 0 subscriber on bench/# draining it.
// No Kafka is involved: the rate is what the subscriber received over the
// time from the first publish to the last record received. They give
// Tributary's MQTT scenarios a second comparison, with a broker that only
// forwards, and they show what the load generator can send.

// findMosquitto returns the path of the mosquitto broker: on PATH, or in
// /usr/sbin where Debian puts it, which is not on every user's PATH.
func findMosquitto() (string, error) {
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p, nil
	}
	return exec.LookPath("/usr/sbin/mosquitto")
}

// stallLimit is how long a subscriber may go without a publish, once the
// publishers are done, before the harness stops waiting for the rest.
const stallLimit = 5 * time.Second

// runMosquitto sends s's load into a fresh mosquitto and counts what its
// subscriber receives.
func (b *bench) runMosquitto(ctx context.Context, s scenario, name string) result {
	r := result{Scenario: s.name, Records: b.opts.records}
	bin, err := findMosquitto()
	if err != nil {
		r.Skipped = fmt.Sprintf("skipped: needs Debian's mosquitto broker (scripts/install-deps.sh, or apt-get install mosquitto): %v", err)
		return r
	}
	// No limit on in-flight messages: the subscriber is at QoS 0, so the
	// setting only matters for QoS 1 deliveries, of which there are none.
	rb, err := startRemoteBroker(ctx, bin, b.dir, name, 0)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer rb.stop()

	sub, err := mqttDial{}.subscriber(ctx, rb.addr(), "bench-drain", "bench/#")
	if err != nil {
		r.Error = fmt.Sprintf("subscribing: %v (log: %s)", err, rb.logPath)
		return r
	}
	defer sub.Close()
	l, done, err := b.dialLoad(ctx, mqttDial{}, rb.addr(), s, rb.logPath)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer done()

	want := int64(b.opts.records)
	recvDone := make(chan error, 1)
	go func() { recvDone <- sub.receive(want) }()

	span := b.startCPU(rb.cpuSeconds)
	start, sendErr := l.fire(&r)
	recvErr := b.awaitSubscriber(ctx, sub, recvDone, want, sendErr != nil)
	span.end(&r)
	if kb, err := procStatusKB(rb.cmd.Process.Pid, "VmHWM"); err == nil {
		r.RSS = ptr(kb << 10)
	}
	end := start
	if last := sub.last.Load(); last != 0 {
		end = time.Unix(0, last)
	}
	err = errors.Join(sendErr, recvErr)
	r.settle(start, end, sub.got.Load(), err, "the subscriber received")
	if err != nil {
		r.Error += " (log: " + rb.logPath + ")"
	}
	r.setLatencies(l.latencies())
	return r
}

// awaitSubscriber waits until the subscriber has received want publishes,
// or its connection failed, or it went stallLimit without one (a broker
// dropping QoS 0 messages), or the timeout passed. sendFailed shortens
// the wait to counting what has arrived.
func (b *bench) awaitSubscriber(ctx context.Context, sub *subscriber, recvDone <-chan error, want int64, sendFailed bool) error {
	limit := b.opts.timeout
	if sendFailed {
		limit = stallLimit
	}
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	poll := time.NewTicker(100 * time.Millisecond)
	defer poll.Stop()
	seen, since := sub.got.Load(), time.Now()
	for {
		select {
		case err := <-recvDone:
			return err
		case <-ctx.Done():
			sub.Close()
			<-recvDone
			return ctx.Err()
		case <-deadline.C:
			sub.Close()
			<-recvDone
			return fmt.Errorf("the subscriber received %d of %d publishes within %s", sub.got.Load(), want, limit)
		case <-poll.C:
			if n := sub.got.Load(); n != seen {
				seen, since = n, time.Now()
			} else if time.Since(since) > stallLimit {
				sub.Close()
				<-recvDone
				return fmt.Errorf("the subscriber received %d of %d publishes, then nothing for %s", n, want, stallLimit)
			}
		}
	}
}
