package auth

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// testHash returns a bcrypt hash of pw at the given cost (MinCost keeps the
// tests fast).
func testHash(t testing.TB, pw string, cost int) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), cost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func loadUsersText(t testing.TB, text string) *Users {
	t.Helper()
	u, err := parseUsers("users.yaml", []byte(text))
	if err != nil {
		t.Fatalf("loading users:\n%v", err)
	}
	return u
}

func TestLoadUsersFromFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users.yaml")
	text := "users:\n  - username: dev\n    password_hash: \"" + testHash(t, "pw", bcrypt.MinCost) + "\"\n"
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	u, err := LoadUsers(path)
	if err != nil {
		t.Fatal(err)
	}
	if !u.Authenticate("dev", []byte("pw")) || u.AllowAnonymous() {
		t.Fatal("want dev to log in with pw and anonymous refused by default")
	}
	if _, err := LoadUsers(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "reading users file") {
		t.Fatalf("missing file: %v", err)
	}
}

func TestLoadUsersProblems(t *testing.T) {
	hash := testHash(t, "pw", bcrypt.MinCost)
	tests := []struct {
		name, text string
		want       []string
	}{
		{"empty file", "", []string{"users.yaml: the file is empty"}},
		{"not a mapping", "- a\n- b\n", []string{"users.yaml:1: the file must be a mapping"}},
		{"syntax", "users: [\n", []string{"users.yaml: "}},
		{"nothing set", "other: 1\n", []string{`users.yaml:1: other: unknown key`}},
		{"only comments", "# users: []\n{}\n", []string{"sets none of allow_anonymous, users, acls, kafka_acls"}},
		{"unknown top-level key", "users: []\nacl:\n  - user: dev\n", []string{`users.yaml:2: acl: unknown key`}},
		{"unknown user key", "users:\n  - username: dev\n    password: secret\n", []string{`users.yaml:3: users[0].password: unknown key`}},
		{"unknown rule key", "users:\n  - username: dev\n    password_hash: \"" + hash + "\"\nacls:\n  - user: dev\n    topc: a\n    access: all\n",
			[]string{`users.yaml:6: acls[0].topc: unknown key`}},
		{"wrong type", "allow_anonymous: maybe\n", []string{"users.yaml:1: allow_anonymous: cannot unmarshal"}},
		{"wrong type in a list", "users:\n  - username: dev\n    groups: sensors\n", []string{"users.yaml:3: users[0].groups: cannot unmarshal"}},
		{"duplicate key", "users: []\nusers: []\n", []string{"already defined"}},
		{"plaintext password", "users:\n  - username: dev\n    password_hash: hunter2\n",
			[]string{"users.yaml:3: users[0].password_hash: user \"dev\": not a password hash", "tributary passwd"}},
		{"other hash scheme", "users:\n  - username: dev\n    password_hash: \"$6$salt$abc\"\n", []string{"only bcrypt hashes"}},
		{"malformed bcrypt", "users:\n  - username: dev\n    password_hash: \"$2a$10$short\"\n", []string{"malformed bcrypt hash"}},
		{"bad bcrypt cost", "users:\n  - username: dev\n    password_hash: \"" + "$2a$99$" + hash[7:] + "\"\n", []string{"malformed bcrypt hash"}},
		{"no username", "users:\n  - password_hash: \"" + hash + "\"\n", []string{"users.yaml:2: users[0].username: a username is required"}},
		{"a user's groups include another's", "users:\n  - username: alice\n  - username: alice.admin\nkafka_acls:\n  - user: alice\n    topic: t\n    access: all\n",
			[]string{`users.yaml:3: users[1].username: "alice.admin": with kafka_acls, user "alice"'s consumer groups`}},
		{"duplicate user", "users:\n  - username: dev\n  - username: dev\n", []string{"users.yaml:3: users[1].username: \"dev\" is listed twice"}},
		{"empty group", "users:\n  - username: dev\n    groups: [\"\"]\n", []string{"users.yaml:3: users[0].groups[0]: user \"dev\": a group name must not be empty"}},
		{"no selector", "users:\n  - username: dev\nacls:\n  - topic: a\n    access: all\n", []string{"users.yaml:4: acls[0]: a rule needs exactly one of user, group, anonymous: true, all: true (it has 0)"}},
		{"two selectors", "users:\n  - username: dev\nacls:\n  - user: dev\n    all: true\n    topic: a\n    access: all\n", []string{"(it has 2)"}},
		{"anonymous false", "allow_anonymous: true\nacls:\n  - anonymous: false\n    topic: a\n    access: all\n", []string{"(it has 0)"}},
		{"unknown user in rule", "users:\n  - username: dev\nacls:\n  - user: deve\n    topic: a\n    access: all\n", []string{`users.yaml:4: acls[0].user: no user "deve" in users`}},
		{"unknown group in rule", "users:\n  - username: dev\nkafka_acls:\n  - group: sensor\n    topic: a\n    access: all\n", []string{`users.yaml:4: kafka_acls[0].group: no user is in group "sensor"`}},
		{"bad access", "users:\n  - username: dev\nacls:\n  - user: dev\n    topic: a\n    access: write\n", []string{`users.yaml:6: acls[0].access: "write" is not publish, subscribe or all`}},
		{"bad filter", "users:\n  - username: dev\nacls:\n  - user: dev\n    topic: a/#/b\n    access: all\n", []string{`users.yaml:5: acls[0].topic: "a/#/b" is not a valid MQTT topic filter`}},
		{"bad kafka access", "users:\n  - username: dev\nkafka_acls:\n  - user: dev\n    topic: a\n    access: publish\n", []string{`kafka_acls[0].access: "publish" is not produce, consume or all`}},
		{"bad kafka topic", "users:\n  - username: dev\nkafka_acls:\n  - user: dev\n    topic: a/b\n    access: all\n", []string{`users.yaml:5: kafka_acls[0].topic: "a/b"`}},
		// acme would reach tenant-acme-labs-x, acme-labs' topic.
		{"kafka %u prefixes overlap", "users:\n  - {username: acme, groups: [t]}\n  - {username: acme-labs, groups: [t]}\nkafka_acls:\n  - {group: t, topic: tenant-%u-*, access: all}\n",
			[]string{`users.yaml:5: kafka_acls[0].topic: "tenant-%u-*" gives user "acme" topics of user "acme-labs"`}},
		// b would reach x-a-b, a-b's topic.
		{"kafka %u suffixes overlap", "users:\n  - username: b\n  - username: a-b\nkafka_acls:\n  - {all: true, topic: \"*-%u\", access: consume}\n",
			[]string{`kafka_acls[0].topic: "*-%u" gives user "b" topics of user "a-b"`}},
		{"kafka %u overlaps across rules", "users:\n  - username: acme\n  - username: acme-labs\nkafka_acls:\n  - {user: acme-labs, topic: tenant-%u-*, access: all}\n  - {user: acme, topic: tenant-%u-*, access: all}\n",
			[]string{`users.yaml:5: kafka_acls[0].topic: "tenant-%u-*" gives user "acme" topics of user "acme-labs"`}},
		{"kafka %u between stars", "users:\n  - username: dev\nkafka_acls:\n  - {user: dev, topic: \"*-%u-*\", access: all}\n",
			[]string{`kafka_acls[0].topic: "*-%u-*": with %u only between two '*'`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseUsers("users.yaml", []byte(tt.text))
			if err == nil {
				t.Fatal("loaded, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error:\n%v\nwant it to contain %q", err, w)
				}
			}
		})
	}
}

func TestLoadUsersReportsEveryProblemAtOnce(t *testing.T) {
	text := `users:
  - username: dev
    password_hash: hunter2
  - username: dev
    colour: blue
acls:
  - user: nobody
    topic: a/#/b
    access: rw
`
	_, err := parseUsers("users.yaml", []byte(text))
	if err == nil {
		t.Fatal("loaded, want errors")
	}
	msg := err.Error()
	for _, w := range []string{
		"users.yaml:3: users[0].password_hash",
		"users.yaml:4: users[1].username: \"dev\" is listed twice",
		"users.yaml:5: users[1].colour: unknown key",
		"users.yaml:7: acls[0].user: no user \"nobody\"",
		"users.yaml:8: acls[0].topic",
		"users.yaml:9: acls[0].access",
	} {
		if !strings.Contains(msg, w) {
			t.Errorf("error:\n%s\nwant it to contain %q", msg, w)
		}
	}
	if strings.Contains(msg, "hunter2") {
		t.Fatalf("the error repeats what may be a password:\n%s", msg)
	}
}

func TestAuthenticate(t *testing.T) {
	u := loadUsersText(t, `users:
  - username: dev
    password_hash: "`+testHash(t, "s3cret pw", bcrypt.MinCost)+`"
  - username: device-7
`)
	tests := []struct {
		user, pw string
		want     bool
	}{
		{"dev", "s3cret pw", true},
		{"dev", "s3cret", false},
		{"dev", "s3cret pw ", false},
		{"dev", "", false},
		{"Dev", "s3cret pw", false},
		{"eve", "s3cret pw", false},
		{"", "s3cret pw", false},
		{"device-7", "", false},         // certificate only
		{"device-7", "anything", false}, // certificate only
		{"dev", "s3cret pw" + strings.Repeat("x", 70), false},
	}
	for _, tt := range tests {
		if got := u.Authenticate(tt.user, []byte(tt.pw)); got != tt.want {
			t.Errorf("Authenticate(%q, %q) = %v, want %v", tt.user, tt.pw, got, tt.want)
		}
	}
	if !u.Known("dev") || !u.Known("device-7") || u.Known("eve") || u.Known("") {
		t.Error("Known is wrong")
	}
}

// bcrypt ignores bytes past the 72nd; a login must not succeed on a
// password that only shares the first 72.
func TestAuthenticateRefusesOverlongPasswords(t *testing.T) {
	pw := strings.Repeat("p", 72)
	u := loadUsersText(t, "users:\n  - username: dev\n    password_hash: \""+testHash(t, pw, bcrypt.MinCost)+"\"\n")
	if !u.Authenticate("dev", []byte(pw)) {
		t.Fatal("the 72-byte password does not log in")
	}
	if u.Authenticate("dev", []byte(pw+"extra")) {
		t.Fatal("a longer password sharing the first 72 bytes logs in")
	}
}

// An unknown name costs a bcrypt comparison like a known one, so timing
// does not tell which names exist.
func TestAuthenticateUnknownUserCostsTheSame(t *testing.T) {
	const cost = 6
	u := loadUsersText(t, "users:\n  - username: dev\n    password_hash: \""+testHash(t, "pw", cost)+"\"\n  - username: cert-only\n")
	if got, _ := bcrypt.Cost(u.dummyHash); got != cost {
		t.Fatalf("dummy hash cost %d, want the users' cost %d", got, cost)
	}
	timeIt := func(user string) time.Duration {
		best := time.Hour
		for range 3 {
			start := time.Now()
			u.Authenticate(user, []byte("wrong"))
			best = min(best, time.Since(start))
		}
		return best
	}
	known, unknown, certOnly := timeIt("dev"), timeIt("nobody"), timeIt("cert-only")
	if unknown < known/3 || certOnly < known/3 {
		t.Fatalf("a wrong password took %v for a known user, %v for an unknown one, %v for a certificate-only one", known, unknown, certOnly)
	}
}

func TestAllowAnonymousDefault(t *testing.T) {
	for _, tt := range []struct {
		text string
		want bool
	}{
		{"users:\n  - username: dev\n", false},
		{"users:\n  - username: dev\nallow_anonymous: true\n", true},
		{"users: []\n", false}, // a users file is there to restrict
		{"kafka_acls: []\n", false},
		{"acls: []\nallow_anonymous: true\n", true},
	} {
		if got := loadUsersText(t, tt.text).AllowAnonymous(); got != tt.want {
			t.Errorf("%q: AllowAnonymous = %v, want %v", tt.text, got, tt.want)
		}
	}
}

const aclFile = `allow_anonymous: true
users:
  - username: dev
    groups: [sensors, sensors]
  - username: ops
    groups: [admins]
  - username: viewer
acls:
  - user: dev
    topic: "devices/%u/#"
    access: publish
  - group: sensors
    topic: "config/%c"
    access: subscribe
  - group: admins
    topic: "#"
    access: all
  - anonymous: true
    topic: "public/+"
    access: subscribe
  - all: true
    topic: "status"
    access: all
kafka_acls:
  - group: sensors
    topic: "telemetry-*"
    access: produce
  - user: viewer
    topic: "*"
    access: consume
  - all: true
    topic: "user-%u"
    access: all
`

func TestMQTTACLs(t *testing.T) {
	u := loadUsersText(t, aclFile)
	tests := []struct {
		user, client, topic string
		pub, sub            bool
	}{
		{"dev", "d1", "devices/dev/temp", true, false},
		{"dev", "d1", "devices/ops/temp", false, false},
		{"dev", "d1", "config/d1", false, true},
		{"dev", "d1", "config/d2", false, false},
		{"dev", "d1", "config/+", false, false},
		{"dev", "d1", "status", true, true},
		{"dev", "d1", "public/x", false, false},
		{"ops", "o1", "anything/at/all", true, true},
		{"ops", "o1", "#", true, true},
		{"ops", "o1", "$SYS/broker/uptime", false, false},
		{"viewer", "v1", "status", true, true},
		{"viewer", "v1", "config/v1", false, false},
		{"", "a1", "public/x", false, true},
		{"", "a1", "public/+", false, true},
		{"", "a1", "public/#", false, false},
		{"", "a1", "status", true, true},
		{"", "a1", "devices/dev/x", false, false},
		// A name not in the file (a token's user) gets the all-rules only.
		{"stranger", "s1", "status", true, true},
		{"stranger", "s1", "public/x", false, false},
		// Shared subscriptions are checked by their filter.
		{"ops", "o1", "$share/g/a/b", false, true}, // as a topic name it is a $-topic
		{"", "a1", "$share/g/public/x", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.user+" "+tt.topic, func(t *testing.T) {
			if got := u.CanPublish(tt.user, tt.client, tt.topic); got != tt.pub {
				t.Errorf("CanPublish = %v, want %v", got, tt.pub)
			}
			if got := u.CanSubscribe(tt.user, tt.client, tt.topic); got != tt.sub {
				t.Errorf("CanSubscribe = %v, want %v", got, tt.sub)
			}
		})
	}
}

func TestKafkaACLs(t *testing.T) {
	u := loadUsersText(t, aclFile)
	tests := []struct {
		user, topic      string
		produce, consume bool
	}{
		{"dev", "telemetry-a", true, false},
		{"dev", "telemetry", false, false},
		{"dev", "user-dev", true, true},
		{"dev", "user-ops", false, false},
		{"viewer", "anything", false, true},
		{"ops", "telemetry-a", false, false},
		{"", "user-", false, false},
		{"stranger", "user-stranger", true, true},
	}
	for _, tt := range tests {
		if got := u.CanProduce(tt.user, tt.topic); got != tt.produce {
			t.Errorf("CanProduce(%q, %q) = %v, want %v", tt.user, tt.topic, got, tt.produce)
		}
		if got := u.CanConsume(tt.user, tt.topic); got != tt.consume {
			t.Errorf("CanConsume(%q, %q) = %v, want %v", tt.user, tt.topic, got, tt.consume)
		}
	}
}

func TestACLSectionsAbsentEmptyOrNull(t *testing.T) {
	for _, tt := range []struct {
		name, text string
		allowed    bool
	}{
		{"absent", "users:\n  - username: dev\n", true},
		{"empty", "users:\n  - username: dev\nacls: []\nkafka_acls: []\n", false},
		// Every rule commented out still means "ACLs, none granting".
		{"null", "users:\n  - username: dev\nacls:\n#  - all: true\nkafka_acls:\n", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			u := loadUsersText(t, tt.text)
			got := []bool{u.CanPublish("dev", "c", "a"), u.CanSubscribe("dev", "c", "#"), u.CanProduce("dev", "t"), u.CanConsume("dev", "t")}
			for i, g := range got {
				if g != tt.allowed {
					t.Fatalf("check %d = %v, want %v", i, g, tt.allowed)
				}
			}
		})
	}
}

func TestNilUsersAllowsEverything(t *testing.T) {
	var u *Users
	if !u.AllowAnonymous() || !u.CanPublish("", "", "a") || !u.CanSubscribe("x", "", "#") || !u.CanProduce("", "t") || !u.CanConsume("", "t") {
		t.Fatal("a nil *Users must allow everything")
	}
	if u.Authenticate("dev", []byte("pw")) || u.Known("dev") {
		t.Fatal("a nil *Users must know no one")
	}
}

func FuzzLoadUsers(f *testing.F) {
	f.Add(aclFile)
	f.Add("users:\n  - username: dev\n    password_hash: \"$2a$04$abcdefghijklmnopqrstuuDjnrAAGYDn2dTBO6ypnNu3qrG5hWxmO\"\n")
	f.Add("acls:\n  - all: true\n    topic: \"%u/%c/#\"\n    access: all\n")
	f.Add("")
	f.Fuzz(func(t *testing.T, text string) {
		u, err := parseUsers("users.yaml", []byte(text))
		if err != nil {
			if u != nil {
				t.Fatal("an error and a result")
			}
			return
		}
		for _, name := range []string{"", "dev", "x"} {
			u.CanPublish(name, "c", "a/b")
			u.CanSubscribe(name, "c", "a/#")
			u.CanProduce(name, "t")
			u.CanConsume(name, "t")
		}
	})
}

// Without kafka_acls consumer groups are not named per user, so users a
// and a.b may both exist.
func TestDottedUsersWithoutKafkaACLs(t *testing.T) {
	if _, err := parseUsers("users.yaml", []byte("users:\n  - username: alice\n  - username: alice.admin\n")); err != nil {
		t.Fatal(err)
	}
}

// A name %u cannot stand for (a certificate's URI, say) still logs in
// and is granted what rules naming it grant; the rules with %u grant it
// nothing, so that such a name cannot reach another's topics.
func TestUsernameThatPercentUCannotSubstitute(t *testing.T) {
	const spiffe = "spiffe://example.com/device/alice"
	u, err := parseUsers("users.yaml", []byte(`users:
  - {username: "`+spiffe+`", groups: [devices]}
  - {username: "$dev", groups: [devices]}
  - {username: "*", groups: [devices]}
  - {username: "dev", groups: [devices]}
acls:
  - {user: "`+spiffe+`", topic: "plant/alice/#", access: publish}
  - {group: devices, topic: "devices/%u/#", access: all}
kafka_acls:
  - {group: devices, topic: "dev-%u", access: produce}
  - {group: devices, topic: "dev-%u-*", access: consume}
`))
	if err != nil {
		t.Fatalf("the users file did not load: %v", err)
	}
	if !u.Known(spiffe) {
		t.Fatalf("%q is not known", spiffe)
	}
	if !u.CanPublish(spiffe, "c", "plant/alice/temp") {
		t.Error("the rule naming the user does not grant it plant/alice/temp")
	}
	for _, name := range []string{spiffe, "$dev"} {
		if u.CanPublish(name, "c", "devices/"+name+"/x") || u.CanSubscribe(name, "c", "devices/#") {
			t.Errorf("%q: devices/%%u/# granted something", name)
		}
		if u.CanProduce(name, "dev-"+name) || u.CanConsume(name, "dev-"+name+"-x") {
			t.Errorf("%q: dev-%%u or dev-%%u-* granted something", name)
		}
	}
}
