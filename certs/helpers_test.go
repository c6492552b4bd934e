package certs

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// ioTimeout bounds every network operation in these tests.
const ioTimeout = 10 * time.Second

// writeDev writes a dev set into a fresh directory and returns it.
func writeDev(t *testing.T, opts DevOptions) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tls")
	if _, err := WriteDev(dir, opts); err != nil {
		t.Fatalf("WriteDev: %v", err)
	}
	return dir
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		t.Fatalf("%s: no PEM certificate", path)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return c
}

func certPool(t *testing.T, path string) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	p.AddCert(readCert(t, path))
	return p
}

// replaceFile swaps path's content atomically, as deployment tools do, so a
// poller never sees it half written.
func replaceFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkFor polls f until it returns nil or timeout passes.
func checkFor(t *testing.T, timeout, every time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", timeout, err)
		}
		time.Sleep(every)
	}
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func newStore(t *testing.T, cfg Config, log *slog.Logger) *Store {
	t.Helper()
	if log == nil {
		log = discard()
	}
	s, err := New(cfg, log)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

// devConfig is a Store config serving dir's server certificate.
func devConfig(dir, clientAuth string) Config {
	cfg := Config{
		CertFile:   filepath.Join(dir, ServerCertFile),
		KeyFile:    filepath.Join(dir, ServerKeyFile),
		ClientAuth: clientAuth,
	}
	if clientAuth != "" && clientAuth != ClientAuthNone {
		cfg.ClientCAFile = filepath.Join(dir, CACertFile)
	}
	return cfg
}

// result is the server's side of one handshake.
type result struct {
	state tls.ConnectionState
	err   error
}

// server accepts TLS connections on a loopback port with cfg, completes
// each handshake, writes one byte and closes. Each handshake's result is
// sent on the returned channel.
type server struct {
	addr    string
	results chan result
}

func startServer(t *testing.T, cfg *tls.Config) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &server{addr: ln.Addr().String(), results: make(chan result, 64)}
	tln := tls.NewListener(ln, cfg)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := tln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				tc := c.(*tls.Conn)
				_ = tc.SetDeadline(time.Now().Add(ioTimeout))
				err := tc.Handshake()
				if err == nil {
					_, err = tc.Write([]byte("k"))
				}
				srv.results <- result{tc.ConnectionState(), err}
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	return srv
}

// handshake connects with cfg and returns the client's view and the
// server's. The client reads the server's byte, because in TLS 1.3 a
// server refuses a client certificate only after the client has finished
// its side of the handshake.
func (srv *server) handshake(t *testing.T, cfg *tls.Config) (cs tls.ConnectionState, clientErr error, sr result) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: ioTimeout}, "tcp", srv.addr, cfg)
	if err == nil {
		_ = c.SetDeadline(time.Now().Add(ioTimeout))
		b := make([]byte, 1)
		if _, err = io.ReadFull(c, b); err == nil && b[0] != 'k' {
			t.Fatalf("server sent %q", b)
		}
		cs = c.ConnectionState()
		_ = c.Close()
	}
	select {
	case sr = <-srv.results:
	case <-time.After(ioTimeout):
		t.Fatal("no server-side handshake result")
	}
	return cs, err, sr
}

// clientConfig trusts dir's CA for "localhost" and, with withCert,
// presents dir's client certificate.
func clientConfig(t *testing.T, dir string, withCert bool) *tls.Config {
	t.Helper()
	cfg := &tls.Config{RootCAs: certPool(t, filepath.Join(dir, CACertFile)), ServerName: "localhost"}
	if withCert {
		pair, err := tls.LoadX509KeyPair(filepath.Join(dir, ClientCertFile), filepath.Join(dir, ClientKeyFile))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg
}
