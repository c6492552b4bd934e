package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// result is one scenario's outcome; its JSON form is what --json writes.
type result struct {
	Scenario string  `json:"scenario"`
	Records  int     `json:"records"`
	Seconds  float64 `json:"seconds"`
	Rate     float64 `json:"rate"` // records per second
	// Baseline names the scenario this one is measured against (see
	// baselines), or is empty for a scenario that is a baseline or has
	// none.
	Baseline string `json:"baseline"`
	// Ratio is Rate divided by Baseline's rate in the same run; null when
	// there is no baseline or it did not run or failed.
	Ratio *float64 `json:"ratio"`
	// RatioMosquitto is Rate divided by the rate of the same MQTT load
	// against mosquitto in the same run (mqtt-qos0 and mqtt-qos1).
	RatioMosquitto *float64 `json:"ratio_mosquitto,omitempty"`
	// RatioQoS0 is Rate divided by mqtt-qos0's rate in the same run
	// (mqtt-qos1 and mqtt-qos1-single): what QoS 1's acknowledgements
	// after Kafka cost against Tributary's own fire-and-forget path.
	RatioQoS0 *float64 `json:"ratio_qos0,omitempty"`
	// RatioHeaders is Rate divided by native-produce-headers' rate in the
	// same run (the MQTT scenarios): the native producer writing records
	// with the same headers, which is part of what Tributary does per record.
	RatioHeaders *float64 `json:"ratio_native_headers,omitempty"`
	P50Ms        *float64 `json:"p50_ms"` // PUBACK latency, QoS 1 only
	P99Ms        *float64 `json:"p99_ms"`
	// RSS is the peak resident set size (VmHWM) of Tributary during the
	// scenario; of mosquitto in the mosquitto scenarios.
	RSS *int64 `json:"bridge_rss_bytes"`
	// SendSeconds (MQTT publishing scenarios) runs from the first publish
	// until every client had sent all of its publishes and, at QoS 0, the
	// broker had read them, at QoS 1 acknowledged them.
	SendSeconds *float64 `json:"send_seconds,omitempty"`
	// PacedRate (latency-qos1) is the total rate the clients were paced at.
	PacedRate *float64 `json:"paced_rate,omitempty"`
	// KafkaP50Ms and KafkaP99Ms (latency-qos1) are the latencies from
	// writing a publish to a Kafka consumer receiving its record.
	KafkaP50Ms *float64 `json:"kafka_p50_ms,omitempty"`
	KafkaP99Ms *float64 `json:"kafka_p99_ms,omitempty"`
	// ConnectRate (connections) is connections opened per second, each
	// through CONNACK; Records is then the number of connections.
	ConnectRate *float64 `json:"connect_rate,omitempty"`
	// RSSPerConn (connections) is (RSSConnected − RSSBefore) ÷ connections.
	RSSPerConn   *float64 `json:"rss_per_conn_bytes,omitempty"`
	RSSBefore    *int64   `json:"rss_before_bytes,omitempty"`    // VmRSS before connecting
	RSSConnected *int64   `json:"rss_connected_bytes,omitempty"` // VmRSS with every connection idle
	// SourceAddrs (connections) is how many loopback source addresses the
	// connections came from.
	SourceAddrs int `json:"source_addresses,omitempty"`
	// CPU is the CPU time (user+system) Tributary used from the first send
	// until the records were counted in Kafka. For upstream it is the
	// draining process's whole life, start-up included; for mosquitto-sub
	// it is mosquitto_sub's (its RSS is not measured).
	CPU *float64 `json:"bridge_cpu_seconds"`
	// WallSeconds (drain scenarios) runs from the subscriber's start, where
	// Seconds runs from the first message it received.
	WallSeconds *float64 `json:"wall_seconds,omitempty"`
	// ReadySeconds (upstream) is how long Tributary took to answer /readyz
	// 200: connected to Kafka and to the remote broker, subscribed.
	ReadySeconds *float64 `json:"ready_seconds,omitempty"`
	// FirstRecordSeconds (consume scenarios) is how long the consumer took
	// from connecting to its first record: joining the group, fetching.
	// Seconds runs from connecting to the last record.
	FirstRecordSeconds *float64 `json:"first_record_seconds,omitempty"`
	// RemoteCPU (drain scenarios) is the CPU time the remote mosquitto used
	// while it was being drained.
	RemoteCPU *float64 `json:"remote_broker_cpu_seconds,omitempty"`
	// HarnessCPU is the CPU time the harness's own process used over the
	// scenario's timed part, the same span as CPU: the load generator or
	// native client, and kfake when it runs in-process. Starting and
	// stopping Tributary or a broker, and connecting the clients, are left
	// out, as they are from CPU, Found and Seconds, which it is divided by.
	// For the upstream rows it covers the drain as CPU does: for
	// upstream from Tributary's start, for mosquitto-sub from
	// mosquitto_sub's.
	HarnessCPU *float64 `json:"harness_cpu_seconds"`
	// KafkaCPU is the CPU time the local Kafka broker of --kafka-pid used
	// over the same span as HarnessCPU.
	KafkaCPU *float64 `json:"kafka_cpu_seconds,omitempty"`
	// Rates lists the rate of every round when the run was repeated.
	Rates []float64 `json:"rates,omitempty"`
	// Found is how many records Kafka held at the end.
	Found int64  `json:"kafka_records"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	// Skipped says why the scenario did not run; a skip is not a failure.
	Skipped string `json:"skipped,omitempty"`

	drain bool // a subscriber drains a backlog; not comparable with native-produce
}

// percentile returns the nearest-rank p-th percentile (0 < p ≤ 100) of
// sorted, which must be in ascending order and not empty.
func percentile(sorted []time.Duration, p float64) time.Duration {
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = max(1, min(rank, len(sorted)))
	return sorted[rank-1]
}

// setLatencies fills in p50 and p99 from the PUBACK latencies, which it sorts.
func (r *result) setLatencies(lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	r.P50Ms = ptr(ms(percentile(lat, 50)))
	r.P99Ms = ptr(ms(percentile(lat, 99)))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func ptr[T any](v T) *T { return &v }

// baselines maps a scenario to the one it is measured against in the
// same run. Scenarios not listed are baselines or stand alone.
var baselines = map[string]string{
	"native-produce-headers": "native-produce",
	"mqtt-qos0":              "native-produce",
	"mqtt-qos1":              "native-produce",
	"mqtt-qos1-single":       "native-produce",
	"mqtt-ws-qos1":           "native-produce",
	"ws-in":                  "native-produce",
	"ws-out":                 "native-consume",
	"ws-out-batch100":        "native-consume",
	"upstream":               "mosquitto-sub",
}

// mosquittoPeers maps a Tributary MQTT scenario to the same load against
// mosquitto, its second comparison.
var mosquittoPeers = map[string]string{
	"mqtt-qos0": "mosquitto-qos0",
	"mqtt-qos1": "mosquitto-qos1",
}

// qos0Peers are the QoS 1 loads whose rate is also compared with
// Tributary's own QoS 0 rate (RatioQoS0).
var qos0Peers = map[string]bool{"mqtt-qos1": true, "mqtt-qos1-single": true}

// headerPeers are the MQTT loads whose rate is also compared with the
// native producer writing records with Tributary's headers (RatioHeaders).
var headerPeers = map[string]bool{"mqtt-qos0": true, "mqtt-qos1": true, "mqtt-qos1-single": true, "mqtt-ws-qos1": true}

// target is a figure the bridge is meant to reach.
type target struct {
	scenario string
	what     string // the condition, as printed
	value    func(result) *float64
	limit    float64
	atMost   bool   // the value must be at most limit, not at least
	unit     string // printed after the value
}

// rateTarget is scenario's rate ≥ min × of's rate in the same run.
func rateTarget(scenario, of string, min float64) target {
	value := func(r result) *float64 { return r.Ratio }
	switch {
	case mosquittoPeers[scenario] == of:
		value = func(r result) *float64 { return r.RatioMosquitto }
	case qos0Peers[scenario] && of == "mqtt-qos0":
		value = func(r result) *float64 { return r.RatioQoS0 }
	}
	return target{
		scenario: scenario,
		what:     fmt.Sprintf("%s rate ≥ %.1f× %s rate", scenario, min, of),
		value:    value, limit: min, unit: "×",
	}
}

// targets are the project's issues', in the order they are printed: the
// QoS 1 ones twice, against mqtt-qos0 (the main issue's) and against
// native-produce (the benchmark issue's). docs/benchmarks.md lists them.
var targets = []target{
	rateTarget("mqtt-qos0", "native-produce", 0.9),
	rateTarget("mqtt-qos0", "mosquitto-qos0", 1.0),
	rateTarget("mqtt-qos1", "native-produce", 0.7),
	rateTarget("mqtt-qos1-single", "native-produce", 0.3),
	rateTarget("mqtt-qos1", "mqtt-qos0", 0.7),
	rateTarget("mqtt-qos1-single", "mqtt-qos0", 0.3),
	rateTarget("ws-in", "native-produce", 0.9),
	rateTarget("ws-out", "native-consume", 0.8),
	rateTarget("ws-out-batch100", "native-consume", 0.8),
	rateTarget("upstream", "mosquitto-sub", 0.9),
	{
		scenario: "latency-qos1", what: "latency-qos1 PUBACK p99 ≤ 20 ms",
		value: func(r result) *float64 { return r.P99Ms }, limit: 20, atMost: true, unit: " ms",
	},
	{
		scenario: "connections", what: "connections: bridge RSS per idle connection ≤ 32 KiB",
		value: func(r result) *float64 { return kib(r.RSSPerConn) }, limit: 32, atMost: true, unit: " KiB",
	},
}

func kib(v *float64) *float64 {
	if v == nil {
		return nil
	}
	return ptr(*v / 1024)
}

// fillRatios names each result's baseline and sets Ratio and
// RatioMosquitto from the other results of the run; failed scenarios give
// and get no ratios.
func fillRatios(rs []result) {
	rate := map[string]float64{}
	for _, r := range rs {
		if r.OK && r.Rate > 0 {
			rate[r.Scenario] = r.Rate
		}
	}
	for i := range rs {
		r := &rs[i]
		r.Baseline = baselines[r.Scenario]
		if !r.OK {
			continue
		}
		if q, ok := rate[r.Baseline]; ok {
			r.Ratio = ptr(r.Rate / q)
		}
		if q, ok := rate[mosquittoPeers[r.Scenario]]; ok {
			r.RatioMosquitto = ptr(r.Rate / q)
		}
		if q, ok := rate["mqtt-qos0"]; ok && qos0Peers[r.Scenario] {
			r.RatioQoS0 = ptr(r.Rate / q)
		}
		if q, ok := rate["native-produce-headers"]; ok && headerPeers[r.Scenario] {
			r.RatioHeaders = ptr(r.Rate / q)
		}
	}
}

// printTable writes the results as an aligned table, each figure that
// has no column in a notes column at the end; with repeated rounds, a
// column lists every round's rate.
func printTable(w io.Writer, rs []result) {
	rounds := false
	for _, r := range rs {
		rounds = rounds || len(r.Rates) > 1
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := "scenario\trecords\tseconds\trecords/s\tbaseline\t× baseline\tp50 ms\tp99 ms\tbridge RSS MiB\tbridge CPU s\tstatus\t"
	if rounds {
		head += "rounds, records/s\t"
	}
	fmt.Fprintln(tw, head+"  notes")
	for _, r := range rs {
		status := "ok"
		switch {
		case r.Skipped != "":
			status = "skipped"
		case !r.OK && countedByClient(r.Scenario):
			status = fmt.Sprintf("FAILED (%d received)", r.Found)
		case !r.OK && r.ConnectRate != nil:
			status = "FAILED"
		case !r.OK:
			status = fmt.Sprintf("FAILED (%d in Kafka)", r.Found)
		}
		base := r.Baseline
		if base == "" {
			base = "-"
		}
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t",
			r.Scenario, r.Records, r.Seconds, r.Rate, base,
			optf(r.Ratio, 3), optf(r.P50Ms, 2), optf(r.P99Ms, 2),
			optMiB(r.RSS), optf(r.CPU, 2), status)
		if rounds {
			var all []string
			for _, v := range r.Rates {
				all = append(all, strconv.FormatFloat(v, 'f', 0, 64))
			}
			fmt.Fprintf(tw, "%s\t", strings.Join(all, " "))
		}
		fmt.Fprintln(tw, "  "+notes(r))
	}
	tw.Flush()
}

// countedByClient reports whether a scenario's count is what its client
// received rather than what Kafka holds.
func countedByClient(scenario string) bool {
	return scenario == "mosquitto-sub" || scenario == "native-consume" ||
		strings.HasPrefix(scenario, "mosquitto-qos") || strings.HasPrefix(scenario, "bare-") || strings.HasPrefix(scenario, "ws-out")
}

// notes lists a result's figures that have no column of their own.
func notes(r result) string {
	var ns []string
	if r.RatioMosquitto != nil {
		ns = append(ns, fmt.Sprintf("%.3f× %s", *r.RatioMosquitto, mosquittoPeers[r.Scenario]))
	}
	if r.RatioQoS0 != nil {
		ns = append(ns, fmt.Sprintf("%.3f× mqtt-qos0", *r.RatioQoS0))
	}
	if r.RatioHeaders != nil {
		ns = append(ns, fmt.Sprintf("%.3f× native-produce-headers", *r.RatioHeaders))
	}
	if r.SendSeconds != nil && *r.SendSeconds > 0 {
		ns = append(ns, fmt.Sprintf("sent in %.2f s (%.0f/s)", *r.SendSeconds, float64(r.Records) / *r.SendSeconds))
	}
	if r.PacedRate != nil {
		ns = append(ns, fmt.Sprintf("paced at %.0f/s", *r.PacedRate))
	}
	if r.KafkaP50Ms != nil && r.KafkaP99Ms != nil {
		ns = append(ns, fmt.Sprintf("publish→Kafka consumer p50 %.2f ms, p99 %.2f ms", *r.KafkaP50Ms, *r.KafkaP99Ms))
	}
	if r.ConnectRate != nil {
		ns = append(ns, fmt.Sprintf("%d connections from %d source address(es)", r.Records, r.SourceAddrs))
	}
	if r.RSSPerConn != nil && r.RSSBefore != nil && r.RSSConnected != nil {
		ns = append(ns, fmt.Sprintf("RSS %s → %s MiB: %.1f KiB per connection", optMiB(r.RSSBefore), optMiB(r.RSSConnected), *r.RSSPerConn/1024))
	}
	return strings.Join(ns, "; ")
}

func optf(v *float64, prec int) string {
	if v == nil {
		return "-"
	}
	return strconv.FormatFloat(*v, 'f', prec, 64)
}

func optMiB(v *int64) string {
	if v == nil {
		return "-"
	}
	return strconv.FormatFloat(float64(*v)/(1<<20), 'f', 0, 64)
}

// printTargets says, for each target, whether this run met it.
func printTargets(w io.Writer, rs []result) {
	byName := map[string]result{}
	for _, r := range rs {
		byName[r.Scenario] = r
	}
	fmt.Fprintln(w, "targets:")
	for _, t := range targets {
		r, ok := byName[t.scenario]
		verdict := "not measured"
		if ok && r.Skipped != "" {
			verdict = "not measured (" + r.Skipped + ")"
		}
		if v := t.value(r); ok && r.OK && v != nil {
			met := *v >= t.limit
			if t.atMost {
				met = *v <= t.limit
			}
			verdict = fmt.Sprintf("%.3f%s — ", *v, t.unit)
			if met {
				verdict += "met"
			} else {
				verdict += "MISSED"
			}
		}
		fmt.Fprintf(w, "  %s: %s\n", t.what, verdict)
	}
}

// printGenerator says whether the MQTT load generator could have been
// what limited Tributary. The same load's send rate into mosquitto is
// what the generator can at least do: 1.1 × Tributary's rate or more
// shows it was not the limit. When mosquitto was the slower broker that
// proves nothing, and the harness's own CPU over the Tributary scenario's
// timed part (generator and, in-process, kfake) is all there is to go on:
// under half of one core shows that the generator was not short of CPU
// of its own, but not what it waited for, the broker or a core the
// machine's other processes held, so the verdict says only the former.
func printGenerator(w io.Writer, rs []result) {
	byName := map[string]result{}
	for _, r := range rs {
		byName[r.Scenario] = r
	}
	header := false
	for _, name := range []string{"mqtt-qos0", "mqtt-qos1"} {
		t, m := byName[name], byName[mosquittoPeers[name]]
		if !t.OK || t.Rate <= 0 {
			continue
		}
		var says []string
		verdict := ""
		if m.OK && m.SendSeconds != nil && *m.SendSeconds > 0 {
			gen := float64(m.Records) / *m.SendSeconds
			says = append(says, fmt.Sprintf("into mosquitto it sent %.0f/s, %.2f× Tributary's %.0f/s", gen, gen/t.Rate, t.Rate))
			if gen >= 1.1*t.Rate {
				verdict = "not the bottleneck"
			}
		}
		if t.HarnessCPU != nil && t.Seconds > 0 {
			busy := *t.HarnessCPU / t.Seconds
			says = append(says, fmt.Sprintf("during %s the harness used %.2f s of CPU in %.2f s (%.0f%% of one core)", name, *t.HarnessCPU, t.Seconds, 100*busy))
			if verdict == "" && busy < 0.5 {
				verdict = "not CPU-bound (under half of one core)"
			}
		}
		if len(says) == 0 {
			continue
		}
		if verdict == "" {
			verdict = "MAY BE the bottleneck"
		}
		if !header {
			fmt.Fprintln(w, "load generator:")
			header = true
		}
		fmt.Fprintf(w, "  %s: %s: %s\n", name, strings.Join(says, "; "), verdict)
	}
}

// printCPU writes, for each scenario whose harness CPU was measured, the
// CPU time per record of every process it kept busy: Tributary (or
// mosquitto, or mosquitto_sub, or the bare endpoint), the harness (load
// generator, native client and, in-process, kfake), a remote broker, and
// a local Kafka broker (--kafka-pid), each over the scenario's timed part,
// the span of its Seconds. Over upstream's drain they cover the whole
// drain, and Tributary's CPU includes its start-up. Two scenarios that
// both keep the machine's cores busy run at rates in the inverse ratio of
// their CPU per record: against a baseline that kept most cores busy,
// that inverse ratio is printed as the CPU ceiling, the ratio the scenario
// reaches with the same share of the machine. A scenario that got more of
// the cores can pass it; a ratio close to it is bound by CPU. A baseline
// that left cores idle was bound by something else and sets no ceiling.
func printCPU(w io.Writer, rs []result, cpus int) {
	perRecord := map[string]float64{}
	busy := map[string]float64{}
	total := func(r result) (float64, bool) {
		if !r.OK || r.HarnessCPU == nil || r.Found <= 0 || r.Seconds <= 0 {
			return 0, false
		}
		t := *r.HarnessCPU
		for _, v := range []*float64{r.CPU, r.RemoteCPU, r.KafkaCPU} {
			if v != nil {
				t += *v
			}
		}
		return t, true
	}
	kafka := false
	for _, r := range rs {
		if t, ok := total(r); ok {
			perRecord[r.Scenario] = t / float64(r.Found)
			busy[r.Scenario] = t / r.Seconds
			kafka = kafka || r.KafkaCPU != nil
		}
	}
	header := false
	for _, r := range rs {
		t, ok := total(r)
		if !ok {
			continue
		}
		if !header {
			who := "the harness with its clients and kfake"
			if kafka {
				who = "the harness with its clients, the local Kafka broker"
			}
			fmt.Fprintf(w, "CPU per record (all processes of the scenario: Tributary, mosquitto or the bare endpoint, %s; %d CPUs):\n", who, cpus)
			header = true
		}
		us := 1e6 * perRecord[r.Scenario]
		fmt.Fprintf(w, "  %-22s %6.1f µs", r.Scenario, us)
		var parts []string
		part := func(name string, v *float64) {
			if v != nil {
				parts = append(parts, fmt.Sprintf("%s %.1f", name, 1e6**v/float64(r.Found)))
			}
		}
		part(cpuOwner(r.Scenario), r.CPU)
		part("remote mosquitto", r.RemoteCPU)
		part("harness", r.HarnessCPU)
		part("Kafka", r.KafkaCPU)
		if len(parts) > 1 {
			fmt.Fprintf(w, " (%s)", strings.Join(parts, ", "))
		}
		fmt.Fprintf(w, ", %.2f cores busy", t/r.Seconds)
		if b, ok := perRecord[r.Baseline]; ok && r.Ratio != nil {
			if busy[r.Baseline] >= cpuBoundShare*float64(cpus) {
				fmt.Fprintf(w, "; CPU ceiling %.2f× %s, measured %.3f×", b/perRecord[r.Scenario], r.Baseline, *r.Ratio)
			} else {
				fmt.Fprintf(w, "; no CPU ceiling: %s kept %.2f of %d cores busy", r.Baseline, busy[r.Baseline], cpus)
			}
		}
		fmt.Fprintln(w)
	}
	printProtocolCeiling(w, rs, perRecord, busy, cpus)
}

// printProtocolCeiling prints what mqtt-qos1 × mqtt-qos0 could reach if a
// QoS 1 record cost Tributary no more than a QoS 0 one plus what QoS 1's
// protocol adds to QoS 0's for the bare endpoint and the load generator,
// when mqtt-qos0 kept the machine busy, so that CPU bounds its rate (see
// protocolCeiling).
func printProtocolCeiling(w io.Writer, rs []result, perRecord, busy map[string]float64, cpus int) {
	q0, ok0 := perRecord["mqtt-qos0"]
	bare1, ok1 := perRecord["bare-qos1"]
	if !ok0 || !ok1 || busy["mqtt-qos0"] < cpuBoundShare*float64(cpus) {
		return
	}
	bare0, ok := perRecord["bare-qos0"]
	ceiling := protocolCeiling(q0, bare1, bare0, ok)
	if ok {
		fmt.Fprintf(w, "  QoS 1 ceiling from the protocol alone: %.2f× mqtt-qos0 (mqtt-qos0's %.1f µs per record plus bare-qos1's %.1f µs less bare-qos0's %.1f µs)",
			ceiling, 1e6*q0, 1e6*bare1, 1e6*bare0)
	} else {
		fmt.Fprintf(w, "  QoS 1 ceiling from the protocol alone: at least %.2f× mqtt-qos0, a lower bound (mqtt-qos0's %.1f µs per record plus all of bare-qos1's %.1f µs, whose publishes mqtt-qos0's already include; run bare-qos0 for the ceiling)",
			ceiling, 1e6*q0, 1e6*bare1)
	}
	for _, r := range rs {
		if r.Scenario == "mqtt-qos1" && r.RatioQoS0 != nil {
			fmt.Fprintf(w, "; mqtt-qos1 measured %.3f×", *r.RatioQoS0)
		}
	}
	fmt.Fprintln(w)
}

// protocolCeiling is q0 ÷ (q0 + what QoS 1 adds), q0 being mqtt-qos0's
// CPU per record. mqtt-qos0's already includes writing and reading each
// PUBLISH, so what QoS 1 adds is bare-qos1's CPU per record less
// bare-qos0's (the PUBACKs, and the wake-ups of a window's round trips),
// none if that comes out negative. Without bare-qos0 (withBare0
// false) all of bare-qos1's is added, counting the publishes twice: the
// result is then a lower bound of the ceiling.
func protocolCeiling(q0, bare1, bare0 float64, withBare0 bool) float64 {
	extra := bare1
	if withBare0 {
		extra = max(0, bare1-bare0)
	}
	return q0 / (q0 + extra)
}

// cpuBoundShare is the share of the machine's cores a baseline must keep
// busy for its CPU per record to bound another scenario's ratio.
const cpuBoundShare = 0.75

func cpuOwner(scenario string) string {
	switch {
	case scenario == "mosquitto-sub":
		return "mosquitto_sub"
	case strings.HasPrefix(scenario, "mosquitto-"):
		return "mosquitto"
	case strings.HasPrefix(scenario, "bare-"):
		return "endpoint"
	}
	return "Tributary"
}

// printDrains writes, for the drain scenarios, the figures the table
// leaves out: the wall-clock times that include start-up, and the remote
// broker's CPU.
func printDrains(w io.Writer, rs []result) {
	var base *result
	for i := range rs {
		if rs[i].Scenario == "mosquitto-sub" && rs[i].OK {
			base = &rs[i]
		}
	}
	header := false
	for _, r := range rs {
		if !r.drain || !r.OK || r.WallSeconds == nil {
			continue
		}
		if !header {
			fmt.Fprintln(w, "drains (seconds from the first message received; wall from the subscriber's start):")
			header = true
		}
		wallRate := float64(r.Found) / *r.WallSeconds
		fmt.Fprintf(w, "  %-13s drain %.2f s (%.0f/s), wall %.2f s (%.0f/s)", r.Scenario, r.Seconds, r.Rate, *r.WallSeconds, wallRate)
		if r.ReadySeconds != nil {
			fmt.Fprintf(w, ", /readyz after %.2f s", *r.ReadySeconds)
		}
		if r.RemoteCPU != nil {
			fmt.Fprintf(w, ", remote mosquitto CPU %.2f s", *r.RemoteCPU)
		}
		if base != nil && r.Scenario != base.Scenario {
			fmt.Fprintf(w, "; wall-clock ratio %.3f×", wallRate/(float64(base.Found) / *base.WallSeconds))
		}
		fmt.Fprintln(w)
	}
}

func writeJSON(path string, rs []result) error {
	b, err := json.MarshalIndent(rs, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding results: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing results: %w", err)
	}
	return nil
}

// printConsumers writes, for the consume scenarios, the time to the first
// record and the rate after it, which leaves out joining the group: the
// table's rate runs from connecting, as a client sees it.
func printConsumers(w io.Writer, rs []result) {
	var base *result
	for i := range rs {
		if rs[i].Scenario == "native-consume" && rs[i].OK {
			base = &rs[i]
		}
	}
	after := func(r result) float64 {
		s := r.Seconds - *r.FirstRecordSeconds
		if s <= 0 || r.Found < 2 {
			return 0
		}
		return float64(r.Found-1) / s
	}
	header := false
	for _, r := range rs {
		if !r.OK || r.FirstRecordSeconds == nil {
			continue
		}
		if !header {
			fmt.Fprintln(w, "consumers (seconds from connecting; the rate after the first record leaves out the group join):")
			header = true
		}
		fmt.Fprintf(w, "  %-16s first record after %.2f s, all after %.2f s; after the first: %.0f/s", r.Scenario, *r.FirstRecordSeconds, r.Seconds, after(r))
		if base != nil && r.Scenario != base.Scenario && after(*base) > 0 {
			fmt.Fprintf(w, " (%.3f× native-consume)", after(r)/after(*base))
		}
		fmt.Fprintln(w)
	}
}
