// Package auth owns who may use Tributary and what they may touch: the users
// file (bcrypt password hashes, groups, MQTT topic ACLs and Kafka topic ACLs
// for the WebSocket API), the API tokens file, password and token creation
// for the `tributary passwd` and token commands, and the throttle that slows
// down repeated failed logins from one address.
//
// A users file looks like this:
//
//	allow_anonymous: false   # default false, also when no users are listed
//	users:
//	  - username: dev
//	    password_hash: "$2a$10$..."   # bcrypt; absent: certificate login only
//	    groups: [sensors]
//	acls:            # absent: every client may publish and subscribe anywhere
//	  - user: dev    # exactly one of user, group, anonymous: true, all: true
//	    topic: "devices/%u/#"         # MQTT topic filter; %u username, %c client id
//	    access: publish               # publish | subscribe | all
//	kafka_acls:      # absent: every client may produce and consume any topic
//	  - group: sensors
//	    topic: "telemetry-*"          # Kafka topic name, * matches any run of characters; %u username
//	    access: produce               # produce | consume | all
//
// When a list of rules is present, access is denied unless a rule grants it;
// `all: true` rules apply to every client, anonymous ones included. A %u or
// %c is replaced by the client's username or client id; a rule whose
// replacement would be empty or contain '+', '#', '/' or '*' does not apply,
// so a chosen name cannot widen access.
package auth

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/crypto/bcrypt"
	"gopkg.in/yaml.v3"
)

// maxPasswordBytes is bcrypt's limit: it ignores bytes past the 72nd, so a
// longer password is refused rather than silently truncated.
const maxPasswordBytes = 72

// Users is a loaded users file. It is safe for concurrent use and never
// changes after loading: a reload loads a new one and swaps it in whole
// (see Live). A nil *Users allows everything: it is what running without a
// users file means (anonymous allowed, every ACL check passes, no password
// login and no known user).
type Users struct {
	allowAnonymous bool
	users          map[string]*user
	// dummyHash is compared against when the user is unknown or has no
	// password, so that a failed login costs the same either way; it is
	// one of the users' hashes.
	dummyHash []byte
	mqtt      *ruleSet[*mqttRule]  // nil: no acls section, everything allowed
	kafka     *ruleSet[*kafkaRule] // nil: no kafka_acls section, everything allowed
}

type user struct {
	hash   []byte // nil: certificate login only
	groups []string
}

type usersFile struct {
	AllowAnonymous bool        `yaml:"allow_anonymous"`
	Users          []userEntry `yaml:"users"`
	ACLs           []aclEntry  `yaml:"acls"`
	KafkaACLs      []aclEntry  `yaml:"kafka_acls"`
}

type userEntry struct {
	Username     string   `yaml:"username"`
	PasswordHash string   `yaml:"password_hash"`
	Groups       []string `yaml:"groups"`
}

type aclEntry struct {
	User      string `yaml:"user"`
	Group     string `yaml:"group"`
	Anonymous bool   `yaml:"anonymous"`
	All       bool   `yaml:"all"`
	Topic     string `yaml:"topic"`
	Access    string `yaml:"access"`
}

// LoadUsers reads and checks a users file. Its error lists every problem
// found, each as "path:line: where: what", where names the list index and
// key (users[2].password_hash). It never includes a password hash or a
// value that might be a password.
func LoadUsers(path string) (*Users, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading users file: %w", err)
	}
	return parseUsers(path, data)
}

func parseUsers(path string, data []byte) (*Users, error) {
	var f usersFile
	p, ok := decodeStrict(path, data, &f)
	if !ok {
		return nil, p.err()
	}
	set := false
	for _, key := range []string{"allow_anonymous", "users", "acls", "kafka_acls"} {
		set = set || p.present(key)
	}
	if !set {
		p.addf(nil, "the file sets none of allow_anonymous, users, acls, kafka_acls")
		return nil, p.err()
	}

	u := &Users{users: make(map[string]*user, len(f.Users))}
	groups := map[string][]string{}
	costs := map[int]int{}
	for i, e := range f.Users {
		at := []any{"users", i}
		switch {
		case e.Username == "":
			p.addf(append(at, "username"), "a username is required")
		case u.users[e.Username] != nil:
			p.addf(append(at, "username"), "%q is listed twice", e.Username)
		}
		nu := &user{groups: e.Groups}
		if e.PasswordHash != "" {
			cost, err := checkHash(e.PasswordHash)
			if err != nil {
				p.addf(append(at, "password_hash"), "user %q: %v", e.Username, err)
			} else {
				nu.hash = []byte(e.PasswordHash)
				costs[cost]++
			}
		}
		for j, g := range e.Groups {
			if g == "" {
				p.addf(append(at, "groups", j), "user %q: a group name must not be empty", e.Username)
				continue
			}
			groups[g] = append(groups[g], e.Username)
		}
		if e.Username != "" && u.users[e.Username] == nil {
			u.users[e.Username] = nu
		}
	}

	u.allowAnonymous = f.AllowAnonymous

	if p.present("acls") {
		u.mqtt = buildRules(p, "acls", f.ACLs, u.users, groups, compileMQTTRule)
	}
	if p.present("kafka_acls") {
		u.kafka = buildRules(p, "kafka_acls", f.KafkaACLs, u.users, groups, compileKafkaRule)
		checkKafkaOverlaps(p, f.KafkaACLs, u.kafka)
		// A user's consumer groups are <user> and <user>.<anything>: with
		// users a and a.b, a could take and commit for a.b's groups.
		for i, e := range f.Users {
			for j := range len(e.Username) {
				if e.Username[j] == '.' && u.users[e.Username[:j]] != nil {
					p.addf([]any{"users", i, "username"}, "%q: with kafka_acls, user %q's consumer groups (%q and %q) include this user's; rename one of them", e.Username, e.Username[:j], e.Username[:j], e.Username[:j]+".…")
					break
				}
			}
		}
	}
	if len(p.errs) > 0 {
		return nil, p.err()
	}

	// The stand-in for unknown names is a real user's hash of the most
	// common cost, so that an unknown name takes as long as a typical known
	// one. Its result is never used.
	n := 0
	for _, e := range f.Users {
		if nu := u.users[e.Username]; nu != nil && nu.hash != nil {
			c, _ := bcrypt.Cost(nu.hash)
			if costs[c] > n {
				n, u.dummyHash = costs[c], nu.hash
			}
		}
	}
	return u, nil
}

var bcryptHash = regexp.MustCompile(`^\$2[aby]?\$[0-9]{2}\$[./A-Za-z0-9]{53}$`)

// checkHash accepts a bcrypt hash and returns its cost. Its errors never
// include the value: a value that is not a hash may be a password.
func checkHash(h string) (int, error) {
	if !strings.HasPrefix(h, "$") {
		return 0, errors.New("not a password hash (plaintext passwords are not accepted): make a bcrypt hash with `tributary passwd`")
	}
	if !strings.HasPrefix(h, "$2") {
		return 0, errors.New("only bcrypt hashes ($2a$, $2b$, $2y$) are supported: make one with `tributary passwd`")
	}
	if !bcryptHash.MatchString(h) {
		return 0, errors.New("malformed bcrypt hash (want 60 characters like $2a$10$ and 53 more): make one with `tributary passwd`")
	}
	cost, err := bcrypt.Cost([]byte(h))
	if err != nil {
		return 0, fmt.Errorf("malformed bcrypt hash: %w", err)
	}
	return cost, nil
}

// AllowAnonymous reports whether clients without credentials may connect.
func (u *Users) AllowAnonymous() bool { return u == nil || u.allowAnonymous }

// Known reports whether username is listed in the file; a client that
// proved this name with a verified certificate may log in as it.
func (u *Users) Known(username string) bool {
	return u != nil && u.users[username] != nil
}

// Len returns how many users the file lists.
func (u *Users) Len() int {
	if u == nil {
		return 0
	}
	return len(u.users)
}

// Admits reports whether a client may be logged in as username at all: a
// listed user, or for "" an anonymous client where those are allowed.
// Whoever Authenticate or a certificate of a Known name let in is admitted.
func (u *Users) Admits(username string) bool {
	if username == "" {
		return u.AllowAnonymous()
	}
	return u == nil || u.users[username] != nil
}

// Revokes reports whether u, replacing old, ends a login as username that
// old allowed: u no longer admits the name (the user was removed, or
// anonymous clients are no longer allowed), or the user's password hash
// changed, so that a password that leaked stops working for connections
// already open as well as for new ones. A certificate login cannot be told
// apart from a password one here, so it ends too when its user's password
// changes; it can log in again at once.
func (u *Users) Revokes(old *Users, username string) bool {
	if u == nil {
		return false
	}
	if !u.Admits(username) {
		return true
	}
	if username == "" || old == nil {
		return false
	}
	was := old.users[username]
	return was != nil && !bytes.Equal(was.hash, u.users[username].hash)
}

// Authenticate reports whether password is username's password. A name
// that is unknown or has no password still costs a bcrypt comparison, so
// that timing does not tell which names exist. Empty passwords and
// passwords longer than bcrypt's 72 bytes never match.
func (u *Users) Authenticate(username string, password []byte) bool {
	if u == nil || u.dummyHash == nil || len(password) == 0 || len(password) > maxPasswordBytes {
		return false
	}
	hash, real := u.dummyHash, false
	if e := u.users[username]; e != nil && e.hash != nil {
		hash, real = e.hash, true
	}
	return bcrypt.CompareHashAndPassword(hash, password) == nil && real
}

// CanPublish reports whether the client may publish to topic. An empty
// username means an anonymous client.
func (u *Users) CanPublish(username, clientID, topic string) bool {
	if u == nil || u.mqtt == nil {
		return true
	}
	for _, r := range u.mqtt.rulesFor(username) {
		if r.pub && r.covers(topic, username, clientID) {
			return true
		}
	}
	return false
}

// CanSubscribe reports whether the client may subscribe to filter: only
// when one rule's filter covers every topic the subscription could match
// (a rule for a/# allows a/b/+, a rule for a/+ does not allow a/#). A topic
// name counts as a filter matching only itself, so this is also the check
// for delivering a message. A shared subscription ($share/group/filter) is
// checked by its filter.
func (u *Users) CanSubscribe(username, clientID, filter string) bool {
	if u == nil || u.mqtt == nil {
		return true
	}
	filter = unshare(filter)
	for _, r := range u.mqtt.rulesFor(username) {
		if r.sub && r.covers(filter, username, clientID) {
			return true
		}
	}
	return false
}

// CanProduce reports whether the user may produce to a Kafka topic through
// the WebSocket API. An empty username means an anonymous client.
func (u *Users) CanProduce(username, kafkaTopic string) bool {
	if u == nil || u.kafka == nil {
		return true
	}
	for _, r := range u.kafka.rulesFor(username) {
		if r.produce && r.matches(kafkaTopic, username) {
			return true
		}
	}
	return false
}

// KafkaACLs reports whether the file restricts Kafka topics (has a
// kafka_acls section); consumer group names are then per user too.
func (u *Users) KafkaACLs() bool { return u != nil && u.kafka != nil }

// CanConsume reports whether the user may consume a Kafka topic through the
// WebSocket API. An empty username means an anonymous client.
func (u *Users) CanConsume(username, kafkaTopic string) bool {
	if u == nil || u.kafka == nil {
		return true
	}
	for _, r := range u.kafka.rulesFor(username) {
		if r.consume && r.matches(kafkaTopic, username) {
			return true
		}
	}
	return false
}

// ruleSet holds a list of rules indexed by who they apply to, in file order.
type ruleSet[R any] struct {
	byUser    map[string][]R
	anonymous []R
	others    []R // for names not in the file (a token's user, say): all-rules only
}

func (s *ruleSet[R]) rulesFor(username string) []R {
	if username == "" {
		return s.anonymous
	}
	if rs, ok := s.byUser[username]; ok {
		return rs
	}
	return s.others
}

func buildRules[R any](p *fileProblems, key string, entries []aclEntry, users map[string]*user, groups map[string][]string,
	compile func(topic, access string) (R, []problem)) *ruleSet[R] {
	s := &ruleSet[R]{byUser: make(map[string][]R, len(users))}
	for name := range users {
		s.byUser[name] = nil
	}
	for i, e := range entries {
		at := []any{key, i}
		n := 0
		for _, set := range []bool{e.User != "", e.Group != "", e.Anonymous, e.All} {
			if set {
				n++
			}
		}
		if n != 1 {
			p.addf(at, "a rule needs exactly one of user, group, anonymous: true, all: true (it has %d)", n)
		}
		if e.User != "" && users[e.User] == nil {
			p.addf(append(at, "user"), "no user %q in users", e.User)
		}
		if e.Group != "" && len(groups[e.Group]) == 0 {
			p.addf(append(at, "group"), "no user is in group %q", e.Group)
		}
		r, problems := compile(e.Topic, e.Access)
		for _, pr := range problems {
			p.addf(append(at, pr.key), "%s", pr.msg)
		}
		if n != 1 || len(problems) > 0 {
			continue
		}
		switch {
		case e.User != "":
			if _, ok := s.byUser[e.User]; ok {
				s.byUser[e.User] = append(s.byUser[e.User], r)
			}
		case e.Group != "":
			for _, name := range groups[e.Group] {
				if rs := s.byUser[name]; len(rs) == 0 || !sameRule(rs[len(rs)-1], r) {
					s.byUser[name] = append(rs, r)
				}
			}
		case e.Anonymous:
			s.anonymous = append(s.anonymous, r)
		case e.All:
			for name := range s.byUser {
				s.byUser[name] = append(s.byUser[name], r)
			}
			s.anonymous = append(s.anonymous, r)
			s.others = append(s.others, r)
		}
	}
	return s
}

// checkKafkaOverlaps refuses a Kafka ACL pattern with %u that gives one
// of the users it is written for topics that are another's under the
// same pattern (see kafkaOverlap), whether one rule or several grant it.
func checkKafkaOverlaps(p *fileProblems, entries []aclEntry, rules *ruleSet[*kafkaRule]) {
	names := map[string][]string{} // pattern → the users a rule with it is for
	for name, rs := range rules.byUser {
		if !substitutable(name) {
			continue // %u grants it nothing
		}
		for _, r := range rs {
			if r.usesUser && !slices.Contains(names[r.pattern], name) {
				names[r.pattern] = append(names[r.pattern], name)
			}
		}
	}
	for i, e := range entries {
		ns := names[e.Topic]
		if len(ns) < 2 {
			continue
		}
		delete(names, e.Topic) // reported once, at its first rule
		if a, b, ok := kafkaOverlap(e.Topic, ns); ok {
			p.addf([]any{"kafka_acls", i, "topic"}, "%q gives user %q topics of user %q: some topic matches it for both; rename one of them, or write their rules without %%u",
				e.Topic, a, b)
		}
	}
}

// sameRule stops a user listed twice in one group from getting its rule twice.
func sameRule[R any](a, b R) bool { return any(a) == any(b) }

// fileProblems collects a YAML file's problems with their line numbers.
type fileProblems struct {
	path string
	root *yaml.Node // the top-level mapping; nil when the file did not parse
	errs []error
}

var (
	unknownField = regexp.MustCompile(`^line (\d+): field (.+) not found in type \S+$`)
	atLine       = regexp.MustCompile(`^line (\d+): (.*)$`)
)

// decodeStrict decodes data into v, refusing unknown keys, and reports
// whether it may be checked further: after a key of the wrong type or an
// unknown key it may, as yaml.v3 decodes the rest, so that every problem is
// reported at once.
func decodeStrict(path string, data []byte, v any) (*fileProblems, bool) {
	p := &fileProblems{path: path}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		p.errs = append(p.errs, fmt.Errorf("%s: %s", path, strings.TrimPrefix(err.Error(), "yaml: ")))
		return p, false
	}
	if len(doc.Content) == 0 {
		p.errs = append(p.errs, fmt.Errorf("%s: the file is empty", path))
		return p, false
	}
	if doc.Content[0].Kind != yaml.MappingNode {
		p.errs = append(p.errs, fmt.Errorf("%s:%d: the file must be a mapping of keys to values", path, doc.Content[0].Line))
		return p, false
	}
	p.root = doc.Content[0]
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	err := dec.Decode(v)
	var te *yaml.TypeError
	switch {
	case errors.As(err, &te):
		// yaml.v3 decodes what it can and lists the rest: report them all.
		for _, msg := range te.Errors {
			if m := unknownField.FindStringSubmatch(msg); m != nil {
				line, _ := strconv.Atoi(m[1])
				p.errs = append(p.errs, fmt.Errorf("%s:%d: %s: unknown key", path, line, p.keyPath(m[2], line)))
				continue
			}
			if m := atLine.FindStringSubmatch(msg); m != nil {
				line, _ := strconv.Atoi(m[1])
				if k := p.keyPath("", line); k != "" {
					p.errs = append(p.errs, fmt.Errorf("%s:%d: %s: %s", path, line, k, m[2]))
					continue
				}
			}
			p.errs = append(p.errs, fmt.Errorf("%s: %s", path, msg))
		}
	case err != nil && err != io.EOF:
		p.errs = append(p.errs, fmt.Errorf("%s: %s", path, strings.TrimPrefix(err.Error(), "yaml: ")))
		return p, false
	}
	return p, true
}

func (p *fileProblems) err() error { return errors.Join(p.errs...) }

// present reports whether the top-level mapping has key, even with a null
// value: "acls:" with every rule commented out means no rules, not no ACLs.
func (p *fileProblems) present(key string) bool {
	for i := 0; i+1 < len(p.root.Content); i += 2 {
		if p.root.Content[i].Value == key {
			return true
		}
	}
	return false
}

// addf records a problem at a path of keys (string) and indexes (int).
func (p *fileProblems) addf(at []any, format string, args ...any) {
	line := p.root.Line
	n := p.root
	var where strings.Builder
	for _, step := range at {
		switch s := step.(type) {
		case string:
			if where.Len() > 0 {
				where.WriteByte('.')
			}
			where.WriteString(s)
			n = child(n, s)
		case int:
			fmt.Fprintf(&where, "[%d]", s)
			if n != nil && n.Kind == yaml.SequenceNode && s < len(n.Content) {
				n = n.Content[s]
			} else {
				n = nil
			}
		}
		if n != nil {
			line = n.Line
		}
	}
	msg := fmt.Sprintf(format, args...)
	if where.Len() > 0 {
		msg = where.String() + ": " + msg
	}
	p.errs = append(p.errs, fmt.Errorf("%s:%d: %s", p.path, line, msg))
}

func child(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// keyPath names the key found on line, as in acls[3].topc: the key named
// key, or with key "" the first on that line. It returns key when there is
// no such key.
func (p *fileProblems) keyPath(key string, line int) string {
	var walk func(n *yaml.Node, prefix string) (string, bool)
	walk = func(n *yaml.Node, prefix string) (string, bool) {
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := n.Content[i]
				name := k.Value
				if prefix != "" {
					name = prefix + "." + name
				}
				if (key == "" || k.Value == key) && k.Line == line {
					return name, true
				}
				if s, ok := walk(n.Content[i+1], name); ok {
					return s, true
				}
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				if s, ok := walk(c, fmt.Sprintf("%s[%d]", prefix, i)); ok {
					return s, true
				}
			}
		}
		return "", false
	}
	if s, ok := walk(p.root, ""); ok {
		return s
	}
	return key
}
