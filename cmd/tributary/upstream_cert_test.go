package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tributary-io/tributary/certs"
	"github.com/tributary-io/tributary/config"
)

// An upstream that requires client certificates: Tributary presents the
// configured one and pulls the feed; without it the remote refuses the
// handshake and /readyz names the upstream.
func TestUpstreamClientCertificate(t *testing.T) {
	dir := t.TempDir()
	if _, err := certs.WriteDev(dir, certs.DevOptions{ClientCN: "tributary-bridge"}); err != nil {
		t.Fatal(err)
	}
	ca, crt, key := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	tlsPort := freePort(t)
	mq := startMosquitto(t, fmt.Sprintf("listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\nrequire_certificate true\nuse_identity_as_username true\n",
		tlsPort, ca, crt, key))

	cfg := testConfig(t)
	topic := uniq("upstream-cert")
	good := testUpstream("with-cert", fmt.Sprintf("ssl://localhost:%d", tlsPort), "cert/#")
	good.TLS.CAFile = ca
	good.TLS.CertFile = filepath.Join(dir, "client.crt")
	good.TLS.KeyFile = filepath.Join(dir, "client.key")
	good.KafkaTopic = topic
	bad := testUpstream("without-cert", fmt.Sprintf("ssl://localhost:%d", tlsPort), "cert/#")
	bad.TLS.CAFile = ca
	bad.ReconnectMin, bad.ReconnectMax = 100*time.Millisecond, 400*time.Millisecond
	cfg.Upstreams = []config.UpstreamConfig{good, bad}
	d := startDaemon(t, cfg)
	waitConnected(t, d, "with-cert")

	want := payloads("cert", 0, 50)
	mosquittoPub(t, mq.port, "cert/x", want) // the plain listener
	checkNoneLost(t, countPayloads(t, d.bootstrap, topic, want, 20*time.Second), want)

	waitFor(t, 10*time.Second, "the upstream without a certificate to report an error", func() bool {
		return d.upstreams.LastError("without-cert") != ""
	})
	if d.upstreams.Connected("without-cert") {
		t.Fatal("an upstream without a client certificate connected to a broker that requires one")
	}
	r := httpGet(t, "http://"+d.httpAddr()+"/readyz")
	if r.code == 200 || !strings.Contains(r.body, "without-cert") {
		t.Fatalf("/readyz: %d %s; want not ready, naming the upstream", r.code, r.body)
	}
	t.Logf("without a certificate: %s", d.upstreams.LastError("without-cert"))
}
