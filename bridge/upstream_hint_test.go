package bridge

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/tributary-io/tributary/certs"
)

// serveConns accepts connections on l until cleanup and hands each to
// serve, closing it after; with deadline > 0, a connection that lasts
// longer fails its reads and writes. It returns l's address.
func serveConns(t *testing.T, l net.Listener, deadline time.Duration, serve func(net.Conn)) string {
	t.Helper()
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer nc.Close()
				if deadline > 0 {
					_ = nc.SetDeadline(time.Now().Add(deadline))
				}
				serve(nc)
			})
		}
	})
	return l.Addr().String()
}

func loopback(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// A URL whose scheme does not match what the port speaks fails with a
// hint at the right scheme: tcp:// at a TLS port (the TLS server closes
// the connection, with a reset as mosquitto's OpenSSL does, or an EOF as
// Go does), ssl:// at a plain MQTT port (no TLS answer, or the
// connection closed during the handshake, as mosquitto does), and the
// same for ws:// and wss://. Failures with other causes get no such hint.
func TestUpstreamSchemeMismatchHint(t *testing.T) {
	dir := t.TempDir()
	if _, err := certs.WriteDev(dir, certs.DevOptions{}); err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"))
	if err != nil {
		t.Fatal(err)
	}
	serverTLS := &tls.Config{Certificates: []tls.Certificate{cert}}
	trustAll := &tls.Config{InsecureSkipVerify: true}

	tlsPort := serveConns(t, tls.NewListener(loopback(t), serverTLS), 5*time.Second, func(nc net.Conn) {
		_ = nc.(*tls.Conn).Handshake() // fails on a plain CONNECT; Go closes without an alert
	})
	resetting := serveConns(t, loopback(t), 5*time.Second, func(nc net.Conn) {
		// What mosquitto does with a first packet it cannot read: a
		// TLS ClientHello at its plain port, or a CONNECT at its TLS
		// port (there OpenSSL resets the connection).
		_, _ = nc.Read(make([]byte, 1))
		_ = nc.(*net.TCPConn).SetLinger(0)
	})
	answersPlain := serveConns(t, loopback(t), 5*time.Second, func(nc net.Conn) {
		// An MQTT 5 CONNACK 0x81 (malformed packet), as a broker may
		// answer a first packet it cannot read, then wait for the client
		// to give up (closing with the ClientHello unread would reset).
		_, _ = nc.Read(make([]byte, 4096))
		_, _ = nc.Write([]byte{packets.Connack << 4, 3, 0, 0x81, 0})
		_, _ = io.Copy(io.Discard, nc)
	})
	refusing := serveConns(t, loopback(t), 5*time.Second, func(nc net.Conn) {
		if _, err := packets.ReadPacket(nc); err == nil {
			ca := packets.NewControlPacket(packets.Connack).(*packets.ConnackPacket)
			ca.ReturnCode = packets.ErrRefusedNotAuthorised
			_ = ca.Write(nc)
		}
		_, _ = io.Copy(io.Discard, nc)
	})
	closedPort := func() string {
		l := loopback(t)
		defer l.Close()
		return l.Addr().String()
	}()
	plainHTTP := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(plainHTTP.Close)
	httpPort := strings.TrimPrefix(plainHTTP.URL, "http://")

	for _, tc := range []struct {
		name   string
		url    string
		tls    *tls.Config
		want   string // in the error; empty: no scheme hint
		unwant string
	}{
		{"tcp at a Go TLS port", "tcp://" + tlsPort, nil, "the url must be ssl://" + tlsPort, ""},
		{"tcp at a port that resets", "tcp://" + resetting, nil, "if " + resetting + " expects TLS, as port 8883 usually does, the url must be ssl://" + resetting + ", or wss://", ""},
		{"ssl at a port that answers in plain", "ssl://" + answersPlain, trustAll, "the url must then be tcp://" + answersPlain, ""},
		{"ssl at a port that resets during the handshake", "ssl://" + resetting, trustAll, "the url must be tcp://" + resetting, ""},
		{"wss at a plain HTTP port", "wss://" + httpPort + "/mqtt", trustAll, "the url must then be ws://" + httpPort + "/mqtt", ""},
		{"ws at a TLS port", "ws://" + tlsPort + "/mqtt", nil, "the url must be wss://" + tlsPort + "/mqtt", ""},
		{"tcp refused by CONNACK", "tcp://" + refusing, nil, "", "ssl://"},
		{"tcp at a closed port", "tcp://" + closedPort, nil, "", "ssl://"},
		{"ssl with an untrusted certificate", "ssl://" + tlsPort, &tls.Config{RootCAs: x509.NewCertPool(), ServerName: "localhost"}, "", "tcp://"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, u := upstreamForTest(t, UpstreamConfig{URL: tc.url, ClientID: "trib-hint", Credentials: fixedCredentials("", tc.tls), ConnectTimeout: 5 * time.Second}, &fakeProducer{}, nil)
			_, err := u.connect()
			if err == nil {
				t.Fatal("connected")
			}
			t.Logf("%v", err)
			if tc.want != "" && !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			if tc.unwant != "" && strings.Contains(err.Error(), tc.unwant) {
				t.Errorf("error %q hints at %s, though the scheme is not the problem", err, tc.unwant)
			}
		})
	}
}
