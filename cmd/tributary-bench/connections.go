package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The connections scenario opens many idle MQTT connections to one
// Tributary and measures how fast they connect and how much resident
// memory each one costs the bridge: (RSS with every connection idle − RSS
// before connecting) ÷ connections, each RSS read once it has settled.

const (
	// idleKeepalive is the idle clients' CONNECT keepalive in seconds:
	// long enough that no PINGREQ is due during the scenario.
	idleKeepalive = 300
	// dialers is how many connections are being opened at a time.
	dialers = 64
	// fdHeadroom is the file descriptors the harness and Tributary need
	// besides the idle connections.
	fdHeadroom = 1024
)

// runConnections runs the connections scenario on a fresh Tributary.
func (b *bench) runConnections(ctx context.Context, s scenario, topic, name string) result {
	n := b.opts.connections
	r := result{Scenario: s.name, Records: n}
	if err := raiseFileLimit(uint64(n + fdHeadroom)); err != nil {
		r.Skipped = "skipped: " + err.Error()
		return r
	}
	srcs := sourceAddrs(n, ephemeralPorts())
	r.SourceAddrs = len(srcs)
	d, err := startDaemon(ctx, b.daemonConfig(topic, name))
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer d.stop()

	before, err := settledRSS(ctx, d)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	conns := make([]net.Conn, n)
	defer closeAll(conns)
	dialCtx, cancel := context.WithTimeout(ctx, b.opts.timeout)
	defer cancel()
	next := make(chan int)
	var dialErr error
	var failOnce sync.Once
	var wg sync.WaitGroup
	for range dialers {
		wg.Go(func() {
			for i := range next {
				how := mqttDial{keepalive: idleKeepalive, local: srcs[i*len(srcs)/n]}
				c, err := how.idle(dialCtx, d.mqttAddr, fmt.Sprintf("idle-%06d", i))
				if err != nil {
					// The first failure is the cause; the others are
					// the cancellation it triggers.
					failOnce.Do(func() {
						dialErr = fmt.Errorf("connection %d of %d: %w", i+1, n, err)
						cancel()
					})
					continue
				}
				conns[i] = c
			}
		})
	}
	profiled := b.profile(ctx, d, name)
	span := b.startCPU(d.cpuSeconds)
	start := time.Now()
feed:
	for i := range n {
		select {
		case next <- i:
		case <-dialCtx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	took := time.Since(start)
	span.end(&r)
	open := 0
	for _, c := range conns {
		if c != nil {
			open++
		}
	}
	err = dialErr
	if err == nil && open < n {
		err = fmt.Errorf("%d of %d connections opened: %w", open, n, dialCtx.Err())
	}
	r.Seconds = took.Seconds()
	if r.Seconds > 0 {
		r.Rate = float64(open) / r.Seconds
		r.ConnectRate = ptr(r.Rate)
	}
	if err == nil {
		err = waitConnections(ctx, d, n)
	}
	var idle int64
	if err == nil {
		idle, err = settledRSS(ctx, d)
	}
	if err == nil {
		// Still all there once the memory settled.
		err = waitConnections(ctx, d, n)
	}
	// The allocation profile, taken with the connections open, holds the
	// in-use heap too (-sample_index=inuse_space).
	profiled()
	if err == nil {
		r.RSSBefore, r.RSSConnected = &before, &idle
		r.RSSPerConn = ptr(float64(idle-before) / float64(n))
	}
	if rss, err := d.peakRSS(); err == nil {
		r.RSS = &rss
	}
	if !d.alive() {
		err = errors.Join(err, fmt.Errorf("tributary exited during the run: %v", d.waitErr))
	}
	_ = d.saveMetrics(filepath.Join(b.dir, "metrics-"+name+".txt"))
	closeAll(conns)
	err = errors.Join(err, d.stop())
	if err != nil {
		r.Error = fmt.Sprintf("%v (log: %s)", err, d.logPath)
	} else {
		r.OK = true
	}
	return r
}

// closeAll closes every connection in conns that is open and forgets it.
func closeAll(conns []net.Conn) {
	for i, c := range conns {
		if c != nil {
			c.Close()
			conns[i] = nil
		}
	}
}

// waitConnections waits up to 10 s for Tributary's
// tributary_mqtt_connections gauge to show n.
func waitConnections(ctx context.Context, d *daemon, n int) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, err := d.metric("tributary_mqtt_connections")
		if err == nil && int(v) == n {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return err
			}
			return fmt.Errorf("tributary_mqtt_connections is %v, expected %d", v, n)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// settledRSS returns d's VmRSS once it has changed by less than 1 % over a
// second (the runtime has finished growing or returning memory), or after
// 10 s.
func settledRSS(ctx context.Context, d *daemon) (int64, error) {
	const step = 250 * time.Millisecond
	var window []int64
	deadline := time.Now().Add(10 * time.Second)
	for {
		rss, err := d.rss()
		if err != nil {
			return 0, err
		}
		window = append(window, rss)
		if len(window) > 5 {
			window = window[1:]
		}
		if len(window) == 5 {
			lo, hi := window[0], window[0]
			for _, v := range window {
				lo, hi = min(lo, v), max(hi, v)
			}
			if float64(hi-lo) < 0.01*float64(hi) || time.Now().After(deadline) {
				return rss, nil
			}
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(step):
		}
	}
}

// ephemeralPorts returns how many local ports the kernel hands out to
// outgoing connections (net.ipv4.ip_local_port_range), or 28 232, Linux's
// default, if that cannot be read.
func ephemeralPorts() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 28232
	}
	return parsePortRange(string(b))
}

func parsePortRange(s string) int {
	f := strings.Fields(s)
	if len(f) != 2 {
		return 28232
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || hi < lo {
		return 28232
	}
	return hi - lo + 1
}

// sourceAddrs returns the source addresses n connections to one loopback
// address come from: nil (the kernel's choice) when half the ephemeral
// ports suffice, which leaves room for connections in TIME_WAIT, otherwise
// as many of 127.0.0.1, 127.0.0.2, … as it takes, each a separate set of
// ports. Connection i uses entry i·len/n.
func sourceAddrs(n, ports int) []net.Addr {
	per := max(1, ports/2)
	if n <= per {
		return []net.Addr{nil}
	}
	k := min(254, int(math.Ceil(float64(n)/float64(per))))
	addrs := make([]net.Addr, k)
	for j := range addrs {
		addrs[j] = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+j))}
	}
	return addrs
}

// raiseFileLimit makes this process's open-file limit, which Tributary
// inherits, at least need: the soft limit up to the hard one, and the hard
// one too when the process may (root).
func raiseFileLimit(need uint64) error {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return fmt.Errorf("reading the open-file limit: %w", err)
	}
	// Setrlimit also makes children inherit the new limit rather than the
	// one the process started with.
	want := syscall.Rlimit{Cur: max(rl.Cur, need), Max: max(rl.Max, need)}
	err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want)
	if err == nil {
		return nil
	}
	if rl.Max >= need {
		want = syscall.Rlimit{Cur: rl.Max, Max: rl.Max}
		if err = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err == nil {
			return nil
		}
	}
	return fmt.Errorf("needs %d open files, the hard limit is %d and raising it failed (%v): raise it with ulimit -Hn, or lower --connections", need, rl.Max, err)
}
