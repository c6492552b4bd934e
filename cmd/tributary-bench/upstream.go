package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// The upstream scenario compares Tributary's upstream-source mode with
// mosquitto_sub draining the same feed from the same kind of remote broker.
//
// Each side gets a fresh mosquitto (so neither sees the other's session or
// queue), a persistent QoS 1 session on bench/# that is created and then
// left offline, and the same N publishes loaded into that session by the
// harness's own client. Then the subscriber comes back and drains the
// backlog. Pre-loading makes the publisher irrelevant to the ratio: both
// sides read from an identical queue, paced only by the broker's in-flight
// window and by how fast they acknowledge.

const (
	upstreamFilter     = "bench/#"
	upstreamPublishers = 10  // connections loading the backlog, one topic each
	upstreamPubWindow  = 100 // QoS 1 publishes in flight per loading connection
)

// mosquittoConf returns the remote broker's configuration: a loopback
// listener, no persistence, no limit on a session's queue (the backlog is
// the point), and inflight QoS 1 messages per subscriber (0: no limit).
func mosquittoConf(port, inflight int, runAs string) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "listener %d 127.0.0.1\n", port)
	b.WriteString("allow_anonymous true\n")
	b.WriteString("persistence false\n")
	b.WriteString("max_queued_messages 0\n")
	fmt.Fprintf(&b, "max_inflight_messages %d\n", inflight)
	b.WriteString("log_dest stderr\n")
	if runAs != "" {
		// As root, mosquitto would otherwise switch to a "mosquitto" user,
		// which need not exist.
		fmt.Fprintf(&b, "user %s\n", runAs)
	}
	return b.String()
}

// upstreamYAML returns a Tributary configuration file with one upstream
// that produces everything under bench/# into topic over a persistent
// session.
func upstreamYAML(url, clientID, topic string) string {
	return fmt.Sprintf(`upstreams:
  - name: bench
    url: %s
    client_id: %s
    clean_session: false
    subscriptions:
      - {filter: %q, qos: 1}
    kafka_topic: %s
    reconnect_min: 50ms
    reconnect_max: 1s
`, url, clientID, upstreamFilter, topic)
}

// remoteBroker is a mosquitto subprocess playing the remote broker.
type remoteBroker struct {
	cmd     *exec.Cmd
	port    int
	logPath string
	exited  chan struct{}
	once    sync.Once
}

func (r *remoteBroker) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)) }

// startRemoteBroker starts mosquitto on a free loopback port and waits
// until it accepts connections, retrying with a new port if the chosen
// one was taken meanwhile.
func startRemoteBroker(ctx context.Context, bin, dir, name string, inflight int) (*remoteBroker, error) {
	runAs := ""
	if u, err := user.Current(); err == nil {
		runAs = u.Username
	}
	var err error
	for range 3 {
		var r *remoteBroker
		r, err = startRemoteBrokerOnce(ctx, bin, dir, name, inflight, runAs)
		if err == nil {
			return r, nil
		}
		if !errors.Is(err, errPortTaken) {
			return nil, err
		}
	}
	return nil, err
}

func startRemoteBrokerOnce(ctx context.Context, bin, dir, name string, inflight int, runAs string) (*remoteBroker, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	_, p, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(p)
	confPath := filepath.Join(dir, "mosquitto-"+name+".conf")
	if err := os.WriteFile(confPath, []byte(mosquittoConf(port, inflight, runAs)), 0o644); err != nil {
		return nil, fmt.Errorf("writing the mosquitto config: %w", err)
	}
	logPath := filepath.Join(dir, "mosquitto-"+name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("creating the mosquitto log: %w", err)
	}
	cmd := exec.Command(bin, "-c", confPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	r := &remoteBroker{cmd: cmd, port: port, logPath: logPath, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(r.exited)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", r.addr(), time.Second)
		if err == nil {
			c.Close()
			return r, nil
		}
		select {
		case <-r.exited:
			if bytes.Contains(tail(logPath, 4096), []byte("Address already in use")) {
				return nil, errPortTaken
			}
			return nil, fmt.Errorf("mosquitto exited at start-up (log: %s)", logPath)
		case <-ctx.Done():
			r.stop()
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			r.stop()
			return nil, fmt.Errorf("mosquitto not listening on %s after 10s (log: %s)", r.addr(), logPath)
		}
	}
}

// cpuSeconds returns the CPU time mosquitto used so far.
func (r *remoteBroker) cpuSeconds() (float64, error) {
	cpu, err := processCPU(r.cmd.Process.Pid)
	if err != nil {
		return 0, fmt.Errorf("mosquitto: %w", err)
	}
	return cpu, nil
}

// stop terminates mosquitto and waits for it; it is idempotent.
func (r *remoteBroker) stop() {
	r.once.Do(func() {
		_ = r.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-r.exited:
		case <-time.After(10 * time.Second):
			_ = r.cmd.Process.Kill()
			<-r.exited
		}
	})
}

// preload publishes the run's records into the broker at addr at QoS 1,
// from upstreamPublishers connections with a topic each, and returns once
// the broker acknowledged all of them: they are then queued in the
// offline session.
func (b *bench) preload(ctx context.Context, addr string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, b.opts.timeout)
	defer cancel()
	pubs, err := dialPublishers(ctx, mqttDial{}, addr, "upstream", upstreamPublishers, b.payload, 1, "")
	if err != nil {
		return 0, fmt.Errorf("loading the backlog: %w", err)
	}
	defer closePublishers(pubs)
	counts := split(b.opts.records, len(pubs))
	l := startLoad(pubs, func(i int, p *publisher) ([]time.Duration, error) {
		_, err := p.publishAcked(ctx, counts[i], upstreamPubWindow)
		return nil, err
	})
	start, err := l.fire(nil)
	if err != nil {
		return 0, fmt.Errorf("loading the backlog: %w", err)
	}
	return time.Since(start), nil
}

// runUpstream measures mosquitto_sub and then Tributary draining the
// same pre-loaded backlog. It returns the baseline's result and
// Tributary's.
func (b *bench) runUpstream(ctx context.Context, topic, name string) []result {
	base := result{Scenario: "mosquitto-sub", Records: b.opts.records, drain: true}
	trib := result{Scenario: "upstream", Records: b.opts.records, drain: true}
	broker, errB := exec.LookPath("mosquitto")
	sub, errS := exec.LookPath("mosquitto_sub")
	if err := errors.Join(errB, errS); err != nil {
		why := fmt.Sprintf("skipped: needs Debian's mosquitto and mosquitto_sub on PATH (apt-get install mosquitto mosquitto-clients): %v", err)
		base.Skipped, trib.Skipped = why, why
		return []result{base, trib}
	}
	base = b.runSubBaseline(ctx, base, broker, sub, name)
	trib = b.runUpstreamTributary(ctx, trib, broker, topic, name)
	if base.OK && trib.OK {
		fmt.Fprintf(b.progress, "   this round: upstream / mosquitto_sub = %.3f (drain rates), %.3f (wall-clock rates)\n",
			trib.Rate/base.Rate, float64(trib.Records)/(*trib.WallSeconds)/(float64(base.Records)/(*base.WallSeconds)))
	}
	return []result{base, trib}
}

// runSubBaseline drains the backlog with mosquitto_sub -C N: the clock
// runs from its first line of output to its exit (Seconds), and from its
// start to its exit (WallSeconds).
func (b *bench) runSubBaseline(ctx context.Context, r result, brokerBin, subBin, name string) result {
	rb, err := startRemoteBroker(ctx, brokerBin, b.dir, name+"-sub", b.opts.mosquittoInflight)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer rb.stop()
	port := strconv.Itoa(rb.port)
	const clientID = "bench-mosquitto-sub"
	common := []string{"-h", "127.0.0.1", "-p", port, "-c", "-i", clientID, "-q", "1", "-t", upstreamFilter}
	// -E: subscribe, then exit once the SUBACK is in; the session stays.
	if out, err := exec.CommandContext(ctx, subBin, append(common, "-E")...).CombinedOutput(); err != nil {
		r.Error = fmt.Sprintf("creating the mosquitto_sub session: %v: %s", err, bytes.TrimSpace(out))
		return r
	}
	took, err := b.preload(ctx, rb.addr())
	if err != nil {
		r.Error = err.Error()
		return r
	}
	fmt.Fprintf(b.progress, "   mosquitto_sub: backlog of %d loaded in %.2f s\n", b.opts.records, took.Seconds())

	runCtx, cancel := context.WithTimeout(ctx, b.opts.timeout)
	defer cancel()
	cmd := exec.CommandContext(runCtx, subBin, append(common, "-C", strconv.Itoa(b.opts.records))...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		r.Error = err.Error()
		return r
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cpu0, cpuErr := rb.cpuSeconds()
	span := b.startCPU(nil)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		r.Error = fmt.Sprintf("starting %s: %v", subBin, err)
		return r
	}
	lines, first, readErr := countLines(stdout)
	waitErr := cmd.Wait()
	end := time.Now()
	span.end(&r)
	if cpu1, err := rb.cpuSeconds(); err == nil && cpuErr == nil {
		r.RemoteCPU = ptr(centi(cpu1 - cpu0))
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		// Not ru.Maxrss: the child starts as a vfork of this process and
		// inherits its high-water mark.
		r.CPU = ptr(centi(time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()))
	}
	if waitErr != nil {
		waitErr = fmt.Errorf("mosquitto_sub: %w: %s", waitErr, bytes.TrimSpace(stderr.Bytes()))
	}
	if first.IsZero() {
		first = start
	}
	r.WallSeconds = ptr(end.Sub(start).Seconds())
	b.finish(&r, first, end, lines, errors.Join(readErr, waitErr))
	return r
}

// countLines reads r to its end and returns how many lines it held and
// when the first byte arrived (zero if none did).
func countLines(r io.Reader) (int64, time.Time, error) {
	br := bufio.NewReaderSize(r, ioBufferBytes)
	var first time.Time
	var n int64
	buf := make([]byte, ioBufferBytes)
	for {
		k, err := br.Read(buf)
		if k > 0 && first.IsZero() {
			first = time.Now()
		}
		n += int64(bytes.Count(buf[:k], []byte{'\n'}))
		if err == io.EOF {
			return n, first, nil
		}
		if err != nil {
			return n, first, fmt.Errorf("reading mosquitto_sub's output: %w", err)
		}
	}
}

// runUpstreamTributary drains the backlog with Tributary: one start
// creates the persistent session, the backlog is loaded while Tributary is
// down, and a second start drains it. The clock runs from the Kafka
// timestamp of the earliest record (Tributary stamps each with the moment
// it received the message) until Kafka's watermarks show all N (Seconds),
// and from the second start until then (WallSeconds).
func (b *bench) runUpstreamTributary(ctx context.Context, r result, brokerBin, topic, name string) result {
	rb, err := startRemoteBroker(ctx, brokerBin, b.dir, name+"-tributary", b.opts.mosquittoInflight)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer rb.stop()
	cfgPath := filepath.Join(b.dir, "tributary-"+name+".yaml")
	yaml := upstreamYAML("tcp://"+rb.addr(), "tributary-bench-"+name, topic)
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o644); err != nil {
		r.Error = fmt.Sprintf("writing Tributary's config: %v", err)
		return r
	}
	dc := b.daemonConfig(topic, name)
	dc.config, dc.readyPoll = cfgPath, 5*time.Millisecond

	// /readyz is 200 only once the upstream has connected and subscribed.
	dc.name = name + "-session"
	d, err := startDaemon(ctx, dc)
	if err != nil {
		r.Error = "creating the session: " + err.Error()
		return r
	}
	if err := d.stop(); err != nil {
		r.Error = "creating the session: " + err.Error()
		return r
	}
	took, err := b.preload(ctx, rb.addr())
	if err != nil {
		r.Error = err.Error()
		return r
	}
	fmt.Fprintf(b.progress, "   tributary: backlog of %d loaded in %.2f s\n", b.opts.records, took.Seconds())

	dc.name = name
	cpu0, cpuErr := rb.cpuSeconds()
	span := b.startCPU(nil)
	start := time.Now()
	d, err = startDaemon(ctx, dc)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer d.stop()
	r.ReadySeconds = ptr(time.Since(start).Seconds())
	profiled := b.profile(ctx, d, name)
	found, end, err := b.admin.waitForCount(ctx, topic, b.opts.partitions, int64(b.opts.records), b.opts.timeout)
	span.end(&r)
	profiled()
	if cpu1, err := rb.cpuSeconds(); err == nil && cpuErr == nil {
		r.RemoteCPU = ptr(centi(cpu1 - cpu0))
	}
	if cpu, err := d.cpuSeconds(); err == nil {
		r.CPU = ptr(centi(cpu))
	}
	if rss, err := d.peakRSS(); err == nil {
		r.RSS = &rss
	}
	if !d.alive() {
		err = errors.Join(err, fmt.Errorf("tributary exited during the run: %v", d.waitErr))
	}
	first := start
	if found > 0 {
		ts, ferr := b.admin.firstTimestamp(ctx, topic, b.opts.partitions)
		if ferr == nil {
			first = ts
		}
		err = errors.Join(err, ferr)
	}
	_ = d.saveMetrics(filepath.Join(b.dir, "metrics-"+name+".txt"))
	err = errors.Join(err, d.stop())
	r.WallSeconds = ptr(end.Sub(start).Seconds())
	b.finish(&r, first, end, found, err)
	if err != nil {
		r.Error += " (log: " + d.logPath + ")"
	}
	return r
}
