package auth

import (
	"net/url"
	"strings"
)

// OriginAllowed reports whether a browser page from origin (the request's
// Origin header) may use a WebSocket on host (the request's Host): no
// Origin (not a browser), the server's own host, or an entry of allowed
// ("https://app.example.com", a bare "app.example.com:8443", or "*").
// An Origin that does not parse is not allowed.
func OriginAllowed(origin, host string, allowed []string) bool {
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil {
		return false
	}
	if strings.EqualFold(u.Host, host) {
		return true
	}
	for _, o := range allowed {
		o = strings.TrimSuffix(strings.TrimSpace(o), "/")
		if o == "*" || strings.EqualFold(o, origin) || strings.EqualFold(o, u.Host) {
			return true
		}
	}
	return false
}
