package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"

	"github.com/tributary-io/tributary/config"
	"github.com/tributary-io/tributary/internal/testutil"
)

// secured is a daemon with TLS listeners, a users file and a log that the
// test can search.
type secured struct {
	*testDaemon
	dir   string // the dev certificates
	log   *testutil.SyncBuffer
	users string
}

// devCerts runs `tributary certs dev --out DIR` and checks its six files.
func devCerts(t *testing.T, extra ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "certs")
	var stdout, stderr bytes.Buffer
	if code := realMain(t.Context(), append([]string{"certs", "dev", "--out", dir}, extra...), strings.NewReader(""), &stdout, &stderr); code != 0 {
		t.Fatalf("certs dev: exit %d: %s", code, stderr.String())
	}
	for _, f := range []string{"ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("certs dev did not write %s: %v", f, err)
		}
	}
	return dir
}

// usersFile writes a users file; the password hashes are made with
// `tributary passwd`, reading the password from stdin.
func usersFile(t *testing.T, body string, passwords map[string]string) string {
	t.Helper()
	for user, pw := range passwords {
		var stdout, stderr bytes.Buffer
		if code := realMain(t.Context(), []string{"passwd"}, strings.NewReader(pw+"\n"), &stdout, &stderr); code != 0 {
			t.Fatalf("passwd: exit %d: %s", code, stderr.String())
		}
		body = strings.ReplaceAll(body, "HASH("+user+")", strings.TrimSpace(stdout.String()))
	}
	p := filepath.Join(t.TempDir(), "users.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func startSecured(t *testing.T, users string, edit func(*config.Config)) *secured {
	t.Helper()
	dir := devCerts(t)
	cfg := testConfig(t)
	cfg.MQTT.TLSAddr = "127.0.0.1:0"
	cfg.MQTT.WSSAddr = "127.0.0.1:0"
	cfg.HTTP.TLSAddr = "127.0.0.1:0"
	cfg.TLS.CertFile = filepath.Join(dir, "server.crt")
	cfg.TLS.KeyFile = filepath.Join(dir, "server.key")
	cfg.TLS.ReloadInterval = 0
	cfg.Auth.UsersFile = users
	if edit != nil {
		edit(&cfg)
	}
	d, buf := startLogged(t, cfg)
	return &secured{testDaemon: d, dir: dir, log: buf, users: users}
}

func (s *secured) caPool(t *testing.T) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(b)
	return pool
}

const devUsers = `
users:
  - username: dev
    password_hash: "HASH(dev)"
  - username: dev-client
acls:
  - user: dev
    topic: "sensors/#"
    access: all
  - user: dev
    topic: "cmd/%u/#"
    access: subscribe
  - user: dev-client
    topic: "sensors/#"
    access: publish
kafka_acls:
  - user: dev
    topic: "allowed-*"
    access: all
`

// The acceptance: certs dev, a TLS listener, a users file with a
// bcrypt hash of "secret"; mosquitto_pub over TLS with the right password
// lands in Kafka, a wrong one is refused with a CONNACK error, plain TCP
// to the TLS port fails the handshake, and the log never shows "secret".
func TestTLSAndPasswordAcceptance(t *testing.T) {
	pub := needTool(t, "mosquitto_pub")
	users := usersFile(t, devUsers, map[string]string{"dev": "secret"})
	topic := uniq("secure")
	s := startSecured(t, users, func(c *config.Config) { c.Mapping.TopicRegexList = topic + ":sensors/.*" })
	host, port := hostPort(s.broker.Addr("mqtt-tls"))
	ca := filepath.Join(s.dir, "ca.crt")

	out, err := exec.Command(pub, "--cafile", ca, "-h", "localhost", "-p", port, "-u", "dev", "-P", "secret", "-q", "1", "-t", "sensors/t1", "-m", "21.5").CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_pub over TLS with the right password: %v: %s", err, out)
	}
	if recs := kafkaRecords(t, s.bootstrap, topic, 1, 10*time.Second); len(recs) != 1 || string(recs[0].Value) != "21.5" {
		t.Fatalf("records in %s: %v, want one with 21.5", topic, recs)
	}

	// Each refusal is counted under its reason; the good login above was
	// not.
	failures := func(reason string) string {
		return metricValue(t, s.testDaemon, `tributary_mqtt_auth_failures_total{reason="`+reason+`"}`)
	}
	waitCounted := func(reason, want string) {
		t.Helper()
		waitFor(t, 5*time.Second, fmt.Sprintf("auth failures of reason %s to be %s (now %s)", reason, want, failures(reason)),
			func() bool { return failures(reason) == want })
	}
	waitCounted("bad_credentials", "0")
	waitCounted("anonymous_refused", "0")

	out, err = exec.Command(pub, "--cafile", ca, "-h", "localhost", "-p", port, "-u", "dev", "-P", "wrong", "-q", "1", "-t", "sensors/t1", "-m", "no").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "bad user name or password") {
		t.Fatalf("mosquitto_pub with a wrong password: err %v, output %q; want a refused connection (CONNACK code 5/4)", err, out)
	}
	waitCounted("bad_credentials", "1")
	// MQTT 3.1.1 return code 4 (bad user name or password) with a raw CONNECT.
	if code := connackCode(t, s.broker.Addr("mqtt-tls"), s.caPool(t), "dev", "wrong"); code != 4 {
		t.Fatalf("CONNACK return code for a wrong password = %d, want 4", code)
	}
	waitCounted("bad_credentials", "2")
	if code := connackCode(t, s.broker.Addr("mqtt-tls"), s.caPool(t), "", ""); code != 5 {
		t.Fatalf("CONNACK return code for an anonymous client = %d, want 5 (not authorized)", code)
	}
	waitCounted("anonymous_refused", "1")

	// Plain TCP to the TLS port: the CONNECT is not a TLS ClientHello.
	c, err := net.DialTimeout("tcp", net.JoinHostPort(host, port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte{0x10, 0x10, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, 4, 'p', 'l', 'a', 'i', 'n', 0})
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 64)
	n, _ := io.ReadAtLeast(c, b, 1)
	if n > 0 && b[0] == 0x20 {
		t.Fatalf("a plain-TCP client got a CONNACK from the TLS port: % x", b[:n])
	}

	// A failed TLS handshake is no login attempt.
	if got := failures("bad_credentials") + "/" + failures("anonymous_refused") + "/" + failures("not_authorized"); got != "2/1/0" {
		t.Errorf("auth failures bad_credentials/anonymous_refused/not_authorized = %s, want 2/1/0", got)
	}
	waitFor(t, 5*time.Second, "the refusal to be logged", func() bool { return strings.Contains(s.log.String(), "dev") })
	if strings.Contains(s.log.String(), "secret") {
		t.Fatalf("the log contains the password")
	}
}

// connackCode sends an MQTT 3.1.1 CONNECT over TLS and returns the CONNACK
// return code.
func connackCode(t *testing.T, addr string, pool *x509.CertPool, user, pass string) byte {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	if err != nil {
		t.Fatalf("TLS dial: %v", err)
	}
	defer c.Close()
	var vh []byte
	flags := byte(0x02)
	payload := mqttString("raw-" + uniq("c"))
	if user != "" {
		flags |= 0x80 | 0x40
		payload = append(payload, mqttString(user)...)
		payload = append(payload, mqttString(pass)...)
	}
	vh = append(mqttString("MQTT"), 4, flags, 0, 30)
	body := append(vh, payload...)
	if _, err := c.Write(append([]byte{0x10, byte(len(body))}, body...)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("reading CONNACK: %v", err)
	}
	if b[0] != 0x20 {
		t.Fatalf("not a CONNACK: % x", b)
	}
	return b[3]
}

// A verified client certificate names the user: no password needed.
func TestClientCertificateAuthentication(t *testing.T) {
	pub := needTool(t, "mosquitto_pub")
	users := usersFile(t, devUsers, map[string]string{"dev": "secret"})
	topic := uniq("cert")
	var dir string
	s := startSecured(t, users, func(c *config.Config) {
		c.Mapping.TopicRegexList = topic + ":sensors/.*"
		dir = filepath.Dir(c.TLS.CertFile)
		c.TLS.ClientCAFile = filepath.Join(dir, "ca.crt")
		c.TLS.ClientAuth = "request"
	})
	_, port := hostPort(s.broker.Addr("mqtt-tls"))
	out, err := exec.Command(pub, "--cafile", filepath.Join(dir, "ca.crt"), "--cert", filepath.Join(dir, "client.crt"), "--key", filepath.Join(dir, "client.key"),
		"-h", "localhost", "-p", port, "-q", "1", "-t", "sensors/c1", "-m", "by-cert").CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_pub with the client certificate: %v: %s", err, out)
	}
	if recs := kafkaRecords(t, s.bootstrap, topic, 1, 10*time.Second); len(recs) != 1 || string(recs[0].Value) != "by-cert" {
		t.Fatalf("records: %v", recs)
	}
	// Without the certificate and without a password: refused.
	out, err = exec.Command(pub, "--cafile", filepath.Join(dir, "ca.crt"), "-h", "localhost", "-p", port, "-q", "1", "-t", "sensors/c1", "-m", "anon").CombinedOutput()
	if err == nil {
		t.Fatalf("an anonymous client without a certificate was let in: %s", out)
	}
}

// Over MQTT over secure WebSocket a browser presents its client
// certificate to a socket any web page opens, so the certificate logs in
// only pages of the listener's own host and of websocket.allowed_origins.
func TestWebSocketCertificateLoginNeedsATrustedOrigin(t *testing.T) {
	users := usersFile(t, devUsers, map[string]string{"dev": "secret"})
	s := startSecured(t, users, func(c *config.Config) {
		dir := filepath.Dir(c.TLS.CertFile)
		c.TLS.ClientCAFile = filepath.Join(dir, "ca.crt")
		c.TLS.ClientAuth = "request"
		c.WebSocket.AllowedOrigins = []string{"https://app.example.com"}
	})
	cert, err := tls.LoadX509KeyPair(filepath.Join(s.dir, "client.crt"), filepath.Join(s.dir, "client.key"))
	if err != nil {
		t.Fatal(err)
	}
	_, port := hostPort(s.broker.Addr("mqtt-wss"))
	dialer := &websocket.Dialer{
		HandshakeTimeout: 10 * time.Second,
		Subprotocols:     []string{"mqtt"},
		TLSClientConfig:  &tls.Config{RootCAs: s.caPool(t), Certificates: []tls.Certificate{cert}},
	}
	// connack sends an MQTT 3.1.1 CONNECT from a page of origin ("" for
	// a client that is not a browser) and returns the CONNACK code.
	connack := func(origin, user, pass string) byte {
		t.Helper()
		h := http.Header{}
		if origin != "" {
			h.Set("Origin", origin)
		}
		c, _, err := dialer.Dial("wss://localhost:"+port+"/mqtt", h)
		if err != nil {
			t.Fatalf("dialing from %q: %v", origin, err)
		}
		defer c.Close()
		flags, creds := byte(0x02), [][]byte{mqttString(uniq("page"))}
		if user != "" {
			flags |= 0xC0
			creds = append(creds, mqttString(user), mqttString(pass))
		}
		pk := mqttPacket(0x10, append([][]byte{mqttString("MQTT"), {4, flags, 0, 30}}, creds...)...)
		if err := c.WriteMessage(websocket.BinaryMessage, pk); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
		_, b, err := c.ReadMessage()
		if err != nil || len(b) != 4 || b[0] != 0x20 {
			t.Fatalf("from %q: no CONNACK: % x, %v", origin, b, err)
		}
		return b[3]
	}
	for _, tc := range []struct {
		name, origin, user, pass string
		want                     byte
	}{
		{"not a browser", "", "", "", 0},
		{"not a browser, with an Origin of its own", "file://", "", "", 0},
		{"the listener's own host", "https://localhost:" + port, "", "", 0},
		{"an allowed origin", "https://app.example.com", "", "", 0},
		{"another origin", "https://evil.example", "", "", 5},
		{"another origin, upper case", "HTTPS://EVIL.EXAMPLE", "", "", 5},
		{"a page without an origin", "null", "", "", 5},
		{"the listener's own host on another port", "https://localhost:1", "", "", 5},
		{"another origin, with a password", "https://evil.example", "dev", "secret", 0},
		{"another origin, with a wrong password", "https://evil.example", "dev", "nope", 4},
		// The certificate still counts where the origin is trusted: a
		// different user name is refused as a mismatch.
		{"an allowed origin, with another user's password", "https://app.example.com", "dev", "secret", 5},
	} {
		if got := connack(tc.origin, tc.user, tc.pass); got != tc.want {
			t.Errorf("%s: CONNACK %d, want %d", tc.name, got, tc.want)
		}
	}
	want := `a client certificate does not log in a web page from \"https://evil.example\"`
	waitFor(t, 5*time.Second, "the refusal to name the origin", func() bool { return strings.Contains(s.log.String(), want) })
}

// ACLs: a denied publish gets PUBACK 0x87 (MQTT 5) and nothing reaches
// Kafka; a denied subscription gets SUBACK 0x87; %u is the username.
func TestACLDenyPublishAndSubscribe(t *testing.T) {
	pub, sub := needTool(t, "mosquitto_pub"), needTool(t, "mosquitto_sub")
	users := usersFile(t, devUsers, map[string]string{"dev": "secret"})
	topic := uniq("acl")
	s := startSecured(t, users, func(c *config.Config) { c.Mapping.TopicRegexList = topic + ":.*" })
	host, port := hostPort(s.mqttAddr())
	base := []string{"-h", host, "-p", port, "-u", "dev", "-P", "secret", "-V", "mqttv5"}

	denied := func(action string) string {
		return metricValue(t, s.testDaemon, `tributary_mqtt_acl_denied_total{action="`+action+`"}`)
	}
	if p, sb := denied("publish"), denied("subscribe"); p != "0" || sb != "0" {
		t.Fatalf("ACL denials before any: publish %s, subscribe %s; want 0 and 0", p, sb)
	}
	// -d prints the PUBACK's reason code: 135 (0x87, not authorized), and
	// mosquitto_pub prints the reason string the broker sent with it.
	out, err := exec.Command(pub, append(base, "-d", "-q", "1", "-t", "forbidden/x", "-m", "denied")...).CombinedOutput()
	if !strings.Contains(string(out), "received PUBACK (Mid: 1, RC:135)") || !strings.Contains(string(out), "not authorized to publish to forbidden/x") {
		t.Fatalf("a publish outside the ACL: err %v, output:\n%s\nwant PUBACK 0x87 (RC:135) with the reason string naming the topic", err, out)
	}
	waitFor(t, 5*time.Second, "the denied publish to be counted", func() bool { return denied("publish") == "1" })
	if out, err := exec.Command(pub, append(base, "-q", "1", "-t", "sensors/ok", "-m", "allowed")...).CombinedOutput(); err != nil {
		t.Fatalf("a publish inside the ACL failed: %v: %s", err, out)
	}
	// The denied publish finished before the allowed one was sent, so had
	// it been produced it would be in Kafka by the time the allowed one is.
	recs := kafkaRecords(t, s.bootstrap, topic, 2, 3*time.Second)
	if len(recs) != 1 || string(recs[0].Value) != "allowed" {
		var vals []string
		for _, r := range recs {
			vals = append(vals, string(r.Value))
		}
		t.Fatalf("Kafka holds %q, want only the allowed publish", vals)
	}

	out, _ = exec.Command(sub, append(base, "-t", "forbidden/#", "-C", "1", "-W", "3")...).CombinedOutput()
	if !strings.Contains(strings.ToLower(string(out)), "denied") {
		t.Fatalf("mosquitto_sub to a forbidden filter: %q, want the subscription denied", out)
	}
	// %u: dev may subscribe to cmd/dev/# but not cmd/other/#.
	if code := subackCode(t, s.mqttAddr(), "dev", "secret", "cmd/dev/#"); code != 1 {
		t.Errorf("SUBACK for cmd/dev/# = %#x, want granted QoS 1", code)
	}
	if code := subackCode(t, s.mqttAddr(), "dev", "secret", "cmd/other/#"); code != 0x80 {
		t.Errorf("SUBACK for cmd/other/# = %#x, want 0x80 (MQTT 3.1.1 failure)", code)
	}
	// One denied publish; two denied subscriptions (forbidden/# and
	// cmd/other/#).
	if p, sb := denied("publish"), denied("subscribe"); p != "1" || sb != "2" {
		t.Errorf("ACL denials: publish %s, subscribe %s; want 1 and 2", p, sb)
	}
}

// subackCode subscribes with paho (MQTT 3.1.1) and returns the SUBACK code.
func subackCode(t *testing.T, addr, user, pass, filter string) byte {
	t.Helper()
	c := mqttClient(t, "tcp://"+addr, uniq("s"), func(o *paho.ClientOptions) { o.SetUsername(user).SetPassword(pass) })
	defer c.Disconnect(100)
	tok := c.Subscribe(filter, 1, nil)
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatalf("no SUBACK for %s", filter)
	}
	return tok.(*paho.SubscribeToken).Result()[filter]
}

// tokensFile makes a token for user with "tributary token" and writes a
// tokens file holding its entry.
func tokensFile(t *testing.T, user string) (token, file string) {
	t.Helper()
	file = filepath.Join(t.TempDir(), "tokens.yaml")
	var stdout, stderr bytes.Buffer
	if code := realMain(t.Context(), []string{"token", "--user", user}, strings.NewReader(""), &stdout, &stderr); code != 0 {
		t.Fatalf("token: %s", stderr.String())
	}
	token = strings.TrimSpace(stdout.String())
	entry := stderr.String()[strings.Index(stderr.String(), "- {"):]
	if err := os.WriteFile(file, []byte("tokens:\n  "+strings.TrimSpace(entry)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return token, file
}

// The WebSocket API with and without credentials, by header, query
// parameter and subprotocol, and its Kafka topic ACLs.
func TestWebSocketAuthentication(t *testing.T) {
	users := usersFile(t, devUsers, map[string]string{"dev": "secret"})
	token, tokFile := tokensFile(t, "dev")
	s := startSecured(t, users, func(c *config.Config) {
		c.Auth.TokensFile = tokFile
		c.Auth.MetricsAuth = true
	})
	topic := uniq("allowed")
	q := url.Values{"clientId": {uniq("p")}, "topic": {topic}}

	dial := func(h http.Header, q url.Values) (*websocket.Conn, *http.Response, error) {
		u := url.URL{Scheme: "ws", Host: s.httpAddr(), Path: "/socket/in", RawQuery: q.Encode()}
		return (&websocket.Dialer{HandshakeTimeout: 10 * time.Second}).Dial(u.String(), h)
	}
	if _, resp, err := dial(nil, q); err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("without credentials: err %v, response %v; want 401", err, resp)
	}
	if _, resp, err := dial(http.Header{"Authorization": {"Bearer nope"}}, q); err == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("with a wrong token: want 401, got %v", err)
	}
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("dev:secret"))
	for name, try := range map[string]func() (*websocket.Conn, *http.Response, error){
		"basic": func() (*websocket.Conn, *http.Response, error) { return dial(http.Header{"Authorization": {basic}}, q) },
		"bearer": func() (*websocket.Conn, *http.Response, error) {
			return dial(http.Header{"Authorization": {"Bearer " + token}}, q)
		},
		"query": func() (*websocket.Conn, *http.Response, error) {
			q2 := cloneValues(q)
			q2.Set("access_token", token)
			return dial(nil, q2)
		},
		"subprotocol": func() (*websocket.Conn, *http.Response, error) {
			return dial(http.Header{"Sec-WebSocket-Protocol": {"tributary, bearer." + token}}, q)
		},
	} {
		t.Run(name, func(t *testing.T) {
			q.Set("clientId", uniq("p"))
			c, resp, err := try()
			if err != nil {
				t.Fatalf("dial: %v (%v)", err, resp)
			}
			defer c.Close()
			if name == "subprotocol" && c.Subprotocol() != "tributary" {
				t.Errorf("selected subprotocol %q, want tributary (the token must not be echoed)", c.Subprotocol())
			}
			sendJSON(t, c, `{"value":{"value":"v"},"messageId":"m"}`)
			if r := readResult(t, c); r.Error != nil {
				t.Fatalf("produce: %+v", r.Error)
			}
		})
	}
	// With Kafka ACLs, consumer groups are per user: dev may not join a
	// group named for someone else, and reads with one of its own.
	dialOut := func(group string) *websocket.Conn {
		u := url.URL{Scheme: "ws", Host: s.httpAddr(), Path: "/socket/out",
			RawQuery: url.Values{"clientId": {uniq("c")}, "groupId": {group}, "topic": {topic}}.Encode()}
		c, _, err := (&websocket.Dialer{HandshakeTimeout: 10 * time.Second}).Dial(u.String(), http.Header{"Authorization": {basic}})
		if err != nil {
			t.Fatalf("dialing /socket/out: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	if r := readResult(t, dialOut("backend-service")); r.Error == nil || r.Error.Code != 40301 || !strings.Contains(r.Error.Message, "consumer group") {
		t.Fatalf("joining another's consumer group: %+v, want error 40301 naming the group", r.Error)
	}
	if b := readFrame(t, dialOut("dev.mine"), 30*time.Second); !strings.Contains(string(b), `"value"`) {
		t.Fatalf("consuming with one's own group: %s", b)
	}

	// The Kafka ACL: dev may produce to allowed-* only.
	q.Set("topic", uniq("other"))
	c, _, err := dial(http.Header{"Authorization": {basic}}, q)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := readResult(t, c)
	if r.Error == nil || r.Error.Code != 40301 {
		t.Fatalf("produce to a topic outside the ACL: %+v, want error 40301", r)
	}
	// /healthz stays open; /metrics needs credentials.
	if resp, err := http.Get("http://" + s.httpAddr() + "/healthz"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("/healthz: %v %v", resp, err)
	}
	if resp, err := http.Get("http://" + s.httpAddr() + "/metrics"); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("/metrics without credentials: %v %v, want 401", resp, err)
	}
	// HTTPS serves the same, with the dev CA.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.caPool(t), ServerName: "localhost"}}, Timeout: 10 * time.Second}
	req, _ := http.NewRequest("GET", "https://"+s.http.TLSAddr()+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/metrics over HTTPS with a token: %v %v", resp, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `tributary_http_auth_failures_total`) || strings.Contains(string(body), token) || strings.Contains(string(body), "secret") {
		t.Fatalf("/metrics lacks the auth failure counter or shows a secret")
	}
	if strings.Contains(s.log.String(), token) || strings.Contains(s.log.String(), "secret") {
		t.Fatal("the log contains a credential")
	}
}

func cloneValues(v url.Values) url.Values {
	out := url.Values{}
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	return out
}

// Limits bite and are counted: connections per address, and the publish
// rate (an MQTT 5 client over it is disconnected with 0x96).
func TestLimitsBite(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits.MaxConnectionsPerIP = 2
	cfg.Limits.PublishRate = 5
	d := startDaemon(t, cfg)
	a := mqttClient(t, "tcp://"+d.mqttAddr(), uniq("a"))
	_ = mqttClient(t, "tcp://"+d.mqttAddr(), uniq("b"))
	o := paho.NewClientOptions().AddBroker("tcp://" + d.mqttAddr()).SetClientID(uniq("c")).SetConnectTimeout(5 * time.Second).SetAutoReconnect(false)
	third := paho.NewClient(o)
	if tok := third.Connect(); tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
		third.Disconnect(0)
		t.Fatal("a third connection from one address was accepted with max_connections_per_ip 2")
	}
	waitFor(t, 5*time.Second, "the refusal to be counted", func() bool {
		return strings.Contains(metricsText(t, d.httpAddr()), `reason="max_connections_per_ip"`)
	})

	// MQTT 3 over the publish rate: read more slowly, nothing refused.
	start := time.Now()
	for i := range 15 {
		publish(t, a, "rate/x", 1, false, fmt.Sprint(i))
	}
	if el := time.Since(start); el < 1500*time.Millisecond {
		t.Errorf("15 publishes at a limit of 5/s took only %s", el)
	}
	if !strings.Contains(metricsText(t, d.httpAddr()), "tributary_mqtt_publish_rate_limited_total") {
		t.Error("the publish rate limit bit but was not counted")
	}

	// MQTT 5 over the publish rate: DISCONNECT 0x96 (message rate too high).
	a.Disconnect(100) // frees a connection slot of this address
	waitFor(t, 5*time.Second, "the slot to be free", func() bool {
		return strings.Contains(metricsText(t, d.httpAddr()), `tributary_mqtt_connections{listener="mqtt-tcp"} 1`)
	})
	c := dialBadTCP(t, d.mqttAddr())
	defer c.close()
	c.connect(t, 5)
	var flood []byte
	for i := range 20 {
		flood = append(flood, mqttPublish(0x30, "rate/v5", 0, true, nil, []byte(fmt.Sprint(i)))...)
	}
	if got := c.exchange(flood, 0, true, false); len(got) == 0 || got[0] != "DISCONNECT:96" {
		t.Fatalf("20 QoS 0 publishes at once with a limit of 5/s: server answered %v, want DISCONNECT:96", got)
	}
}

// A new certificate is served after a reload; a broken one keeps the old.
func TestCertificateReload(t *testing.T) {
	users := usersFile(t, devUsers, map[string]string{"dev": "secret"})
	s := startSecured(t, users, nil)
	serial := func() string {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", s.broker.Addr("mqtt-tls"), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatalf("TLS dial: %v", err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	before := serial()
	certFile, keyFile := filepath.Join(s.dir, "server.crt"), filepath.Join(s.dir, "server.key")
	good, _ := os.ReadFile(certFile)
	if err := os.WriteFile(certFile, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	s.reload()
	if got := serial(); got != before {
		t.Fatalf("a broken certificate file replaced the served one")
	}
	if !strings.Contains(s.log.String(), "server.crt") {
		t.Error("the failed reload was not logged with the file name")
	}
	if err := os.WriteFile(certFile, good, 0o644); err != nil {
		t.Fatal(err)
	}
	fresh := devCerts(t)
	for _, f := range []struct{ from, to string }{{filepath.Join(fresh, "server.crt"), certFile}, {filepath.Join(fresh, "server.key"), keyFile}} {
		b, err := os.ReadFile(f.from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f.to, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s.reload()
	if got := serial(); got == before {
		t.Fatal("the new certificate is not served after the reload")
	}
}

// A client that never finishes its request headers is cut off after
// http.read_header_timeout, and that is counted; ordinary requests are
// not.
func TestHTTPSlowClientTimesOut(t *testing.T) {
	cfg := testConfig(t)
	cfg.HTTP.ReadHeaderTimeout = 300 * time.Millisecond
	d := startDaemon(t, cfg)
	const readTimeouts = `tributary_http_timeouts_total{timeout="read"}`
	for _, close := range []bool{false, false, true, true} {
		req, err := http.NewRequest(http.MethodGet, "http://"+d.httpAddr()+"/healthz", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Close = close
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	metricsText(t, d.httpAddr())
	if m := metricsText(t, d.httpAddr()); strings.Contains(m, readTimeouts) {
		t.Fatalf("ordinary requests were counted as timeouts:\n%s", grepLines(m, "tributary_http_timeouts_total"))
	}
	c, err := net.DialTimeout("tcp", d.httpAddr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.ReadAll(c)
	if el := time.Since(start); err != nil || el > 5*time.Second {
		t.Fatalf("a client stuck in its headers was not cut off: %v after %s", err, el)
	}
	waitFor(t, 5*time.Second, "the timeout to be counted", func() bool {
		return strings.Contains(metricsText(t, d.httpAddr()), readTimeouts+" 1")
	})
	if m := metricsText(t, d.httpAddr()); !strings.Contains(m, readTimeouts+" 1\n") {
		t.Fatalf("more read timeouts than the one slow client:\n%s", grepLines(m, "tributary_http_timeouts_total"))
	}
}

// The binary reloads its certificate on SIGHUP (with file watching off),
// and keeps running.
func TestSIGHUPReloadsCertificate(t *testing.T) {
	dir := devCerts(t)
	certFile, keyFile := filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	tlsAddr, httpAddr := testutil.FreeAddr(t), testutil.FreeAddr(t)
	args := []string{"--data-dir", t.TempDir(), "--embedded-kafka-addr", testutil.FreeAddr(t), "--mqtt-addr", "", "--mqtt-ws-addr", "",
		"--mqtt-tls-addr", tlsAddr, "--tls-cert-file", certFile, "--tls-key-file", keyFile, "--tls-reload-interval", "0"}
	if bs := externalKafka(); bs != "" {
		args = append(args, "--kafka-bootstrap", bs)
	}
	p := startBinary(t, httpAddr, args...)
	serial := func() string {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", tlsAddr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatalf("TLS dial: %v", err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	before := serial()
	fresh := devCerts(t)
	for _, f := range []string{"server.crt", "server.key"} {
		b, err := os.ReadFile(filepath.Join(fresh, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if got := serial(); got != before {
		t.Fatal("the certificate changed without SIGHUP although file watching is off")
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the new certificate after SIGHUP", func() bool { return serial() != before })
	select {
	case err := <-p.done:
		p.done <- err
		t.Fatalf("tributary exited after SIGHUP: %v", err)
	default:
	}
}

// A client id whose kept session belongs to another user cannot be taken
// over: mochi would hand over the session's queued messages, which the
// ACLs checked against their owner, not against the newcomer.
func TestSessionOfAnotherUserIsNotTakenOver(t *testing.T) {
	users := usersFile(t, `
users:
  - {username: alice, password_hash: "HASH(alice)"}
  - {username: bob, password_hash: "HASH(bob)"}
acls:
  - {user: alice, topic: "alice/#", access: all}
  - {user: bob, topic: "bob/#", access: all}
`, map[string]string{"alice": "pw-a", "bob": "pw-b"})
	cfg := testConfig(t)
	cfg.Auth.UsersFile = users
	d := startDaemon(t, cfg)
	url := "tcp://" + d.mqttAddr()
	id := uniq("sensor")
	persistent := func(user, pass string) func(*paho.ClientOptions) {
		return func(o *paho.ClientOptions) { o.SetUsername(user).SetPassword(pass).SetCleanSession(false) }
	}
	alice := mqttClient(t, url, id, persistent("alice", "pw-a"))
	if tok := alice.Subscribe("alice/#", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("alice subscribing: %v", tok.Error())
	}
	alice.Disconnect(100)
	other := mqttClient(t, url, uniq("pub"), func(o *paho.ClientOptions) { o.SetUsername("alice").SetPassword("pw-a") })
	publish(t, other, "alice/secret", 1, false, "alice's secret")

	o := paho.NewClientOptions().AddBroker(url).SetClientID(id).SetUsername("bob").SetPassword("pw-b").
		SetCleanSession(false).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second)
	var got []string
	var mu sync.Mutex
	o.SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
		mu.Lock()
		got = append(got, string(m.Payload()))
		mu.Unlock()
	})
	bob := paho.NewClient(o)
	tok := bob.Connect()
	if tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
		defer bob.Disconnect(100)
		time.Sleep(time.Second) // a queued message would arrive at once
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("bob took over alice's session (received %q)", got)
	}
	t.Logf("bob refused: %v", tok.Error())
	// alice still gets her queued message.
	alice2 := mqttClient(t, url, id, persistent("alice", "pw-a"), func(o *paho.ClientOptions) {
		o.SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
			mu.Lock()
			got = append(got, string(m.Payload()))
			mu.Unlock()
		})
	})
	defer alice2.Disconnect(100)
	waitFor(t, 10*time.Second, "alice's queued message", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 1 && got[0] == "alice's secret"
	})
}
