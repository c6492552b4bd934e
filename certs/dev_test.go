package certs

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var devNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func TestWriteDev(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "tls")
	paths, err := WriteDev(dir, DevOptions{
		Hosts: []string{"bridge.example", "10.1.2.3", "[2001:db8::1]", "localhost", "BRIDGE.example", "*.dev.example"},
		Now:   devNow,
	})
	if err != nil {
		t.Fatalf("WriteDev: %v", err)
	}

	var want []string
	for _, n := range []string{CACertFile, CAKeyFile, ServerCertFile, ServerKeyFile, ClientCertFile, ClientKeyFile} {
		want = append(want, filepath.Join(dir, n))
	}
	if !slices.Equal(paths, want) {
		t.Fatalf("paths = %q, want %q", paths, want)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("dir: %v, %v; want mode 0700", fi.Mode(), err)
	}
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		wantMode := fs.FileMode(0o644)
		if strings.HasSuffix(p, ".key") {
			wantMode = 0o600
		}
		if fi.Mode().Perm() != wantMode {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode().Perm(), wantMode)
		}
	}

	ca := readCert(t, filepath.Join(dir, CACertFile))
	srv := readCert(t, filepath.Join(dir, ServerCertFile))
	cli := readCert(t, filepath.Join(dir, ClientCertFile))
	if !ca.IsCA || !ca.BasicConstraintsValid {
		t.Error("ca.crt is not a CA certificate")
	}
	if got, want := ca.NotAfter, devNow.AddDate(10, 0, 0); !got.Equal(want) {
		t.Errorf("CA NotAfter = %v, want %v", got, want)
	}
	for _, c := range []*x509.Certificate{srv, cli} {
		if got, want := c.NotAfter, devNow.Add(825*24*time.Hour); !got.Equal(want) {
			t.Errorf("%s: NotAfter = %v, want %v", c.Subject, got, want)
		}
		if c.IsCA {
			t.Errorf("%s: is a CA", c.Subject)
		}
	}
	for _, c := range []*x509.Certificate{ca, srv, cli} {
		k, ok := c.PublicKey.(*ecdsa.PublicKey)
		if !ok || k.Curve != elliptic.P256() {
			t.Errorf("%s: key %T, want ECDSA P-256", c.Subject, c.PublicKey)
		}
	}
	if got := srv.DNSNames; !slices.Equal(got, []string{"localhost", "bridge.example", "*.dev.example"}) {
		t.Errorf("server DNS SANs = %q", got)
	}
	if got := len(srv.IPAddresses); got != 4 {
		t.Errorf("server IP SANs = %v, want 4", srv.IPAddresses)
	}
	if cli.Subject.CommonName != DevClientCN || !slices.Equal(cli.DNSNames, []string{DevClientCN}) {
		t.Errorf("client CN %q, DNS SANs %q; want %q for both", cli.Subject.CommonName, cli.DNSNames, DevClientCN)
	}
	for _, pair := range [][2]string{{CACertFile, CAKeyFile}, {ServerCertFile, ServerKeyFile}, {ClientCertFile, ClientKeyFile}} {
		if _, err := tls.LoadX509KeyPair(filepath.Join(dir, pair[0]), filepath.Join(dir, pair[1])); err != nil {
			t.Errorf("%s with %s: %v", pair[0], pair[1], err)
		}
	}

	roots := x509.NewCertPool()
	roots.AddCert(ca)
	server, client := x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth
	tests := []struct {
		name   string
		cert   *x509.Certificate
		host   string
		usage  x509.ExtKeyUsage
		at     time.Time
		wantOK bool
	}{
		{"server for localhost", srv, "localhost", server, devNow, true},
		{"server for 127.0.0.1", srv, "127.0.0.1", server, devNow, true},
		{"server for ::1", srv, "::1", server, devNow, true},
		{"server for extra name", srv, "bridge.example", server, devNow, true},
		{"server for extra wildcard", srv, "mqtt.dev.example", server, devNow, true},
		{"server for extra IPv4", srv, "10.1.2.3", server, devNow, true},
		{"server for extra IPv6", srv, "2001:db8::1", server, devNow, true},
		{"server for other name", srv, "example.org", server, devNow, false},
		{"server for other IP", srv, "10.1.2.4", server, devNow, false},
		{"server as client", srv, "", client, devNow, false},
		{"server after 825 days", srv, "localhost", server, devNow.Add(826 * 24 * time.Hour), false},
		{"client for client auth", cli, "", client, devNow, true},
		{"client as server", cli, "", server, devNow, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.cert.Verify(x509.VerifyOptions{
				DNSName:     tt.host,
				Roots:       roots,
				CurrentTime: tt.at,
				KeyUsages:   []x509.ExtKeyUsage{tt.usage},
			})
			if (err == nil) != tt.wantOK {
				t.Errorf("Verify: %v, want ok=%v", err, tt.wantOK)
			}
		})
	}
}

func TestWriteDevClientCN(t *testing.T) {
	tests := []struct {
		cn      string
		wantDNS []string
	}{
		{"alice", []string{"alice"}},
		{"sensor-17.plant.example", []string{"sensor-17.plant.example"}},
		{"Alice Smith", nil},
	}
	for _, tt := range tests {
		t.Run(tt.cn, func(t *testing.T) {
			dir := writeDev(t, DevOptions{ClientCN: tt.cn})
			c := readCert(t, filepath.Join(dir, ClientCertFile))
			if c.Subject.CommonName != tt.cn || !slices.Equal(c.DNSNames, tt.wantDNS) {
				t.Errorf("CN %q, DNS SANs %q; want %q, %q", c.Subject.CommonName, c.DNSNames, tt.cn, tt.wantDNS)
			}
		})
	}
}

func TestWriteDevOverwrite(t *testing.T) {
	names := []string{CACertFile, CAKeyFile, ServerCertFile, ServerKeyFile, ClientCertFile, ClientKeyFile}
	snapshot := func(t *testing.T, dir string) map[string][]byte {
		t.Helper()
		m := map[string][]byte{}
		for _, n := range names {
			if b, err := os.ReadFile(filepath.Join(dir, n)); err == nil {
				m[n] = b
			}
		}
		return m
	}

	t.Run("all exist", func(t *testing.T) {
		dir := writeDev(t, DevOptions{})
		before := snapshot(t, dir)
		paths, err := WriteDev(dir, DevOptions{})
		if !errors.Is(err, fs.ErrExist) {
			t.Fatalf("err = %v, want fs.ErrExist", err)
		}
		if len(paths) != 0 {
			t.Errorf("wrote %q", paths)
		}
		for _, n := range names {
			if !strings.Contains(err.Error(), filepath.Join(dir, n)) {
				t.Errorf("error %q does not name %s", err, n)
			}
			if !bytes.Equal(before[n], snapshot(t, dir)[n]) {
				t.Errorf("%s changed", n)
			}
		}
	})

	t.Run("one exists", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "tls")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		keep := filepath.Join(dir, ClientKeyFile)
		if err := os.WriteFile(keep, []byte("mine"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := WriteDev(dir, DevOptions{})
		if !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), keep) {
			t.Fatalf("err = %v, want fs.ErrExist naming %s", err, keep)
		}
		if got := snapshot(t, dir); len(got) != 1 || string(got[ClientKeyFile]) != "mine" {
			t.Errorf("directory holds %d files after refusal, want only the untouched %s", len(got), ClientKeyFile)
		}
	})

	t.Run("force", func(t *testing.T) {
		dir := writeDev(t, DevOptions{})
		before := snapshot(t, dir)
		// A key left readable by others must come back 0600.
		if err := os.Chmod(filepath.Join(dir, ServerKeyFile), 0o644); err != nil {
			t.Fatal(err)
		}
		paths, err := WriteDev(dir, DevOptions{Force: true})
		if err != nil {
			t.Fatalf("WriteDev with Force: %v", err)
		}
		if len(paths) != len(names) {
			t.Errorf("wrote %d files, want %d", len(paths), len(names))
		}
		after := snapshot(t, dir)
		for _, n := range names {
			if bytes.Equal(before[n], after[n]) {
				t.Errorf("%s not rewritten", n)
			}
		}
		if fi, err := os.Stat(filepath.Join(dir, ServerKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("server.key mode after Force: %v, %v; want 0600", fi.Mode().Perm(), err)
		}
		entries, err := os.ReadDir(dir)
		if err != nil || len(entries) != len(names) {
			t.Errorf("directory has %d entries (%v), want %d: no temporary files left", len(entries), err, len(names))
		}
	})
}

func TestWriteDevBadOptions(t *testing.T) {
	tests := []struct {
		name    string
		dir     bool
		opts    DevOptions
		wantErr []string
	}{
		{"no dir", false, DevOptions{}, []string{"no directory"}},
		{"host with port", true, DevOptions{Hosts: []string{"bridge.example:8883"}}, []string{`"bridge.example:8883"`}},
		{"host with space", true, DevOptions{Hosts: []string{"my host"}}, []string{`"my host"`}},
		{"empty host", true, DevOptions{Hosts: []string{""}}, []string{`""`}},
		{"IP with zone", true, DevOptions{Hosts: []string{"fe80::1%eth0"}}, []string{`"fe80::1%eth0"`}},
		{"non-ASCII host", true, DevOptions{Hosts: []string{"bücher.example"}}, []string{`"bücher.example"`}},
		{"every bad host named", true, DevOptions{Hosts: []string{"a b", "ok.example", "c:1"}}, []string{`"a b"`, `"c:1"`}},
		{"non-ASCII client CN", true, DevOptions{ClientCN: "jürgen"}, []string{`"jürgen"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := ""
			if tt.dir {
				dir = filepath.Join(t.TempDir(), "tls")
			}
			paths, err := WriteDev(dir, tt.opts)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err = %v, want one containing %s", err, w)
				}
			}
			if len(paths) != 0 {
				t.Errorf("wrote %q", paths)
			}
			if dir != "" {
				if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("directory created despite the error")
				}
			}
		})
	}
}

func TestValidDNSName(t *testing.T) {
	for name, want := range map[string]bool{
		"localhost": true, "a.b.example": true, "*.example": true, "x_y.example": true, "xn--bcher-kva.example": true,
		"": false, "*": false, "a.*.example": false, "-a.example": false, "a..example": false, "a.example.": false,
		strings.Repeat("a", 64) + ".example": false, "10.0.0.1:1": false,
	} {
		if got := validDNSName(name); got != want {
			t.Errorf("validDNSName(%q) = %v, want %v", name, got, want)
		}
	}
}
