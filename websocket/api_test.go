package websocket

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// A request the upgrader refuses gets a plain-text answer saying what is
// wrong: a plain GET (a browser tab, curl) that this is a WebSocket
// endpoint and where the API is described, with 426 Upgrade Required; a
// refused origin which setting allows it, still with 403.
func TestUpgradeRefusals(t *testing.T) {
	a := NewAPI(APIConfig{AllowedOrigins: []string{"https://app.example.com"}}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	mux := http.NewServeMux()
	a.routes(mux, func(h http.Handler) http.Handler { return h })
	upgrade := http.Header{
		"Connection":            {"Upgrade"},
		"Upgrade":               {"websocket"},
		"Sec-Websocket-Version": {"13"},
		"Sec-Websocket-Key":     {"dGhlIHNhbXBsZSBub25jZQ=="},
	}
	with := func(h http.Header, k, v string) http.Header {
		h = h.Clone()
		h.Set(k, v)
		return h
	}
	cases := []struct {
		name   string
		path   string
		header http.Header
		status int
		want   []string // each in the body
	}{
		{"plain GET produce", "/socket/in?clientId=c&topic=t", nil, http.StatusUpgradeRequired, []string{"/socket/in", "WebSocket upgrade", "docs/websocket.md"}},
		{"plain GET consume", "/socket/out?clientId=c&topic=t", nil, http.StatusUpgradeRequired, []string{"/socket/out", "WebSocket upgrade", "docs/websocket.md"}},
		{"plain GET, no parameters", "/socket/in", nil, http.StatusUpgradeRequired, []string{"/socket/in", "WebSocket upgrade"}},
		{"Connection: upgrade to another protocol", "/socket/in", http.Header{"Connection": {"Upgrade"}, "Upgrade": {"h2c"}}, http.StatusUpgradeRequired, []string{"WebSocket upgrade"}},
		{"origin refused", "/socket/in?clientId=c&topic=t", with(upgrade, "Origin", "https://evil.example"), http.StatusForbidden, []string{`"https://evil.example"`, "websocket.allowed_origins"}},
		{"unsupported version", "/socket/out?clientId=c&topic=t", with(upgrade, "Sec-Websocket-Version", "8"), http.StatusBadRequest, []string{"Sec-Websocket-Version"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", tc.path, nil)
			for k, v := range tc.header {
				req.Header[k] = v
			}
			rec := httptest.NewRecorder()
			mux.ServeHTTP(rec, req)
			body := rec.Body.String()
			if rec.Code != tc.status {
				t.Fatalf("status %d, body %q; want %d", rec.Code, body, tc.status)
			}
			if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
				t.Fatalf("Content-Type %q, want plain text", ct)
			}
			for _, w := range tc.want {
				if !strings.Contains(body, w) {
					t.Fatalf("body %q does not name %q", body, w)
				}
			}
			if tc.status == http.StatusUpgradeRequired && rec.Header().Get("Upgrade") != "websocket" {
				t.Fatalf("426 with Upgrade %q, want websocket", rec.Header().Get("Upgrade"))
			}
		})
	}
}
