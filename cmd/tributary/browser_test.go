package main

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tributary-io/tributary/config"
)

// Tests in headless Chromium (chrome_test.go): the docs' browser example,
// browser authentication on the WebSocket API, and mqtt.js over
// MQTT-over-WebSocket, plain and secure. Pages come from an origin other than the daemon's,
// as they would in use.

// pageLog returns the non-empty lines of the page's <pre id="log">.
func pageLog(t *testing.T, p *tab) []string {
	t.Helper()
	var text string
	if err := p.eval(`document.getElementById("log").textContent`, &text); err != nil {
		t.Fatalf("reading the page's log: %v", err)
	}
	var lines []string
	for _, l := range strings.Split(text, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

// logLines polls the page's log until done holds for its lines or timeout
// passes, and returns the lines.
func logLines(t *testing.T, p *tab, timeout time.Duration, done func([]string) bool) []string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		lines := pageLog(t, p)
		if done(lines) {
			return lines
		}
		if time.Now().After(deadline) {
			t.Fatalf("the page's log after %s:\n%s", timeout, strings.Join(lines, "\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func countPrefix(lines []string, prefix string) int {
	n := 0
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

// The browser example of docs/websocket.md, as printed there, in Chromium.
// Served from an origin listed in websocket.allowed_origins, it produces
// three records, reads them back and commits each; served from an origin
// not listed, the browser cannot open either socket and the daemon says
// why in its log.
func TestBrowserDocsExample(t *testing.T) {
	browser := startChrome(t)
	allowed, other := newPages(t), newPages(t)
	cfg := wsConfig(t)
	cfg.WebSocket.AllowedOrigins = []string{allowed.URL}
	d, logs := startLogged(t, cfg)

	topic, group := uniq("browser-demo"), uniq("browser-readers")
	page := docsBlock(t, "websocket.md", "## From a browser, in plain JavaScript", "html")
	page = replaceN(t, page, `const base = "ws://localhost:8080";`, `const base = "ws://`+d.httpAddr()+`";`, 1)
	page = replaceN(t, page, "&topic=demo&", "&topic="+topic+"&", 2)
	page = replaceN(t, page, "groupId=demo-readers", "groupId="+group, 1)
	allowed.put("/example.html", page)
	other.put("/example.html", page)

	tab := browser.open(t, allowed.URL+"/example.html")
	lines := logLines(t, tab, 90*time.Second, func(l []string) bool {
		return countPrefix(l, "committed ") == 3 || countPrefix(l, "error ") > 0 || slices.ContainsFunc(l, func(s string) bool { return strings.Contains(s, " closed: ") })
	})
	stored := map[string]string{} // partition@offset by messageId
	storedRE := regexp.MustCompile(`^stored (m\d) at ` + regexp.QuoteMeta(topic) + `/(\d+@\d+)$`)
	var got, committed []string
	for _, l := range lines {
		switch {
		case storedRE.MatchString(l):
			m := storedRE.FindStringSubmatch(l)
			stored[m[1]] = m[2]
		case strings.HasPrefix(l, "got "):
			got = append(got, l)
		case strings.HasPrefix(l, "committed "):
			committed = append(committed, strings.TrimPrefix(l, "committed "))
		default:
			t.Errorf("unexpected line in the page's log: %q", l)
		}
	}
	if len(stored) != 3 {
		t.Fatalf("stored results for %d records, want m0, m1, m2:\n%s", len(stored), strings.Join(lines, "\n"))
	}
	slices.Sort(got)
	if want := []string{`got sensor-0 = {"temperature":20}`, `got sensor-1 = {"temperature":21}`, `got sensor-2 = {"temperature":22}`}; !slices.Equal(got, want) {
		t.Errorf("records read %q, want %q", got, want)
	}
	want := []string{stored["m0"], stored["m1"], stored["m2"]}
	slices.Sort(want)
	slices.Sort(committed)
	if !slices.Equal(committed, want) {
		t.Errorf("commits acknowledged at %q, want the stored records' %q", committed, want)
	}

	recs := kafkaRecords(t, d.bootstrap, topic, 3, 10*time.Second)
	if len(recs) != 3 {
		t.Fatalf("%d records in %s, want 3", len(recs), topic)
	}
	for _, r := range recs {
		i := strings.TrimPrefix(string(r.Key), "sensor-")
		if want := fmt.Sprintf(`{"temperature":2%s}`, i); string(r.Value) != want {
			t.Errorf("record key %q value %s, want %s", r.Key, r.Value, want)
		}
		if v, _ := header(r, "source"); v != "browser" {
			t.Errorf("record %q: header source = %q, want browser", r.Key, v)
		}
		if at := fmt.Sprintf("%d@%d", r.Partition, r.Offset); at != stored["m"+i] {
			t.Errorf("record %q is at %s, the browser was told %s", r.Key, at, stored["m"+i])
		}
	}

	// The same page from an origin the daemon does not list: the browser
	// reports only a failed connection (1006), and the page never gets to
	// open its consumer; the daemon's log names the origin and the setting.
	tab = browser.open(t, other.URL+"/example.html")
	lines = logLines(t, tab, 30*time.Second, func(l []string) bool { return len(l) > 0 })
	time.Sleep(500 * time.Millisecond) // for anything that would follow
	if lines = pageLog(t, tab); !slices.Equal(lines, []string{"producer closed: 1006"}) {
		t.Errorf("the page's log from %s: %q, want only the producer closed with 1006", other.URL, lines)
	}
	waitFor(t, 5*time.Second, "the log line refusing the origin", func() bool {
		return strings.Contains(logs.String(), "WebSocket origin refused") && strings.Contains(logs.String(), other.URL)
	})
	if n := len(settledRecords(t, d.bootstrap, topic)); n != 3 {
		t.Errorf("%d records in %s after the refused page, want still 3", n, topic)
	}
}

// mqttJS returns mqtt.js's browser bundle, pinned in e2e/package-lock.json
// and installed by scripts/install-deps.sh.
func mqttJS(t *testing.T) string {
	t.Helper()
	p := filepath.Join("..", "..", "e2e", "node_modules", "mqtt", "dist", "mqtt.min.js")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("mqtt.js not found: %v: run scripts/install-deps.sh (make deps), which installs it with npm ci in e2e/", err)
	}
	return string(b)
}

// mqttPage holds the mqtt.js calls the tests make. Each returns a promise
// that fails with the client's error, or when the connection closes first.
const mqttPage = `<!doctype html>
<meta charset="utf-8">
<script src="/mqtt.min.js"></script>
<script>
function connect(url, opts) {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect(url, Object.assign({ reconnectPeriod: 0, connectTimeout: 10000 }, opts));
    c.on("connect", () => resolve(c));
    c.on("error", (err) => reject(new Error("mqtt.js: " + err.message)));
    c.on("close", () => reject(new Error("mqtt.js: the connection closed before CONNACK")));
  });
}

// publishAll sends n QoS 1 publishes at once and, once each has its
// PUBACK, resolves with how many were acknowledged as a success (mqtt.js
// fails a publish whose MQTT 5 PUBACK has an error reason code).
async function publishAll(url, opts, topic, n, properties) {
  const c = await connect(url, opts);
  const closed = new Promise((_, reject) => c.on("close", () => reject(new Error("mqtt.js: the connection closed with publishes unacknowledged"))));
  const acks = [];
  for (let i = 0; i < n; i++) {
    acks.push(c.publishAsync(topic, "m" + i, { qos: 1, properties: properties }));
  }
  const results = await Promise.race([Promise.allSettled(acks), closed]);
  await c.endAsync();
  return results.filter((r) => r.status === "fulfilled").length;
}

// subscribe subscribes at QoS 1 and keeps what arrives in window.received.
window.received = [];
async function subscribe(url, opts, filter) {
  const c = await connect(url, opts);
  c.on("message", (topic, payload, packet) => window.received.push({ topic: topic, payload: payload.toString(), qos: packet.qos }));
  const granted = await c.subscribeAsync(filter, { qos: 1 });
  return granted.map((g) => g.qos);
}
</script>
`

// mqtt.js in Chromium, over the MQTT-over-WebSocket listener, with each
// protocol version it speaks: every PUBACKed publish is in Kafka, in
// order, with the headers a TCP client's would have; a browser subscriber
// gets what a device publishes.
func TestBrowserMQTTJS(t *testing.T) {
	browser := startChrome(t)
	pg := newPages(t)
	pg.put("/mqtt.min.js", mqttJS(t))
	pg.put("/mqtt.html", mqttPage)
	cfg := testConfig(t)
	topic := uniq("browser-mqtt")
	cfg.Mapping.TopicRegexList = topic + ":browser/.*"
	d := startDaemon(t, cfg)
	tab := browser.open(t, pg.URL+"/mqtt.html")
	wsURL := "ws://" + d.wsAddr() + "/mqtt"

	const n = 500
	versions := []struct {
		name, opts, properties string
	}{
		{"3.1", `{protocolId: "MQIsdp", protocolVersion: 3}`, "undefined"},
		{"3.1.1", `{protocolVersion: 4}`, "undefined"},
		{"5", `{protocolVersion: 5}`, `{userProperties: {via: "chromium"}}`},
	}
	for _, v := range versions {
		clientID := uniq("chromium")
		opts := strings.Replace(v.opts, "{", `{clientId: "`+clientID+`", `, 1)
		var acked int
		expr := fmt.Sprintf("publishAll(%q, %s, %q, %d, %s)", wsURL, opts, "browser/"+v.name, n, v.properties)
		if err := tab.eval(expr, &acked); err != nil {
			t.Errorf("MQTT %s: %v", v.name, err)
			continue
		}
		if acked != n {
			t.Errorf("MQTT %s: %d publishes acknowledged, want %d", v.name, acked, n)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	recs := kafkaRecords(t, d.bootstrap, topic, n*len(versions), 20*time.Second)
	byKey := map[string][]string{}
	for _, r := range recs {
		byKey[string(r.Key)] = append(byKey[string(r.Key)], string(r.Value))
		v := strings.TrimPrefix(string(r.Key), "browser/")
		if q, _ := header(r, "mqtt.qos"); q != "1" {
			t.Errorf("record from MQTT %s: header mqtt.qos = %q, want 1", v, q)
		}
		via, ok := header(r, "via")
		if v == "5" && via != "chromium" {
			t.Errorf("record from MQTT 5: header via = %q, want chromium (the user property)", via)
		}
		if v != "5" && ok {
			t.Errorf("record from MQTT %s has header via", v)
		}
	}
	for _, v := range versions {
		checkPublishedInOrder(t, "MQTT "+v.name, byKey["browser/"+v.name], n)
	}

	// A browser subscriber, through the broker: a device's publish
	// reaches it at QoS 1.
	var granted []int
	filter := "browser-in/" + uniq("f") + "/#"
	if err := tab.eval(fmt.Sprintf("subscribe(%q, {clientId: %q}, %q)", wsURL, uniq("chromium-sub"), filter), &granted); err != nil {
		t.Fatalf("subscribing from the browser: %v", err)
	}
	if !slices.Equal(granted, []int{1}) {
		t.Fatalf("SUBACK granted %v, want [1]", granted)
	}
	device := mqttClient(t, "tcp://"+d.mqttAddr(), uniq("device"))
	deviceTopic := strings.TrimSuffix(filter, "#") + "lamp"
	publish(t, device, deviceTopic, 1, false, "on")
	var received []struct {
		Topic, Payload string
		QoS            int
	}
	waitFor(t, 10*time.Second, "the browser subscriber's message", func() bool {
		if err := tab.eval("window.received", &received); err != nil {
			t.Fatalf("reading window.received: %v", err)
		}
		return len(received) > 0
	})
	if len(received) != 1 || received[0].Topic != deviceTopic || received[0].Payload != "on" || received[0].QoS != 1 {
		b, _ := json.Marshal(received)
		t.Errorf("the browser received %s, want one QoS 1 message %q on %s", b, "on", deviceTopic)
	}
}

// checkPublishedInOrder checks that vals are the n values publishAll sent,
// m0 to m<n-1>, in order.
func checkPublishedInOrder(t *testing.T, what string, vals []string, n int) {
	t.Helper()
	if len(vals) != n {
		t.Errorf("%s: %d records in Kafka, want %d", what, len(vals), n)
		return
	}
	for i, val := range vals {
		if val != fmt.Sprintf("m%d", i) {
			t.Errorf("%s: record %d is %q, want m%d: out of order", what, i, val, i)
			return
		}
	}
}

// socketPage opens one /socket/in socket with the given subprotocols,
// sends one record and resolves with what came back: the selected
// subprotocol and the result frame, or the close code when the socket
// closed first (a refused handshake is 1006 to a page).
const socketPage = `<!doctype html>
<meta charset="utf-8">
<script>
function produceOne(url, protocols) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, protocols);
    ws.onopen = () => ws.send(JSON.stringify({ messageId: "b1", value: { value: "from chromium" } }));
    ws.onmessage = (ev) => { resolve({ protocol: ws.protocol, frame: JSON.parse(ev.data) }); ws.close(); };
    ws.onclose = (ev) => resolve({ closed: ev.code });
  });
}
</script>
`

// socketResult is what produceOne resolves with.
type socketResult struct {
	Protocol string
	Frame    struct {
		MessageID string `json:"messageId"`
		Offset    *int64 `json:"offset"`
		Error     any    `json:"error"`
	}
	Closed int
}

// stored reports whether the page got the record's result.
func (p socketResult) stored() bool {
	return p.Closed == 0 && p.Frame.Error == nil && p.Frame.Offset != nil && p.Frame.MessageID == "b1"
}

// Bearer tokens as docs/security.md tells browsers to send them, which
// cannot set an Authorization header on a WebSocket: in the subprotocol
// list ["tributary", "bearer.<token>"], where the browser accepts the
// handshake only because the server selects "tributary", and as the
// access_token parameter. A wrong token or none is refused.
func TestBrowserBearerToken(t *testing.T) {
	browser := startChrome(t)
	pg := newPages(t)
	pg.put("/socket.html", socketPage)
	users := usersFile(t, devUsers, map[string]string{"dev": "secret"})
	token, tokFile := tokensFile(t, "dev")
	s := startSecured(t, users, func(c *config.Config) {
		c.Auth.TokensFile = tokFile
		c.WebSocket.AllowedOrigins = []string{pg.URL}
	})
	tab := browser.open(t, pg.URL+"/socket.html")
	topic := uniq("allowed-browser")
	socketURL := func(extra url.Values) string {
		q := url.Values{"clientId": {uniq("chromium")}, "topic": {topic}}
		for k, v := range extra {
			q[k] = v
		}
		return "ws://" + s.httpAddr() + "/socket/in?" + q.Encode()
	}
	for _, tc := range []struct {
		name, url, protocols string
		ok                   bool
	}{
		{"subprotocol", socketURL(nil), `["tributary", "bearer.` + token + `"]`, true},
		{"access_token", socketURL(url.Values{"access_token": {token}}), "[]", true},
		{"wrong subprotocol token", socketURL(nil), `["tributary", "bearer.not-the-token"]`, false},
		{"wrong access_token", socketURL(url.Values{"access_token": {"not-the-token"}}), "[]", false},
		{"no credentials", socketURL(nil), "[]", false},
	} {
		var got socketResult
		if err := tab.eval(fmt.Sprintf("produceOne(%q, %s)", tc.url, tc.protocols), &got); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		switch {
		case tc.ok && !got.stored():
			t.Errorf("%s: %+v, want the record's result", tc.name, got)
		case tc.ok && tc.protocols != "[]" && got.Protocol != "tributary":
			t.Errorf("%s: the server selected subprotocol %q, want tributary", tc.name, got.Protocol)
		case !tc.ok && got.Closed != 1006:
			t.Errorf("%s: %+v, want the socket refused (1006)", tc.name, got)
		}
	}
	recs := settledRecords(t, s.bootstrap, topic)
	if len(recs) != 2 {
		t.Fatalf("%d records in %s, want 2 (one per accepted token)", len(recs), topic)
	}
	for _, r := range recs {
		if string(r.Value) != "from chromium" {
			t.Errorf("record value %q, want %q", r.Value, "from chromium")
		}
	}
	metrics := metricsText(t, s.httpAddr())
	for _, want := range []string{
		`tributary_http_auth_failures_total{reason="bad_token"} 2`,
		`tributary_http_auth_failures_total{reason="missing"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// spkiHash returns the switch value with which Chromium trusts the
// certificate in file: the base64 of the SHA-256 of its public key.
func spkiHash(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM block", file)
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// The secure listeners from a browser: mqtt.js over wss:// (MQTT 3.1.1
// and 5) with a user's password, and /socket/in over wss:// with a token,
// the server presenting the certificate of `tributary certs dev`. Every
// acknowledged publish is in Kafka; a wrong password is refused with the
// reason and produces nothing.
func TestBrowserSecureWebSocket(t *testing.T) {
	pg := newPages(t)
	pg.put("/mqtt.min.js", mqttJS(t))
	pg.put("/mqtt.html", mqttPage)
	pg.put("/socket.html", socketPage)
	users := usersFile(t, devUsers, map[string]string{"dev": "secret"})
	token, tokFile := tokensFile(t, "dev")
	topic := uniq("browser-tls")
	s := startSecured(t, users, func(c *config.Config) {
		c.Auth.TokensFile = tokFile
		c.WebSocket.AllowedOrigins = []string{pg.URL}
		c.Mapping.TopicRegexList = topic + ":sensors/.*"
	})
	// Chromium does not trust the development CA; it is told to accept
	// the server certificate's key instead of having the CA installed.
	browser := startChrome(t, "--ignore-certificate-errors-spki-list="+spkiHash(t, filepath.Join(s.dir, "server.crt")))
	tab := browser.open(t, pg.URL+"/mqtt.html")
	wssURL := "wss://" + s.broker.Addr("mqtt-wss") + "/mqtt"

	const n = 200
	for _, v := range []struct{ name, version string }{{"3.1.1", "4"}, {"5", "5"}} {
		opts := fmt.Sprintf(`{clientId: %q, protocolVersion: %s, username: "dev", password: "secret"}`, uniq("chromium-tls"), v.version)
		var acked int
		if err := tab.eval(fmt.Sprintf("publishAll(%q, %s, %q, %d, undefined)", wssURL, opts, "sensors/tls/"+v.name, n), &acked); err != nil {
			t.Fatalf("MQTT %s over wss: %v", v.name, err)
		}
		if acked != n {
			t.Fatalf("MQTT %s over wss: %d publishes acknowledged, want %d", v.name, acked, n)
		}
	}
	var refused string
	err := tab.eval(fmt.Sprintf(`publishAll(%q, {clientId: %q, protocolVersion: 4, username: "dev", password: "wrong"}, "sensors/tls/wrong", 1, undefined)`, wssURL, uniq("chromium-tls")), &refused)
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "bad username or password") {
		t.Errorf("a wrong password over wss: %v (result %q), want the connection refused for a bad username or password", err, refused)
	}

	// Every publish was acknowledged, so all are in Kafka already: one
	// read finds them, and anything the refused client might have added.
	recs := settledRecords(t, s.bootstrap, topic)
	byKey := map[string][]string{}
	for _, r := range recs {
		byKey[string(r.Key)] = append(byKey[string(r.Key)], string(r.Value))
	}
	for _, v := range []string{"3.1.1", "5"} {
		checkPublishedInOrder(t, "MQTT "+v+" over wss", byKey["sensors/tls/"+v], n)
	}
	if len(recs) != 2*n {
		t.Errorf("%d records in %s, want %d: the refused client's publish must produce nothing", len(recs), topic, 2*n)
	}

	// The WebSocket API over the HTTPS listener.
	sock := browser.open(t, pg.URL+"/socket.html")
	wsTopic := uniq("allowed-browser-tls")
	q := url.Values{"clientId": {uniq("chromium")}, "topic": {wsTopic}, "access_token": {token}}
	var got socketResult
	if err := sock.eval(fmt.Sprintf("produceOne(%q, [])", "wss://"+s.http.TLSAddr()+"/socket/in?"+q.Encode()), &got); err != nil {
		t.Fatal(err)
	}
	if !got.stored() {
		t.Fatalf("/socket/in over wss: %+v, want the record's result", got)
	}
	if recs := settledRecords(t, s.bootstrap, wsTopic); len(recs) != 1 || string(recs[0].Value) != "from chromium" {
		t.Errorf("%d records in %s, want one with value %q", len(recs), wsTopic, "from chromium")
	}
}
