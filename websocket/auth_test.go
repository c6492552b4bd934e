package websocket

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tributary-io/tributary/auth"
)

func testUsers(t *testing.T, body string) *auth.Users {
	t.Helper()
	h, err := auth.HashPassword([]byte("pw"))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "users.yaml")
	if err := os.WriteFile(p, []byte(body+"users:\n  - {username: u, password_hash: \""+h+"\"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	u, err := auth.LoadUsers(p)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func guarded(a *Authenticator) http.Handler {
	return a.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) }))
}

// allow_anonymous is for MQTT devices: the HTTP side still needs credentials.
func TestHTTPIgnoresAllowAnonymous(t *testing.T) {
	a := NewAuthenticator(AuthConfig{Users: auth.NewLive(testUsers(t, "allow_anonymous: true\n"))}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	rec := httptest.NewRecorder()
	guarded(a).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusUnauthorized {
		t.Fatalf("anonymous request with allow_anonymous: %d, want 401", rec.Code)
	}
	req := httptest.NewRequest("GET", "/metrics", nil)
	req.SetBasicAuth("u", "pw")
	rec = httptest.NewRecorder()
	guarded(a).ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("with credentials: %d", rec.Code)
	}
}

// After failures, an address waits before its credentials are checked,
// right or wrong, and a success does not reset the count.
func TestHTTPThrottleWaitsBeforeChecking(t *testing.T) {
	th := auth.NewThrottle(auth.ThrottleConfig{Failures: 1, Delay: 300 * time.Millisecond, MaxDelay: 300 * time.Millisecond})
	a := NewAuthenticator(AuthConfig{Users: auth.NewLive(testUsers(t, "")), Throttle: th}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	do := func(pass string) (int, time.Duration) {
		req := httptest.NewRequest("GET", "/x", nil)
		req.RemoteAddr = "192.0.2.9:1234"
		req.SetBasicAuth("u", pass)
		rec := httptest.NewRecorder()
		start := time.Now()
		guarded(a).ServeHTTP(rec, req)
		return rec.Code, time.Since(start)
	}
	for range 2 {
		if code, _ := do("wrong"); code != http.StatusUnauthorized {
			t.Fatalf("wrong password: %d", code)
		}
	}
	for range 2 {
		code, took := do("pw")
		if code != http.StatusOK || took < 250*time.Millisecond {
			t.Fatalf("right password after failures: %d after %s, want 200 after the throttle's delay", code, took)
		}
	}
}

// After a reload, a socket's credentials are checked again: a basic login
// whose user was removed, and a token no longer listed, are revoked; a
// token does not depend on its user being in the users file.
func TestRevokedAfterReload(t *testing.T) {
	users := auth.NewLive(testUsers(t, ""))
	tok, sum, err := auth.NewToken()
	if err != nil {
		t.Fatal(err)
	}
	loadTokens := func(body string) *auth.Tokens {
		p := filepath.Join(t.TempDir(), "tokens.yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		tokens, err := auth.LoadTokens(p)
		if err != nil {
			t.Fatal(err)
		}
		return tokens
	}
	tokens := auth.NewLive(loadTokens("tokens:\n  - {name: ci, user: u, sha256: " + sum + "}\n"))
	a := NewAuthenticator(AuthConfig{Users: users, Tokens: tokens}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	login := func(set func(*http.Request)) context.Context {
		t.Helper()
		var ctx context.Context
		req := httptest.NewRequest("GET", "/socket/in", nil)
		set(req)
		rec := httptest.NewRecorder()
		a.wrap(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { ctx = r.Context() })).ServeHTTP(rec, req)
		if ctx == nil {
			t.Fatalf("login refused: %d", rec.Code)
		}
		return ctx
	}
	basic := login(func(r *http.Request) { r.SetBasicAuth("u", "pw") })
	bearer := login(func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) })
	for name, ctx := range map[string]context.Context{"basic": basic, "token": bearer} {
		if why := a.revoked(ctx); why != "" {
			t.Fatalf("%s login revoked before any reload: %s", name, why)
		}
	}

	users.Swap(testUsers(t, "")) // the same user, a new hash of the same password
	if why := a.revoked(basic); !strings.Contains(why, `"u"`) {
		t.Fatalf("basic login after u's password hash changed: %q, want it revoked naming u", why)
	}
	if why := a.revoked(bearer); why != "" {
		t.Fatalf("token login revoked by a users file change: %s", why)
	}
	tokens.Swap(loadTokens("tokens:\n  - {name: ci, user: other, sha256: " + sum + "}\n"))
	if why := a.revoked(bearer); why == "" {
		t.Fatal("a token now listed for another user still stands")
	}
	tokens.Swap(loadTokens("tokens: []\n"))
	if why := a.revoked(bearer); !strings.Contains(why, "tokens file") {
		t.Fatalf("a removed token: %q, want it revoked", why)
	}
}

// Sockets of two users are never one session, whatever their names and
// clientIds hold: user "a" with clientId "b/x" does not replace user
// "a/b"'s socket with clientId "x".
func TestSessionKeySeparatesUsers(t *testing.T) {
	key := func(user, clientID string) string {
		r := httptest.NewRequest(http.MethodGet, "/socket/in", nil)
		r = r.WithContext(context.WithValue(r.Context(), userKey{}, principal{user: user, method: "basic"}))
		return sessionKey("in", r, clientID)
	}
	for _, pair := range [][2][2]string{
		{{"a", "b/x"}, {"a/b", "x"}},
		{{"a", `b" "x`}, {`a" "b`, "x"}},
		{{"a", "b x"}, {"a b", "x"}},
	} {
		k1, k2 := key(pair[0][0], pair[0][1]), key(pair[1][0], pair[1][1])
		if k1 == k2 {
			t.Fatalf("user %q clientId %q and user %q clientId %q share the session key %q", pair[0][0], pair[0][1], pair[1][0], pair[1][1], k1)
		}
	}
	if key("a", "c") != key("a", "c") {
		t.Fatal("one user's one clientId gives two keys")
	}
}
