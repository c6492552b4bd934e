package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tributary-io/tributary/config"
)

func TestMosquittoConf(t *testing.T) {
	for _, tc := range []struct {
		name     string
		inflight int
		runAs    string
		want     []string
		not      []string
	}{
		{"raised window", 1000, "bench", []string{"listener 4242 127.0.0.1\n", "max_inflight_messages 1000\n", "max_queued_messages 0\n", "persistence false\n", "allow_anonymous true\n", "user bench\n"}, nil},
		{"no limit, unknown user", 0, "", []string{"max_inflight_messages 0\n"}, []string{"user "}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := mosquittoConf(4242, tc.inflight, tc.runAs)
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("config lacks %q:\n%s", w, got)
				}
			}
			for _, n := range tc.not {
				if strings.Contains(got, n) {
					t.Errorf("config holds %q:\n%s", n, got)
				}
			}
		})
	}
}

func TestUpstreamYAML(t *testing.T) {
	// Tributary's own loader: strict decoding and validation.
	path := filepath.Join(t.TempDir(), "tributary.yaml")
	if err := os.WriteFile(path, []byte(upstreamYAML("tcp://127.0.0.1:4242", "tributary-bench-upstream-1", "bench-x-upstream-1")), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, _, err := config.Load(config.Options{Args: []string{"--config", path, "--kafka-bootstrap", "127.0.0.1:9092"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Upstreams) != 1 {
		t.Fatalf("%d upstreams, want 1", len(cfg.Upstreams))
	}
	u := cfg.Upstreams[0]
	if u.URL != "tcp://127.0.0.1:4242" || u.ClientID != "tributary-bench-upstream-1" || u.KafkaTopic != "bench-x-upstream-1" {
		t.Errorf("upstream %+v", u)
	}
	if u.CleanSession {
		t.Error("clean session: the backlog needs a persistent session")
	}
	if len(u.Subscriptions) != 1 || u.Subscriptions[0].Filter != "bench/#" || u.Subscriptions[0].QoS == nil || *u.Subscriptions[0].QoS != 1 {
		t.Errorf("subscriptions %+v, want bench/# at QoS 1", u.Subscriptions)
	}
}

func TestCountLines(t *testing.T) {
	in := strings.Repeat(string(makePayload(100))+"\n", 5000)
	n, first, err := countLines(strings.NewReader(in))
	if err != nil || n != 5000 || first.IsZero() {
		t.Fatalf("countLines = %d, %v, %v; want 5000 lines and a first-byte time", n, first, err)
	}
	n, first, err = countLines(strings.NewReader(""))
	if err != nil || n != 0 || !first.IsZero() {
		t.Fatalf("empty input: %d, %v, %v", n, first, err)
	}
}

func TestUpstreamRatiosAndSkips(t *testing.T) {
	rs := []result{
		{Scenario: "native-produce", Rate: 100000, OK: true},
		{Scenario: "mosquitto-sub", Rate: 50000, Found: 100, WallSeconds: ptr(0.002), OK: true, drain: true},
		{Scenario: "upstream", Rate: 46000, Found: 100, WallSeconds: ptr(0.004), ReadySeconds: ptr(0.001), OK: true, drain: true},
	}
	fillRatios(rs)
	if rs[1].Baseline != "" || rs[2].Baseline != "mosquitto-sub" {
		t.Errorf("baselines %q and %q, want none and mosquitto-sub", rs[1].Baseline, rs[2].Baseline)
	}
	if rs[2].Ratio == nil || *rs[2].Ratio != 0.92 {
		t.Errorf("upstream ratio %v, want 0.92", deref(rs[2].Ratio))
	}
	var out bytes.Buffer
	printTargets(&out, rs)
	printDrains(&out, rs)
	for _, want := range []string{
		"upstream rate ≥ 0.9× mosquitto-sub rate: 0.920× — met",
		"wall-clock ratio 0.500×",
		"/readyz after 0.00 s",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}

	skipped := []result{{Scenario: "upstream", Skipped: "skipped: no mosquitto", drain: true}}
	out.Reset()
	printTargets(&out, skipped)
	printTable(&out, skipped)
	for _, want := range []string{"not measured (skipped: no mosquitto)", "skipped"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestParseFlagsMosquittoInflight(t *testing.T) {
	o, err := parseFlags([]string{"--scenarios", "upstream"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if o.mosquittoInflight != 1000 || len(o.scenarios) != 1 || o.scenarios[0].kind != upstreamDrain {
		t.Fatalf("options %+v", o)
	}
	if _, err := parseFlags([]string{"--mosquitto-inflight", "-1"}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "--mosquitto-inflight -1") {
		t.Fatalf("negative window: %v", err)
	}
}
