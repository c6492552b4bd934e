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
	// Baseline is Rate divided by the native-produce rate of the same run
	// (scenarios that publish into Tributary only).
	Baseline *float64 `json:"baseline"`
	// Ratio is Rate divided by the rate of the scenario's target baseline:
	// mqtt-qos0 for the QoS 1 scenarios, mosquitto-sub for upstream,
	// native-produce for ws-in, native-consume for the ws-out scenarios.
	Ratio *float64 `json:"ratio"`
	P50Ms *float64 `json:"p50_ms"` // PUBACK latency, QoS 1 only
	P99Ms *float64 `json:"p99_ms"`
	// RSS is Tributary's peak resident set size (VmHWM) during the scenario.
	RSS *int64 `json:"bridge_rss_bytes"`
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
	// HarnessCPU is the CPU time the harness itself used in the scenario:
	// the load generator, and kfake when it runs in-process.
	HarnessCPU *float64 `json:"harness_cpu_seconds"`
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

// target is a throughput ratio the bridge is meant to reach.
type target struct {
	scenario, of string
	min          float64
}

var targets = []target{
	{"mqtt-qos1", "mqtt-qos0", 0.7},
	{"mqtt-qos1-single", "mqtt-qos0", 0.3},
	{"upstream", "mosquitto-sub", 0.9},
	{"ws-in", "native-produce", 0.9},
	{"ws-out", "native-consume", 0.8},
	{"ws-out-batch100", "native-consume", 0.8},
}

// fillRatios sets Baseline and Ratio from the other results of the run;
// failed scenarios give and get no ratios.
func fillRatios(rs []result) {
	rate := map[string]float64{}
	for _, r := range rs {
		if r.OK && r.Rate > 0 {
			rate[r.Scenario] = r.Rate
		}
	}
	for i := range rs {
		r := &rs[i]
		if !r.OK {
			continue
		}
		if b, ok := rate["native-produce"]; ok && !r.drain {
			r.Baseline = ptr(r.Rate / b)
		}
		for _, t := range targets {
			if t.scenario == r.Scenario {
				if q, ok := rate[t.of]; ok {
					r.Ratio = ptr(r.Rate / q)
				}
			}
		}
	}
}

// printTable writes the results as an aligned table; with repeated
// rounds, a last column lists every round's rate.
func printTable(w io.Writer, rs []result) {
	rounds := false
	for _, r := range rs {
		rounds = rounds || len(r.Rates) > 1
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := "scenario\trecords\tseconds\trecords/s\t× native\t× base\tp50 ms\tp99 ms\tbridge RSS MiB\tbridge CPU s\tstatus\t"
	if rounds {
		head += "rounds, records/s\t"
	}
	fmt.Fprintln(tw, head)
	for _, r := range rs {
		status := "ok"
		switch {
		case r.Skipped != "":
			status = "skipped"
		case !r.OK && r.Scenario == "mosquitto-sub":
			status = fmt.Sprintf("FAILED (%d received)", r.Found)
		case !r.OK:
			status = fmt.Sprintf("FAILED (%d in Kafka)", r.Found)
		}
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t",
			r.Scenario, r.Records, r.Seconds, r.Rate,
			optf(r.Baseline, 2), optf(r.Ratio, 2), optf(r.P50Ms, 2), optf(r.P99Ms, 2),
			optMiB(r.RSS), optf(r.CPU, 2), status)
		if rounds {
			var all []string
			for _, v := range r.Rates {
				all = append(all, strconv.FormatFloat(v, 'f', 0, 64))
			}
			fmt.Fprintf(tw, "%s\t", strings.Join(all, " "))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
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
		if ok && r.Ratio != nil {
			verdict = fmt.Sprintf("%.3f× — ", *r.Ratio)
			if *r.Ratio >= t.min {
				verdict += "met"
			} else {
				verdict += "MISSED"
			}
		}
		fmt.Fprintf(w, "  %s rate ≥ %.1f× %s rate: %s\n", t.scenario, t.min, t.of, verdict)
	}
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
