package main

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(vs ...int) []time.Duration {
		out := make([]time.Duration, len(vs))
		for i, v := range vs {
			out[i] = time.Duration(v) * time.Millisecond
		}
		return out
	}
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond
	}
	for _, tc := range []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"single value", ms(7), 50, 7 * time.Millisecond},
		{"single value p99", ms(7), 99, 7 * time.Millisecond},
		{"median of odd count", ms(1, 2, 3, 4, 5), 50, 3 * time.Millisecond},
		{"median of even count is the lower middle", ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{"p99 of 100", hundred, 99, 99 * time.Millisecond},
		{"p50 of 100", hundred, 50, 50 * time.Millisecond},
		{"p100 is the maximum", hundred, 100, 100 * time.Millisecond},
		{"p99 of 10 is the maximum", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 99, 10 * time.Millisecond},
		{"tiny p is the minimum", hundred, 0.001, time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := percentile(tc.sorted, tc.p); got != tc.want {
				t.Fatalf("percentile(%v) = %s, want %s", tc.p, got, tc.want)
			}
		})
	}
}

func TestSetLatenciesSorts(t *testing.T) {
	var lat []time.Duration
	for i := 100; i >= 1; i-- {
		lat = append(lat, time.Duration(i)*time.Millisecond)
	}
	var r result
	r.setLatencies(lat)
	if r.P50Ms == nil || *r.P50Ms != 50 || r.P99Ms == nil || *r.P99Ms != 99 {
		t.Fatalf("p50 %v p99 %v, want 50 and 99", deref(r.P50Ms), deref(r.P99Ms))
	}
	var empty result
	empty.setLatencies(nil)
	if empty.P50Ms != nil || empty.P99Ms != nil {
		t.Fatal("latencies set without any samples")
	}
}

func deref(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}

func TestFillRatiosAndTargets(t *testing.T) {
	rs := []result{
		{Scenario: "native-produce", Rate: 100000, OK: true},
		{Scenario: "mqtt-qos0", Rate: 50000, OK: true},
		{Scenario: "mosquitto-qos0", Rate: 40000, OK: true},
		{Scenario: "mqtt-qos1", Rate: 80000, OK: true},
		{Scenario: "mqtt-qos1-single", Rate: 10000, OK: true},
		{Scenario: "mqtt-ws-qos1", Rate: 60000, OK: true},
		{Scenario: "native-consume", Rate: 200000, OK: true, drain: true},
		{Scenario: "ws-out", Rate: 180000, OK: true, drain: true},
		{Scenario: "latency-qos1", Rate: 40000, P99Ms: ptr(25.0), OK: true},
		{Scenario: "connections", Records: 1000, Rate: 5000, RSSPerConn: ptr(16.0 * 1024), OK: true},
	}
	fillRatios(rs)
	for _, tc := range []struct {
		scenario string
		want     any
	}{{"mqtt-qos1", 1.6}, {"mqtt-qos1-single", 0.2}, {"mqtt-ws-qos1", nil}, {"mqtt-qos0", nil}} {
		i := slices.IndexFunc(rs, func(r result) bool { return r.Scenario == tc.scenario })
		if got := deref(rs[i].RatioQoS0); got != tc.want {
			t.Errorf("%s: ratio to mqtt-qos0 %v, want %v", tc.scenario, got, tc.want)
		}
	}
	for _, tc := range []struct {
		scenario, baseline string
		ratio, mosquitto   any
	}{
		{"native-produce", "", nil, nil},
		{"mqtt-qos0", "native-produce", 0.5, 1.25},
		{"mosquitto-qos0", "", nil, nil},
		{"mqtt-qos1", "native-produce", 0.8, nil}, // mosquitto-qos1 did not run
		{"mqtt-qos1-single", "native-produce", 0.1, nil},
		{"mqtt-ws-qos1", "native-produce", 0.6, nil},
		{"native-consume", "", nil, nil},
		{"ws-out", "native-consume", 0.9, nil},
		{"latency-qos1", "", nil, nil},
		{"connections", "", nil, nil},
	} {
		t.Run(tc.scenario, func(t *testing.T) {
			i := slices.IndexFunc(rs, func(r result) bool { return r.Scenario == tc.scenario })
			r := rs[i]
			if r.Baseline != tc.baseline {
				t.Errorf("baseline %q, want %q", r.Baseline, tc.baseline)
			}
			if deref(r.Ratio) != tc.ratio {
				t.Errorf("ratio %v, want %v", deref(r.Ratio), tc.ratio)
			}
			if deref(r.RatioMosquitto) != tc.mosquitto {
				t.Errorf("ratio to mosquitto %v, want %v", deref(r.RatioMosquitto), tc.mosquitto)
			}
		})
	}
	var out bytes.Buffer
	printTargets(&out, rs)
	for _, want := range []string{
		"mqtt-qos0 rate ≥ 0.9× native-produce rate: 0.500× — MISSED",
		"mqtt-qos0 rate ≥ 1.0× mosquitto-qos0 rate: 1.250× — met",
		"mqtt-qos1 rate ≥ 0.7× native-produce rate: 0.800× — met",
		"mqtt-qos1-single rate ≥ 0.3× native-produce rate: 0.100× — MISSED",
		"mqtt-qos1 rate ≥ 0.7× mqtt-qos0 rate: 1.600× — met",
		"mqtt-qos1-single rate ≥ 0.3× mqtt-qos0 rate: 0.200× — MISSED",
		"ws-out rate ≥ 0.8× native-consume rate: 0.900× — met",
		"ws-in rate ≥ 0.9× native-produce rate: not measured",
		"latency-qos1 PUBACK p99 ≤ 20 ms: 25.000 ms — MISSED",
		"connections: bridge RSS per idle connection ≤ 32 KiB: 16.000 KiB — met",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("targets output lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	printTable(&out, rs)
	for _, want := range []string{"1.250× mosquitto-qos0", "native-consume"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}

func TestFillRatiosSkipsFailed(t *testing.T) {
	rs := []result{
		{Scenario: "native-produce", Rate: 100000, OK: false},
		{Scenario: "mqtt-qos0", Rate: 50000, OK: true},
		{Scenario: "mqtt-qos1", Rate: 40000, OK: false},
	}
	fillRatios(rs)
	if rs[1].Ratio != nil {
		t.Errorf("ratio to a failed baseline: %v", *rs[1].Ratio)
	}
	if rs[1].Baseline != "native-produce" || rs[2].Baseline != "native-produce" {
		t.Errorf("baselines %q, %q: the names do not depend on the outcome", rs[1].Baseline, rs[2].Baseline)
	}
	if rs[2].Ratio != nil {
		t.Errorf("ratio for a failed scenario: %v", *rs[2].Ratio)
	}
	var out bytes.Buffer
	printTargets(&out, rs)
	if !strings.Contains(out.String(), "mqtt-qos1 rate ≥ 0.7× native-produce rate: not measured") {
		t.Errorf("failed scenario not reported as not measured:\n%s", out.String())
	}
}

func TestPrintGenerator(t *testing.T) {
	for _, tc := range []struct {
		name       string
		send       float64
		harnessCPU float64
		want       string
	}{
		{"faster into mosquitto", 1, 2, "into mosquitto it sent 200000/s, 2.00× Tributary's 100000/s; during mqtt-qos0 the harness used 2.00 s of CPU in 2.00 s (100% of one core): not the bottleneck"},
		{"mosquitto slower, harness idle", 2, 0.2, "into mosquitto it sent 100000/s, 1.00× Tributary's 100000/s; during mqtt-qos0 the harness used 0.20 s of CPU in 2.00 s (10% of one core): not CPU-bound (under half of one core)"},
		{"mosquitto slower, harness busy", 2, 1.5, "(75% of one core): MAY BE the bottleneck"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := []result{
				{Scenario: "mqtt-qos0", Records: 200000, Seconds: 2, Rate: 100000, HarnessCPU: ptr(tc.harnessCPU), OK: true},
				{Scenario: "mosquitto-qos0", Records: 200000, Rate: 90000, SendSeconds: ptr(tc.send), OK: true},
			}
			var out bytes.Buffer
			printGenerator(&out, rs)
			if !strings.Contains(out.String(), tc.want) {
				t.Errorf("output %q lacks %q", out.String(), tc.want)
			}
		})
	}
}

func TestWriteJSONKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.json")
	rs := []result{
		{Scenario: "native-produce", Records: 10, Seconds: 1, Rate: 10, OK: true},
		{Scenario: "mqtt-qos1", Records: 10, Seconds: 2, Rate: 5, RSS: ptr(int64(1 << 20)), OK: true},
	}
	rs[1].setLatencies([]time.Duration{time.Millisecond})
	fillRatios(rs)
	rs = rs[1:]
	if err := writeJSON(path, rs); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var got []map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("%d objects, want 1", len(got))
	}
	for _, k := range []string{"scenario", "records", "seconds", "rate", "baseline", "ratio", "p50_ms", "p99_ms", "bridge_rss_bytes"} {
		if _, ok := got[0][k]; !ok {
			t.Errorf("key %q missing from %s", k, b)
		}
	}
	if got[0]["bridge_rss_bytes"] != float64(1<<20) || got[0]["p50_ms"] != float64(1) || got[0]["baseline"] != "native-produce" || got[0]["ratio"] != 0.5 {
		t.Errorf("wrong values in %s", b)
	}
}

func TestSplit(t *testing.T) {
	for _, tc := range []struct {
		n, k int
		want []int
	}{
		{10, 1, []int{10}},
		{10, 3, []int{4, 3, 3}},
		{2, 4, []int{1, 1, 0, 0}},
		{200000, 100, nil},
	} {
		got := split(tc.n, tc.k)
		sum := 0
		for _, v := range got {
			sum += v
		}
		if len(got) != tc.k || sum != tc.n {
			t.Fatalf("split(%d, %d) = %v", tc.n, tc.k, got)
		}
		if tc.want != nil && !equalInts(got, tc.want) {
			t.Fatalf("split(%d, %d) = %v, want %v", tc.n, tc.k, got, tc.want)
		}
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestParseStatusKB(t *testing.T) {
	status := "Name:\ttributary\nVmPeak:\t 1234 kB\nVmHWM:\t   56789 kB\nVmRSS:\t  40000 kB\n"
	got, err := parseStatusKB(strings.NewReader(status), "VmHWM")
	if err != nil || got != 56789 {
		t.Fatalf("VmHWM = %d, %v; want 56789", got, err)
	}
	if _, err := parseStatusKB(strings.NewReader(status), "VmSwap"); err == nil {
		t.Fatal("missing field not reported")
	}
	if kb, err := procStatusKB(os.Getpid(), "VmHWM"); err != nil || kb <= 0 {
		t.Fatalf("own VmHWM = %d, %v", kb, err)
	}
}

func TestParseStatCPU(t *testing.T) {
	// utime 250 and stime 50 ticks; the command name holds a space and a
	// parenthesis, as /proc allows.
	stat := "4242 (trib (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 1000 1000000 500"
	got, err := parseStatCPU(stat)
	if err != nil || got != 3 {
		t.Fatalf("parseStatCPU = %v, %v; want 3", got, err)
	}
	if _, err := parseStatCPU("garbage"); err == nil {
		t.Fatal("malformed stat accepted")
	}
}

func TestParseFlags(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(o.scenarios) != len(scenarios) || o.records != 200000 || o.payload != 100 || o.timeout != 120*time.Second {
		t.Fatalf("defaults: %+v", o)
	}
	o, err = parseFlags([]string{"--scenarios", "mqtt-qos1-single,native-produce", "--records", "5"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(o.scenarios) != 2 || o.scenarios[0].name != "native-produce" || o.scenarios[1].name != "mqtt-qos1-single" {
		t.Fatalf("scenarios %+v, want native-produce then mqtt-qos1-single", o.scenarios)
	}
	_, err = parseFlags([]string{"--scenarios", "mqtt-qos2", "--records", "0", "--payload", "-1"}, io.Discard)
	if err == nil {
		t.Fatal("bad flags accepted")
	}
	for _, want := range []string{`unknown scenario "mqtt-qos2"`, "--records 0", "--payload -1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not report %q", err, want)
		}
	}
	// --kafka-pid names a live process, and only with a real Kafka.
	if _, err := parseFlags([]string{"--kafka-pid", strconv.Itoa(os.Getpid())}, io.Discard); err == nil || !strings.Contains(err.Error(), "only with --kafka-bootstrap") {
		t.Errorf("--kafka-pid without --kafka-bootstrap: %v", err)
	}
	if _, err := parseFlags([]string{"--kafka-bootstrap", "127.0.0.1:1", "--kafka-pid", "999999999"}, io.Discard); err == nil || !strings.Contains(err.Error(), "--kafka-pid 999999999") {
		t.Errorf("--kafka-pid of no process: %v", err)
	}
	o, err = parseFlags([]string{"--kafka-bootstrap", "127.0.0.1:1", "--kafka-pid", strconv.Itoa(os.Getpid())}, io.Discard)
	if err != nil || o.kafkaPID != os.Getpid() {
		t.Errorf("--kafka-pid of this process: %v, %d", err, o.kafkaPID)
	}
}

func TestPickMedians(t *testing.T) {
	rounds := [][]result{
		{{Scenario: "a", Rate: 30, OK: true}, {Scenario: "b", Rate: 5, OK: true}},
		{{Scenario: "a", Rate: 10, OK: true}, {Scenario: "b", Rate: 6, OK: false, Error: "lost"}},
		{{Scenario: "a", Rate: 20, OK: true}, {Scenario: "b", Rate: 7, OK: true}},
	}
	got := pickMedians(rounds)
	if len(got) != 2 || got[0].Scenario != "a" || got[1].Scenario != "b" {
		t.Fatalf("scenarios %+v, want a then b", got)
	}
	if got[0].Rate != 20 || !slices.Equal(got[0].Rates, []float64{30, 10, 20}) {
		t.Errorf("a: rate %v rates %v, want the median 20 of 30 10 20", got[0].Rate, got[0].Rates)
	}
	if got[1].OK || got[1].Error != "lost" {
		t.Errorf("b: %+v, want the failed round", got[1])
	}
	even := pickMedians([][]result{{{Scenario: "a", Rate: 4, OK: true}}, {{Scenario: "a", Rate: 2, OK: true}}})
	if even[0].Rate != 2 {
		t.Errorf("median of 4 and 2: %v, want the lower, 2", even[0].Rate)
	}
	var out bytes.Buffer
	printTable(&out, got)
	if !strings.Contains(out.String(), "30 10 20") {
		t.Errorf("table lacks the rounds' rates:\n%s", out.String())
	}
}

func TestFreeAddrsAreDistinct(t *testing.T) {
	for range 200 {
		addrs, err := freeAddrs(3)
		if err != nil {
			t.Fatal(err)
		}
		if addrs[0] == addrs[1] || addrs[1] == addrs[2] || addrs[0] == addrs[2] {
			t.Fatalf("freeAddrs(3) returned a port twice: %v", addrs)
		}
	}
}

func TestRatioToNativeHeaders(t *testing.T) {
	rs := []result{
		{Scenario: "native-produce", Rate: 400000, OK: true},
		{Scenario: "native-produce-headers", Rate: 200000, OK: true},
		{Scenario: "mqtt-qos0", Rate: 150000, OK: true},
		{Scenario: "mqtt-qos1", Rate: 100000, OK: true},
		{Scenario: "ws-in", Rate: 100000, OK: true},
	}
	fillRatios(rs)
	if rs[1].Baseline != "native-produce" || deref(rs[1].Ratio) != 0.5 {
		t.Errorf("native-produce-headers: baseline %q ratio %v, want native-produce 0.5", rs[1].Baseline, deref(rs[1].Ratio))
	}
	if deref(rs[2].RatioHeaders) != 0.75 || deref(rs[3].RatioHeaders) != 0.5 {
		t.Errorf("ratios to native-produce-headers %v, %v; want 0.75, 0.5", deref(rs[2].RatioHeaders), deref(rs[3].RatioHeaders))
	}
	if rs[4].RatioHeaders != nil {
		t.Error("ws-in, whose records carry no mqtt.* headers, compared with native-produce-headers")
	}
	var out bytes.Buffer
	printTable(&out, rs)
	if !strings.Contains(out.String(), "0.750× native-produce-headers") {
		t.Errorf("table lacks the ratio to native-produce-headers:\n%s", out.String())
	}
}

func TestPrintCPU(t *testing.T) {
	rs := []result{
		// 2 s of harness CPU for 200 000 records in 1 s: 10 µs each.
		{Scenario: "native-produce", Records: 200000, Found: 200000, Seconds: 1, Rate: 200000, HarnessCPU: ptr(2.0), OK: true},
		// 2 s of Tributary and 2 s of harness in 2 s: 20 µs each, so at
		// most half the baseline's rate while both keep 2 cores busy.
		{Scenario: "mqtt-qos0", Records: 200000, Found: 200000, Seconds: 2, Rate: 100000, CPU: ptr(2.0), HarnessCPU: ptr(2.0), OK: true},
		{Scenario: "mosquitto-qos0", Records: 200000, Found: 200000, Seconds: 2, Rate: 100000, CPU: ptr(1.0), HarnessCPU: ptr(0.6), OK: true},
		{Scenario: "mqtt-qos1", Records: 200000, Found: 100, Seconds: 2, HarnessCPU: ptr(1.0)}, // failed
		{Scenario: "mosquitto-sub", Records: 200000, Found: 200000, Seconds: 2, Rate: 100000, CPU: ptr(0.4), RemoteCPU: ptr(0.6), HarnessCPU: ptr(0.2), OK: true},
		{Scenario: "upstream", Records: 200000, Found: 200000, Seconds: 2, Rate: 100000, CPU: ptr(1.0), OK: true},
	}
	fillRatios(rs)
	var out bytes.Buffer
	printCPU(&out, rs, 2)
	for _, want := range []string{
		"native-produce           10.0 µs, 2.00 cores busy\n",
		"mqtt-qos0                20.0 µs (Tributary 10.0, harness 10.0), 2.00 cores busy; CPU ceiling 0.50× native-produce, measured 0.500×\n",
		"mosquitto-qos0            8.0 µs (mosquitto 5.0, harness 3.0), 0.80 cores busy\n",
		"mosquitto-sub             6.0 µs (mosquitto_sub 2.0, remote mosquitto 3.0, harness 1.0), 0.60 cores busy\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	// A baseline bound by something other than CPU sets no ceiling.
	rs[0].HarnessCPU = ptr(1.0)
	out.Reset()
	printCPU(&out, rs, 2)
	if want := "mqtt-qos0                20.0 µs (Tributary 10.0, harness 10.0), 2.00 cores busy; no CPU ceiling: native-produce kept 1.00 of 2 cores busy\n"; !strings.Contains(out.String(), want) {
		t.Errorf("output lacks %q:\n%s", want, out.String())
	}
	for _, absent := range []string{"mqtt-qos1", "upstream"} {
		if strings.Contains(out.String(), absent) {
			t.Errorf("%s printed without its harness CPU or records:\n%s", absent, out.String())
		}
	}
}

// TestPrintCPUWithKafka: the CPU of a local Kafka broker (--kafka-pid)
// counts in the total, is shown as a part of it, and moves the ceiling.
func TestPrintCPUWithKafka(t *testing.T) {
	rs := []result{
		// 0.8 s harness + 1.2 s Kafka for 200 000 records in 1 s: 10 µs.
		{Scenario: "native-produce", Records: 200000, Found: 200000, Seconds: 1, Rate: 200000, HarnessCPU: ptr(0.8), KafkaCPU: ptr(1.2), OK: true},
		// 2 s Tributary + 0.4 s harness + 1.6 s Kafka in 2 s: 20 µs.
		{Scenario: "mqtt-qos0", Records: 200000, Found: 200000, Seconds: 2, Rate: 100000, CPU: ptr(2.0), HarnessCPU: ptr(0.4), KafkaCPU: ptr(1.6), OK: true},
	}
	fillRatios(rs)
	var out bytes.Buffer
	printCPU(&out, rs, 2)
	for _, want := range []string{
		"the harness with its clients, the local Kafka broker; 2 CPUs",
		"native-produce           10.0 µs (harness 4.0, Kafka 6.0), 2.00 cores busy\n",
		"mqtt-qos0                20.0 µs (Tributary 10.0, harness 2.0, Kafka 8.0), 2.00 cores busy; CPU ceiling 0.50× native-produce, measured 0.500×\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// TestPrintProtocolCeiling: with mqtt-qos0 keeping the machine busy, what
// QoS 1 adds to QoS 0 at the bare endpoint (bare-qos1 less bare-qos0),
// added to mqtt-qos0's CPU per record, bounds mqtt-qos1 × mqtt-qos0.
// Without bare-qos0 all of bare-qos1's is added, which counts the
// publishes mqtt-qos0's figure already holds twice: a lower bound, and
// labelled so. Without a CPU-bound mqtt-qos0 nothing is printed.
func TestPrintProtocolCeiling(t *testing.T) {
	rs := []result{
		// 1.8 s Tributary + 0.2 s harness for 200 000 records in 1 s: 10 µs.
		{Scenario: "mqtt-qos0", Records: 200000, Found: 200000, Seconds: 1, Rate: 200000, CPU: ptr(1.8), HarnessCPU: ptr(0.2), OK: true},
		{Scenario: "mqtt-qos1", Records: 200000, Found: 200000, Seconds: 4, Rate: 50000, CPU: ptr(6.0), HarnessCPU: ptr(2.0), OK: true},
		// 0.4 s endpoint + 0.6 s harness for 200 000 records: 5 µs.
		{Scenario: "bare-qos1", Records: 200000, Found: 200000, Seconds: 0.5, Rate: 400000, CPU: ptr(0.4), HarnessCPU: ptr(0.6), OK: true},
		// 0.2 s endpoint + 0.4 s harness for 200 000 records: 3 µs.
		{Scenario: "bare-qos0", Records: 200000, Found: 200000, Seconds: 0.3, Rate: 666667, CPU: ptr(0.2), HarnessCPU: ptr(0.4), OK: true},
	}
	fillRatios(rs)
	var out bytes.Buffer
	printCPU(&out, rs, 2)
	for _, want := range []string{
		"bare-qos1                 5.0 µs (endpoint 2.0, harness 3.0), 2.00 cores busy\n",
		"bare-qos0                 3.0 µs (endpoint 1.0, harness 2.0), 2.00 cores busy\n",
		// 10 ÷ (10 + 5 − 3)
		"QoS 1 ceiling from the protocol alone: 0.83× mqtt-qos0 (mqtt-qos0's 10.0 µs per record plus bare-qos1's 5.0 µs less bare-qos0's 3.0 µs); mqtt-qos1 measured 0.250×\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}

	// Only bare-qos1: 10 ÷ (10 + 5), a lower bound.
	out.Reset()
	printCPU(&out, rs[:3], 2)
	if want := "QoS 1 ceiling from the protocol alone: at least 0.67× mqtt-qos0, a lower bound (mqtt-qos0's 10.0 µs per record plus all of bare-qos1's 5.0 µs, whose publishes mqtt-qos0's already include; run bare-qos0 for the ceiling); mqtt-qos1 measured 0.250×\n"; !strings.Contains(out.String(), want) {
		t.Errorf("output lacks %q:\n%s", want, out.String())
	}

	// A failed bare-qos0 counts as absent.
	rs[3].OK = false
	out.Reset()
	printCPU(&out, rs, 2)
	if !strings.Contains(out.String(), "at least 0.67× mqtt-qos0, a lower bound") {
		t.Errorf("a failed bare-qos0 was used:\n%s", out.String())
	}
	rs[3].OK = true

	rs[0].CPU, rs[0].HarnessCPU = ptr(0.8), ptr(0.2) // 1 of 2 cores busy: not bound by CPU
	out.Reset()
	printCPU(&out, rs, 2)
	if strings.Contains(out.String(), "ceiling from the protocol") {
		t.Errorf("a ceiling printed though mqtt-qos0 kept only 1 of 2 cores busy:\n%s", out.String())
	}
}

func TestProtocolCeiling(t *testing.T) {
	for _, tc := range []struct {
		name             string
		q0, bare1, bare0 float64
		withBare0        bool
		want             float64
	}{
		{"QoS 1 adds bare-qos1 less bare-qos0", 10, 5, 3, true, 10.0 / 12},
		{"without bare-qos0 all of bare-qos1 is added: a lower bound", 10, 5, 0, false, 10.0 / 15},
		{"the lower bound is below the ceiling", 10, 5, 3, false, 10.0 / 15},
		{"QoS 1 adding nothing leaves the ceiling at 1", 10, 3, 3, true, 1},
		{"noise making bare-qos0 dearer adds nothing either", 10, 3, 4, true, 1},
	} {
		if got := protocolCeiling(tc.q0, tc.bare1, tc.bare0, tc.withBare0); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}
