package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tributary-io/tributary/mapping"
)

// The acceptance: the Confluent regex list, mosquitto_pub QoS 1,
// and the record is readable as soon as mosquitto_pub returns.
func TestMosquittoPubLandsInMappedTopic(t *testing.T) {
	pub := needTool(t, "mosquitto_pub")
	cfg := testConfig(t)
	temp, bright := uniq("temperature"), uniq("brightness")
	cfg.Mapping.TopicRegexList = temp + ":.*temperature, " + bright + ":.*brightness"
	d := startDaemon(t, cfg)
	host, port := hostPort(d.mqttAddr())

	out, err := exec.Command(pub, "-h", host, "-p", port, "-q", "1", "-t", "house/kitchen/temperature", "-m", "21.5").CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_pub: %v: %s", err, out)
	}
	recs := kafkaRecords(t, d.bootstrap, temp, 1, 10*time.Second)
	if len(recs) != 1 {
		t.Fatalf("got %d records in %s, want 1", len(recs), temp)
	}
	r := recs[0]
	if string(r.Key) != "house/kitchen/temperature" || string(r.Value) != "21.5" {
		t.Errorf("record key %q value %q, want house/kitchen/temperature 21.5", r.Key, r.Value)
	}
	for k, want := range map[string]string{"mqtt.qos": "1", "mqtt.topic": "house/kitchen/temperature", "mqtt.retain": "false"} {
		if v, ok := header(r, k); !ok || v != want {
			t.Errorf("header %s = %q (present %v), want %q", k, v, ok, want)
		}
	}
	if v, _ := header(r, "mqtt.client_id"); v == "" {
		t.Error("header mqtt.client_id missing")
	}
	if time.Since(r.Timestamp) > time.Minute || r.Timestamp.After(time.Now().Add(time.Second)) {
		t.Errorf("record timestamp %v is not the receive time", r.Timestamp)
	}

	out, err = exec.Command(pub, "-h", host, "-p", port, "-q", "1", "-t", "office/brightness", "-m", "300").CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_pub: %v: %s", err, out)
	}
	if recs := kafkaRecords(t, d.bootstrap, bright, 1, 10*time.Second); len(recs) != 1 || string(recs[0].Value) != "300" {
		t.Fatalf("brightness records %v, want one with value 300", recs)
	}
}

// PUBACK received ⇒ the record is readable, for paho over TCP and over
// MQTT-over-WebSocket on both paths.
func TestPubackMeansReadable(t *testing.T) {
	cfg := testConfig(t)
	topic := uniq("acked")
	cfg.Mapping.TopicRegexList = topic + ":.*"
	d := startDaemon(t, cfg)
	for _, url := range []string{"tcp://" + d.mqttAddr(), "ws://" + d.wsAddr() + "/mqtt", "ws://" + d.wsAddr() + "/"} {
		c := mqttClient(t, url, uniq("c"))
		publish(t, c, "dev/"+url, 1, false, "payload "+url)
	}
	recs := kafkaRecords(t, d.bootstrap, topic, 3, 10*time.Second)
	if len(recs) != 3 {
		t.Fatalf("got %d records, want 3", len(recs))
	}
	seen := map[string]bool{}
	for _, r := range recs {
		seen[string(r.Value)] = true
		if "payload "+strings.TrimPrefix(string(r.Key), "dev/") != string(r.Value) {
			t.Errorf("record key %q does not match value %q", r.Key, r.Value)
		}
	}
	if len(seen) != 3 {
		t.Errorf("records %v are not the three publishes", seen)
	}
}

// MQTT 5 user properties and content type become headers; a user
// property named like a header Tributary sets is not copied (and counted).
func TestMQTT5UserPropertiesBecomeHeaders(t *testing.T) {
	pub := needTool(t, "mosquitto_pub")
	cfg := testConfig(t)
	topic := uniq("v5")
	cfg.Mapping.TopicRegexList = topic + ":sensors/.*"
	d := startDaemon(t, cfg)
	host, port := hostPort(d.mqttAddr())
	out, err := exec.Command(pub, "-V", "mqttv5", "-h", host, "-p", port, "-q", "1", "-t", "sensors/a", "-m", "{}",
		"-D", "publish", "user-property", "site", "north",
		"-D", "publish", "user-property", "unit", "celsius",
		"-D", "publish", "user-property", "mqtt.client_id", "someone-else",
		"-i", "the-real-one",
		"-D", "publish", "content-type", "application/json").CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_pub: %v: %s", err, out)
	}
	recs := kafkaRecords(t, d.bootstrap, topic, 1, 10*time.Second)
	if len(recs) != 1 {
		t.Fatalf("got %d records, want 1", len(recs))
	}
	for k, want := range map[string]string{"site": "north", "unit": "celsius", "mqtt.content_type": "application/json", "mqtt.qos": "1", "mqtt.client_id": "the-real-one"} {
		if v, ok := header(recs[0], k); !ok || v != want {
			t.Errorf("header %s = %q (present %v), want %q", k, v, ok, want)
		}
	}
	n := 0
	for _, h := range recs[0].Headers {
		if h.Key == "mqtt.client_id" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d mqtt.client_id headers, want 1", n)
	}
	if m := metricsText(t, d.httpAddr()); !strings.Contains(m, "tributary_mqtt_reserved_user_properties_total 1\n") {
		t.Errorf("the reserved user property was not counted:\n%s", linesWith(m, "reserved_user_properties"))
	}
}

// Named groups template the Kafka topic, the key and extra headers.
func TestTemplatedRules(t *testing.T) {
	cfg := testConfig(t)
	prefix := uniq("iot")
	cfg.Mapping.Rules = []mapping.Rule{{
		Match:      `^sensors/(?P<site>[^/]+)/(?P<kind>[^/]+)$`,
		KafkaTopic: prefix + ".${kind}",
		Key:        "${site}",
		Headers:    map[string]string{"site": "${site}"},
	}}
	d := startDaemon(t, cfg)
	c := mqttClient(t, "tcp://"+d.mqttAddr(), uniq("c"))
	publish(t, c, "sensors/oslo/humidity", 1, false, "40")
	recs := kafkaRecords(t, d.bootstrap, prefix+".humidity", 1, 10*time.Second)
	if len(recs) != 1 {
		t.Fatalf("got %d records, want 1", len(recs))
	}
	if string(recs[0].Key) != "oslo" {
		t.Errorf("key %q, want oslo", recs[0].Key)
	}
	if v, _ := header(recs[0], "site"); v != "oslo" {
		t.Errorf("header site %q, want oslo", v)
	}
}

func TestUnmatchedPolicies(t *testing.T) {
	pub := needTool(t, "mosquitto_pub")
	for _, policy := range []mapping.Policy{mapping.PolicyNone, mapping.PolicyDrop, mapping.PolicyReject, mapping.PolicyDefaultTopic} {
		t.Run("policy="+string(policy), func(t *testing.T) {
			cfg := testConfig(t)
			matched, fallback := uniq("matched"), uniq("fallback")
			cfg.Mapping.TopicRegexList = matched + ":known/.*"
			cfg.Mapping.Unmatched = policy
			cfg.Mapping.DefaultTopic = fallback
			d := startDaemon(t, cfg)

			sub := &collector{}
			s := mqttClient(t, "tcp://"+d.mqttAddr(), uniq("sub"))
			if tok := s.Subscribe("other/#", 1, sub.handle); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				t.Fatalf("subscribe: %v", tok.Error())
			}
			host, port := hostPort(d.mqttAddr())
			out, err := exec.Command(pub, "-V", "mqttv5", "-h", host, "-p", port, "-q", "1", "-t", "other/x", "-m", "u").CombinedOutput()
			switch policy {
			case mapping.PolicyReject:
				if err == nil && !strings.Contains(string(out), "Topic Name invalid") && !strings.Contains(strings.ToLower(string(out)), "topic name invalid") {
					t.Errorf("MQTT 5 publish to an unmatched topic under reject succeeded silently: %s", out)
				}
			default:
				if err != nil {
					t.Fatalf("mosquitto_pub: %v: %s", err, out)
				}
			}
			// MQTT 3.1.1 QoS 1 under reject: no false success.
			c := mqttClient(t, "tcp://"+d.mqttAddr(), uniq("v3"))
			tok := c.Publish("other/y", 1, false, "v3")
			acked := tok.WaitTimeout(10*time.Second) && tok.Error() == nil
			if policy == mapping.PolicyReject && acked {
				t.Error("MQTT 3 QoS 1 publish to an unmatched topic under reject was acknowledged")
			}
			if policy != mapping.PolicyReject && !acked {
				t.Errorf("MQTT 3 QoS 1 publish under %q not acknowledged: %v", policy, tok.Error())
			}

			switch policy {
			case mapping.PolicyDefaultTopic:
				if recs := kafkaRecords(t, d.bootstrap, fallback, 2, 10*time.Second); len(recs) != 2 {
					t.Errorf("default topic holds %d records, want 2", len(recs))
				}
			case mapping.PolicyNone:
				waitFor(t, 5*time.Second, "local subscriber to get unmatched publishes", func() bool { return sub.len() >= 2 })
			}
			body := metricsText(t, d.httpAddr())
			wantMetric := map[mapping.Policy]string{
				mapping.PolicyNone:   "tributary_mapping_unmatched_total 2",
				mapping.PolicyDrop:   `tributary_mqtt_dropped_total{reason="mapping_drop"} 2`,
				mapping.PolicyReject: `tributary_mqtt_rejected_total{reason="unmatched"} 2`,
			}[policy]
			if wantMetric != "" && !strings.Contains(body, wantMetric) {
				t.Errorf("metrics lack %q", wantMetric)
			}
		})
	}
}

func metricsText(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return b.String()
}

// A QoS 2 publish lands once, and local subscribers still get publishes,
// retained messages and wills; a will is produced too.
func TestQoS2OnceAndLocalBroker(t *testing.T) {
	cfg := testConfig(t)
	topic := uniq("q2")
	cfg.Mapping.TopicRegexList = topic + ":.*"
	d := startDaemon(t, cfg)
	url := "tcp://" + d.mqttAddr()

	sub := &collector{}
	s := mqttClient(t, url, uniq("sub"))
	if tok := s.Subscribe("room/#", 2, sub.handle); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	c := mqttClient(t, url, uniq("pub"))
	publish(t, c, "room/q2", 2, false, "exactly-once")
	publish(t, c, "room/retained", 1, true, "kept")
	waitFor(t, 5*time.Second, "subscriber to get both publishes", func() bool { return sub.len() == 2 })

	recs := settledRecords(t, d.bootstrap, topic)
	byValue := map[string][]*kgo.Record{}
	for _, r := range recs {
		byValue[string(r.Value)] = append(byValue[string(r.Value)], r)
	}
	if len(recs) != 2 || len(byValue["exactly-once"]) != 1 || len(byValue["kept"]) != 1 {
		t.Fatalf("%d records, %d of exactly-once and %d of kept; want one of each", len(recs), len(byValue["exactly-once"]), len(byValue["kept"]))
	}
	// Each record carries the QoS and retain flag of its own publish.
	for _, w := range []struct{ value, topic, qos, retain string }{
		{"exactly-once", "room/q2", "2", "false"},
		{"kept", "room/retained", "1", "true"},
	} {
		r := byValue[w.value][0]
		q, _ := header(r, "mqtt.qos")
		ret, _ := header(r, "mqtt.retain")
		tp, _ := header(r, "mqtt.topic")
		if q != w.qos || ret != w.retain || tp != w.topic || string(r.Key) != w.topic {
			t.Errorf("record %q: mqtt.qos %q, mqtt.retain %q, mqtt.topic %q, key %q; want %s, %s, %s, %s",
				w.value, q, ret, tp, r.Key, w.qos, w.retain, w.topic, w.topic)
		}
	}

	late := &collector{}
	l := mqttClient(t, url, uniq("late"))
	if tok := l.Subscribe("room/retained", 1, late.handle); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	waitFor(t, 5*time.Second, "retained message for a late subscriber", func() bool { return late.len() == 1 })
	if m := late.get(0); string(m.Payload()) != "kept" || !m.Retained() {
		t.Errorf("late subscriber got %q retained=%v", m.Payload(), m.Retained())
	}

	wills := &collector{}
	w := mqttClient(t, url, uniq("willsub"))
	if tok := w.Subscribe("wills/#", 1, wills.handle); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	// Connect with a will and drop the connection without DISCONNECT.
	conn := rawConnect(t, d.mqttAddr(), uniq("dying"), "wills/dying", "gone")
	conn.Close()
	waitFor(t, 10*time.Second, "the will to reach its subscriber", func() bool { return wills.len() == 1 })
	// and Kafka, mapped as a publish to its topic.
	waitFor(t, 15*time.Second, "the will in Kafka", func() bool {
		for _, r := range kafkaRecords(t, d.bootstrap, topic, 1<<30, time.Second) {
			if string(r.Key) == "wills/dying" && string(r.Value) == "gone" {
				return true
			}
		}
		return false
	})
}

// 10,000 QoS 1 messages from one client, all in flight at once, land in
// Kafka in the order they were published.
func TestOrderingOfPipelinedPublishes(t *testing.T) {
	checkPublishOrder(t, 10000, func(int) byte { return 1 })
}

// A client that mixes QoS 0 and QoS 1 on one topic finds its records in
// Kafka in the order it published them, although the two QoS levels are
// produced through producers with different lingers.
func TestOrderingOfMixedQoS(t *testing.T) {
	checkPublishOrder(t, 2000, func(i int) byte { return byte(i % 2) })
}

// A client's records stay in order across a reconnect, whether its old
// connection ended first or was taken over by the new one: the new
// connection's QoS 1 publish, which alone would be produced with the
// prompt lane's short linger, lands after the old connection's QoS 0
// records still lingering (three seconds here) in the best-effort lane.
// (Were the new publish to come that much later, it would pass however
// the lanes were chosen.)
func TestOrderingAcrossAReconnect(t *testing.T) {
	for _, takeover := range []bool{false, true} {
		t.Run(map[bool]string{false: "after a disconnect", true: "taken over"}[takeover], func(t *testing.T) {
			cfg := testConfig(t)
			topic := uniq("reconnect")
			cfg.Mapping.TopicRegexList = topic + ":.*"
			cfg.Kafka.Properties = map[string]string{"linger.ms": "3000"}
			d := startDaemon(t, cfg)
			id := uniq("device")
			const n = 20
			old := mqttClient(t, "tcp://"+d.mqttAddr(), id)
			// The first at QoS 1, so that the Kafka topic exists
			// before the QoS 0 ones, which do not wait for it.
			for i := range n {
				qos := byte(0)
				if i == 0 {
					qos = 1
				}
				publish(t, old, "dev/one", qos, false, strconv.Itoa(i))
			}
			// Read by Tributary before the new connection: a takeover
			// ends the old connection without reading what it still
			// holds.
			waitFor(t, 10*time.Second, "the QoS 0 publishes read", func() bool {
				return metricValue(t, d, `tributary_mqtt_messages_received_total{listener="mqtt-tcp",qos="0"}`) == strconv.Itoa(n-1)
			})
			if !takeover {
				old.Disconnect(250)
				waitFor(t, 10*time.Second, "the old connection ended", func() bool {
					return metricValue(t, d, `tributary_mqtt_connections{listener="mqtt-tcp"}`) == "0"
				})
			}
			cur := mqttClient(t, "tcp://"+d.mqttAddr(), id)
			publish(t, cur, "dev/one", 1, false, strconv.Itoa(n))
			recs := kafkaRecords(t, d.bootstrap, topic, n+1, 30*time.Second)
			if len(recs) != n+1 {
				t.Fatalf("got %d records, want %d", len(recs), n+1)
			}
			for i, r := range recs {
				if string(r.Value) != strconv.Itoa(i) {
					t.Fatalf("record %d has value %q: the new connection's record overtook the old one's", i, r.Value)
				}
			}
		})
	}
}

// checkPublishOrder publishes n messages from one client to one MQTT topic,
// the i-th at QoS qos(i), all at once, and checks that they are in Kafka,
// in one partition, in the order they were published.
func checkPublishOrder(t *testing.T, n int, qos func(i int) byte) {
	t.Helper()
	cfg := testConfig(t)
	topic := uniq("order")
	cfg.Mapping.TopicRegexList = topic + ":.*"
	d := startDaemon(t, cfg)
	c := mqttClient(t, "tcp://"+d.mqttAddr(), uniq("seq"))
	toks := make([]paho.Token, n)
	for i := range n {
		toks[i] = c.Publish("seq/one", qos(i), false, strconv.Itoa(i))
	}
	for i, tok := range toks {
		if !tok.WaitTimeout(60*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %d (QoS %d) not sent or not acknowledged: %v", i, qos(i), tok.Error())
		}
	}
	recs := kafkaRecords(t, d.bootstrap, topic, n, 30*time.Second)
	if len(recs) != n {
		t.Fatalf("got %d records, want %d", len(recs), n)
	}
	for i, r := range recs {
		if string(r.Value) != strconv.Itoa(i) {
			t.Fatalf("record %d has value %q: order broken", i, r.Value)
		}
		if r.Partition != recs[0].Partition {
			t.Fatalf("records of one MQTT topic spread over partitions %d and %d", recs[0].Partition, r.Partition)
		}
	}
}

// A payload over the Kafka message limit: MQTT 5 gets 0x95, MQTT 3 is
// disconnected; nothing reaches Kafka and nothing is falsely acknowledged.
func TestOversizedPayload(t *testing.T) {
	pub := needTool(t, "mosquitto_pub")
	cfg := testConfig(t)
	topic := uniq("big")
	cfg.Mapping.TopicRegexList = topic + ":.*"
	cfg.Kafka.MaxMessageBytes = 10000
	d, logs := startLogged(t, cfg)
	host, port := hostPort(d.mqttAddr())
	big := strings.Repeat("x", 20000)
	out, err := exec.Command(pub, "-V", "mqttv5", "-h", host, "-p", port, "-q", "1", "-t", "big/one", "-m", big).CombinedOutput()
	if err == nil && !strings.Contains(strings.ToLower(string(out)), "too large") {
		t.Errorf("MQTT 5 oversized publish reported success: %s", out)
	}
	c := mqttClient(t, "tcp://"+d.mqttAddr(), uniq("v3"))
	tok := c.Publish("big/two", 1, false, big)
	if tok.WaitTimeout(3*time.Second) && tok.Error() == nil {
		t.Error("MQTT 3 oversized QoS 1 publish was acknowledged")
	}
	waitFor(t, 5*time.Second, "the MQTT 3 client to be disconnected", func() bool { return !c.IsConnectionOpen() })
	c2 := mqttClient(t, "tcp://"+d.mqttAddr(), uniq("ok"))
	publish(t, c2, "big/small", 1, false, "small")
	recs := settledRecords(t, d.bootstrap, topic)
	if len(recs) != 1 || string(recs[0].Value) != "small" {
		t.Fatalf("Kafka holds %d records, want only the small one", len(recs))
	}
	if !strings.Contains(metricsText(t, d.httpAddr()), `tributary_mqtt_rejected_total{reason="too_large"} 2`) {
		t.Error("too_large rejections not counted")
	}
	// Each refusal is logged naming the client's MQTT topic.
	for _, topic := range []string{"topic=big/one", "topic=big/two"} {
		if !strings.Contains(logs.String(), topic) {
			t.Errorf("no log line names %s:\n%s", topic, logs.String())
		}
	}
}

// With topic creation off, a publish to a missing topic is refused with
// the topic named, never acknowledged.
func TestMissingTopicWithCreationDisabled(t *testing.T) {
	pub := needTool(t, "mosquitto_pub")
	cfg := testConfig(t)
	cfg.Kafka.CreateTopics = false
	missing := uniq("missing")
	cfg.Mapping.TopicRegexList = missing + ":.*"
	d := startDaemon(t, cfg)
	host, port := hostPort(d.mqttAddr())
	// mosquitto_pub -d prints the PUBACK's reason code, and mosquitto_pub
	// prints the reason string that came with it.
	out, err := exec.Command(pub, "-V", "mqttv5", "-d", "-h", host, "-p", port, "-q", "1", "-t", "a/b", "-m", "x").CombinedOutput()
	rc := -1
	if _, after, ok := strings.Cut(string(out), "received PUBACK (Mid: 1, RC:"); ok {
		_, _ = fmt.Sscanf(after, "%d", &rc)
	}
	if rc < 0x80 {
		t.Fatalf("publish to a missing topic: PUBACK reason code %d, want a failure (0x80 or more); err %v, output:\n%s", rc, err, out)
	}
	if want := fmt.Sprintf("Kafka topic %q: Kafka topic does not exist", missing); !strings.Contains(string(out), want) {
		t.Errorf("the refusal does not name the missing topic (want %q):\n%s", want, out)
	}
	series := `tributary_mqtt_kafka_failures_total{reason="unknown_topic"}`
	waitFor(t, 5*time.Second, "the refusal counted: "+series+" 1", func() bool { return metricValue(t, d, series) == "1" })
}

// Readiness and health; once shutdown begins, /readyz sends traffic
// elsewhere, whichever faces are configured, and a new MQTT client is
// refused as server unavailable.
func TestHealthAndReady(t *testing.T) {
	for _, mqttOn := range []bool{true, false} {
		cfg := testConfig(t)
		if !mqttOn {
			cfg.MQTT.Addr, cfg.MQTT.WSAddr = "", ""
		}
		d := startDaemon(t, cfg)
		for _, path := range []string{"/healthz", "/readyz"} {
			var code int
			waitFor(t, 15*time.Second, path+" to answer 200", func() bool {
				resp, err := http.Get("http://" + d.httpAddr() + path)
				if err != nil {
					return false
				}
				resp.Body.Close()
				code = resp.StatusCode
				return code == http.StatusOK
			})
		}
		// What shutdown does before its flush, without the rest.
		d.stopping.Store(true)
		if d.broker != nil {
			d.broker.Drain()
		}
		resp, err := http.Get("http://" + d.httpAddr() + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "shutting down") {
			t.Errorf("MQTT %v: /readyz during shutdown: %d %s", mqttOn, resp.StatusCode, body)
		}
		if mqttOn {
			opts := paho.NewClientOptions().AddBroker("tcp://" + d.mqttAddr()).SetClientID(uniq("late")).SetConnectRetry(false)
			tok := paho.NewClient(opts).Connect()
			if !tok.WaitTimeout(10*time.Second) || tok.Error() == nil || !strings.Contains(strings.ToLower(tok.Error().Error()), "unavailable") {
				t.Errorf("a client connecting during shutdown: %v, want server unavailable", tok.Error())
			}
		}
	}
}

// Many clients publishing at once through both listeners.
func TestConcurrentClients(t *testing.T) {
	cfg := testConfig(t)
	topic := uniq("many")
	cfg.Mapping.TopicRegexList = topic + ":.*"
	d := startDaemon(t, cfg)
	const clients, each = 20, 100
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		url := "tcp://" + d.mqttAddr()
		if i%2 == 1 {
			url = "ws://" + d.wsAddr() + "/mqtt"
		}
		c := mqttClient(t, url, fmt.Sprintf("%s-%d", topic, i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			toks := make([]paho.Token, each)
			for j := range each {
				toks[j] = c.Publish(fmt.Sprintf("c/%d", i), byte(j%3), false, fmt.Sprintf("%d-%d", i, j))
			}
			for _, tok := range toks {
				if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
					errs <- fmt.Errorf("client %d: %v", i, tok.Error())
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	recs := kafkaRecords(t, d.bootstrap, topic, clients*each, 20*time.Second)
	if len(recs) != clients*each {
		t.Fatalf("got %d records, want %d (QoS 0 included: nothing was over budget)", len(recs), clients*each)
	}
}

// A QoS 2 PUBLISH resent with the same packet id (DUP set) while the first
// is in flight is produced once; the flow completes with PUBREL/PUBCOMP.
func TestQoS2ResendProducedOnce(t *testing.T) {
	cfg := testConfig(t)
	topic := uniq("dup")
	cfg.Mapping.TopicRegexList = topic + ":.*"
	d := startDaemon(t, cfg)
	conn := rawConnect(t, d.mqttAddr(), uniq("raw"), "wills/unused", "x")
	defer conn.Close()

	var buf bytes.Buffer
	for _, dup := range []bool{false, true} {
		pk := packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: 2, Dup: dup},
			ProtocolVersion: 4,
			TopicName:       "dev/dup",
			PacketID:        7,
			Payload:         []byte("once"),
		}
		if err := pk.PublishEncode(&buf); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	pubrec := make([]byte, 4)
	if _, err := io.ReadFull(conn, pubrec); err != nil || pubrec[0] != 0x50 || pubrec[3] != 7 {
		t.Fatalf("want PUBREC for packet 7, got % x (%v)", pubrec, err)
	}
	// PUBREL, then PUBCOMP back.
	if _, err := conn.Write([]byte{0x62, 0x02, 0x00, 0x07}); err != nil {
		t.Fatal(err)
	}
	for {
		b := make([]byte, 4)
		if _, err := io.ReadFull(conn, b); err != nil {
			t.Fatalf("waiting for PUBCOMP: %v", err)
		}
		if b[0] == 0x70 && b[3] == 7 {
			break
		}
		if b[0] != 0x50 {
			t.Fatalf("unexpected packet % x", b)
		}
	}
	recs := settledRecords(t, d.bootstrap, topic)
	if len(recs) != 1 {
		t.Fatalf("Kafka holds %d records for one QoS 2 message sent twice, want 1", len(recs))
	}
}

// Past kafka.max_topics distinct topics, a publish to one more is refused
// (MQTT 5: PUBACK 0x97 quota exceeded) and counted; the topic in use keeps
// working, and so does a topic a rule names, which does not count.
func TestMaxTopicsRefusesOneMore(t *testing.T) {
	cfg := testConfig(t)
	cfg.Kafka.MaxTopics = 1
	prefix, fixed := uniq("dyn"), uniq("fixed")
	cfg.Mapping.Rules = []mapping.Rule{
		{Match: `^t/(?P<kind>[a-z]+)$`, KafkaTopic: prefix + ".${kind}"},
		{Match: `^f/.*`, KafkaTopic: fixed},
	}
	d, log := startLogged(t, cfg)
	c := dialBadTCP(t, d.mqttAddr())
	defer c.close()
	_ = c.setRD(time.Now().Add(20 * time.Second))
	if err := c.write(mqttConnect(5, "MQTT", 0x02, uniq("dev"))); err != nil {
		t.Fatal(err)
	}
	if got, err := readMQTT(c.r, true); got != "CONNACK:00" {
		t.Fatalf("CONNACK: %q, %v", got, err)
	}
	for i, c2 := range []struct{ topic, want string }{
		{"t/one", "PUBACK:00"}, {"t/two", "PUBACK:97"}, {"f/x", "PUBACK:00"}, {"t/one", "PUBACK:00"},
	} {
		if err := c.write(mqttPublish(0x32, c2.topic, uint16(i+1), true, nil, []byte("x"))); err != nil {
			t.Fatal(err)
		}
		if got, err := readMQTT(c.r, true); got != c2.want {
			t.Fatalf("publish %d to %s: %q, %v; want %s", i+1, c2.topic, got, err, c2.want)
		}
	}
	if !strings.Contains(metricsText(t, d.httpAddr()), `tributary_mqtt_kafka_failures_total{reason="too_many_topics"} 1`) {
		t.Error("the refusal is not counted as too_many_topics")
	}
	if l := log.String(); !strings.Contains(l, "kafka.max_topics") || !strings.Contains(l, "Tributary's limit on distinct Kafka topics") {
		t.Error("the log does not say that Tributary's kafka.max_topics refused the record")
	}
}

// mqtt.session_expiry_max reaches the broker, and /metrics shows what the
// broker holds: a persistent session left behind is counted until it
// expires; a retained message is counted.
func TestBrokerStateMetricsAndSessionBound(t *testing.T) {
	cfg := testConfig(t)
	cfg.MQTT.SessionExpiryMax = 2 * time.Second
	d := startDaemon(t, cfg)
	// The broker's own $SYS messages are retained too, stored one after the
	// other each second: the count of ours is taken once they are all
	// there (the count stays the same across a second).
	var retained string
	waitFor(t, 10*time.Second, "the broker's $SYS messages retained", func() bool {
		before := metricValue(t, d, "tributary_mqtt_retained_messages")
		time.Sleep(1100 * time.Millisecond)
		retained = metricValue(t, d, "tributary_mqtt_retained_messages")
		return retained == before && retained != "0" && retained != "absent"
	})
	c := mqttClient(t, "tcp://"+d.mqttAddr(), uniq("device"), func(o *paho.ClientOptions) { o.SetCleanSession(false) })
	publish(t, c, uniq("state")+"/lamp", 1, true, "on")
	c.Disconnect(100)
	waitFor(t, 10*time.Second, "one disconnected session", func() bool { return metricValue(t, d, "tributary_mqtt_disconnected_sessions") == "1" })
	waitFor(t, 10*time.Second, "the session expired", func() bool { return metricValue(t, d, "tributary_mqtt_disconnected_sessions") == "0" })
	before, err := strconv.Atoi(retained)
	if err != nil {
		t.Fatalf("tributary_mqtt_retained_messages %q: %v", retained, err)
	}
	if got := metricValue(t, d, "tributary_mqtt_retained_messages"); got != strconv.Itoa(before+1) {
		t.Errorf("tributary_mqtt_retained_messages %s, want %d", got, before+1)
	}
}
