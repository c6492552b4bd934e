package auth

import "testing"

func TestOriginAllowed(t *testing.T) {
	allowed := []string{"https://app.example.com/", " dash.example.com:8443 "}
	for _, tc := range []struct {
		origin, host string
		allowed      []string
		want         bool
	}{
		{"", "mqtt.example.com:8084", nil, true},
		{"https://mqtt.example.com:8084", "mqtt.example.com:8084", nil, true},
		{"https://MQTT.example.com:8084", "mqtt.example.com:8084", nil, true},
		{"https://mqtt.example.com", "mqtt.example.com:8084", nil, false},
		{"https://evil.example", "mqtt.example.com:8084", nil, false},
		{"https://evil.example", "mqtt.example.com:8084", allowed, false},
		{"https://app.example.com", "mqtt.example.com:8084", allowed, true},
		{"http://app.example.com", "mqtt.example.com:8084", allowed, false},
		{"https://dash.example.com:8443", "mqtt.example.com:8084", allowed, true},
		{"https://dash.example.com", "mqtt.example.com:8084", allowed, false},
		{"https://evil.example", "mqtt.example.com:8084", []string{"*"}, true},
		{"null", "mqtt.example.com:8084", allowed, false},
		{"://bad", "mqtt.example.com:8084", []string{"*"}, false},
	} {
		if got := OriginAllowed(tc.origin, tc.host, tc.allowed); got != tc.want {
			t.Errorf("OriginAllowed(%q, %q, %q) = %v, want %v", tc.origin, tc.host, tc.allowed, got, tc.want)
		}
	}
}
