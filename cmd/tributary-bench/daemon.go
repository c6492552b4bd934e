package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// buildTributary compiles ./cmd/tributary of the module the harness runs
// in into dir and returns the binary's path.
func buildTributary(ctx context.Context, dir string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("finding the Go module: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the tributary module: run from the repository or pass --tributary-bin")
	}
	bin := filepath.Join(dir, "tributary")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/tributary")
	cmd.Dir = filepath.Dir(gomod)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building tributary: %w\n%s", err, out)
	}
	return bin, nil
}

// daemonConfig says how to run one Tributary subprocess.
type daemonConfig struct {
	bin       string
	bootstrap string
	topic     string        // the Kafka topic every bench/... MQTT topic maps to
	dir       string        // for the log and data dir
	name      string        // names the log file
	env       []string      // extra KEY=VALUE for the subprocess
	args      []string      // extra command-line arguments, after the harness's
	mqttWS    bool          // also listen for MQTT over WebSocket
	config    string        // YAML config file; empty for none
	readyPoll time.Duration // how often to ask /readyz; default 50ms
}

// daemon is a running Tributary subprocess.
type daemon struct {
	cmd      *exec.Cmd
	logPath  string
	mqttAddr string
	// mqttWSAddr is the MQTT-over-WebSocket listener; empty unless
	// daemonConfig.mqttWS.
	mqttWSAddr string
	httpAddr   string
	exited     chan struct{}
	waitErr    error
	stopOnce   sync.Once
}

// startDaemon starts Tributary on free loopback ports and waits until its
// /readyz answers 200. A port taken between choosing and binding it is
// retried with new ports.
func startDaemon(ctx context.Context, cfg daemonConfig) (*daemon, error) {
	var err error
	for range 3 {
		var d *daemon
		d, err = startDaemonOnce(ctx, cfg)
		if err == nil {
			return d, nil
		}
		if !errors.Is(err, errPortTaken) {
			return nil, err
		}
	}
	return nil, err
}

var errPortTaken = errors.New("port taken")

func startDaemonOnce(ctx context.Context, cfg daemonConfig) (*daemon, error) {
	n := 2
	if cfg.mqttWS {
		n = 3
	}
	addrs, err := freeAddrs(n)
	if err != nil {
		return nil, err
	}
	mqttAddr, httpAddr, wsAddr := addrs[0], addrs[1], ""
	if cfg.mqttWS {
		wsAddr = addrs[2]
	}
	logPath := filepath.Join(cfg.dir, "tributary-"+cfg.name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("creating the Tributary log: %w", err)
	}
	dataDir := filepath.Join(cfg.dir, "data-"+cfg.name)
	cmd := exec.Command(cfg.bin,
		"--kafka-bootstrap", cfg.bootstrap,
		"--mqtt-addr", mqttAddr,
		"--mqtt-ws-addr", wsAddr,
		"--http-addr", httpAddr,
		"--topic-regex-list", cfg.topic+":bench/.*",
		"--data-dir", dataDir,
	)
	if cfg.config != "" {
		cmd.Args = append(cmd.Args, "--config", cfg.config)
	}
	cmd.Args = append(cmd.Args, cfg.args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), cfg.env...)
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", cfg.bin, err)
	}
	d := &daemon{cmd: cmd, logPath: logPath, mqttAddr: mqttAddr, mqttWSAddr: wsAddr, httpAddr: httpAddr, exited: make(chan struct{})}
	go func() {
		d.waitErr = cmd.Wait()
		logFile.Close()
		close(d.exited)
	}()
	poll := cfg.readyPoll
	if poll <= 0 {
		poll = 50 * time.Millisecond
	}
	if err := d.waitReady(ctx, 60*time.Second, poll); err != nil {
		d.stop()
		if bytes.Contains(tail(logPath, 4096), []byte("address already in use")) {
			return nil, errPortTaken
		}
		return nil, fmt.Errorf("%w (log: %s)", err, logPath)
	}
	return d, nil
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr() (string, error) {
	addrs, err := freeAddrs(1)
	if err != nil {
		return "", err
	}
	return addrs[0], nil
}

// freeAddrs returns n loopback addresses with distinct ports that were
// free a moment ago. The listeners stay open until all n are chosen: one
// closed at once can be handed out again by the next (seen: Tributary
// refused to start with its HTTP and MQTT listeners on one port).
func freeAddrs(n int) ([]string, error) {
	addrs := make([]string, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		defer ln.Close()
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs, nil
}

func (d *daemon) waitReady(ctx context.Context, timeout, poll time.Duration) error {
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	url := "http://" + d.httpAddr + "/readyz"
	for {
		resp, err := hc.Get(url)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-d.exited:
			return fmt.Errorf("tributary exited before it was ready: %v", d.waitErr)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(poll):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("tributary not ready after %s", timeout)
		}
	}
}

// alive reports whether the subprocess is still running.
func (d *daemon) alive() bool {
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

// peakRSS returns the subprocess's peak resident set size (VmHWM).
func (d *daemon) peakRSS() (int64, error) {
	kb, err := procStatusKB(d.cmd.Process.Pid, "VmHWM")
	return kb << 10, err
}

// rss returns the subprocess's current resident set size (VmRSS).
func (d *daemon) rss() (int64, error) {
	kb, err := procStatusKB(d.cmd.Process.Pid, "VmRSS")
	return kb << 10, err
}

// procStatusKB reads a "Field:   N kB" line of /proc/<pid>/status.
func procStatusKB(pid int, field string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("reading process status: %w", err)
	}
	defer f.Close()
	return parseStatusKB(f, field)
}

func parseStatusKB(r io.Reader, field string) (int64, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || name != field {
			continue
		}
		num, unit, _ := strings.Cut(strings.TrimSpace(rest), " ")
		if unit != "kB" {
			return 0, fmt.Errorf("%s: unexpected unit %q", field, unit)
		}
		return strconv.ParseInt(num, 10, 64)
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s not found in process status", field)
}

// cpuSeconds returns the user plus system CPU time the subprocess used.
func (d *daemon) cpuSeconds() (float64, error) {
	return processCPU(d.cmd.Process.Pid)
}

// parseStatCPU sums utime and stime (fields 14 and 15) of a /proc/<pid>/stat
// line. The command name in field 2 may hold spaces, so fields are counted
// from its closing parenthesis.
func parseStatCPU(stat string) (float64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("malformed process stat")
	}
	f := strings.Fields(stat[i+1:])
	// f[0] is field 3 (state); utime is field 14.
	if len(f) < 13 {
		return 0, errors.New("short process stat")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("parsing process stat: %w", err)
	}
	const clockTicks = 100 // USER_HZ on Linux
	return float64(ut+st) / clockTicks, nil
}

// saveMetrics writes Tributary's Prometheus metrics next to its log, for
// looking into a run afterwards.
func (d *daemon) saveMetrics(path string) error {
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get("http://" + d.httpAddr + "/metrics")
	if err != nil {
		return fmt.Errorf("fetching metrics: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("fetching metrics: %w", err)
	}
	return os.WriteFile(path, b, 0o644)
}

// fetch saves the body of the HTTP GET of path (e.g. a pprof endpoint)
// on the subprocess's HTTP address to file.
func (d *daemon) fetch(ctx context.Context, path, file string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.httpAddr+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("fetching %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("fetching %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetching %s: %s: %s", path, resp.Status, bytes.TrimSpace(b))
	}
	return os.WriteFile(file, b, 0o644)
}

// metric returns the sum of the samples of the Prometheus metric name
// (any labels) that the subprocess's /metrics shows.
func (d *daemon) metric(name string) (float64, error) {
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get("http://" + d.httpAddr + "/metrics")
	if err != nil {
		return 0, fmt.Errorf("fetching metrics: %w", err)
	}
	defer resp.Body.Close()
	return sumMetric(resp.Body, name)
}

// sumMetric adds up the samples of name in a Prometheus text exposition.
func sumMetric(r io.Reader, name string) (float64, error) {
	sc := bufio.NewScanner(r)
	sum, seen := 0.0, false
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		if i := strings.LastIndexByte(rest, '}'); i >= 0 {
			rest = rest[i+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return 0, fmt.Errorf("metric %s: %w", name, err)
		}
		sum, seen = sum+v, true
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("reading metrics: %w", err)
	}
	if !seen {
		return 0, fmt.Errorf("metric %s not found", name)
	}
	return sum, nil
}

// stop sends SIGTERM and waits for the subprocess to exit, killing it
// after 30 seconds. It is idempotent.
func (d *daemon) stop() error {
	var err error
	d.stopOnce.Do(func() {
		if !d.alive() {
			return
		}
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(30 * time.Second):
			_ = d.cmd.Process.Kill()
			<-d.exited
			err = errors.New("tributary did not stop within 30s of SIGTERM; killed it")
		}
	})
	return err
}

// tail returns up to the last n bytes of the file at path.
func tail(path string, n int64) []byte {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		_, _ = f.Seek(fi.Size()-n, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return b
}
