package certs

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Values of Config.ClientAuth.
const (
	// ClientAuthNone does not ask clients for a certificate.
	ClientAuthNone = "none"
	// ClientAuthRequest asks for a client certificate and verifies it
	// against ClientCAFile when one is presented; clients without one are
	// let through (tls.VerifyClientCertIfGiven).
	ClientAuthRequest = "request"
	// ClientAuthRequire refuses the handshake unless the client presents a
	// certificate that verifies against ClientCAFile
	// (tls.RequireAndVerifyClientCert).
	ClientAuthRequire = "require"
)

// DefaultWatchInterval is how often Watch polls when given no interval.
const DefaultWatchInterval = 10 * time.Second

// Config names a server's TLS files.
type Config struct {
	// CertFile is the PEM server certificate, optionally followed by its
	// intermediates. Required.
	CertFile string `yaml:"cert_file"`
	// KeyFile is the unencrypted PEM private key of CertFile (PKCS#8,
	// PKCS#1 or SEC 1). It may be the same file as CertFile. Required.
	KeyFile string `yaml:"key_file"`
	// ClientCAFile is a PEM bundle of the CAs client certificates must
	// chain to. Default empty: clients are not asked for certificates.
	ClientCAFile string `yaml:"client_ca_file"`
	// ClientAuth is "none", "request" (verify a client certificate if one
	// is presented) or "require". "request" and "require" need
	// ClientCAFile. Default "none", or "require" when ClientCAFile is set.
	ClientAuth string `yaml:"client_auth"`
}

// Validate reports every problem with c at once, each naming its key. It
// does not read the files; New does.
func (c Config) Validate() error {
	var errs []error
	if c.CertFile == "" {
		errs = append(errs, errors.New("cert_file: required"))
	}
	if c.KeyFile == "" {
		errs = append(errs, errors.New("key_file: required"))
	}
	switch c.ClientAuth {
	case "":
	case ClientAuthNone:
		if c.ClientCAFile != "" {
			errs = append(errs, fmt.Errorf("client_auth: %q, but client_ca_file is set; use %q or %q, or remove client_ca_file",
				c.ClientAuth, ClientAuthRequest, ClientAuthRequire))
		}
	case ClientAuthRequest, ClientAuthRequire:
		if c.ClientCAFile == "" {
			errs = append(errs, fmt.Errorf("client_auth: %q needs client_ca_file", c.ClientAuth))
		}
	default:
		errs = append(errs, fmt.Errorf("client_auth: %q is not one of %q, %q, %q",
			c.ClientAuth, ClientAuthNone, ClientAuthRequest, ClientAuthRequire))
	}
	return errors.Join(errs...)
}

// clientAuth is the crypto/tls mode for a valid c.
func (c Config) clientAuth() tls.ClientAuthType {
	switch c.ClientAuth {
	case ClientAuthRequest:
		return tls.VerifyClientCertIfGiven
	case ClientAuthRequire:
		return tls.RequireAndVerifyClientCert
	case "":
		if c.ClientCAFile != "" {
			return tls.RequireAndVerifyClientCert
		}
	}
	return tls.NoClientCert
}

// FileError is a TLS file that could not be used. Errors from New and
// Reload wrap one; errors.As finds it.
type FileError struct {
	// Key is the configuration key of the file: "cert_file", "key_file"
	// or "client_ca_file".
	Key string
	// Path is the file's path as configured.
	Path string
	// Err says what is wrong with it.
	Err error
}

var _ error = (*FileError)(nil)

// Error reads like `key_file "/etc/tributary/tls.key": no PEM private key found`.
func (e *FileError) Error() string { return fmt.Sprintf("%s %q: %v", e.Key, e.Path, e.Err) }

// Unwrap returns e.Err.
func (e *FileError) Unwrap() error { return e.Err }

// Store holds a server's certificate and the CAs its clients' certificates
// are verified against, and swaps them for newly read ones on Reload
// without disturbing listeners or connections already established. It is
// safe for concurrent use.
type Store struct {
	cfg  Config
	auth tls.ClientAuthType
	log  *slog.Logger

	cur atomic.Pointer[material]

	mu   sync.Mutex // serialises loads; guards seen
	seen [sha256.Size]byte

	ok, failed atomic.Uint64
}

// material is one consistent set of TLS files, never modified once built.
type material struct {
	certs     []tls.Certificate // exactly one
	leaf      *x509.Certificate
	clientCAs *x509.CertPool // nil unless ClientCAFile is set
}

// New validates cfg and loads its files. Errors name the key, the file and
// what is wrong with it. A nil log discards.
func New(cfg Config, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Store{cfg: cfg, auth: cfg.clientAuth(), log: log}
	m, sum, err := s.load()
	if err != nil {
		return nil, fmt.Errorf("loading TLS material: %w", err)
	}
	s.seen = sum
	s.cur.Store(m)
	s.log.Info("loaded TLS certificate", s.attrs(m)...)
	s.warnValidity(m)
	return s, nil
}

// TLSConfig returns a new server configuration for one listener. Every
// handshake uses the material current at its start, so a Reload applies to
// new connections without rebuilding the listener.
//
// Set NextProtos, CipherSuites and the like on the returned config itself,
// before its first handshake: each handshake copies it and fills in the
// certificate, ClientAuth and ClientCAs (any values the caller gives these
// are overridden), and raises MinVersion to at least TLS 1.2. Changes made
// to a Clone of it are not seen, because crypto/tls runs the handshake with
// the config that GetConfigForClient returns, not the clone. (net/http's
// ServeTLS clones the config to add "h2"; such a server negotiates no ALPN,
// so clients speak HTTP/1.1, which the WebSocket upgrade needs anyway.)
func (s *Store) TLSConfig() *tls.Config {
	base := &tls.Config{MinVersion: tls.VersionTLS12}
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return s.handshakeConfig(base), nil
	}
	return base
}

func (s *Store) handshakeConfig(base *tls.Config) *tls.Config {
	m := s.cur.Load()
	// Session ticket keys stay base's: crypto/tls uses the original
	// config's keys unless the returned one sets its own, so resumption
	// works across handshakes and reloads. A resumed session's client
	// chain is verified again against the ClientCAs set here.
	c := base.Clone()
	c.GetConfigForClient = nil
	c.GetCertificate = nil
	c.Certificates = m.certs
	c.ClientAuth = s.auth
	c.ClientCAs = m.clientCAs
	if c.MinVersion < tls.VersionTLS12 {
		c.MinVersion = tls.VersionTLS12
	}
	return c
}

// Reload reads all files again. When they are all good, new handshakes use
// them from then on. When any is missing or broken, the store keeps what it
// had, logs a warning naming the file and the reason, and returns the error
// (wrapping a *FileError); the caller need not log it again. The daemon
// calls Reload on SIGHUP.
func (s *Store) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, sum, err := s.load()
	// Remember what was tried, good or bad, so Watch does not retry (and
	// warn about) the same broken content on every poll.
	s.seen = sum
	if err != nil {
		s.failed.Add(1)
		old := s.cur.Load()
		attrs := []any{"err", err}
		if fe := (*FileError)(nil); errors.As(err, &fe) {
			attrs = []any{"key", fe.Key, "file", fe.Path, "reason", fe.Err.Error()}
		}
		attrs = append(attrs, "kept_subject", old.leaf.Subject.String(), "kept_not_after", old.leaf.NotAfter)
		s.log.Warn("reloading TLS material failed; keeping the previous certificate", attrs...)
		return fmt.Errorf("reloading TLS material: %w", err)
	}
	old := s.cur.Swap(m)
	s.ok.Add(1)
	s.log.Info("reloaded TLS certificate",
		append(s.attrs(m), "changed", !old.leaf.Equal(m.leaf))...)
	s.warnValidity(m)
	return nil
}

// Watch polls the files every interval (DefaultWatchInterval if not
// positive) until ctx is done, and reloads once a change has settled: when
// two polls in a row read the same content, different from what was last
// loaded. Waiting a poll avoids loading a certificate whose key has not been
// replaced yet, since renewals write the two files one after the other.
//
// Content, not modification time, is compared: the files are small, mtimes
// can be too coarse to see a quick rewrite, and Kubernetes swaps secret
// files by symlink. A broken change is warned about once (see Reload) and
// tried again only when the files change again. Watch starts no goroutines;
// run it in one the caller owns.
func (s *Store) Watch(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultWatchInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	var prev [sha256.Size]byte
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		_, sum := readFiles(s.files())
		s.mu.Lock()
		changed := sum != s.seen
		s.mu.Unlock()
		if changed && sum == prev {
			s.log.Info("TLS files changed; reloading", "cert_file", s.cfg.CertFile)
			_ = s.Reload() // Reload logs its failure
		}
		prev = sum
	}
}

// Subject is the current server certificate's subject, for logs.
func (s *Store) Subject() string { return s.cur.Load().leaf.Subject.String() }

// NotAfter is when the current server certificate expires, for logs and an
// expiry metric.
func (s *Store) NotAfter() time.Time { return s.cur.Load().leaf.NotAfter }

// Reloads counts the Reload calls, including those made by Watch, that
// succeeded and failed since New. New's own load is not counted.
func (s *Store) Reloads() (ok, failed uint64) { return s.ok.Load(), s.failed.Load() }

func (s *Store) attrs(m *material) []any {
	return []any{
		"subject", m.leaf.Subject.String(),
		"serial", m.leaf.SerialNumber.Text(16),
		"not_after", m.leaf.NotAfter,
		"cert_file", s.cfg.CertFile,
		"client_auth", s.auth.String(),
	}
}

// warnValidity warns about a certificate that is loaded but that clients
// will refuse; refusing to load it would only replace one outage with
// another.
func (s *Store) warnValidity(m *material) {
	now := time.Now()
	switch {
	case now.After(m.leaf.NotAfter):
		s.log.Warn("TLS certificate has expired", "subject", m.leaf.Subject.String(), "not_after", m.leaf.NotAfter, "cert_file", s.cfg.CertFile)
	case now.Before(m.leaf.NotBefore):
		s.log.Warn("TLS certificate is not valid yet", "subject", m.leaf.Subject.String(), "not_before", m.leaf.NotBefore, "cert_file", s.cfg.CertFile)
	}
}

type fileSpec struct{ key, path string }

func (s *Store) files() []fileSpec {
	fs := []fileSpec{{"cert_file", s.cfg.CertFile}, {"key_file", s.cfg.KeyFile}}
	if s.cfg.ClientCAFile != "" {
		fs = append(fs, fileSpec{"client_ca_file", s.cfg.ClientCAFile})
	}
	return fs
}

type fileData struct {
	data []byte
	err  error
}

// readFiles reads every file once and fingerprints what it read, so that
// the fingerprint a load records describes exactly the bytes it parsed.
func readFiles(files []fileSpec) ([]fileData, [sha256.Size]byte) {
	h := sha256.New()
	out := make([]fileData, len(files))
	for i, f := range files {
		out[i].data, out[i].err = os.ReadFile(f.path)
		fmt.Fprintf(h, "%s\x00", f.path)
		if out[i].err != nil {
			fmt.Fprintf(h, "error\x00%v\x00", out[i].err)
			continue
		}
		fmt.Fprintf(h, "%d\x00", len(out[i].data))
		h.Write(out[i].data)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return out, sum
}

// load reads and checks all files. Errors are *FileError.
func (s *Store) load() (*material, [sha256.Size]byte, error) {
	files := s.files()
	data, sum := readFiles(files)
	for i, f := range files {
		if data[i].err != nil {
			return nil, sum, &FileError{f.key, f.path, unwrapPath(data[i].err)}
		}
	}
	certPEM, keyPEM := data[0].data, data[1].data
	fail := func(i int, format string, args ...any) (*material, [sha256.Size]byte, error) {
		return nil, sum, &FileError{files[i].key, files[i].path, fmt.Errorf(format, args...)}
	}

	chain, err := parseCerts(certPEM)
	if err != nil {
		return fail(0, "%w", err)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return fail(1, "%w", err)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(chain[0].PublicKey) {
		return fail(1, "private key does not match the certificate in cert_file %q", s.cfg.CertFile)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil { // not expected after the checks above
		return fail(1, "%w", err)
	}
	pair.Leaf = chain[0]

	m := &material{certs: []tls.Certificate{pair}, leaf: chain[0]}
	if len(files) > 2 {
		cas, err := parseCerts(data[2].data)
		if err != nil {
			return fail(2, "%w", err)
		}
		m.clientCAs = x509.NewCertPool()
		for _, c := range cas {
			m.clientCAs.AddCert(c)
		}
	}
	return m, sum, nil
}

// unwrapPath drops the path an *os.PathError repeats, since FileError
// names the file already.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// parseCerts parses every CERTIFICATE block, skipping other blocks (a
// combined cert-and-key file) and text between them.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for n := 1; ; {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", n, err)
		}
		certs = append(certs, c)
		n++
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return certs, nil
}

// parseKey returns the first private key block's key.
func parseKey(data []byte) (crypto.Signer, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no PEM private key found")
		}
		if b.Type == "ENCRYPTED PRIVATE KEY" || b.Headers["Proc-Type"] != "" {
			return nil, errors.New("the private key is encrypted; give an unencrypted one")
		}
		if b.Type != "PRIVATE KEY" && !strings.HasSuffix(b.Type, " PRIVATE KEY") {
			continue
		}
		var key any
		var err error
		switch b.Type {
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(b.Bytes)
		default:
			key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		}
		if err != nil {
			return nil, fmt.Errorf("parsing %s: %w", b.Type, err)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("unsupported private key type %T", key)
		}
		return signer, nil
	}
}
