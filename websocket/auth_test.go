package websocket

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
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
	a := NewAuthenticator(AuthConfig{Users: testUsers(t, "allow_anonymous: true\n")}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
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
	a := NewAuthenticator(AuthConfig{Users: testUsers(t, ""), Throttle: th}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
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
