package main

import (
	"crypto/tls"
	"fmt"
	"strings"

	"github.com/tributary-io/tributary/bridge"
	"github.com/tributary-io/tributary/config"
)

// upstreamConfigs turns the upstreams section into the bridge's
// configuration. Passwords and TLS material are not read here but at
// every connection attempt, so that rotated files take effect at the next
// reconnect; validation has checked them once already.
func upstreamConfigs(ups []config.UpstreamConfig) []bridge.UpstreamConfig {
	out := make([]bridge.UpstreamConfig, 0, len(ups))
	for i, u := range ups {
		u = u.WithDefaults()
		where := fmt.Sprintf("upstreams[%d] (%s)", i, u.Name)
		credentials := func() (string, *tls.Config, error) {
			// Errors read like check-config's: the upstream, then the
			// key and the path.
			password, err := u.Secret()
			if err != nil {
				return "", nil, fmt.Errorf("%s.%w", where, err)
			}
			tc, err := u.TLSConfig()
			if err != nil {
				return "", nil, fmt.Errorf("%s.%w", where, err)
			}
			return password, tc, nil
		}
		subs := make([]bridge.UpstreamSubscription, len(u.Subscriptions))
		for j, s := range u.Subscriptions {
			subs[j] = bridge.UpstreamSubscription{Filter: s.Filter, QoS: byte(*s.QoS)}
		}
		out = append(out, bridge.UpstreamConfig{
			Name:           u.Name,
			URL:            u.URL,
			ClientID:       u.ClientID,
			Username:       u.Username,
			Credentials:    credentials,
			CleanSession:   u.CleanSession,
			Subscriptions:  subs,
			SharedGroup:    u.SharedGroup,
			KafkaTopic:     u.KafkaTopic,
			IngestRetained: bridge.RetainedPolicy(u.IngestRetained),
			KeepAlive:      u.KeepAlive,
			ConnectTimeout: u.ConnectTimeout,
			ReconnectMin:   u.ReconnectMin,
			ReconnectMax:   u.ReconnectMax,
		})
	}
	return out
}

// explainFixedTopic explains where a message on mqttTopic from the
// upstream named source goes when that upstream sets kafka_topic, which
// sends every message of it there without consulting the rules; ok is
// false for any other source.
func explainFixedTopic(ups []config.UpstreamConfig, source, mqttTopic string) (out string, ok bool) {
	for i, u := range ups {
		if source == "" || u.Name != source || u.KafkaTopic == "" {
			continue
		}
		var b strings.Builder
		fmt.Fprintf(&b, "MQTT topic %q from upstream %q\n", mqttTopic, source)
		fmt.Fprintf(&b, "upstreams[%d] (%s) sets kafka_topic: every message of this upstream goes there, and the mapping rules are not used\n", i, u.Name)
		fmt.Fprintf(&b, "Kafka topic: %q\nkey: %q (the MQTT topic)\n", u.KafkaTopic, mqttTopic)
		return b.String(), true
	}
	return "", false
}
