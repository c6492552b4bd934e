package main

import (
	"bytes"
	"encoding/base64"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"
)

// userLines returns the users file's lines that list each user, by name,
// so that a test can write a new file with the same password hashes.
func userLines(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if _, rest, ok := strings.Cut(line, "{username: "); ok {
			name, _, _ := strings.Cut(rest, ",")
			out[name] = line
		}
	}
	return out
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

// authReloads returns tributary_auth_reloads_total for file and result.
func authReloads(t *testing.T, d *testDaemon, file, result string) string {
	t.Helper()
	return metricValue(t, d, `tributary_auth_reloads_total{file="`+file+`",result="`+result+`"}`)
}

// metricValue returns the value of one series in /metrics as printed, or
// "absent".
func metricValue(t *testing.T, d *testDaemon, series string) string {
	t.Helper()
	for _, line := range strings.Split(metricsText(t, d.httpAddr()), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return "absent"
}

// SIGHUP (the daemon's reload) re-reads the users file: a removed user's
// open MQTT connection is dropped and its next CONNECT refused, an ACL
// change applies to the next publish of a connection already open, and a
// file that fails to load keeps the users before it in force, is logged
// at ERROR naming the file, and is counted.
func TestUsersFileReload(t *testing.T) {
	path := usersFile(t, `users:
  - {username: alice, password_hash: "HASH(alice)"}
  - {username: bob, password_hash: "HASH(bob)"}
acls:
  - {user: alice, topic: "alice/#", access: all}
  - {user: bob, topic: "bob/#", access: all}
  - {user: bob, topic: "shared/#", access: publish}
`, map[string]string{"alice": "pw-a", "bob": "pw-b"})
	lines := userLines(t, path)
	topic := uniq("reload")
	cfg := testConfig(t)
	cfg.Auth.UsersFile = path
	cfg.Mapping.TopicRegexList = topic + ":.*"
	d, log := startLogged(t, cfg)
	brokerURL := "tcp://" + d.mqttAddr()

	connect := func(id, user, pass string) (paho.Client, <-chan error) {
		t.Helper()
		lost := make(chan error, 1)
		return mqttClient(t, brokerURL, id, func(o *paho.ClientOptions) {
			o.SetUsername(user).SetPassword(pass).SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
		}), lost
	}
	refused := func(id, user, pass string) bool {
		t.Helper()
		o := paho.NewClientOptions().AddBroker(brokerURL).SetClientID(id).SetUsername(user).SetPassword(pass).
			SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second)
		c := paho.NewClient(o)
		tok := c.Connect()
		if !tok.WaitTimeout(15*time.Second) || tok.Error() == nil {
			c.Disconnect(50)
			return false
		}
		return true
	}
	_, aliceLost := connect(uniq("alice"), "alice", "pw-a")
	bob, bobLost := connect(uniq("bob"), "bob", "pw-b")
	publish(t, bob, "shared/before", 1, false, "shared before")

	// alice removed; bob may no longer publish to shared/#.
	writeFile(t, path, "users:\n"+lines["bob"]+"\nacls:\n  - {user: bob, topic: \"bob/#\", access: all}\n")
	d.reload()
	select {
	case <-aliceLost:
	case <-time.After(10 * time.Second):
		t.Fatal("alice's connection stayed open after alice was removed from the users file")
	}
	if !refused(uniq("alice"), "alice", "pw-a") {
		t.Fatal("a removed user could still connect after the reload")
	}
	// QoS 0: MQTT 3.1.1 has no refusal for a publish, and a refused QoS 1
	// publish would close bob's connection.
	if tok := bob.Publish("shared/after", 0, false, "shared after"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publishing QoS 0: %v", tok.Error())
	}
	publish(t, bob, "bob/after", 1, false, "bob after")
	select {
	case err := <-bobLost:
		t.Fatalf("bob, still in the file, lost his connection: %v", err)
	default:
	}
	if v := authReloads(t, d, "users", "ok"); v != "1" {
		t.Errorf(`tributary_auth_reloads_total{file="users",result="ok"} = %s, want 1`, v)
	}
	if !strings.Contains(log.String(), "users file reloaded") {
		t.Error("the successful reload was not logged")
	}

	// A broken file and a missing one: the file before stays in force.
	for i, broken := range []func(){
		func() { writeFile(t, path, "users: [\n  - {username: alice, password_hash: \"x\"}\n") },
		func() {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		},
	} {
		broken()
		d.reload()
		if v, want := authReloads(t, d, "users", "failed"), []string{"1", "2"}[i]; v != want {
			t.Errorf(`tributary_auth_reloads_total{file="users",result="failed"} = %s, want %s`, v, want)
		}
		if !refused(uniq("alice"), "alice", "pw-a") {
			t.Fatal("a failed reload let a removed user back in")
		}
		other, _ := connect(uniq("bob"), "bob", "pw-b")
		publish(t, other, "bob/still", 1, false, "bob still")
		other.Disconnect(50)
	}
	var errLines []string
	for _, line := range strings.Split(log.String(), "\n") {
		if strings.Contains(line, "level=ERROR") && strings.Contains(line, "auth.users_file") {
			errLines = append(errLines, line)
		}
	}
	if len(errLines) != 2 || !strings.Contains(errLines[0], path) || !strings.Contains(errLines[1], "no such file") {
		t.Fatalf("failed reloads logged at ERROR: %q, want two naming %s and the problem", errLines, path)
	}
	if v := authReloads(t, d, "users", "ok"); v != "1" {
		t.Errorf(`tributary_auth_reloads_total{file="users",result="ok"} = %s after failures, want 1`, v)
	}

	var got []string
	for _, r := range settledRecords(t, d.bootstrap, topic) {
		got = append(got, string(r.Value))
	}
	for _, want := range []string{"shared before", "bob after", "bob still"} {
		if !strings.Contains(strings.Join(got, "|"), want) {
			t.Errorf("Kafka lacks %q: %q", want, got)
		}
	}
	if strings.Contains(strings.Join(got, "|"), "shared after") {
		t.Errorf("a publish the reloaded ACLs refuse reached Kafka: %q", got)
	}
	if strings.Contains(log.String(), "pw-a") || strings.Contains(log.String(), "pw-b") {
		t.Fatal("the log contains a password")
	}
}

// A reload closes the WebSocket API sockets the new files no longer allow,
// with 1008 and the reason: one opened with a token removed from the
// tokens file, one opened with HTTP Basic by a user removed from the users
// file, and one whose topic the new Kafka ACLs refuse. The others stay open.
func TestAuthReloadClosesWebSockets(t *testing.T) {
	users := usersFile(t, `users:
  - {username: dev, password_hash: "HASH(dev)"}
  - {username: ops, password_hash: "HASH(ops)"}
`, map[string]string{"dev": "pw-dev", "ops": "pw-ops"})
	lines := userLines(t, users)
	var stdout, stderr bytes.Buffer
	if code := realMain(t.Context(), []string{"token", "--user", "dev"}, strings.NewReader(""), &stdout, &stderr); code != 0 {
		t.Fatalf("token: %s", stderr.String())
	}
	token := strings.TrimSpace(stdout.String())
	tokens := filepath.Join(t.TempDir(), "tokens.yaml")
	writeFile(t, tokens, "tokens:\n  "+strings.TrimSpace(stderr.String()[strings.Index(stderr.String(), "- {"):])+"\n")
	cfg := testConfig(t)
	cfg.Auth.UsersFile, cfg.Auth.TokensFile = users, tokens
	d, _ := startLogged(t, cfg)

	topic := uniq("allowed")
	basic := func(user, pass string) http.Header {
		return http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))}}
	}
	open := func(h http.Header, topic string) *websocket.Conn {
		t.Helper()
		c, err := wsTryDial(d, "/socket/in", url.Values{"clientId": {uniq("p")}, "topic": {topic}}, h)
		if err != nil {
			t.Fatalf("dialing /socket/in: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		produces(t, c)
		return c
	}
	byToken := open(http.Header{"Authorization": {"Bearer " + token}}, topic)
	byDev := open(basic("dev", "pw-dev"), topic)
	byOps := open(basic("ops", "pw-ops"), topic)
	byOpsOther := open(basic("ops", "pw-ops"), uniq("other"))

	closed := func(c *websocket.Conn, want string) {
		t.Helper()
		ce := expectClose(t, c, 30*time.Second)
		if ce.Code != websocket.ClosePolicyViolation || !strings.Contains(ce.Text, want) {
			t.Fatalf("close %d %q, want 1008 with a reason containing %q", ce.Code, ce.Text, want)
		}
	}

	writeFile(t, tokens, "tokens: []\n")
	d.reload()
	closed(byToken, "tokens file")
	if _, err := wsTryDial(d, "/socket/in", url.Values{"clientId": {uniq("p")}, "topic": {topic}}, http.Header{"Authorization": {"Bearer " + token}}); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("a removed token opening a socket: %v, want HTTP 401", err)
	}
	produces(t, byDev)

	// dev removed; ops may produce to allowed-* only.
	writeFile(t, users, "users:\n"+lines["ops"]+"\nkafka_acls:\n  - {user: ops, topic: \"allowed-*\", access: produce}\n")
	d.reload()
	closed(byDev, `"dev"`)
	closed(byOpsOther, "no longer allows producing")
	produces(t, byOps)
	if v := authReloads(t, d, "tokens", "ok"); v != "2" {
		t.Errorf(`tributary_auth_reloads_total{file="tokens",result="ok"} = %s, want 2`, v)
	}
}

// produces sends one record on a /socket/in socket and fails the test
// unless Kafka took it.
func produces(t *testing.T, c *websocket.Conn) {
	t.Helper()
	sendJSON(t, c, `{"value":{"value":"v"},"messageId":"m"}`)
	if r := readResult(t, c); r.Error != nil {
		t.Fatalf("producing: %+v", r.Error)
	}
}
