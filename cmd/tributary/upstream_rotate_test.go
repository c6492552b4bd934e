package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tributary-io/tributary/certs"
	"github.com/tributary-io/tributary/config"
)

// upstreamCount returns the value of an upstream's counter, such as
// tributary_upstream_connects_total, or 0 when it is not exported yet.
func upstreamCount(t *testing.T, d *testDaemon, metric, upstream string) int {
	t.Helper()
	f := strings.Fields(grepLines(metricsText(t, d.httpAddr()), fmt.Sprintf("%s{upstream=%q}", metric, upstream)))
	if len(f) != 2 {
		return 0
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

// swapSymlink points link at target atomically (a new link renamed over
// the old one), as a Kubernetes secret volume or a deploy tool replaces a
// file.
func swapSymlink(t *testing.T, target, link string) {
	t.Helper()
	tmp := link + ".new"
	_ = os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, link); err != nil {
		t.Fatal(err)
	}
}

// A password_file rotated while Tributary runs is read at the next
// reconnect: no restart is needed. A file that is gone at a reconnect
// fails that attempt with an error naming the upstream, the key and the
// path, and the upstream keeps retrying until the file is back.
func TestUpstreamRotatedPasswordFile(t *testing.T) {
	dir := t.TempDir()
	brokerPasswords := filepath.Join(dir, "mosquitto.passwd")
	setBrokerPassword := func(pw string) {
		t.Helper()
		if out, err := exec.Command(needTool(t, "mosquitto_passwd"), "-b", "-c", brokerPasswords, "bridge", pw).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_passwd: %v\n%s", err, out)
		}
		_ = os.Chmod(brokerPasswords, 0o644)
	}
	// Tributary's password_file is a symlink to the current version.
	pwFile := filepath.Join(dir, "bridge.password")
	version := func(name, pw string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(pw+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	setBrokerPassword("first")
	swapSymlink(t, version("v1", "first"), pwFile)
	mq := startMosquitto(t, fmt.Sprintf("allow_anonymous false\npassword_file %s\n", brokerPasswords))

	cfg := testConfig(t)
	topic := uniq("upstream-rotate")
	up := testUpstream("rotating", mq.url(), "rot/#")
	up.Username, up.PasswordFile = "bridge", pwFile
	up.KafkaTopic = topic
	cfg.Upstreams = []config.UpstreamConfig{up}
	d := startDaemon(t, cfg)
	waitConnected(t, d, "rotating")
	connects := func() int { return upstreamCount(t, d, "tributary_upstream_connects_total", "rotating") }
	if n := connects(); n != 1 {
		t.Fatalf("%d connects, want 1", n)
	}

	// The password is rotated: the remote broker wants the new one, and
	// the file has it.
	setBrokerPassword("second")
	swapSymlink(t, version("v2", "second"), pwFile)
	mq.restart(syscall.SIGTERM)
	waitFor(t, 20*time.Second, "a reconnect with the rotated password", func() bool {
		return connects() >= 2 && d.upstreams.Connected("rotating")
	})
	want := payloads("rotated", 0, 20)
	mosquittoPub(t, mq.port, "rot/x", want, "-u", "bridge", "-P", "second")
	checkNoneLost(t, countPayloads(t, d.bootstrap, topic, want, 20*time.Second), want)

	// The file is gone at the next reconnect: each attempt fails, says
	// which upstream, key and file, and is retried.
	if err := os.Remove(pwFile); err != nil {
		t.Fatal(err)
	}
	errorsBefore := upstreamCount(t, d, "tributary_upstream_connect_errors_total", "rotating")
	mq.restart(syscall.SIGTERM)
	wantErr := fmt.Sprintf("upstreams[0] (rotating).password_file %q", pwFile)
	waitFor(t, 20*time.Second, "attempts failing on the missing password_file, retried", func() bool {
		return strings.Contains(d.upstreams.LastError("rotating"), wantErr) &&
			upstreamCount(t, d, "tributary_upstream_connect_errors_total", "rotating") >= errorsBefore+2
	})
	t.Logf("with the file gone: %s", d.upstreams.LastError("rotating"))
	if d.upstreams.Connected("rotating") {
		t.Fatal("connected without a password file")
	}

	// Put back, it is used at the next attempt.
	swapSymlink(t, version("v3", "second"), pwFile)
	waitFor(t, 20*time.Second, "a reconnect once the file is back", func() bool {
		return connects() >= 3 && d.upstreams.Connected("rotating")
	})
}

// A client certificate renewed while Tributary runs (here with its CA and
// the remote broker's certificate, by swapping the ..data symlink of a
// directory laid out as Kubernetes mounts a secret, which is how
// cert-manager's renewals arrive) is used at the next reconnect. An
// invalid certificate at a reconnect fails that attempt with an error
// naming the upstream, the key and the path, and is retried.
func TestUpstreamRenewedClientCertificate(t *testing.T) {
	dir := t.TempDir()
	generation := func(name string) string {
		t.Helper()
		g := filepath.Join(dir, name)
		if _, err := certs.WriteDev(g, certs.DevOptions{ClientCN: "tributary-bridge"}); err != nil {
			t.Fatal(err)
		}
		return g
	}
	live := filepath.Join(dir, "live")
	if err := os.Mkdir(live, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ca.crt", "server.crt", "server.key", "client.crt", "client.key"} {
		if err := os.Symlink(filepath.Join("..data", f), filepath.Join(live, f)); err != nil {
			t.Fatal(err)
		}
	}
	data := filepath.Join(live, "..data")
	swapSymlink(t, generation("gen1"), data)

	tlsPort := freePort(t)
	mq := startMosquitto(t, fmt.Sprintf("listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\nrequire_certificate true\nuse_identity_as_username true\n",
		tlsPort, filepath.Join(live, "ca.crt"), filepath.Join(live, "server.crt"), filepath.Join(live, "server.key")))

	cfg := testConfig(t)
	topic := uniq("upstream-renew")
	up := testUpstream("renewed", fmt.Sprintf("ssl://localhost:%d", tlsPort), "renew/#")
	up.TLS.CAFile = filepath.Join(live, "ca.crt")
	up.TLS.CertFile = filepath.Join(live, "client.crt")
	up.TLS.KeyFile = filepath.Join(live, "client.key")
	up.KafkaTopic = topic
	cfg.Upstreams = []config.UpstreamConfig{up}
	d := startDaemon(t, cfg)
	waitConnected(t, d, "renewed")
	connects := func() int { return upstreamCount(t, d, "tributary_upstream_connects_total", "renewed") }

	// A renewal that wrote a broken client certificate: the attempts
	// fail, naming the key and the file, and are retried.
	broken := generation("broken")
	if err := os.WriteFile(filepath.Join(broken, "client.crt"), []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	swapSymlink(t, broken, data)
	errorsBefore := upstreamCount(t, d, "tributary_upstream_connect_errors_total", "renewed")
	mq.restart(syscall.SIGTERM)
	wantErr := fmt.Sprintf("upstreams[0] (renewed).tls.cert_file %q", up.TLS.CertFile)
	waitFor(t, 20*time.Second, "attempts failing on the broken cert_file, retried", func() bool {
		return strings.Contains(d.upstreams.LastError("renewed"), wantErr) &&
			upstreamCount(t, d, "tributary_upstream_connect_errors_total", "renewed") >= errorsBefore+2
	})
	t.Logf("with a broken certificate: %s", d.upstreams.LastError("renewed"))

	// The renewal done right: a new CA, server and client certificate,
	// which the remote broker takes up at its restart.
	swapSymlink(t, generation("gen2"), data)
	mq.restart(syscall.SIGTERM)
	waitFor(t, 20*time.Second, "a reconnect with the renewed certificate", func() bool {
		return connects() >= 2 && d.upstreams.Connected("renewed")
	})
	want := payloads("renewed", 0, 20)
	mosquittoPub(t, mq.port, "renew/x", want) // the plain listener
	checkNoneLost(t, countPayloads(t, d.bootstrap, topic, want, 20*time.Second), want)
}
