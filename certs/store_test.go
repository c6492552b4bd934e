package certs

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tributary-io/tributary/internal/testutil"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want []string // substrings of the error; none means valid
	}{
		{"minimal", Config{CertFile: "c", KeyFile: "k"}, nil},
		{"explicit none", Config{CertFile: "c", KeyFile: "k", ClientAuth: "none"}, nil},
		{"CA defaults to require", Config{CertFile: "c", KeyFile: "k", ClientCAFile: "ca"}, nil},
		{"request", Config{CertFile: "c", KeyFile: "k", ClientCAFile: "ca", ClientAuth: "request"}, nil},
		{"require", Config{CertFile: "c", KeyFile: "k", ClientCAFile: "ca", ClientAuth: "require"}, nil},
		{"all problems at once", Config{ClientAuth: "verify"}, []string{"cert_file: required", "key_file: required", `client_auth: "verify" is not one of`}},
		{"require without CA", Config{CertFile: "c", KeyFile: "k", ClientAuth: "require"}, []string{`client_auth: "require" needs client_ca_file`}},
		{"request without CA", Config{CertFile: "c", KeyFile: "k", ClientAuth: "request"}, []string{`client_auth: "request" needs client_ca_file`}},
		{"none with CA", Config{CertFile: "c", KeyFile: "k", ClientCAFile: "ca", ClientAuth: "none"}, []string{`client_auth: "none", but client_ca_file is set`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate: no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if _, err := New(tt.cfg, nil); err == nil {
				t.Error("New accepted an invalid config")
			}
		})
	}
}

// breakings are ways a deployment can get its TLS files wrong. Each
// returns the file it broke.
var breakings = []struct {
	name       string
	clientAuth string
	breakIt    func(t *testing.T, dir string, cfg Config) string
	wantKey    string
	wantReason string
}{
	{"missing cert", "", func(t *testing.T, dir string, cfg Config) string {
		if err := os.Remove(cfg.CertFile); err != nil {
			t.Fatal(err)
		}
		return cfg.CertFile
	}, "cert_file", "no such file"},
	{"garbage cert", "", func(t *testing.T, dir string, cfg Config) string {
		replaceFile(t, cfg.CertFile, []byte("not a certificate\n"))
		return cfg.CertFile
	}, "cert_file", "no PEM certificate"},
	{"corrupt cert block", "", func(t *testing.T, dir string, cfg Config) string {
		replaceFile(t, cfg.CertFile, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
		return cfg.CertFile
	}, "cert_file", "certificate 1:"},
	{"garbage key", "", func(t *testing.T, dir string, cfg Config) string {
		replaceFile(t, cfg.KeyFile, []byte("garbage"))
		return cfg.KeyFile
	}, "key_file", "no PEM private key"},
	{"encrypted key", "", func(t *testing.T, dir string, cfg Config) string {
		replaceFile(t, cfg.KeyFile, []byte("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"))
		return cfg.KeyFile
	}, "key_file", "encrypted"},
	{"key of another certificate", "", func(t *testing.T, dir string, cfg Config) string {
		replaceFile(t, cfg.KeyFile, readFile(t, filepath.Join(dir, ClientKeyFile)))
		return cfg.KeyFile
	}, "key_file", "does not match the certificate"},
	{"garbage client CA", ClientAuthRequire, func(t *testing.T, dir string, cfg Config) string {
		replaceFile(t, cfg.ClientCAFile, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
		return cfg.ClientCAFile
	}, "client_ca_file", "no PEM certificate"},
}

func TestNewBrokenFiles(t *testing.T) {
	for _, tt := range breakings {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeDev(t, DevOptions{})
			cfg := devConfig(dir, tt.clientAuth)
			path := tt.breakIt(t, dir, cfg)
			_, err := New(cfg, nil)
			checkFileError(t, err, tt.wantKey, path, tt.wantReason)
		})
	}
}

func checkFileError(t *testing.T, err error, key, path, reason string) {
	t.Helper()
	var fe *FileError
	if !errors.As(err, &fe) {
		t.Fatalf("err = %v, want a *FileError", err)
	}
	if fe.Key != key || fe.Path != path || !strings.Contains(fe.Err.Error(), reason) {
		t.Errorf("FileError{%q, %q, %q}, want key %q, path %q, reason containing %q", fe.Key, fe.Path, fe.Err, key, path, reason)
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name %s", err, path)
	}
}

func TestNewCombinedFileAndExpiry(t *testing.T) {
	// Three years ago: the CA is valid, the 825-day server certificate not.
	dir := writeDev(t, DevOptions{Now: time.Now().AddDate(-3, 0, 0)})
	combined := filepath.Join(dir, "combined.pem")
	data := append(readFile(t, filepath.Join(dir, ServerKeyFile)), readFile(t, filepath.Join(dir, ServerCertFile))...)
	if err := os.WriteFile(combined, data, 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &testutil.SyncBuffer{}
	s := newStore(t, Config{CertFile: combined, KeyFile: combined}, slog.New(slog.NewTextHandler(logs, nil)))
	if got := s.Subject(); got != "CN=localhost,O=Tributary (development only)" {
		t.Errorf("Subject = %q", got)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "expired") {
		t.Errorf("no expiry warning in log:\n%s", logs)
	}
}

func TestHandshakeVersions(t *testing.T) {
	dir := writeDev(t, DevOptions{})
	s := newStore(t, devConfig(dir, ""), nil)
	srv := startServer(t, s.TLSConfig())
	tests := []struct {
		name    string
		version uint16
		wantOK  bool
	}{
		{"TLS 1.0", tls.VersionTLS10, false},
		{"TLS 1.1", tls.VersionTLS11, false},
		{"TLS 1.2", tls.VersionTLS12, true},
		{"TLS 1.3", tls.VersionTLS13, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := clientConfig(t, dir, false)
			cfg.MinVersion, cfg.MaxVersion = tt.version, tt.version
			cs, cerr, sr := srv.handshake(t, cfg)
			if (cerr == nil) != tt.wantOK || (sr.err == nil) != tt.wantOK {
				t.Fatalf("client err %v, server err %v; want ok=%v", cerr, sr.err, tt.wantOK)
			}
			if tt.wantOK && cs.Version != tt.version {
				t.Errorf("negotiated %s", tls.VersionName(cs.Version))
			}
			// The server, not the client, must be the one refusing.
			if !tt.wantOK && !strings.Contains(sr.err.Error(), "unsupported versions") {
				t.Errorf("server err %v, want a refusal of the offered version", sr.err)
			}
		})
	}
}

func TestTLSConfigKeepsCallerSettings(t *testing.T) {
	dir := writeDev(t, DevOptions{})
	s := newStore(t, devConfig(dir, ""), nil)
	cfg := s.TLSConfig()
	cfg.NextProtos = []string{"mqtt"}
	cfg.MinVersion = tls.VersionTLS13
	srv := startServer(t, cfg)

	c := clientConfig(t, dir, false)
	c.NextProtos = []string{"x-other", "mqtt"}
	cs, err, sr := srv.handshake(t, c)
	if err != nil || sr.err != nil {
		t.Fatalf("client err %v, server err %v", err, sr.err)
	}
	if cs.NegotiatedProtocol != "mqtt" {
		t.Errorf("NegotiatedProtocol = %q, want mqtt", cs.NegotiatedProtocol)
	}

	c = clientConfig(t, dir, false)
	c.MaxVersion = tls.VersionTLS12
	if _, err, sr := srv.handshake(t, c); err == nil || sr.err == nil {
		t.Errorf("TLS 1.2 accepted by a server raised to 1.3")
	}

	// A lowered MinVersion is raised back to 1.2.
	cfg = s.TLSConfig()
	cfg.MinVersion = tls.VersionTLS10
	srv = startServer(t, cfg)
	c = clientConfig(t, dir, false)
	c.MinVersion, c.MaxVersion = tls.VersionTLS11, tls.VersionTLS11
	if _, err, sr := srv.handshake(t, c); err == nil || sr.err == nil || !strings.Contains(sr.err.Error(), "unsupported versions") {
		t.Errorf("TLS 1.1 after MinVersion was lowered: client err %v, server err %v; want the server to refuse", err, sr.err)
	}
}

func TestClientAuth(t *testing.T) {
	dir := writeDev(t, DevOptions{})
	stranger := writeDev(t, DevOptions{ClientCN: "stranger"}) // another CA

	type client int
	const (
		noCert client = iota
		goodCert
		strangerCert
	)
	tests := []struct {
		mode     string
		client   client
		wantOK   bool
		wantUser string // "" means PeerUsername reports false
	}{
		{"none", noCert, true, ""},
		{"none", goodCert, true, ""}, // not asked for, so not sent
		{"request", noCert, true, ""},
		{"request", goodCert, true, DevClientCN},
		{"request", strangerCert, false, ""},
		{"require", noCert, false, ""},
		{"require", goodCert, true, DevClientCN},
		{"require", strangerCert, false, ""},
	}
	for _, tt := range tests {
		name := tt.mode + "/" + [...]string{"no cert", "good cert", "stranger's cert"}[tt.client]
		t.Run(name, func(t *testing.T) {
			s := newStore(t, devConfig(dir, tt.mode), nil)
			srv := startServer(t, s.TLSConfig())
			for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
				cfg := clientConfig(t, dir, tt.client == goodCert)
				if tt.client == strangerCert {
					cfg.Certificates = clientConfig(t, stranger, true).Certificates
				}
				cfg.MaxVersion = version
				_, cerr, sr := srv.handshake(t, cfg)
				if (cerr == nil) != tt.wantOK || (sr.err == nil) != tt.wantOK {
					t.Fatalf("%s: client err %v, server err %v; want ok=%v", tls.VersionName(version), cerr, sr.err, tt.wantOK)
				}
				if !tt.wantOK {
					continue
				}
				user, ok := PeerUsername(sr.state, "")
				if got := map[bool]string{true: user}[ok]; got != tt.wantUser {
					t.Errorf("%s: PeerUsername = %q, %v; want %q", tls.VersionName(version), user, ok, tt.wantUser)
				}
			}
		})
	}
}

// serial returns the serial of the certificate a new handshake sees.
func serial(t *testing.T, srv *server, cfg *tls.Config) string {
	t.Helper()
	cs, err, sr := srv.handshake(t, cfg)
	if err != nil || sr.err != nil {
		t.Fatalf("client err %v, server err %v", err, sr.err)
	}
	return cs.PeerCertificates[0].SerialNumber.String()
}

func TestReload(t *testing.T) {
	dir := writeDev(t, DevOptions{})
	logs := &testutil.SyncBuffer{}
	s := newStore(t, devConfig(dir, ""), slog.New(slog.NewTextHandler(logs, nil)))
	srv := startServer(t, s.TLSConfig())
	oldSerial := serial(t, srv, clientConfig(t, dir, false))

	later := time.Now().Add(time.Hour)
	if _, err := WriteDev(dir, DevOptions{Force: true, Now: later}); err != nil {
		t.Fatal(err)
	}
	// Until Reload, the old certificate is served (the client trusting
	// only the new CA would fail, so skip verification to look).
	if got := serial(t, srv, &tls.Config{InsecureSkipVerify: true}); got != oldSerial {
		t.Errorf("serial changed to %s before Reload", got)
	}
	if err := s.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	want := readCert(t, filepath.Join(dir, ServerCertFile)).SerialNumber.String()
	if got := serial(t, srv, clientConfig(t, dir, false)); got != want || got == oldSerial {
		t.Errorf("serial after Reload = %s, want %s (old %s)", got, want, oldSerial)
	}
	if got, want := s.NotAfter(), later.Add(825*24*time.Hour).Truncate(time.Second); !got.Equal(want) {
		t.Errorf("NotAfter = %v, want %v", got, want)
	}
	if ok, failed := s.Reloads(); ok != 1 || failed != 0 {
		t.Errorf("Reloads = %d, %d; want 1, 0", ok, failed)
	}
	if !strings.Contains(logs.String(), "reloaded TLS certificate") {
		t.Errorf("no reload in log:\n%s", logs)
	}
}

func TestReloadBrokenKeepsOld(t *testing.T) {
	for _, tt := range breakings {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeDev(t, DevOptions{})
			cfg := devConfig(dir, tt.clientAuth)
			logs := &testutil.SyncBuffer{}
			s := newStore(t, cfg, slog.New(slog.NewTextHandler(logs, nil)))
			srv := startServer(t, s.TLSConfig())
			client := clientConfig(t, dir, tt.clientAuth != "")
			before := serial(t, srv, client)
			subject, notAfter := s.Subject(), s.NotAfter()

			path := tt.breakIt(t, dir, cfg)
			err := s.Reload()
			checkFileError(t, err, tt.wantKey, path, tt.wantReason)

			if got := serial(t, srv, client); got != before {
				t.Errorf("serial %s after a failed Reload, want the old %s", got, before)
			}
			if s.Subject() != subject || !s.NotAfter().Equal(notAfter) {
				t.Errorf("Subject/NotAfter changed by a failed Reload")
			}
			if ok, failed := s.Reloads(); ok != 0 || failed != 1 {
				t.Errorf("Reloads = %d, %d; want 0, 1", ok, failed)
			}
			out := logs.String()
			if !strings.Contains(out, "level=WARN") || !strings.Contains(out, path) || !strings.Contains(out, tt.wantReason) {
				t.Errorf("log lacks a WARN naming %s and %q:\n%s", path, tt.wantReason, out)
			}
		})
	}
}

func TestReloadClientCA(t *testing.T) {
	dir := writeDev(t, DevOptions{})
	other := writeDev(t, DevOptions{})
	s := newStore(t, devConfig(dir, ClientAuthRequire), nil)
	srv := startServer(t, s.TLSConfig())

	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(version), func(t *testing.T) {
			if err := s.Reload(); err != nil { // back to dir's CA
				t.Fatal(err)
			}
			client := clientConfig(t, dir, true)
			client.MaxVersion = version
			client.ClientSessionCache = tls.NewLRUClientSessionCache(4)
			if _, err, sr := srv.handshake(t, client); err != nil || sr.err != nil {
				t.Fatalf("first: client err %v, server err %v", err, sr.err)
			}
			cs, err, sr := srv.handshake(t, client)
			if err != nil || sr.err != nil || !cs.DidResume {
				t.Fatalf("second: client err %v, server err %v, resumed %v; want a resumed session", err, sr.err, cs.DidResume)
			}
			if user, ok := PeerUsername(sr.state, ""); !ok || user != DevClientCN {
				t.Errorf("PeerUsername on resumption = %q, %v", user, ok)
			}

			// Trust only another CA: neither a resumed session nor a full
			// handshake with the old client certificate may get in.
			caFile := devConfig(dir, ClientAuthRequire).ClientCAFile
			original := readFile(t, caFile)
			replaceFile(t, caFile, readFile(t, filepath.Join(other, CACertFile)))
			t.Cleanup(func() { replaceFile(t, caFile, original) })
			if err := s.Reload(); err != nil {
				t.Fatal(err)
			}
			if cs, err, sr := srv.handshake(t, client); err == nil || sr.err == nil {
				t.Errorf("old client certificate accepted after the CA changed (resumed %v)", cs.DidResume)
			}
		})
	}
}

func TestWatch(t *testing.T) {
	dir := writeDev(t, DevOptions{})
	s := newStore(t, devConfig(dir, ""), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Watch(ctx, 10*time.Millisecond)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	// A broken change is tried once, not on every poll, and a later good
	// change is picked up.
	certFile := filepath.Join(dir, ServerCertFile)
	original := readFile(t, certFile)
	replaceFile(t, certFile, []byte("garbage"))
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if _, failed := s.Reloads(); failed != 1 {
			return errors.New("broken certificate not noticed")
		}
		return nil
	})
	replaceFile(t, certFile, original)
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if ok, _ := s.Reloads(); ok != 1 {
			return errors.New("repaired certificate not reloaded")
		}
		return nil
	})
	if _, failed := s.Reloads(); failed != 1 {
		t.Errorf("%d failed reloads, want 1: the same broken content was retried", failed)
	}

	// A renewal is picked up.
	later := time.Now().Add(2 * time.Hour)
	if _, err := WriteDev(dir, DevOptions{Force: true, Now: later}); err != nil {
		t.Fatal(err)
	}
	want := later.Add(825 * 24 * time.Hour).Truncate(time.Second)
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if got := s.NotAfter(); !got.Equal(want) {
			return errors.New("renewed certificate not loaded: NotAfter " + got.String())
		}
		return nil
	})

	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not return after its context was cancelled")
	}
}
