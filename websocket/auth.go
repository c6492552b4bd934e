package websocket

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tributary-io/tributary/auth"
)

// AuthConfig configures who may use the HTTP API. With neither Users nor
// Tokens set, everyone may. Both hold the file in force, which a reload
// may replace: each request is checked against the file in force when it
// arrives, and API.Revoke closes the open sockets a new file no longer
// allows.
type AuthConfig struct {
	// Users authenticates HTTP Basic credentials and holds the per-user
	// Kafka topic ACLs. Its allow_anonymous does not apply to HTTP.
	Users *auth.Live[auth.Users]
	// Tokens authenticates bearer tokens: an "Authorization: Bearer"
	// header, an access_token query parameter, or, for browsers, a
	// Sec-WebSocket-Protocol entry "bearer.<token>" offered beside
	// "tributary".
	Tokens *auth.Live[auth.Tokens]
	// Metrics requires credentials for /metrics too.
	Metrics bool
	// Throttle slows down addresses with repeated failures.
	Throttle *auth.Throttle
}

func (c AuthConfig) enabled() bool { return c.Users != nil || c.Tokens != nil }

// TokenSubprotocol is the Sec-WebSocket-Protocol a browser offers beside
// "bearer.<token>"; the server selects it, so the token is never echoed.
const TokenSubprotocol = "tributary"

const tokenProtocolPrefix = "bearer."

type userKey struct{}

// principal is who made a request: a user name ("" for anonymous) and
// how they proved it, with what a socket needs to check after a reload
// that the proof still stands.
type principal struct {
	user   string
	method string        // "basic", "token" or "none" (no auth configured)
	users  *auth.Users   // basic: the users file that accepted the password
	token  auth.TokenSum // token: the token's hash
}

func userOf(ctx context.Context) principal {
	p, _ := ctx.Value(userKey{}).(principal)
	return p
}

type authMetrics struct {
	failures *prometheus.CounterVec
	denied   *prometheus.CounterVec
}

func newAuthMetrics(reg prometheus.Registerer) *authMetrics {
	m := &authMetrics{
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tributary", Subsystem: "http", Name: "auth_failures_total",
			Help: "HTTP API requests refused for missing or wrong credentials, by reason.",
		}, []string{"reason"}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tributary", Subsystem: "http", Name: "acl_denied_total",
			Help: "WebSocket API sockets refused by the Kafka topic ACLs, by action (produce, consume).",
		}, []string{"action"}),
	}
	reg.MustRegister(m.failures, m.denied)
	return m
}

// Authenticator checks the credentials of HTTP API requests; one is
// shared by the server (for /metrics and pprof) and the WebSocket API.
type Authenticator struct {
	cfg AuthConfig
	log *slog.Logger
	m   *authMetrics
}

// NewAuthenticator builds the authenticator; its metrics go to reg.
func NewAuthenticator(cfg AuthConfig, reg prometheus.Registerer, log *slog.Logger) *Authenticator {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	return &Authenticator{cfg: cfg, log: log, m: newAuthMetrics(reg)}
}

// Enabled reports whether credentials are checked at all.
func (a *Authenticator) Enabled() bool { return a != nil && a.cfg.enabled() }

// wrap authenticates each request before next sees it; the principal is
// in the request's context.
func (a *Authenticator) wrap(next http.Handler) http.Handler {
	if !a.Enabled() {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), userKey{}, principal{method: "none"})))
		})
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// An address with recent failures waits before its credentials
		// are even checked, so guessing is slowed whatever the answer.
		if d := a.cfg.Throttle.Delay(r.RemoteAddr); d > 0 && hasCredentials(r) {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return
			}
		}
		p, reason := a.authenticate(r)
		if reason != "" {
			a.m.failures.WithLabelValues(reason).Inc()
			if reason != "missing" {
				a.cfg.Throttle.Failed(r.RemoteAddr)
			}
			a.log.Info("HTTP API request refused", "reason", reason, "remote", r.RemoteAddr, "path", r.URL.Path, "user", p.user)
			w.Header().Add("WWW-Authenticate", `Basic realm="tributary", charset="UTF-8"`)
			w.Header().Add("WWW-Authenticate", `Bearer realm="tributary"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			msg := "authentication required: HTTP Basic, a bearer token (Authorization header, access_token parameter, or Sec-WebSocket-Protocol bearer.<token>)"
			if reason != "missing" {
				msg = "wrong credentials (" + strings.ReplaceAll(reason, "_", " ") + ")"
			}
			_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"code": CodeUnauthorized, "message": msg}})
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), userKey{}, p)))
	})
}

// hasCredentials reports whether a request carries any form of them.
func hasCredentials(r *http.Request) bool {
	if r.Header.Get("Authorization") != "" || r.URL.Query().Get("access_token") != "" {
		return true
	}
	for _, p := range websocketProtocols(r) {
		if strings.HasPrefix(p, tokenProtocolPrefix) {
			return true
		}
	}
	return false
}

// authenticate finds the request's credentials and checks them. reason is
// "" on success, else "missing", "bad_credentials" or "bad_token".
func (a *Authenticator) authenticate(r *http.Request) (principal, string) {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, rest, _ := strings.Cut(h, " ")
		switch strings.ToLower(scheme) {
		case "basic":
			user, pass, ok := r.BasicAuth()
			if !ok {
				return principal{}, "bad_credentials"
			}
			users := a.cfg.Users.Load()
			if users == nil || !users.Authenticate(user, []byte(pass)) {
				return principal{user: user}, "bad_credentials"
			}
			return principal{user: user, method: "basic", users: users}, ""
		case "bearer":
			return a.token(strings.TrimSpace(rest))
		default:
			return principal{}, "bad_credentials"
		}
	}
	if tok := r.URL.Query().Get("access_token"); tok != "" {
		return a.token(tok)
	}
	for _, p := range websocketProtocols(r) {
		if strings.HasPrefix(p, tokenProtocolPrefix) {
			return a.token(strings.TrimPrefix(p, tokenProtocolPrefix))
		}
	}
	// The users file's allow_anonymous is for MQTT devices: the HTTP API,
	// /metrics and pprof always need credentials once any are configured.
	return principal{}, "missing"
}

func (a *Authenticator) token(tok string) (principal, string) {
	if tok == "" {
		return principal{}, "bad_token"
	}
	sum := auth.SumToken(tok)
	user, _, ok := a.cfg.Tokens.Load().LookupSum(sum)
	if !ok {
		return principal{}, "bad_token"
	}
	return principal{user: user, method: "token", token: sum}, ""
}

// revoked says why the files in force no longer accept the credentials a
// socket was opened with, or returns "" when they still do: a basic login
// whose user the users file no longer has or whose password changed (see
// auth.Users.Revokes), or a token no longer listed for the same user.
func (a *Authenticator) revoked(ctx context.Context) string {
	if !a.Enabled() {
		return ""
	}
	p := userOf(ctx)
	switch p.method {
	case "basic":
		if a.cfg.Users.Load().Revokes(p.users, p.user) {
			return "the reloaded users file no longer allows user " + strconv.Quote(p.user) + " to log in"
		}
	case "token":
		if user, _, ok := a.cfg.Tokens.Load().LookupSum(p.token); !ok || user != p.user {
			return "the token is no longer in the reloaded tokens file"
		}
	}
	return ""
}

func websocketProtocols(r *http.Request) []string {
	var out []string
	for _, h := range r.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(h, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

// canProduce and canConsume apply the users file's Kafka topic ACLs.
func (a *Authenticator) canProduce(ctx context.Context, topic string) bool {
	p := userOf(ctx)
	if !a.Enabled() || p.method == "none" {
		return true
	}
	return a.cfg.Users.Load().CanProduce(p.user, topic)
}

func (a *Authenticator) canConsume(ctx context.Context, topic string) bool {
	p := userOf(ctx)
	if !a.Enabled() || p.method == "none" {
		return true
	}
	return a.cfg.Users.Load().CanConsume(p.user, topic)
}

// sessionKey names a socket for the clientId replacement rule: per
// authenticated user, so that one user cannot close another's socket by
// reusing its clientId. The user and clientId are quoted: joined with a
// separator they may hold themselves, user "a" with clientId "b/x" and
// user "a/b" with clientId "x" would share a key.
func sessionKey(path string, r *http.Request, clientID string) string {
	return path + " " + strconv.Quote(userOf(r.Context()).user) + " " + strconv.Quote(clientID)
}

// consumerGroup applies the per-user naming of consumer groups that comes
// with Kafka topic ACLs: a user's groups are named after the user, so
// that a user allowed to read a topic cannot join (and commit for) a
// group some other consumer of that topic uses. Without a groupId the
// group is "<user>.<clientId>". ok is false for a group outside the
// user's names.
func (a *Authenticator) consumerGroup(ctx context.Context, groupID, clientID string, given bool) (string, bool) {
	p := userOf(ctx)
	if !a.Enabled() || !a.cfg.Users.Load().KafkaACLs() || p.method == "none" {
		return groupID, true
	}
	if !given {
		return p.user + "." + clientID, true
	}
	return groupID, groupID == p.user || strings.HasPrefix(groupID, p.user+".")
}
