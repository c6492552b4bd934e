package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/tributary-io/tributary/config"
)

// SASL to Kafka through the kafka.properties passthrough, with the
// password from a file: records land, and the password shows neither in
// the log nor in /metrics. A wrong password is reported, without itself.
func TestKafkaSASL(t *testing.T) {
	const user, pass = "bridge", "s3cret-sasl-pw"
	for _, tc := range []struct {
		mechanism string
		client    sasl.Mechanism
	}{
		{"PLAIN", plain.Auth{User: user, Pass: pass}.AsMechanism()},
		{"SCRAM-SHA-256", scram.Auth{User: user, Pass: pass}.AsSha256Mechanism()},
		{"SCRAM-SHA-512", scram.Auth{User: user, Pass: pass}.AsSha512Mechanism()},
	} {
		t.Run(tc.mechanism, func(t *testing.T) {
			kc, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.EnableSASL(), kfake.Superuser(tc.mechanism, user, pass))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(kc.Close)
			pwFile := filepath.Join(t.TempDir(), "kafka-password")
			if err := os.WriteFile(pwFile, []byte(pass+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			topic := uniq("sasl")
			cfg := testConfig(t)
			cfg.Kafka.Bootstrap = kc.ListenAddrs()[0]
			cfg.Mapping.TopicRegexList = topic + ":.*"
			yml := filepath.Join(t.TempDir(), "c.yaml")
			body := "kafka:\n  properties:\n    security.protocol: SASL_PLAINTEXT\n    sasl.mechanisms: " + tc.mechanism +
				"\n    sasl.username: " + user + "\n    sasl.password: ${file:" + pwFile + "}\n"
			if err := os.WriteFile(yml, []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			loaded, _, err := config.Load(config.Options{Args: []string{"--config", yml}})
			if err != nil {
				t.Fatal(err)
			}
			cfg.Kafka.Properties = loaded.Kafka.Properties

			log, logBuf := capturingLogger(t)
			d, err := start(cfg, log)
			if err != nil {
				t.Fatalf("starting: %v", err)
			}
			t.Cleanup(d.stop)
			c := mqttClient(t, "tcp://"+d.broker.Addr("mqtt-tcp"), uniq("sasl"))
			publish(t, c, "sasl/t", 1, false, "over-sasl")

			cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.Kafka.Bootstrap), kgo.SASL(tc.client), kgo.ConsumeTopics(topic),
				kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var got []string
			for len(got) < 1 && ctx.Err() == nil {
				cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) { got = append(got, string(r.Value)) })
			}
			if len(got) != 1 || got[0] != "over-sasl" {
				t.Fatalf("read %q from Kafka over SASL, want [over-sasl]", got)
			}
			resp, err := http.Get("http://" + d.http.Addr() + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			metrics, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(metrics), pass) || strings.Contains(logBuf.String(), pass) {
				t.Fatal("the SASL password is in /metrics or the log")
			}
		})
	}

	t.Run("wrong password", func(t *testing.T) {
		kc, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.EnableSASL(), kfake.Superuser("PLAIN", user, pass))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(kc.Close)
		cfg := testConfig(t)
		cfg.Kafka.Bootstrap = kc.ListenAddrs()[0]
		cfg.Kafka.Properties = map[string]string{"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "PLAIN", "sasl.username": user, "sasl.password": "wrong-pw-value"}
		log, logBuf := capturingLogger(t)
		d, err := start(cfg, log)
		if err != nil {
			t.Fatalf("starting: %v", err)
		}
		t.Cleanup(d.stop)
		waitFor(t, 20*time.Second, "the authentication failure to be logged", func() bool {
			return strings.Contains(strings.ToLower(logBuf.String()), "authentication")
		})
		resp, err := http.Get("http://" + d.http.Addr() + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("/readyz is ready although Kafka refuses the credentials")
		}
		if strings.Contains(logBuf.String(), "wrong-pw-value") {
			t.Fatal("the log contains the SASL password")
		}
	})
}
