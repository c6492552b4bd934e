package config

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestUpstreamsFromYAML(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := writeFile(t, `
upstreams:
  - name: hsl
    url: ssl://mqtt.hsl.fi:8883
    username: bridge
    password_file: `+pw+`
    subscriptions:
      - {filter: "/hfp/v2/journey/ongoing/vp/#", qos: 0}
      - {filter: "/hfp/v2/journey/ongoing/ars/#"}
    kafka_topic: vehicle-positions
    shared_group: ingest
`)
	cfg, _, err := Load(Options{Args: []string{"--config", file}})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Upstreams) != 1 {
		t.Fatalf("upstreams %+v", cfg.Upstreams)
	}
	u := cfg.Upstreams[0].WithDefaults()
	host, _ := os.Hostname()
	if u.ClientID != "tributary-hsl-"+host || u.IngestRetained != "first" || u.CleanSession ||
		u.KeepAlive != 30*time.Second || u.ReconnectMin != 500*time.Millisecond || u.ReconnectMax != time.Minute {
		t.Fatalf("defaults not applied: %+v", u)
	}
	if *u.Subscriptions[0].QoS != 0 || *u.Subscriptions[1].QoS != 1 {
		t.Fatalf("qos: %d %d, want 0 and the default 1", *u.Subscriptions[0].QoS, *u.Subscriptions[1].QoS)
	}
	if s, err := u.Secret(); err != nil || s != "s3cret" {
		t.Fatalf("Secret() = %q, %v", s, err)
	}
	tc, err := u.TLSConfig()
	if err != nil || tc == nil || tc.ServerName != "mqtt.hsl.fi" {
		t.Fatalf("TLSConfig() = %+v, %v", tc, err)
	}
	if cfg.Redacted().Upstreams[0].Password != "" {
		t.Fatal("no password was set, none should be shown")
	}
	cfg.Upstreams[0].Password = "x"
	if r := cfg.Redacted(); r.Upstreams[0].Password != "[redacted]" || cfg.Upstreams[0].Password != "x" {
		t.Fatal("Redacted must hide the password in a copy")
	}
}

// A key the file should not have, or a value of the wrong type, is named
// by its path and line, the way validation names keys, not by the Go
// type it was decoded into; the rest of the file is still validated, so
// every problem is reported at once.
func TestUpstreamUnknownKey(t *testing.T) {
	file := writeFile(t, `upstreams:
  - name: plant
    url: http://h:1883
    kafka-topic: plant-data
    keepalive: 30
    subscriptions:
      - {filter: "plant/#", qos: one, bogus: 1}
  - name: edge
    url: tcp://h:1884
    subscriptions: "edge/#"
kafka:
  flush_timout: 3s
  properties: {linger.ms: "5"}
`)
	_, _, err := Load(Options{Args: []string{"--config", file}})
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v, want *Error", err)
	}
	want := []string{
		"config file " + file + " line 4: upstreams[0] (plant).kafka-topic: unknown key (did you mean kafka_topic?)",
		"config file " + file + " line 5: upstreams[0] (plant).keepalive 30: not a duration (a number with a unit: 500ms, 30s, 1m)",
		"config file " + file + " line 7: upstreams[0] (plant).subscriptions[0].qos one: not a whole number",
		"config file " + file + " line 7: upstreams[0] (plant).subscriptions[0].bogus: unknown key",
		"config file " + file + " line 10: upstreams[1] (edge).subscriptions edge/#: not a list",
		"config file " + file + " line 12: kafka.flush_timout: unknown key (did you mean flush_timeout?)",
		`upstreams[0] (plant).url "http://h:1883": scheme must be tcp://, ssl://, ws:// or wss://`,
	}
	if !slices.Equal(ce.Problems, want) {
		t.Fatalf("problems:\n  %s\nwant:\n  %s", strings.Join(ce.Problems, "\n  "), strings.Join(want, "\n  "))
	}
}

func TestUpstreamValidation(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.txt")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	emptyFile := filepath.Join(dir, "empty")
	if err := os.WriteFile(emptyFile, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	one := func(f string) []SubscriptionConfig { return []SubscriptionConfig{{Filter: f}} }
	n := func(v int) *int { return &v }
	for _, tt := range []struct {
		name string
		up   UpstreamConfig
		want []string // each must be one problem's text
	}{
		{"ok", UpstreamConfig{Name: "a", URL: "tcp://h:1883", Subscriptions: one("x/#")}, nil},
		{"ok ws", UpstreamConfig{Name: "a", URL: "wss://h/mqtt", Subscriptions: one("+/y")}, nil},
		{"missing everything", UpstreamConfig{}, []string{
			"upstreams[0].name: required", "upstreams[0].url \"\": required", "upstreams[0].subscriptions: at least one is required"}},
		{"bad name", UpstreamConfig{Name: "a b", URL: "tcp://h:1", Subscriptions: one("x")}, []string{`upstreams[0] (a b).name "a b": use only`}},
		{"bad scheme", UpstreamConfig{Name: "a", URL: "http://h:1", Subscriptions: one("x")}, []string{`upstreams[0] (a).url "http://h:1": scheme must be`}},
		{"no port", UpstreamConfig{Name: "a", URL: "tcp://h", Subscriptions: one("x")}, []string{`upstreams[0] (a).url "tcp://h": needs host:port`}},
		{"port out of range", UpstreamConfig{Name: "a", URL: "tcp://h:99999", Subscriptions: one("x")}, []string{`upstreams[0] (a).url "tcp://h:99999": port "99999" is not a port number`}},
		{"wss port out of range", UpstreamConfig{Name: "a", URL: "wss://h:0/mqtt", Subscriptions: one("x")}, []string{`upstreams[0] (a).url "wss://h:0/mqtt": port "0" is not a port number`}},
		{"credentials in url", UpstreamConfig{Name: "a", URL: "tcp://u:p@h:1", Subscriptions: one("x")}, []string{"put credentials in username"}},
		{"missing filter", UpstreamConfig{Name: "a", URL: "tcp://h:1", Subscriptions: one("")}, []string{`upstreams[0] (a).subscriptions[0].filter "": required`}},
		{"bad wildcard", UpstreamConfig{Name: "a", URL: "tcp://h:1", Subscriptions: one("a/#/b")}, []string{`subscriptions[0].filter "a/#/b": '#' must be`}},
		{"bad plus", UpstreamConfig{Name: "a", URL: "tcp://h:1", Subscriptions: one("a+/b")}, []string{`'+' must be a whole level`}},
		{"bad qos", UpstreamConfig{Name: "a", URL: "tcp://h:1", Subscriptions: []SubscriptionConfig{{Filter: "x", QoS: n(3)}}}, []string{`upstreams[0] (a).subscriptions[0].qos 3: must be 0, 1 or 2`}},
		{"unreadable tls file", UpstreamConfig{Name: "a", URL: "ssl://h:8883", Subscriptions: one("x"), TLS: UpstreamTLS{CAFile: filepath.Join(dir, "missing.pem")}},
			[]string{`upstreams[0] (a).tls.ca_file "` + filepath.Join(dir, "missing.pem") + `": open`}},
		{"not a CA file", UpstreamConfig{Name: "a", URL: "ssl://h:8883", Subscriptions: one("x"), TLS: UpstreamTLS{CAFile: notPEM}}, []string{"tls.ca_file", "no PEM certificate"}},
		{"cert without key", UpstreamConfig{Name: "a", URL: "ssl://h:8883", Subscriptions: one("x"), TLS: UpstreamTLS{CertFile: notPEM}}, []string{"tls: cert_file and key_file go together"}},
		{"tls on tcp", UpstreamConfig{Name: "a", URL: "tcp://h:1", Subscriptions: one("x"), TLS: UpstreamTLS{InsecureSkipVerify: true}}, []string{"tls: set, but url"}},
		{"password twice", UpstreamConfig{Name: "a", URL: "tcp://h:1", Subscriptions: one("x"), Username: "u", Password: "p", PasswordFile: notPEM}, []string{"set password or password_file, not both"}},
		{"password without user", UpstreamConfig{Name: "a", URL: "tcp://h:1", Subscriptions: one("x"), Password: "p"}, []string{"upstreams[0] (a).username: required"}},
		{"unreadable password file", UpstreamConfig{Name: "a", URL: "tcp://h:1", Subscriptions: one("x"), Username: "u", PasswordFile: filepath.Join(dir, "nope")}, []string{"password_file", "no such file"}},
		{"empty password file", UpstreamConfig{Name: "a", URL: "tcp://h:1", Subscriptions: one("x"), Username: "u", PasswordFile: emptyFile},
			[]string{`upstreams[0] (a).password_file "` + emptyFile + `": empty`}},
		{"share in filter and group", UpstreamConfig{Name: "a", URL: "tcp://h:1", Subscriptions: one("$share/g/x"), SharedGroup: "g"}, []string{"shared_group is set; give the plain filter"}},
		{"bad group", UpstreamConfig{Name: "a", URL: "tcp://h:1", Subscriptions: one("x"), SharedGroup: "a/b"}, []string{`shared_group "a/b"`}},
		{"bad kafka topic", UpstreamConfig{Name: "a", URL: "tcp://h:1", Subscriptions: one("x"), KafkaTopic: "a b"}, []string{`upstreams[0] (a).kafka_topic "a b": not a valid Kafka topic name`}},
		{"bad retained policy", UpstreamConfig{Name: "a", URL: "tcp://h:1", Subscriptions: one("x"), IngestRetained: "once"}, []string{`ingest_retained "once": must be first, always or never`}},
		{"backoff", UpstreamConfig{Name: "a", URL: "tcp://h:1", Subscriptions: one("x"), ReconnectMin: time.Second, ReconnectMax: time.Millisecond, KeepAlive: -1}, []string{"reconnect_max 1ms: must be at least reconnect_min", "keepalive -1ns: must not be negative"}},
		{"keepalive over MQTT's limit", UpstreamConfig{Name: "a", URL: "tcp://h:1", Subscriptions: one("x"), KeepAlive: 24 * time.Hour},
			[]string{"upstreams[0] (a).keepalive 24h0m0s: must be at most 18h12m15s (65535 seconds, the most MQTT can carry)"}},
		{"reconnect_min over the default reconnect_max", UpstreamConfig{Name: "a", URL: "tcp://h:1", Subscriptions: one("x"), ReconnectMin: 2 * time.Minute},
			[]string{"upstreams[0] (a).reconnect_min 2m0s: must be at most reconnect_max (1m0s, the default)"}},
		{"reconnect_max under the default reconnect_min", UpstreamConfig{Name: "a", URL: "tcp://h:1", Subscriptions: one("x"), ReconnectMax: 100 * time.Millisecond},
			[]string{"upstreams[0] (a).reconnect_max 100ms: must be at least reconnect_min (500ms, the default)"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Default()
			cfg.Upstreams = []UpstreamConfig{tt.up}
			err := cfg.Validate()
			if tt.want == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("want *Error, got %v", err)
			}
			all := strings.Join(ce.Problems, "\n")
			for _, w := range tt.want {
				if !strings.Contains(all, w) {
					t.Errorf("no problem mentions %q; problems:\n%s", w, all)
				}
			}
		})
	}
}

func TestUpstreamDuplicateNames(t *testing.T) {
	cfg := Default()
	u := UpstreamConfig{Name: "a", URL: "tcp://h:1", Subscriptions: []SubscriptionConfig{{Filter: "x"}}}
	cfg.Upstreams = []UpstreamConfig{u, u}
	err := cfg.Validate()
	if err == nil || !strings.Contains(err.Error(), `upstreams[1] (a).name "a": already used by upstreams[0]`) {
		t.Fatalf("got %v", err)
	}
}

// Two upstreams with one client id on one broker would take each other's
// session over for ever; on different brokers they may share it.
func TestUpstreamDuplicateClientIDOnOneBroker(t *testing.T) {
	cfg := Default()
	sub := []SubscriptionConfig{{Filter: "x"}}
	cfg.Upstreams = []UpstreamConfig{
		{Name: "a", URL: "tcp://Broker:1883", ClientID: "same", Subscriptions: sub},
		{Name: "b", URL: "tcp://broker:1883", ClientID: "same", Subscriptions: sub},
		{Name: "c", URL: "tcp://other:1883", ClientID: "same", Subscriptions: sub},
	}
	err := cfg.Validate()
	var ce *Error
	if !errors.As(err, &ce) || len(ce.Problems) != 1 || !strings.Contains(ce.Problems[0], `upstreams[1] (b).client_id "same": also used by upstreams[0] (a) on the same broker`) {
		t.Fatalf("got %v", err)
	}
}

// A client_id set to the client id another upstream gets by default
// (tributary-<name>-<hostname>) on the same broker is the same loop of
// session takeovers, whichever of the two comes first; the problem names
// both upstreams.
func TestUpstreamClientIDEqualToAnotherDefault(t *testing.T) {
	host, _ := os.Hostname()
	if host == "" {
		host = "node"
	}
	sub := []SubscriptionConfig{{Filter: "x"}}
	for _, tc := range []struct {
		name string
		ups  []UpstreamConfig
		want string // the one problem; empty: none
	}{
		{"explicit after the default", []UpstreamConfig{
			{Name: "a", URL: "tcp://broker:1883", Subscriptions: sub},
			{Name: "b", URL: "tcp://broker:1883", ClientID: "tributary-a-" + host, Subscriptions: sub},
		}, `upstreams[1] (b).client_id "tributary-a-` + host + `": the default client id of upstreams[0] (a) (tributary-<name>-<hostname>) on the same broker; each connection would take the other's session over`},
		{"default after the explicit", []UpstreamConfig{
			{Name: "a", URL: "tcp://broker:1883", ClientID: "tributary-b-" + host, Subscriptions: sub},
			{Name: "b", URL: "tcp://broker:1883", Subscriptions: sub},
		}, `upstreams[1] (b).client_id: not set, so it defaults to "tributary-b-` + host + `" (tributary-<name>-<hostname>), which upstreams[0] (a) sets as its client_id on the same broker; each connection would take the other's session over`},
		{"on another broker", []UpstreamConfig{
			{Name: "a", URL: "tcp://broker:1883", Subscriptions: sub},
			{Name: "b", URL: "tcp://other:1883", ClientID: "tributary-a-" + host, Subscriptions: sub},
		}, ""},
		{"two defaults", []UpstreamConfig{
			{Name: "a", URL: "tcp://broker:1883", Subscriptions: sub},
			{Name: "b", URL: "tcp://broker:1883", Subscriptions: sub},
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Default()
			cfg.Upstreams = tc.ups
			err := cfg.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			var ce *Error
			if !errors.As(err, &ce) || len(ce.Problems) != 1 || ce.Problems[0] != tc.want {
				t.Fatalf("got %v\nwant the one problem %s", err, tc.want)
			}
		})
	}
}

// An upstream URL with credentials in it is refused without repeating the
// password, whether or not the URL parses.
func TestUpstreamURLPasswordNotEchoed(t *testing.T) {
	for _, raw := range []string{"tcp://u:s3cretpw@host:1883", "tcp://u:s3cretpw@host:18%zz"} {
		y := "upstreams:\n  - name: x\n    url: \"" + raw + "\"\n    subscriptions:\n      - {filter: \"a/#\"}\n"
		_, _, err := Load(Options{Args: []string{"--config", writeFile(t, y)}})
		if err == nil {
			t.Fatalf("%s accepted", raw)
		}
		if strings.Contains(err.Error(), "s3cretpw") || !strings.Contains(err.Error(), "upstreams[0]") {
			t.Errorf("%s: error %q repeats the password or does not name the upstream", raw, err)
		}
	}
}

// A rule limited to an upstream that is not configured (a typo, say)
// could never match.
func TestRuleSourceMustNameAnUpstream(t *testing.T) {
	file := writeFile(t, "upstreams:\n  - name: hsl\n    url: tcp://127.0.0.1:1883\n    subscriptions:\n      - {filter: \"t/#\", qos: 1}\n"+
		"mapping:\n  rules:\n    - {match: 't/.*', source: hls, kafka_topic: a}\n    - {match: 't/.*', source: hsl, kafka_topic: b}\n")
	_, _, err := Load(Options{Args: []string{"--config", file}})
	var ce *Error
	if !errors.As(err, &ce) || len(ce.Problems) != 1 || !strings.Contains(ce.Problems[0], `mapping.rules[0].source "hls"`) {
		t.Fatalf("err = %v, want one problem naming mapping.rules[0].source", err)
	}
}

// An upstream with kafka_topic sends every message there without the
// rules, so a rule limited to it could never match.
func TestRuleSourceNamingAnUpstreamWithKafkaTopic(t *testing.T) {
	file := writeFile(t, "upstreams:\n  - name: plant\n    url: tcp://127.0.0.1:1883\n    kafka_topic: plant-data\n    subscriptions:\n      - {filter: \"t/#\", qos: 1}\n"+
		"mapping:\n  rules:\n    - {match: 't/.*', kafka_topic: a}\n    - {match: 't/.*', source: plant, kafka_topic: b}\n")
	_, _, err := Load(Options{Args: []string{"--config", file}})
	var ce *Error
	if !errors.As(err, &ce) || len(ce.Problems) != 1 ||
		!strings.Contains(ce.Problems[0], `mapping.rules[1].source "plant": upstreams[0] (plant) sets kafka_topic "plant-data"`) {
		t.Fatalf("err = %v, want one problem naming mapping.rules[1].source", err)
	}
}

// The password and TLS files are read at every call, which the bridge
// makes at every connection attempt: a rotated file is used, and one
// emptied or broken meanwhile is an error naming the key and the path.
func TestUpstreamFilesReadAtEveryCall(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	write := func(path, s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(pw, "one\n")
	u := UpstreamConfig{Name: "a", URL: "tcp://h:1", Username: "u", PasswordFile: pw}
	if s, err := u.Secret(); err != nil || s != "one" {
		t.Fatalf("Secret() = %q, %v", s, err)
	}
	write(pw, "two\n")
	if s, err := u.Secret(); err != nil || s != "two" {
		t.Fatalf("Secret() after rotation = %q, %v; want the new password", s, err)
	}
	write(pw, "\n")
	if s, err := u.Secret(); err == nil || !strings.Contains(err.Error(), `password_file "`+pw+`": empty`) {
		t.Fatalf("Secret() of an emptied file = %q, %v; want an error naming password_file and the path", s, err)
	}

	ca := filepath.Join(dir, "ca.pem")
	write(ca, "not PEM")
	u = UpstreamConfig{Name: "a", URL: "ssl://h:8883", TLS: UpstreamTLS{CAFile: ca}}
	if _, err := u.TLSConfig(); err == nil || !strings.Contains(err.Error(), `tls.ca_file "`+ca+`": no PEM certificate`) {
		t.Fatalf("TLSConfig() = %v; want an error naming tls.ca_file and the path", err)
	}
	u.TLS = UpstreamTLS{CertFile: ca, KeyFile: filepath.Join(dir, "missing.key")}
	if _, err := u.TLSConfig(); err == nil || !strings.Contains(err.Error(), `tls.cert_file "`+ca+`" / tls.key_file "`+filepath.Join(dir, "missing.key")+`"`) {
		t.Fatalf("TLSConfig() = %v; want an error naming tls.cert_file, tls.key_file and the paths", err)
	}
}
