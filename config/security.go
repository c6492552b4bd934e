package config

import (
	"errors"
	"io/fs"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/tributary-io/tributary/auth"
	"github.com/tributary-io/tributary/certs"
)

// TLSConfig is the server certificate shared by every TLS listener
// (mqtt.tls_addr, mqtt.wss_addr, http.tls_addr). The files are re-read on
// SIGHUP and when they change; a broken new file keeps the old one.
type TLSConfig struct {
	// CertFile is the PEM server certificate (with its chain). Default empty.
	CertFile string `yaml:"cert_file"`
	// KeyFile is the PEM private key of CertFile. Default empty.
	KeyFile string `yaml:"key_file"`
	// ClientCAFile is a PEM bundle of CAs that client certificates are
	// verified against. Default empty: client certificates are not asked for.
	ClientCAFile string `yaml:"client_ca_file"`
	// ClientAuth is "request" (verify a certificate if the client sends
	// one) or "require" (refuse clients without a valid one). Default
	// "require" when ClientCAFile is set.
	ClientAuth string `yaml:"client_auth"`
	// ClientCertUsername is where an MQTT client's username comes from when
	// it presents a verified certificate: "cn", "san-dns", "san-email" or
	// "san-uri". Default "cn".
	ClientCertUsername string `yaml:"client_cert_username"`
	// ReloadInterval is how often the files are checked for changes, at
	// least 100ms; 0 reloads only on SIGHUP. Default 10s.
	ReloadInterval time.Duration `yaml:"reload_interval"`
}

// Enabled reports whether a server certificate is configured.
func (t TLSConfig) Enabled() bool { return t.CertFile != "" || t.KeyFile != "" }

// AuthConfig configures who may connect and what they may do.
type AuthConfig struct {
	// UsersFile is a YAML file of users (bcrypt password hashes, groups),
	// allow_anonymous and ACLs, used by MQTT and the HTTP API. Default
	// empty: no authentication.
	UsersFile string `yaml:"users_file"`
	// TokensFile is a YAML file of API bearer tokens (SHA-256 hashes) for
	// the HTTP and WebSocket API. Default empty.
	TokensFile string `yaml:"tokens_file"`
	// MetricsAuth requires credentials for /metrics too. Default false.
	MetricsAuth bool `yaml:"metrics_auth"`
}

// Enabled reports whether any authentication is configured.
func (a AuthConfig) Enabled() bool { return a.UsersFile != "" || a.TokensFile != "" }

// LimitsConfig bounds what clients may use. Zero means unlimited.
type LimitsConfig struct {
	// MaxConnections bounds MQTT connections across all MQTT listeners.
	// Default 0.
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerIP bounds MQTT connections from one source address.
	// Default 0.
	MaxConnectionsPerIP int `yaml:"max_connections_per_ip"`
	// ConnectionRatePerIP bounds new MQTT connections per second from one
	// source address. Default 0.
	ConnectionRatePerIP float64 `yaml:"connection_rate_per_ip"`
	// PublishRate bounds publishes per second per MQTT client. Past it an
	// MQTT 5 client is disconnected with reason code 0x96 (message rate
	// too high), its publish unacknowledged; an MQTT 3 client, which has
	// no such code, is read more slowly. Default 0.
	PublishRate float64 `yaml:"publish_rate"`
	// PublishBytesRate bounds payload bytes per second per MQTT client,
	// like PublishRate. Default 0.
	PublishBytesRate float64 `yaml:"publish_bytes_rate"`
}

func (c *Config) validateSecurity(add func(string, ...any)) {
	t := c.TLS
	tlsListeners := []struct{ key, addr string }{
		{"mqtt.tls_addr (--mqtt-tls-addr)", c.MQTT.TLSAddr},
		{"mqtt.wss_addr (--mqtt-wss-addr)", c.MQTT.WSSAddr},
		{"http.tls_addr (--http-tls-addr)", c.HTTP.TLSAddr},
	}
	for _, l := range tlsListeners {
		if l.addr != "" && !t.Enabled() {
			add("%s %q: needs a certificate: set tls.cert_file (--tls-cert-file) and tls.key_file (--tls-key-file)", l.key, l.addr)
		}
	}
	if t.Enabled() {
		if t.CertFile == "" {
			add("tls.key_file (--tls-key-file) is set but tls.cert_file (--tls-cert-file) is empty")
		}
		if t.KeyFile == "" {
			add("tls.cert_file (--tls-cert-file) is set but tls.key_file (--tls-key-file) is empty")
		}
	}
	// The files are read here too, so check-config finds a broken one;
	// each one missing or unreadable is named.
	readable := true
	for _, f := range []struct{ key, path string }{{"cert_file", t.CertFile}, {"key_file", t.KeyFile}, {"client_ca_file", t.ClientCAFile}} {
		if f.path == "" {
			continue
		}
		fh, err := os.Open(f.path)
		if err != nil {
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			add("tls.%s (--tls-%s) %q: %v", f.key, strings.ReplaceAll(f.key, "_", "-"), f.path, err)
			readable = false
			continue
		}
		fh.Close()
	}
	if readable && t.CertFile != "" && t.KeyFile != "" {
		// A client_auth problem is reported below, once.
		clientAuth := t.ClientAuth
		if clientAuth != "request" && clientAuth != "require" || t.ClientCAFile == "" {
			clientAuth = ""
		}
		_, err := certs.New(certs.Config{CertFile: t.CertFile, KeyFile: t.KeyFile, ClientCAFile: t.ClientCAFile, ClientAuth: clientAuth}, nil)
		var fe *certs.FileError
		switch {
		case errors.As(err, &fe):
			add("tls.%s (--tls-%s) %q: %v", fe.Key, strings.ReplaceAll(fe.Key, "_", "-"), fe.Path, fe.Err)
		case err != nil:
			add("tls: %v", err)
		}
	}
	if f := c.Auth.UsersFile; f != "" {
		if _, err := auth.LoadUsers(f); err != nil {
			add("auth.users_file (--users-file) %q: %v", f, err)
		}
	}
	if f := c.Auth.TokensFile; f != "" {
		if _, err := auth.LoadTokens(f); err != nil {
			add("auth.tokens_file (--tokens-file) %q: %v", f, err)
		}
	}
	switch t.ClientAuth {
	case "", "request", "require":
		if t.ClientAuth != "" && t.ClientCAFile == "" {
			add("tls.client_auth (--tls-client-auth) %q: needs tls.client_ca_file (--tls-client-ca-file) to verify client certificates against", t.ClientAuth)
		}
	default:
		add("tls.client_auth (--tls-client-auth) %q: must be request or require", t.ClientAuth)
	}
	if t.ClientCAFile != "" && !t.Enabled() {
		add("tls.client_ca_file (--tls-client-ca-file) is set but no server certificate (tls.cert_file, tls.key_file) is")
	}
	switch t.ClientCertUsername {
	case "", "cn", "san-dns", "san-email", "san-uri":
	default:
		add("tls.client_cert_username (--tls-client-cert-username) %q: must be cn, san-dns, san-email or san-uri", t.ClientCertUsername)
	}
	// The watcher re-reads and hashes the files every interval: at a
	// nanosecond it would do nothing else.
	if t.ReloadInterval < 0 || t.ReloadInterval > 0 && t.ReloadInterval < 100*time.Millisecond {
		add("tls.reload_interval (--tls-reload-interval) %s: must be 0 (SIGHUP only) or at least 100ms", t.ReloadInterval)
	}
	if c.Auth.MetricsAuth && !c.Auth.Enabled() {
		add("auth.metrics_auth (--metrics-auth) is true but neither auth.users_file nor auth.tokens_file is set")
	}
	l := c.Limits
	for _, v := range []struct {
		key string
		n   float64
	}{
		{"limits.max_connections (--max-connections)", float64(l.MaxConnections)},
		{"limits.max_connections_per_ip (--max-connections-per-ip)", float64(l.MaxConnectionsPerIP)},
		{"limits.connection_rate_per_ip (--connection-rate-per-ip)", l.ConnectionRatePerIP},
		{"limits.publish_rate (--publish-rate)", l.PublishRate},
		{"limits.publish_bytes_rate (--publish-bytes-rate)", l.PublishBytesRate},
	} {
		switch {
		case math.IsNaN(v.n) || math.IsInf(v.n, 0):
			add("%s %s: must be a finite number", v.key, strconv.FormatFloat(v.n, 'f', -1, 64))
		case v.n < 0:
			add("%s %s: must be 0 (unlimited) or more", v.key, strconv.FormatFloat(v.n, 'f', -1, 64))
		case v.n > 0 && v.n < 0.01:
			add("%s %s: must be 0 (unlimited) or at least 0.01", v.key, strconv.FormatFloat(v.n, 'f', -1, 64))
		}
	}
	if l.PublishBytesRate > 0 && l.PublishBytesRate < float64(c.Kafka.MaxMessageBytes) {
		add("limits.publish_bytes_rate (--publish-bytes-rate) %s: must be at least kafka.max_message_bytes (%d), or the largest allowed message could never pass",
			strconv.FormatFloat(l.PublishBytesRate, 'f', -1, 64), c.Kafka.MaxMessageBytes)
	}
	h := c.HTTP
	for _, v := range []struct {
		key string
		d   time.Duration
	}{
		{"http.read_header_timeout (--http-read-header-timeout)", h.ReadHeaderTimeout},
		{"http.read_timeout (--http-read-timeout)", h.ReadTimeout},
		{"http.write_timeout (--http-write-timeout)", h.WriteTimeout},
		{"http.idle_timeout (--http-idle-timeout)", h.IdleTimeout},
	} {
		if v.d <= 0 {
			add("%s %s: must be positive", v.key, v.d)
		}
	}
}

func float(flagName, key, usage string, field func(*Config) *float64) Setting {
	return Setting{
		Flag: flagName, Key: key, Usage: usage,
		set: func(c *Config, v string) error {
			f, err := strconv.ParseFloat(v, 64)
			*field(c) = f
			return err
		},
		get: func(c *Config) string { return strconv.FormatFloat(*field(c), 'f', -1, 64) },
	}
}

func securitySettings() []Setting {
	return []Setting{
		str("mqtt-tls-addr", "mqtt.tls_addr", "MQTT over TLS listen address (conventionally :8883); empty disables it",
			func(c *Config) *string { return &c.MQTT.TLSAddr }),
		str("mqtt-wss-addr", "mqtt.wss_addr", "MQTT over secure WebSocket listen address; empty disables it",
			func(c *Config) *string { return &c.MQTT.WSSAddr }),
		str("http-tls-addr", "http.tls_addr", "HTTPS (and WSS for the WebSocket API) listen address; empty disables it",
			func(c *Config) *string { return &c.HTTP.TLSAddr }),
		str("tls-cert-file", "tls.cert_file", "PEM server certificate for every TLS listener (reloaded on SIGHUP and on change)",
			func(c *Config) *string { return &c.TLS.CertFile }),
		str("tls-key-file", "tls.key_file", "PEM private key of tls.cert_file",
			func(c *Config) *string { return &c.TLS.KeyFile }),
		str("tls-client-ca-file", "tls.client_ca_file", "PEM CA bundle to verify client certificates against; empty: no client certificates",
			func(c *Config) *string { return &c.TLS.ClientCAFile }),
		str("tls-client-auth", "tls.client_auth", "request (verify a client certificate when sent) or require (refuse clients without one); empty means require when a client CA is set",
			func(c *Config) *string { return &c.TLS.ClientAuth }),
		str("tls-client-cert-username", "tls.client_cert_username", "where an MQTT username comes from in a verified client certificate: cn, san-dns, san-email or san-uri (empty: cn)",
			func(c *Config) *string { return &c.TLS.ClientCertUsername }),
		duration("tls-reload-interval", "tls.reload_interval", "how often the TLS files are checked for changes, at least 100ms (0: only on SIGHUP)",
			func(c *Config) *time.Duration { return &c.TLS.ReloadInterval }),
		str("users-file", "auth.users_file", "YAML users file (bcrypt hashes, allow_anonymous, ACLs) for MQTT and the HTTP API; empty: no authentication",
			func(c *Config) *string { return &c.Auth.UsersFile }),
		str("tokens-file", "auth.tokens_file", "YAML file of hashed bearer tokens for the HTTP and WebSocket API",
			func(c *Config) *string { return &c.Auth.TokensFile }),
		boolean("metrics-auth", "auth.metrics_auth", "require credentials for /metrics (/healthz and /readyz stay open)",
			func(c *Config) *bool { return &c.Auth.MetricsAuth }),
		integer("max-connections", "limits.max_connections", "MQTT connections across all MQTT listeners (0: unlimited)",
			func(c *Config) *int { return &c.Limits.MaxConnections }),
		integer("max-connections-per-ip", "limits.max_connections_per_ip", "MQTT connections from one source address (0: unlimited)",
			func(c *Config) *int { return &c.Limits.MaxConnectionsPerIP }),
		float("connection-rate-per-ip", "limits.connection_rate_per_ip", "new MQTT connections per second from one source address (0: unlimited)",
			func(c *Config) *float64 { return &c.Limits.ConnectionRatePerIP }),
		float("publish-rate", "limits.publish_rate", "publishes per second per MQTT client; past it MQTT 5 clients are disconnected with 0x96, MQTT 3 clients are read more slowly (0: unlimited)",
			func(c *Config) *float64 { return &c.Limits.PublishRate }),
		float("publish-bytes-rate", "limits.publish_bytes_rate", "payload bytes per second per MQTT client, like --publish-rate (0: unlimited)",
			func(c *Config) *float64 { return &c.Limits.PublishBytesRate }),
		duration("http-read-header-timeout", "http.read_header_timeout", "time a client has to send its request headers (slowloris defence)",
			func(c *Config) *time.Duration { return &c.HTTP.ReadHeaderTimeout }),
		duration("http-read-timeout", "http.read_timeout", "time a client has to send a whole HTTP request (WebSocket sockets are exempt once upgraded)",
			func(c *Config) *time.Duration { return &c.HTTP.ReadTimeout }),
		duration("http-write-timeout", "http.write_timeout", "time to write an HTTP response (WebSocket sockets are exempt once upgraded)",
			func(c *Config) *time.Duration { return &c.HTTP.WriteTimeout }),
		duration("http-idle-timeout", "http.idle_timeout", "how long an idle keep-alive HTTP connection stays open",
			func(c *Config) *time.Duration { return &c.HTTP.IdleTimeout }),
	}
}
