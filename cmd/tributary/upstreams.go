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

// explainUnsubscribed returns the line mapping explain adds when no
// subscription filter of the upstream named source matches mqttTopic:
// such a message does not arrive from that upstream, and one that does
// anyway (an old subscription a persistent session still holds) is
// acknowledged without producing. It returns "" when a filter matches,
// or source names no upstream.
func explainUnsubscribed(ups []config.UpstreamConfig, source, mqttTopic string) string {
	for i, u := range ups {
		if source == "" || u.Name != source {
			continue
		}
		filters := make([]string, len(u.Subscriptions))
		for j, s := range u.Subscriptions {
			if bridge.SubscriptionMatches(s.Filter, mqttTopic) {
				return ""
			}
			filters[j] = fmt.Sprintf("%q", s.Filter)
		}
		shared := ""
		if u.SharedGroup != "" {
			shared = fmt.Sprintf("; each as $share/%s/<filter>", u.SharedGroup)
		}
		return fmt.Sprintf("not subscribed: no filter of upstreams[%d] (%s) matches this topic (%s%s), so such a message does not arrive from it "+
			"(one an older subscription of a persistent session delivers is acknowledged, not produced: not_subscribed); below is where it would go if a filter matched\n",
			i, u.Name, strings.Join(filters, ", "), shared)
	}
	return ""
}
