package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Names of the files WriteDev writes into its directory.
const (
	CACertFile     = "ca.crt"
	CAKeyFile      = "ca.key"
	ServerCertFile = "server.crt"
	ServerKeyFile  = "server.key"
	ClientCertFile = "client.crt"
	ClientKeyFile  = "client.key"
)

// DevClientCN is the common name of the client certificate WriteDev writes
// when DevOptions.ClientCN is empty.
const DevClientCN = "dev-client"

const (
	devCAYears = 10
	// devLeafValidity is the longest lifetime Apple platforms accept for a
	// TLS server certificate, so the dev server cert works with their clients.
	devLeafValidity = 825 * 24 * time.Hour
	// devBackdate tolerates clocks a little behind the issuing machine's.
	devBackdate = time.Hour
)

// DevOptions controls WriteDev. The zero value writes the default set.
type DevOptions struct {
	// Hosts are names the server certificate is valid for besides
	// localhost, 127.0.0.1 and ::1. IP addresses become IP SANs, anything
	// else a DNS SAN ("*.example.com" is allowed). Default none.
	Hosts []string
	// Force overwrites existing files. Without it WriteDev writes nothing
	// when any of its six files already exists. Default false.
	Force bool
	// Now is the time the certificates are issued at. Default time.Now().
	Now time.Time
	// ClientCN is the client certificate's common name; it is also added as
	// a DNS SAN when it is a valid DNS name. Default "dev-client".
	ClientCN string
}

// WriteDev writes a development CA and a server and a client certificate
// signed by it into dir, creating dir (mode 0700) if missing: ca.crt,
// ca.key, server.crt, server.key, client.crt and client.key. Keys are ECDSA
// P-256 in unencrypted PKCS#8 PEM, mode 0600; certificates are PEM, mode
// 0644. The CA is valid for 10 years, the others for 825 days.
//
// The server certificate is for TLS server authentication and names
// localhost, 127.0.0.1, ::1 and opts.Hosts; the client certificate is for
// TLS client authentication with common name opts.ClientCN.
//
// Unless opts.Force is set, WriteDev refuses to run when any of the six
// files exists (the error wraps fs.ErrExist and names each such file) and
// writes nothing. With Force, each file is replaced atomically by a rename,
// so a Store watching them never reads a half-written file.
//
// WriteDev returns the paths it wrote, in the order above, also when it
// fails part way.
func WriteDev(dir string, opts DevOptions) ([]string, error) {
	if dir == "" {
		return nil, errors.New("writing dev certificates: no directory given")
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	clientCN := opts.ClientCN
	if clientCN == "" {
		clientCN = DevClientCN
	}
	if err := checkClientCN(clientCN); err != nil {
		return nil, err
	}
	dnsNames, ips, err := serverNames(opts.Hosts)
	if err != nil {
		return nil, err
	}

	files, err := issueDev(now, dnsNames, ips, clientCN)
	if err != nil {
		return nil, err
	}

	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating %q: %w", dir, err)
	}
	if !opts.Force {
		var exist []error
		for _, f := range files {
			p := filepath.Join(dir, f.name)
			_, err := os.Lstat(p)
			switch {
			case err == nil:
				exist = append(exist, fmt.Errorf("writing %q: %w; refusing to overwrite", p, fs.ErrExist))
			case !errors.Is(err, fs.ErrNotExist):
				return nil, fmt.Errorf("checking %q: %w", p, err)
			}
		}
		if len(exist) > 0 {
			return nil, errors.Join(exist...)
		}
	}

	written := make([]string, 0, len(files))
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		if err := writeFile(p, f.data, f.mode, opts.Force); err != nil {
			return written, fmt.Errorf("writing %q: %w", p, err)
		}
		written = append(written, p)
	}
	return written, nil
}

type devFile struct {
	name string
	data []byte
	mode fs.FileMode
}

// issueDev creates all keys and certificates in memory, so that nothing is
// written when any of them fails.
func issueDev(now time.Time, dnsNames []string, ips []net.IP, clientCN string) ([]devFile, error) {
	notBefore := now.Add(-devBackdate)

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating CA key: %w", err)
	}
	caTmpl := &x509.Certificate{
		Subject: pkix.Name{
			CommonName:   "Tributary development CA",
			Organization: []string{"Tributary (development only)"},
		},
		NotBefore:             notBefore,
		NotAfter:              now.AddDate(devCAYears, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, caCert, err := sign(caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("creating CA certificate: %w", err)
	}

	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating server key: %w", err)
	}
	srvDER, _, err := sign(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost", Organization: []string{"Tributary (development only)"}},
		NotBefore:   notBefore,
		NotAfter:    now.Add(devLeafValidity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    dnsNames,
		IPAddresses: ips,
	}, caCert, srvKey.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("creating server certificate: %w", err)
	}

	cliKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating client key: %w", err)
	}
	cliTmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: clientCN, Organization: []string{"Tributary (development only)"}},
		NotBefore:   notBefore,
		NotAfter:    now.Add(devLeafValidity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if validDNSName(clientCN) {
		cliTmpl.DNSNames = []string{clientCN}
	}
	cliDER, _, err := sign(cliTmpl, caCert, cliKey.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("creating client certificate: %w", err)
	}

	var files []devFile
	for _, c := range []struct {
		cert, key string
		der       []byte
		priv      *ecdsa.PrivateKey
	}{
		{CACertFile, CAKeyFile, caDER, caKey},
		{ServerCertFile, ServerKeyFile, srvDER, srvKey},
		{ClientCertFile, ClientKeyFile, cliDER, cliKey},
	} {
		keyDER, err := x509.MarshalPKCS8PrivateKey(c.priv)
		if err != nil {
			return nil, fmt.Errorf("encoding %s: %w", c.key, err)
		}
		files = append(files,
			devFile{c.cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.der}), 0o644},
			devFile{c.key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600},
		)
	}
	return files, nil
}

// sign issues tmpl, signed by parent's key, with a fresh random serial.
func sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, parentKey crypto.Signer) ([]byte, *x509.Certificate, error) {
	// RFC 5280 allows 20 octets; 128 random bits keep the serial positive
	// and unique without a counter.
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = serial.Add(serial, big.NewInt(1))
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, parentKey)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return der, cert, nil
}

// serverNames splits the server certificate's names into DNS and IP SANs,
// defaults first, without duplicates.
func serverNames(hosts []string) ([]string, []net.IP, error) {
	dnsNames := []string{"localhost"}
	ips := []net.IP{net.IPv4(127, 0, 0, 1).To4(), net.IPv6loopback}
	seen := map[string]bool{"localhost": true, "127.0.0.1": true, "::1": true}
	var errs []error
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		if ip := net.ParseIP(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")); ip != nil {
			if v4 := ip.To4(); v4 != nil {
				ip = v4
			}
			if !seen[ip.String()] {
				seen[ip.String()] = true
				ips = append(ips, ip)
			}
			continue
		}
		if !validDNSName(h) {
			errs = append(errs, fmt.Errorf("hosts: %q is neither an IP address nor a DNS name", h))
			continue
		}
		name := strings.ToLower(h)
		if !seen[name] {
			seen[name] = true
			dnsNames = append(dnsNames, name)
		}
	}
	if len(errs) > 0 {
		return nil, nil, errors.Join(errs...)
	}
	return dnsNames, ips, nil
}

func checkClientCN(cn string) error {
	for _, r := range cn {
		if r < 0x20 || r > 0x7e {
			return fmt.Errorf("client CN %q: only printable ASCII is allowed", cn)
		}
	}
	return nil
}

// validDNSName accepts ASCII host names with an optional leading "*." label.
// Internationalised names must be given in their xn-- form.
func validDNSName(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for i, label := range strings.Split(s, ".") {
		if label == "*" && i == 0 && s != "*" {
			continue
		}
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for j := 0; j < len(label); j++ {
			c := label[j]
			ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
			if !ok {
				return false
			}
		}
	}
	return true
}

// writeFile writes data to path with exactly mode. Without force the file
// must not exist (O_EXCL closes the gap after WriteDev's check); with force
// it is written to a temporary file and renamed over path, which also
// replaces a looser mode an old file may have had.
func writeFile(path string, data []byte, mode fs.FileMode, force bool) (err error) {
	var f *os.File
	if force {
		f, err = os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	} else {
		f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	}
	if err != nil {
		return err
	}
	name := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(name)
		}
	}()
	// Chmod rather than rely on the umask: keys must not be readable by
	// others and certificates must be readable by the services using them.
	if err = f.Chmod(mode); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if force {
		return os.Rename(name, path)
	}
	return nil
}
