package broker

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tributary-io/tributary/auth"
	"github.com/tributary-io/tributary/bridge"
)

// AuthConfig configures who may connect to the MQTT broker and what they
// may publish and subscribe to.
type AuthConfig struct {
	// Users holds the users file in force, which a reload may replace;
	// every login and ACL check reads the file in force at that moment.
	// Nil lets every client connect and publish or subscribe anywhere, as
	// without authentication. After a reload, Broker.Revoke disconnects
	// the clients the new file no longer lets in.
	Users *auth.Live[auth.Users]
	// Throttle slows down repeated failed logins from one address; nil
	// means no throttling.
	Throttle *auth.Throttle
	// CertUsername returns the identity of a verified client certificate
	// on the connection, if any. A name the users file knows logs in
	// without a password; an unknown one is ignored and the client must
	// log in with a password like any other. Nil means no certificates.
	CertUsername func(cl *mqtt.Client) (string, bool)
	// CertOrigins are the browser origins, besides the listener's own
	// host, whose pages may log in with a client certificate over MQTT
	// over (secure) WebSocket. A browser presents its certificate to a
	// socket any page opens, so a page from another origin is not
	// logged in by it: it needs a password, or gets an anonymous login
	// where those are allowed. Clients that send no Origin (not browsers)
	// are not affected. Same forms as auth.OriginAllowed.
	CertOrigins []string
	// Registerer receives the auth metrics; nil means none.
	Registerer prometheus.Registerer
}

// Failure reasons, the values of the auth failures metric's reason label.
const (
	reasonBadCredentials   = "bad_credentials"
	reasonNotAuthorized    = "not_authorized"
	reasonAnonymousRefused = "anonymous_refused"
)

// authHook is the mochi hook that authenticates MQTT clients and checks
// their publishes and subscriptions against the users file's ACLs. It
// replaces mochi's allow-all hook: mochi lets a client in, or a topic
// through, when any one hook says yes, so no other hook may provide
// OnConnectAuthenticate or OnACLCheck.
//
// The whole login is decided in OnConnect rather than in
// OnConnectAuthenticate, because for a false OnConnectAuthenticate mochi
// always answers "bad user name or password" (MQTT 5 0x86), which it
// turns into MQTT 3 return code 5 "not authorized": it cannot say "not
// authorized" to an MQTT 5 client (anonymous refused, say), and it says
// the wrong thing to an MQTT 3 client with a wrong password. When
// OnConnect returns an error mochi sends nothing and closes the
// connection, so the hook writes its own CONNACK first. OnConnect runs on
// the connection's own goroutine, so the throttle's wait holds up only
// that connection.
type authHook struct {
	mqtt.HookBase
	users    *auth.Live[auth.Users]
	throttle *auth.Throttle
	certName func(cl *mqtt.Client) (string, bool)
	// certOrigins: AuthConfig.CertOrigins.
	certOrigins []string
	log         *slog.Logger
	failures    map[string]prometheus.Counter // by reason
	denied      [2]prometheus.Counter         // subscribe, publish
	denyLog     bridge.LogEvery
	done        chan struct{} // closed by Stop: throttle waits end
	stopOnce    sync.Once
	// client looks up a connected client or a kept session by client id
	// (the server's client list); nil skips the session owner check.
	client func(id string) (*mqtt.Client, bool)
	// ended is called before a client's login is ended (ingest.ended;
	// nothing without an ingest).
	ended func(*mqtt.Client)
	// server is the broker whose clients' subscriptions and queued
	// messages a reload prunes (dropSubscriptions, dropQueued); nil
	// leaves them alone.
	server *mqtt.Server
	// publishesChecked is set when the ingest checks every client publish
	// with canPublish (takePublishChecks); mochi's own check of a publish
	// then lets it through. Set before the server serves.
	publishesChecked bool
	// wills holds the will topic of each logged-in connection that has a
	// will (*mqtt.Client to string), for checking it again after a reload.
	// mochi overwrites the client's own copy when the connection ends, so
	// reading that from another goroutine would race.
	wills sync.Map
}

var _ mqtt.Hook = (*authHook)(nil)

// newAuthHook builds the auth hook; its error is a metrics registration
// failure.
func newAuthHook(cfg AuthConfig, log *slog.Logger) (*authHook, error) {
	reg := cfg.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	failures := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "tributary", Subsystem: "mqtt", Name: "auth_failures_total",
		Help: "MQTT connections refused, by reason (bad_credentials, not_authorized, anonymous_refused).",
	}, []string{"reason"})
	denied := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "tributary", Subsystem: "mqtt", Name: "acl_denied_total",
		Help: "MQTT publishes and subscriptions (and deliveries, counted as subscribe) the ACLs refused, by action.",
	}, []string{"action"})
	for _, c := range []prometheus.Collector{failures, denied} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering auth metrics: %w", err)
		}
	}
	h := &authHook{
		users:       cfg.Users,
		throttle:    cfg.Throttle,
		certName:    cfg.CertUsername,
		certOrigins: cfg.CertOrigins,
		log:         log,
		failures:    map[string]prometheus.Counter{},
		denied:      [2]prometheus.Counter{denied.WithLabelValues("subscribe"), denied.WithLabelValues("publish")},
		denyLog:     bridge.LogEvery{Interval: 10 * time.Second},
		done:        make(chan struct{}),
		ended:       func(*mqtt.Client) {},
	}
	for _, r := range []string{reasonBadCredentials, reasonNotAuthorized, reasonAnonymousRefused} {
		h.failures[r] = failures.WithLabelValues(r)
	}
	return h, nil
}

func (h *authHook) ID() string { return "tributary-auth" }

func (h *authHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnectAuthenticate, mqtt.OnACLCheck:
		return true
	case mqtt.OnConnect, mqtt.OnPacketRead, mqtt.OnSessionEstablished, mqtt.OnDisconnect:
		return h.users != nil
	}
	return false
}

// Stop ends any throttle waits; mochi calls it when the server closes.
func (h *authHook) Stop() error {
	h.stopOnce.Do(func() { close(h.done) })
	return nil
}

// refusal is why a login failed and how to say so.
type refusal struct {
	reason string
	code5  packets.Code // MQTT 5 CONNACK reason code
	code3  byte         // MQTT 3 CONNACK return code
	detail string       // for the log and the MQTT 5 reason string; never a secret
}

// badCredentials is MQTT 5 0x86 and MQTT 3.1.1 return code 4, "bad user
// name or password" (mochi calls that code ErrMalformedUsernameOrPassword).
func badCredentials() *refusal {
	return &refusal{reasonBadCredentials, packets.ErrBadUsernameOrPassword, packets.ErrMalformedUsernameOrPassword.Code, "bad user name or password"}
}

func notAuthorized(reason, detail string) *refusal {
	return &refusal{reason, packets.ErrNotAuthorized, packets.Err3NotAuthorized.Code, detail}
}

func (h *authHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if h.users == nil {
		return nil
	}
	addr := cl.Net.Remote
	if d := h.throttle.Delay(addr); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-h.done:
			t.Stop()
			return packets.ErrServerShuttingDown
		}
	}
	users := h.users.Load()
	name, _, ref := h.authenticate(cl, pk, users)
	if ref != nil {
		h.throttle.Failed(addr)
	} else {
		// Not a failure the throttle counts: the credentials were good,
		// and counting it would slow the logins of the client id's owner,
		// and of everyone behind its address, for as long as another
		// user's session holds the id.
		ref = h.checkSessionOwner(cl.ID, name)
	}
	if ref == nil {
		// ACL checks and %u read the name from here. A success does not
		// clear the address's failures: one valid account must not reset
		// the throttle for guesses at another; failures expire instead.
		cl.Properties.Username = []byte(name)
		if g, ok := cl.Net.Conn.(*guardConn); ok {
			g.login = users
		}
		return nil
	}
	h.failures[ref.reason].Inc()
	h.log.Warn("MQTT login refused", "reason", ref.reason, "detail", ref.detail,
		"remote", addr, "listener", cl.Net.Listener, "client", cl.ID, "username", string(pk.Connect.Username))
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: ref.code3}
	if cl.Properties.ProtocolVersion == 5 {
		ack.ReasonCode = ref.code5.Code
		ack.Properties.ReasonString = ref.detail
	}
	if err := cl.WritePacket(ack); err != nil {
		h.log.Debug("writing a refusing CONNACK", "client", cl.ID, "error", err)
	}
	return ref.code5
}

// authenticate decides who the client is, by the users file given.
// credentialed reports a login by password or certificate rather than an
// anonymous one.
func (h *authHook) authenticate(cl *mqtt.Client, pk packets.Packet, users *auth.Users) (name string, credentialed bool, ref *refusal) {
	given := string(pk.Connect.Username)
	cert, ok := h.certIdentity(cl, users)
	foreign := ""
	if ok {
		if foreign = h.foreignOrigin(cl); foreign != "" {
			ok = false
		}
	}
	switch {
	case ok && given != "" && given != cert:
		return "", false, notAuthorized(reasonNotAuthorized,
			fmt.Sprintf("user name %q does not match the client certificate's identity %q", given, cert))
	case ok:
		name, credentialed = cert, true
	case pk.Connect.UsernameFlag || pk.Connect.PasswordFlag:
		if !users.Authenticate(given, pk.Connect.Password) {
			return "", false, badCredentials()
		}
		name, credentialed = given, true
	case !users.AllowAnonymous() && foreign != "":
		return "", false, notAuthorized(reasonNotAuthorized, fmt.Sprintf(
			"a client certificate does not log in a web page from %q: add that origin to websocket.allowed_origins, or log in with a user name and password", foreign))
	case !users.AllowAnonymous():
		return "", false, notAuthorized(reasonAnonymousRefused, "anonymous connections are not allowed: log in with a user name and password")
	}
	// mochi publishes the will without an ACL check, so it is checked here;
	// an MQTT bridge's connection state is taken whatever the ACLs (see
	// mqttbridge.go).
	if pk.Connect.WillFlag && !isBridgeState(cl.ID, pk.Connect.WillTopic, pk.Connect.WillPayload) && !users.CanPublish(name, cl.ID, pk.Connect.WillTopic) {
		return "", false, notAuthorized(reasonNotAuthorized, fmt.Sprintf("not authorized to publish the will message to %q", pk.Connect.WillTopic))
	}
	return name, credentialed, nil
}

// checkSessionOwner refuses a client id whose connection or kept session
// belongs to another user: mochi would hand the new connection that
// session's subscriptions and queued messages (which were checked against
// the owner's ACLs, not the newcomer's), and taking the id over would also
// disconnect the owner.
func (h *authHook) checkSessionOwner(id, name string) *refusal {
	if h.client == nil {
		return nil
	}
	old, ok := h.client(id)
	if !ok || old == nil || string(old.Properties.Username) == name {
		return nil
	}
	return notAuthorized(reasonNotAuthorized, fmt.Sprintf("client id %q belongs to another user's session", id))
}

// foreignOrigin returns the Origin of the web page that opened cl's
// MQTT-over-WebSocket connection when that origin is neither the
// listener's own host nor one of certOrigins; "" for every other client.
// Only what a browser sends counts as a web page's origin: http or https,
// or "null" for a page without one. Other values come from clients that
// are not browsers (some device libraries send "file://"), which present
// a certificate only because they were given one.
func (h *authHook) foreignOrigin(cl *mqtt.Client) string {
	ws, ok := connIn[*wsConn](cl.Net.Conn)
	if !ok || !browserOrigin(ws.origin) || auth.OriginAllowed(ws.origin, ws.host, h.certOrigins) {
		return ""
	}
	return ws.origin
}

// browserOrigin reports whether origin is an Origin header a browser
// sends for a web page.
func browserOrigin(origin string) bool {
	scheme, _, ok := strings.Cut(origin, "://")
	return origin == "null" || ok && (strings.EqualFold(scheme, "http") || strings.EqualFold(scheme, "https"))
}

func (h *authHook) certIdentity(cl *mqtt.Client, users *auth.Users) (string, bool) {
	if h.certName == nil {
		return "", false
	}
	name, ok := h.certName(cl)
	return name, ok && users.Known(name)
}

// OnConnectAuthenticate lets in every client that reaches it: mochi calls
// it only after every OnConnect hook returned nil, and OnConnect is where
// the login was decided.
func (h *authHook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

// OnACLCheck checks a publish (write) or a subscription filter against the
// ACLs. mochi also calls it with write false for each message it delivers
// to a subscriber, with the topic name. A publish refused here never
// reaches the OnPublish hooks, so it never reaches Kafka.
//
// Once the ingest checks publishes itself (takePublishChecks), a publish
// passes here: mochi would answer a refused one at once, its PUBACK 0x87
// overtaking the acknowledgements of earlier publishes still awaiting
// Kafka, whereas the ingest refuses it in its turn.
func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if write && h.publishesChecked {
		return true
	}
	return h.allowed(cl, topic, write)
}

// takePublishChecks hands the ACL check of client publishes to the
// caller, which must call the function returned for every publish of a
// client that is not inline, and refuse it when that returns false; a
// refusal is counted and logged by that call. It must be called before
// the server serves.
func (h *authHook) takePublishChecks() func(cl *mqtt.Client, topic string) bool {
	h.publishesChecked = true
	return func(cl *mqtt.Client, topic string) bool { return h.allowed(cl, topic, true) }
}

// allowed applies the ACLs in force, and counts and logs a refusal.
func (h *authHook) allowed(cl *mqtt.Client, topic string, write bool) bool {
	users := h.users.Load()
	if users == nil || cl.Net.Inline {
		return true
	}
	user := string(cl.Properties.Username)
	var ok bool
	if write {
		ok = users.CanPublish(user, cl.ID, topic)
	} else {
		ok = users.CanSubscribe(user, cl.ID, topic)
	}
	if !ok {
		action := "subscribe"
		if write {
			h.denied[1].Inc()
			action = "publish"
		} else {
			h.denied[0].Inc()
		}
		if h.denyLog.Allow() {
			h.log.Warn("MQTT "+action+" refused by the ACLs (logged at most every 10s)",
				"client", cl.ID, "username", user, "topic", topic, "remote", cl.Net.Remote)
		}
	}
	return ok
}

// OnPacketRead fills in the topic of an MQTT 5 publish that gives only a
// topic alias. mochi checks the ACL before it resolves the alias, so it
// would check the empty topic, and refuse a publish to an allowed topic.
// (The ingest, when it checks publishes, gets them with the alias
// resolved.)
func (h *authHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Publish || pk.TopicName != "" || !pk.Properties.TopicAliasFlag || pk.Properties.TopicAlias == 0 {
		return pk, nil
	}
	if h.Opts == nil || pk.Properties.TopicAlias > h.Opts.Capabilities.TopicAliasMaximum {
		return pk, nil // mochi refuses it
	}
	// For an alias not seen yet Set records "" and returns it, as mochi
	// itself would a moment later.
	pk.TopicName = cl.State.TopicAliases.Inbound.Set(pk.Properties.TopicAlias, "")
	return pk, nil
}

// revokedCode ends the connection of a client whose login a reloaded users
// file no longer allows; MQTT 5 clients get it as DISCONNECT 0x87 with
// this reason string.
var revokedCode = packets.Code{Code: packets.ErrNotAuthorized.Code, Reason: "not authorized: the reloaded users file no longer allows this login"}

// OnSessionEstablished repeats against the file now in force the check
// that revoke makes after a reload. A login decided by the file before a
// reload, of a client that mochi listed only after revoke had looked at
// the list, would otherwise stay; the two are moments apart. Whether the
// name is still admitted, and whether its password changed since the
// file the login was decided by, are checked here, and whether the will
// is still allowed. So are the
// subscriptions of a session it resumed: mochi may have copied them from
// the kept session before a reload's revoke dropped them there.
func (h *authHook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	users := h.users.Load()
	if users == nil || cl.Net.Inline {
		return
	}
	if pk.Connect.WillFlag {
		h.wills.Store(cl, pk.Connect.WillTopic)
	}
	// The file the login was decided by: a password changed since (a
	// reload revoke did not see this client for) ends the login too.
	var login *auth.Users
	if g, ok := cl.Net.Conn.(*guardConn); ok {
		login, g.login = g.login, nil
	}
	if !users.Revokes(login, string(cl.Properties.Username)) {
		h.recheckWill(users, cl)
		h.dropSubscriptions(users, cl)
		return
	}
	h.log.Info("disconnecting MQTT client: the users file was reloaded while it logged in and no longer allows its login",
		"client", cl.ID, "username", string(cl.Properties.Username), "remote", cl.Net.Remote)
	h.endLogin(cl)
}

// OnDisconnect forgets the connection's will topic.
func (h *authHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	h.wills.Delete(cl)
}

// revoke disconnects the clients (the server's client list) whose login
// the users file in force no longer allows, now that it replaced old (see
// auth.Users.Revokes), and returns how many it disconnected. Of the
// others, a will the file no longer allows is forgotten. Kept
// sessions of clients not connected stay until they expire: nobody can
// log in to them as a user the file no longer has. Every listed client,
// connected or not, loses the subscriptions the file no longer allows
// (dropSubscriptions).
func (h *authHook) revoke(old *auth.Users, clients map[string]*mqtt.Client) int {
	users := h.users.Load()
	if users == nil {
		return 0
	}
	var wg sync.WaitGroup
	n := 0
	for _, cl := range clients {
		if cl.Net.Inline {
			continue
		}
		h.dropSubscriptions(users, cl)
		if cl.Closed() {
			h.dropQueued(users, cl)
			continue
		}
		if !users.Revokes(old, string(cl.Properties.Username)) {
			h.recheckWill(users, cl)
			continue
		}
		n++
		h.log.Debug("disconnecting MQTT client: the reloaded users file no longer allows its login",
			"client", cl.ID, "username", string(cl.Properties.Username), "remote", cl.Net.Remote)
		// A client that does not read its socket would hold the
		// DISCONNECT's write, and the client's lock, indefinitely: the
		// deadline ends it, and each client gets its own goroutine so
		// that one cannot hold up the rest.
		h.ended(cl) // first: see ingest.completeAll
		_ = cl.Net.Conn.SetWriteDeadline(time.Now().Add(endingWriteTimeout))
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.endLogin(cl)
		}()
	}
	wg.Wait()
	return n
}

// dropSubscriptions removes the subscriptions of cl that users does not
// allow: all of them when it no longer admits cl's user, else those whose
// filter the user may no longer subscribe to. Each delivery is checked
// against the file in force anyway, but a subscription left in place
// still counts as a member of its shared subscription group: mochi would
// pick it for a share of the group's messages, which the delivery check
// then refuses, and the message would reach no member at all. A user who
// may subscribe again later subscribes again.
func (h *authHook) dropSubscriptions(users *auth.Users, cl *mqtt.Client) {
	if h.server == nil {
		return
	}
	user := string(cl.Properties.Username)
	admitted := users.Admits(user)
	var dropped []string
	for filter := range cl.State.Subscriptions.GetAll() {
		if admitted && users.CanSubscribe(user, cl.ID, filter) {
			continue
		}
		unsubscribe(h.server, cl, filter)
		dropped = append(dropped, filter)
	}
	if len(dropped) > 0 {
		h.log.Info("dropping MQTT subscriptions the reloaded users file no longer allows",
			"client", cl.ID, "username", user, "connected", !cl.Closed(), "filters", dropped)
	}
}

// dropQueued removes, from the kept session of a client not connected,
// the QoS 1 and 2 messages queued for it that users no longer lets it
// read. mochi sends a resumed session its queue with no ACL check, so
// these would otherwise reach a login whose right to read them the reload
// took away. A session resuming during the reload may have copied its
// queue before this runs.
func (h *authHook) dropQueued(users *auth.Users, cl *mqtt.Client) {
	if h.server == nil {
		return
	}
	user := string(cl.Properties.Username)
	admitted := users.Admits(user)
	queued := cl.State.Inflight.GetAll(false)
	// A message sent with a topic alias the client already knows is kept
	// with no topic name: its topic is that of a message queued with the
	// name and the same alias (mochi never reassigns one of a connection's
	// aliases). One whose topic cannot be told is kept unless the user is
	// gone.
	aliased := map[uint16]string{}
	for _, pk := range queued {
		if pk.FixedHeader.Type == packets.Publish && pk.TopicName != "" && pk.Properties.TopicAlias > 0 {
			aliased[pk.Properties.TopicAlias] = pk.TopicName
		}
	}
	dropped := 0
	for _, pk := range queued {
		if pk.FixedHeader.Type != packets.Publish {
			continue
		}
		topic := pk.TopicName
		if topic == "" {
			topic = aliased[pk.Properties.TopicAlias]
		}
		if admitted && (topic == "" || users.CanSubscribe(user, cl.ID, topic)) {
			continue
		}
		if cl.State.Inflight.Delete(pk.PacketID) {
			atomic.AddInt64(&h.server.Info.Inflight, -1)
			dropped++
		}
	}
	if dropped > 0 {
		h.log.Info("dropping messages queued for a kept MQTT session that the reloaded users file no longer lets it read",
			"client", cl.ID, "username", user, "messages", dropped)
	}
}

// unsubscribe removes one subscription of a client the server lists, as
// an UNSUBSCRIBE of that filter would. Only a subscription the client
// still holds is removed: mochi's index reports a filter removed whenever
// another client holds it too, and the server's count of subscriptions
// (Info.Subscriptions, see OnUnsubscribe) must not go down for one that
// was already gone.
func unsubscribe(server *mqtt.Server, cl *mqtt.Client, filter string) {
	if _, ok := cl.State.Subscriptions.Get(filter); !ok {
		return
	}
	if server.Topics.Unsubscribe(filter, cl.ID) {
		atomic.AddInt64(&server.Info.Subscriptions, -1)
	}
	cl.State.Subscriptions.Delete(filter)
}

// willAllowed reports whether the users file in force lets cl's login
// publish a will to topic (see willPermitted).
func (h *authHook) willAllowed(cl *mqtt.Client, topic string) bool {
	return willPermitted(h.users.Load(), cl, topic)
}

// willPermitted reports whether users lets cl's login publish a will to
// topic: the login still admitted, and the topic allowed to its user (an
// MQTT bridge's connection state always is).
func willPermitted(users *auth.Users, cl *mqtt.Client, topic string) bool {
	if users == nil || bridgeStateTopic(cl.ID, topic) {
		return true
	}
	user := string(cl.Properties.Username)
	return users.Admits(user) && users.CanPublish(user, cl.ID, topic)
}

// recheckWill forgets the will of a connection that stays logged in when
// the reloaded users file no longer lets its user publish to the will's
// topic: mochi sends a will with no ACL check when the connection drops,
// and the file in force decides every publish. The connection goes on.
func (h *authHook) recheckWill(users *auth.Users, cl *mqtt.Client) {
	v, ok := h.wills.Load(cl)
	if !ok || atomic.LoadUint32(&cl.Properties.Will.Flag) == 0 {
		return
	}
	topic := v.(string)
	if willPermitted(users, cl, topic) {
		return
	}
	atomic.StoreUint32(&cl.Properties.Will.Flag, 0)
	h.log.Info("forgetting an MQTT client's will: the reloaded users file does not let its user publish to the will's topic; the connection stays open",
		"client", cl.ID, "username", string(cl.Properties.Username), "will_topic", topic)
}

// endLogin disconnects a client whose login is no longer allowed: MQTT 5
// clients are told why first, as mochi's DisconnectClient would. Its will
// is not published: it was accepted for a login that is no longer allowed.
func (h *authHook) endLogin(cl *mqtt.Client) {
	h.ended(cl)
	atomic.StoreUint32(&cl.Properties.Will.Flag, 0) // mochi reads it atomically before sending a will
	if cl.Properties.ProtocolVersion == 5 {
		_ = cl.WritePacket(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Disconnect},
			ReasonCode:  revokedCode.Code,
			Properties:  packets.Properties{ReasonString: revokedCode.Reason},
		})
	}
	cl.Stop(revokedCode)
	h.ended(cl) // a session the read loop started meanwhile
}
