package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/tributary-io/tributary/mapping"
)

// UpstreamConfig is one remote MQTT broker whose feed Tributary subscribes
// to and produces into Kafka (upstream-source mode). Upstreams are set in
// the YAML file only.
type UpstreamConfig struct {
	// Name identifies the upstream in logs, metrics, the mqtt.source header
	// and mapping rules' source. Required, unique, letters, digits, '.',
	// '_' and '-'.
	Name string `yaml:"name"`
	// URL is the remote broker: tcp://host:port, ssl://host:port,
	// ws://host:port/path or wss://host:port/path. Required.
	URL string `yaml:"url"`
	// ClientID is the MQTT client id; keep it stable so the persistent
	// session survives restarts. Default "tributary-<name>-<hostname>".
	ClientID string `yaml:"client_id"`
	// Username and Password authenticate to the remote broker. Default none.
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// PasswordFile holds the password (a trailing newline is ignored);
	// exclusive with Password. It is read again at every connection
	// attempt, so a rotated password is used from the next reconnect.
	// Default none.
	PasswordFile string `yaml:"password_file"`
	// TLS configures ssl:// and wss:// connections; its files are read
	// again at every connection attempt. Default: system roots.
	TLS UpstreamTLS `yaml:"tls"`
	// CleanSession discards the remote session on every connect. Default
	// false: a persistent session, so messages published while Tributary
	// is disconnected are kept for it by the remote broker.
	CleanSession bool `yaml:"clean_session"`
	// Subscriptions are the topic filters to subscribe to. Required.
	Subscriptions []SubscriptionConfig `yaml:"subscriptions"`
	// SharedGroup subscribes every filter as $share/<group>/<filter>, so
	// several Tributary nodes split one feed. Default none.
	SharedGroup string `yaml:"shared_group"`
	// KafkaTopic sends every message of this upstream to one Kafka topic,
	// keyed by the MQTT topic. Default empty: the mapping rules apply, with
	// the upstream's name as source.
	KafkaTopic string `yaml:"kafka_topic"`
	// IngestRetained says which retained messages are produced: "first"
	// (a retained value the remote broker sends again after a reconnect
	// is not produced twice), "always" or "never". Default "first".
	IngestRetained string `yaml:"ingest_retained"`
	// KeepAlive is the MQTT keepalive. Default 30s.
	KeepAlive time.Duration `yaml:"keepalive"`
	// ConnectTimeout bounds one connection attempt. Default 10s.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// ReconnectMin and ReconnectMax bound the exponential backoff between
	// connection attempts (with jitter). Default 500ms and 1m.
	ReconnectMin time.Duration `yaml:"reconnect_min"`
	ReconnectMax time.Duration `yaml:"reconnect_max"`
}

// UpstreamTLS is the TLS material for an upstream.
type UpstreamTLS struct {
	// CAFile is a PEM bundle of CAs to trust instead of the system roots. Default none.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a PEM client certificate and key. Default none.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// InsecureSkipVerify disables checking the server's certificate. Default false.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
	// ServerName overrides the name checked in the server's certificate.
	// Default: the URL's host.
	ServerName string `yaml:"server_name"`
}

// SubscriptionConfig is one topic filter of an upstream.
type SubscriptionConfig struct {
	// Filter is the MQTT topic filter, e.g. "/hfp/v2/journey/ongoing/vp/#". Required.
	Filter string `yaml:"filter"`
	// QoS is the requested QoS: 1 or 2 are acknowledged only after Kafka
	// has the record; 0 is best effort. Default 1.
	QoS *int `yaml:"qos"`
}

// Retained-message policies of an upstream.
const (
	IngestRetainedFirst  = "first"
	IngestRetainedAlways = "always"
	IngestRetainedNever  = "never"
)

// The defaults of an upstream's reconnect backoff.
const (
	defaultReconnectMin = 500 * time.Millisecond
	defaultReconnectMax = time.Minute
)

// WithDefaults returns u with every default filled in.
func (u UpstreamConfig) WithDefaults() UpstreamConfig {
	if u.ClientID == "" {
		u.ClientID = defaultClientID(u.Name)
	}
	if u.IngestRetained == "" {
		u.IngestRetained = IngestRetainedFirst
	}
	if u.KeepAlive == 0 {
		u.KeepAlive = 30 * time.Second
	}
	if u.ConnectTimeout == 0 {
		u.ConnectTimeout = 10 * time.Second
	}
	if u.ReconnectMin == 0 {
		u.ReconnectMin = defaultReconnectMin
	}
	if u.ReconnectMax == 0 {
		u.ReconnectMax = defaultReconnectMax
	}
	subs := make([]SubscriptionConfig, len(u.Subscriptions))
	for i, s := range u.Subscriptions {
		if s.QoS == nil {
			one := 1
			s.QoS = &one
		}
		subs[i] = s
	}
	u.Subscriptions = subs
	return u
}

// defaultClientID is the client id of the upstream named name when it
// sets none: "tributary-<name>-<hostname>", stable across restarts of
// one node and different on each node.
func defaultClientID(name string) string {
	host, _ := os.Hostname()
	if host == "" {
		host = "node"
	}
	return "tributary-" + name + "-" + host
}

// Secret returns the password, read from PasswordFile if that is set.
// The file is read at every call, so that a connection attempt after the
// file was rotated uses the new password. The error names the key and
// the path.
func (u UpstreamConfig) Secret() (string, error) {
	if u.PasswordFile == "" {
		return u.Password, nil
	}
	return readPasswordFile(u.PasswordFile)
}

// readPasswordFile returns the password in path, without a trailing
// newline. An empty one is an error: MQTT would then send the username
// alone, and the remote broker's refusal would not say why.
func readPasswordFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("password_file %q: %w", path, err)
	}
	pw := strings.TrimRight(string(b), "\r\n")
	if pw == "" {
		return "", fmt.Errorf("password_file %q: empty; it must hold the password", path)
	}
	return pw, nil
}

// Secure reports whether the URL asks for TLS.
func (u UpstreamConfig) Secure() bool {
	p, err := url.Parse(u.URL)
	if err != nil {
		return false
	}
	switch p.Scheme {
	case "ssl", "tls", "mqtts", "wss":
		return true
	}
	return false
}

// TLSConfig loads the TLS material. It returns nil for plain tcp:// and
// ws:// URLs. The files are read at every call, so that a connection
// attempt after they were rotated (a renewed client certificate, a new
// CA bundle) uses the new ones. The error names the key and the path.
func (u UpstreamConfig) TLSConfig() (*tls.Config, error) {
	if !u.Secure() {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: u.TLS.InsecureSkipVerify, ServerName: u.TLS.ServerName}
	if tc.ServerName == "" {
		if p, err := url.Parse(u.URL); err == nil {
			tc.ServerName = p.Hostname()
		}
	}
	if u.TLS.CAFile != "" {
		pool, err := readCAFile(u.TLS.CAFile)
		if err != nil {
			return nil, err
		}
		tc.RootCAs = pool
	}
	if u.TLS.CertFile != "" || u.TLS.KeyFile != "" {
		cert, err := readKeyPair(u.TLS.CertFile, u.TLS.KeyFile)
		if err != nil {
			return nil, err
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// readCAFile returns the certificates of the PEM bundle in path.
func readCAFile(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tls.ca_file %q: %w", path, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("tls.ca_file %q: no PEM certificate in it", path)
	}
	return pool, nil
}

// readKeyPair returns the client certificate and key in certFile and
// keyFile.
func readKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("tls.cert_file %q / tls.key_file %q: %w", certFile, keyFile, err)
	}
	return cert, nil
}

var upstreamName = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

// validateUpstreams returns one problem per bad key, each naming the
// upstream (by index and name) and the key.
func validateUpstreams(ups []UpstreamConfig) []string {
	var problems []string
	names := map[string]int{}
	type clientIDUse struct {
		where    string // the upstream, as problems name it
		explicit bool   // set as client_id, not the default
	}
	clientIDs := map[string]clientIDUse{} // broker host:port and client id → its first user
	for i, u := range ups {
		where := fmt.Sprintf("upstreams[%d]", i)
		if u.Name != "" {
			where = fmt.Sprintf("upstreams[%d] (%s)", i, u.Name)
		}
		add := func(format string, args ...any) {
			problems = append(problems, where+"."+fmt.Sprintf(format, args...))
		}
		switch {
		case u.Name == "":
			add("name: required")
		case !upstreamName.MatchString(u.Name):
			add("name %q: use only letters, digits, '.', '_' and '-'", u.Name)
		default:
			if j, dup := names[u.Name]; dup {
				add("name %q: already used by upstreams[%d]", u.Name, j)
			}
			names[u.Name] = i
		}
		if why := upstreamURLProblem(u.URL); why != "" {
			add("url %q: %s", redactURL(u.URL), why)
		} else if pu, err := url.Parse(u.URL); err == nil && (u.ClientID != "" || u.Name != "") {
			// One client id per broker: a second connection with it
			// takes the first one's session over, and back, for ever.
			// The default client id counts too: a client_id set to
			// another upstream's default takes its session.
			id, explicit := u.ClientID, u.ClientID != ""
			if !explicit {
				id = defaultClientID(u.Name)
			}
			key := strings.ToLower(pu.Host) + " " + id
			const loop = "each connection would take the other's session over"
			switch first, dup := clientIDs[key]; {
			case !dup:
				clientIDs[key] = clientIDUse{where: where, explicit: explicit}
			case !first.explicit && !explicit:
				// Only upstreams of one name have one default: the
				// name is reported already.
			case !first.explicit:
				add("client_id %q: the default client id of %s (tributary-<name>-<hostname>) on the same broker; %s", id, first.where, loop)
			case !explicit:
				add("client_id: not set, so it defaults to %q (tributary-<name>-<hostname>), which %s sets as its client_id on the same broker; %s", id, first.where, loop)
			default:
				add("client_id %q: also used by %s on the same broker; %s", id, first.where, loop)
			}
		}
		if u.Password != "" && u.PasswordFile != "" {
			add("password_file %q: set password or password_file, not both", u.PasswordFile)
		}
		if (u.Password != "" || u.PasswordFile != "") && u.Username == "" {
			add("username: required when a password is set (MQTT 3.1.1)")
		}
		if u.PasswordFile != "" {
			if _, err := readPasswordFile(u.PasswordFile); err != nil {
				add("%v", err)
			}
		}
		tlsSet := u.TLS != (UpstreamTLS{})
		if tlsSet && !u.Secure() && upstreamURLProblem(u.URL) == "" {
			add("tls: set, but url %q is not ssl:// or wss://", u.URL)
		}
		if (u.TLS.CertFile == "") != (u.TLS.KeyFile == "") {
			add("tls: cert_file and key_file go together")
		} else if tlsSet {
			// The same reads as every connection attempt's (TLSConfig),
			// so check-config reports what a connect would fail with.
			if u.TLS.CAFile != "" {
				if _, err := readCAFile(u.TLS.CAFile); err != nil {
					add("%v", err)
				}
			}
			if u.TLS.CertFile != "" {
				if _, err := readKeyPair(u.TLS.CertFile, u.TLS.KeyFile); err != nil {
					add("%v", err)
				}
			}
		}
		if len(u.Subscriptions) == 0 {
			add("subscriptions: at least one is required")
		}
		for j, s := range u.Subscriptions {
			if why := filterProblem(s.Filter); why != "" {
				add("subscriptions[%d].filter %q: %s", j, s.Filter, why)
			} else if u.SharedGroup != "" && strings.HasPrefix(s.Filter, "$share/") {
				add("subscriptions[%d].filter %q: shared_group is set; give the plain filter", j, s.Filter)
			}
			if s.QoS != nil && (*s.QoS < 0 || *s.QoS > 2) {
				add("subscriptions[%d].qos %d: must be 0, 1 or 2", j, *s.QoS)
			}
		}
		if u.SharedGroup != "" && strings.ContainsAny(u.SharedGroup, "/+#") {
			add("shared_group %q: must not contain '/', '+' or '#'", u.SharedGroup)
		}
		if u.KafkaTopic != "" {
			if why := mapping.ProduceTopicProblem(u.KafkaTopic); why != "" {
				add("kafka_topic %q: %v: %s", u.KafkaTopic, mapping.ErrInvalidTopicName, why)
			}
		}
		switch u.IngestRetained {
		case "", IngestRetainedFirst, IngestRetainedAlways, IngestRetainedNever:
		default:
			add("ingest_retained %q: must be first, always or never", u.IngestRetained)
		}
		for _, d := range []struct {
			key string
			v   time.Duration
		}{{"keepalive", u.KeepAlive}, {"connect_timeout", u.ConnectTimeout}, {"reconnect_min", u.ReconnectMin}, {"reconnect_max", u.ReconnectMax}} {
			if d.v < 0 {
				add("%s %s: must not be negative", d.key, d.v)
			}
		}
		if u.KeepAlive > 0 && u.KeepAlive < time.Second {
			add("keepalive %s: must be at least 1s", u.KeepAlive)
		}
		if maxKeepAlive := 65535 * time.Second; u.KeepAlive > maxKeepAlive {
			// CONNECT carries it in 16 bits: more would wrap around, and
			// the remote broker would expect pings far sooner than sent.
			add("keepalive %s: must be at most %s (65535 seconds, the most MQTT can carry)", u.KeepAlive, maxKeepAlive)
		}
		// Against the defaults too: one bound set alone past the other's
		// default would otherwise be cut to it without a word.
		switch {
		case u.ReconnectMin < 0 || u.ReconnectMax < 0:
		case u.ReconnectMin > 0 && u.ReconnectMax > 0 && u.ReconnectMax < u.ReconnectMin:
			add("reconnect_max %s: must be at least reconnect_min (%s)", u.ReconnectMax, u.ReconnectMin)
		case u.ReconnectMax == 0 && u.ReconnectMin > defaultReconnectMax:
			add("reconnect_min %s: must be at most reconnect_max (%s, the default)", u.ReconnectMin, defaultReconnectMax)
		case u.ReconnectMin == 0 && u.ReconnectMax > 0 && u.ReconnectMax < defaultReconnectMin:
			add("reconnect_max %s: must be at least reconnect_min (%s, the default)", u.ReconnectMax, defaultReconnectMin)
		}
	}
	return problems
}

func upstreamURLProblem(raw string) string {
	if raw == "" {
		return "required"
	}
	p, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			return ue.Err.Error() // not the URL again, with any password in it
		}
		return err.Error()
	}
	switch p.Scheme {
	case "tcp", "mqtt", "ssl", "tls", "mqtts":
		if _, port, err := net.SplitHostPort(p.Host); err != nil || port == "" || p.Hostname() == "" {
			return "needs host:port, e.g. tcp://broker.example:1883"
		}
		if p.Path != "" && p.Path != "/" {
			return "a tcp:// or ssl:// URL has no path"
		}
	case "ws", "wss":
		if p.Hostname() == "" {
			return "needs a host, e.g. wss://broker.example:443/mqtt"
		}
	default:
		return "scheme must be tcp://, ssl://, ws:// or wss://"
	}
	if port := p.Port(); port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Sprintf("port %q is not a port number (1-65535)", port)
		}
	}
	if p.User != nil {
		return "put credentials in username and password, not the URL"
	}
	return ""
}

// filterProblem checks an MQTT topic filter's wildcards.
func filterProblem(f string) string {
	if f == "" {
		return "required"
	}
	if strings.ContainsRune(f, 0) {
		return "contains a NUL character"
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return "'#' must be a whole level and the last one"
		}
		if strings.Contains(l, "+") && l != "+" {
			return "'+' must be a whole level"
		}
	}
	if strings.HasPrefix(f, "$share/") && len(levels) < 3 {
		return "a $share/<group>/<filter> needs a group and a filter"
	}
	return ""
}

// redactURL returns raw with the password of any user info replaced, for
// error messages; a URL that does not parse has everything between its
// scheme and the last '@' before the host replaced.
func redactURL(raw string) string {
	if p, err := url.Parse(raw); err == nil {
		return p.Redacted()
	}
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return raw
	}
	host := rest
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		host = rest[:i]
	}
	if at := strings.LastIndex(host, "@"); at >= 0 {
		return scheme + "://xxxxx@" + rest[at+1:]
	}
	return raw
}
