package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"
)

// dialPublishers connects n publishers named <prefix>-NNN, each to its
// own topic bench/<client id> (benchClient), the way how says. On error
// the ones already connected are closed; logPath, if set, names the
// broker's log in the error.
func dialPublishers(ctx context.Context, how mqttDial, addr, prefix string, n int, payload []byte, qos byte, logPath string) ([]*publisher, error) {
	pubs := make([]*publisher, n)
	for i := range pubs {
		id, topic := benchClient(prefix, i)
		p, err := how.publisher(ctx, addr, id, topic, payload, qos)
		if err != nil {
			closePublishers(pubs)
			if logPath != "" {
				err = fmt.Errorf("%w (log: %s)", err, logPath)
			}
			return nil, err
		}
		pubs[i] = p
	}
	return pubs, nil
}

func closePublishers(pubs []*publisher) {
	for _, p := range pubs {
		if p != nil {
			p.Close()
		}
	}
}

// load is one sending goroutine per publisher, started at once by fire so
// that connecting and scheduling stay out of the timed part.
type load struct {
	begin chan struct{}
	wg    sync.WaitGroup
	lats  [][]time.Duration
	errs  []error
}

// startLoad starts the goroutines; each waits for fire, then runs send.
func startLoad(pubs []*publisher, send func(i int, p *publisher) ([]time.Duration, error)) *load {
	l := &load{begin: make(chan struct{}), lats: make([][]time.Duration, len(pubs)), errs: make([]error, len(pubs))}
	for i, p := range pubs {
		l.wg.Go(func() {
			<-l.begin
			l.lats[i], l.errs[i] = send(i, p)
		})
	}
	return l
}

// sendMQTT is the send of the MQTT load scenarios: counts[i] publishes
// from publisher i, QoS 0 back to back or QoS 1 with window in flight.
func sendMQTT(ctx context.Context, s scenario, counts []int) func(int, *publisher) ([]time.Duration, error) {
	return func(i int, p *publisher) ([]time.Duration, error) {
		if s.qos == 0 {
			return nil, p.publishUnacked(ctx, counts[i])
		}
		return p.publishAcked(ctx, counts[i], s.window)
	}
}

// dialLoad connects s's publishers to addr the way how says and starts
// their load of the run's records, each send limited by --timeout; done
// ends the sends and closes the connections. The publishers are named as
// those of s.loadOf when s sends another scenario's load, so the bytes on
// the wire are the same. logPath, if set, names the broker's log in an
// error.
func (b *bench) dialLoad(ctx context.Context, how mqttDial, addr string, s scenario, logPath string) (l *load, done func(), err error) {
	pubs, err := dialPublishers(ctx, how, addr, s.clientPrefix(), s.clients, b.payload, s.qos, logPath)
	if err != nil {
		return nil, nil, err
	}
	sendCtx, cancel := context.WithTimeout(ctx, b.opts.timeout)
	l = startLoad(pubs, sendMQTT(sendCtx, s, split(b.opts.records, s.clients)))
	return l, func() { cancel(); closePublishers(pubs) }, nil
}

// fire releases the goroutines and waits for them; it records the sending
// time in r (if not nil) when every one succeeded, and returns when the
// sending started and the first error.
func (l *load) fire(r *result) (time.Time, error) {
	start := time.Now()
	close(l.begin)
	l.wg.Wait()
	sent := time.Since(start)
	err := firstError(l.errs)
	if err == nil && r != nil {
		r.SendSeconds = ptr(sent.Seconds())
	}
	return start, err
}

// latencies returns every publisher's acknowledgement latencies together.
func (l *load) latencies() []time.Duration {
	var all []time.Duration
	for _, lat := range l.lats {
		all = append(all, lat...)
	}
	return all
}

// endDaemonRun is the end every scenario that starts Tributary shares: its
// peak RSS, whether it survived, a copy of its metrics, stopping it, and
// the result settled from what was found in Kafka.
func (b *bench) endDaemonRun(r *result, d *daemon, name string, start, end time.Time, found int64, err, sendErr error) {
	if rss, err := d.peakRSS(); err == nil {
		r.RSS = &rss
	}
	if !d.alive() {
		err = errors.Join(err, fmt.Errorf("tributary exited during the run: %v", d.waitErr))
	}
	_ = d.saveMetrics(filepath.Join(b.dir, "metrics-"+name+".txt"))
	err = errors.Join(sendErr, err, d.stop())
	b.finish(r, start, end, found, err)
	if err != nil {
		r.Error += " (log: " + d.logPath + ")"
	}
}
