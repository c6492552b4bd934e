package main

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// A record within kafka.max_message_bytes that Kafka refuses for the
// topic's own, smaller max.message.bytes is refused as too large: an
// MQTT 5 client gets PUBACK 0x95 (not 0x80) and keeps its connection, and
// the refusal is counted and logged naming the setting to check.
func TestKafkaRefusesARecordAsTooLarge(t *testing.T) {
	cfg := testConfig(t)
	topic := uniq("small")
	cfg.Mapping.TopicRegexList = topic + ":small/.*"
	d, log := startLogged(t, cfg)

	cl, err := kgo.NewClient(kgo.SeedBrokers(d.bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	waitFor(t, 20*time.Second, "Tributary to create "+topic, func() bool {
		td, err := adm.ListTopics(ctx, topic)
		return err == nil && td.Has(topic) && td[topic].Err == nil
	})
	resp, err := adm.AlterTopicConfigs(ctx, []kadm.AlterConfig{{Op: kadm.SetConfig, Name: "max.message.bytes", Value: kadm.StringPtr("2000")}}, topic)
	if err == nil {
		var r kadm.AlterConfigsResponse
		if r, err = resp.On(topic, nil); err == nil {
			err = r.Err
		}
	}
	if err != nil {
		t.Fatalf("setting %s's max.message.bytes: %v", topic, err)
	}

	conn := dialBadTCP(t, d.mqttAddr())
	defer conn.close()
	conn.connect(t, 5)
	got := conn.exchange(mqttPublish(0x32, "small/x", 1, true, nil, make([]byte, 10000)), 0, true, true)
	if want := []string{"PUBACK:95", "PINGRESP"}; !slices.Equal(got, want) {
		t.Fatalf("server answered %v, want %v", got, want)
	}
	if m := metricsText(t, d.httpAddr()); !strings.Contains(m, `tributary_mqtt_rejected_total{reason="too_large"} 1`) {
		t.Errorf("the refusal is not counted as too large:\n%s", grepLines(m, "tributary_mqtt_rejected_total"))
	}
	if !strings.Contains(log.String(), "max.message.bytes") {
		t.Errorf("no log line names max.message.bytes:\n%s", log.String())
	}
}
