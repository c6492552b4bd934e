package main

import (
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/tributary-io/tributary/internal/testutil"
)

// An edge mosquitto bridged to Tributary with mosquitto's defaults: the
// bridge bit in its CONNECT (try_private; MQTT 3.1.1 only), its
// connection-state notifications and will on
// $SYS/broker/connection/<id>/state, a topic bridged in both directions.
// What devices publish at the edge is in Kafka once each, not looped back;
// what is published at Tributary reaches the edge, a retained message as
// retained; the state is retained at Tributary, "1" while connected and
// "0" once the edge is gone. Once with each protocol version a mosquitto
// bridge speaks.
func TestMosquittoBridgeWithDefaults(t *testing.T) {
	for _, tc := range []struct{ name, conf string }{
		{"mqttv311", ""},
		{"mqttv50", "bridge_protocol_version mqttv50\n"},
	} {
		t.Run(tc.name, func(t *testing.T) { testMosquittoBridge(t, tc.conf) })
	}
}

func testMosquittoBridge(t *testing.T, extraConf string) {
	cfg := testConfig(t)
	topic := uniq("edge")
	// A catch-all rule after the commands' own: the bridge's state
	// notifications would land in topic if they went to Kafka.
	cfg.Mapping.TopicRegexList = uniq("cmd") + ":cmd/.*," + topic + ":.*"
	d, logs := startLogged(t, cfg)
	host, port := hostPort(d.mqttAddr())
	bridgeID := uniq("edge.central")
	edge := startMosquitto(t, fmt.Sprintf("connection central\naddress %s:%s\nremote_clientid %s\ntopic sensors/# both 1\ntopic cmd/# in 1\n%s", host, port, bridgeID, extraConf))

	stateTopic := "$SYS/broker/connection/" + bridgeID + "/state"
	var mu sync.Mutex
	var states []string
	watcher := mqttClient(t, "tcp://"+d.mqttAddr(), uniq("watcher"))
	if tok := watcher.Subscribe(stateTopic, 1, func(_ paho.Client, m paho.Message) {
		mu.Lock()
		states = append(states, fmt.Sprintf("%s retained=%v", m.Payload(), m.Retained()))
		mu.Unlock()
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribing to %s: %v", stateTopic, tok.Error())
	}
	lastState := func() string {
		mu.Lock()
		defer mu.Unlock()
		if len(states) == 0 {
			return ""
		}
		return states[len(states)-1]
	}
	waitFor(t, 30*time.Second, "the bridge's state 1 at Tributary", func() bool { return strings.HasPrefix(lastState(), "1 ") })
	// Only the bridge bit tells a bridge from a client, and an MQTT 5
	// bridge sends none.
	if said := strings.Contains(logs.String(), "MQTT bridge connecting"); said != (extraConf == "") {
		t.Errorf("the log says an MQTT bridge connected: %v, want %v:\n%s", said, extraConf == "", logs.String())
	}

	// Edge → Tributary → Kafka, once each; a subscriber at the edge gets
	// each once too (sent back, each would come to it twice).
	sub := needTool(t, "mosquitto_sub")
	edgeSub := exec.Command(sub, "-h", "127.0.0.1", "-p", strconv.Itoa(edge.port), "-t", "sensors/#", "-t", "probe/#", "-q", "1", "-W", "8", "-v")
	var edgeOut testutil.SyncBuffer
	edgeSub.Stdout = &edgeOut
	if err := edgeSub.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // on an early failure; a no-op once it exited
		_ = edgeSub.Process.Kill()
		_ = edgeSub.Wait()
	})
	// mosquitto_sub asks for both filters in one SUBSCRIBE, so once a
	// probe (a topic the bridge does not carry) reaches it, it has
	// sensors/# too.
	prober := mqttClient(t, edge.url(), uniq("probe"))
	waitFor(t, 5*time.Second, "mosquitto_sub at the edge to subscribe", func() bool {
		publish(t, prober, "probe/edge", 1, false, "probe")
		return strings.Contains(edgeOut.String(), "probe/edge probe")
	})
	want := payloads("edge", 0, 300)
	mosquittoPub(t, edge.port, "sensors/line1/temp", want)
	counts := countPayloads(t, d.bootstrap, topic, want, 30*time.Second)
	checkNoneLost(t, counts, want)
	time.Sleep(2 * time.Second) // a loop would go on producing
	if recs := settledRecords(t, d.bootstrap, topic); len(recs) != len(want) {
		t.Fatalf("%d records for %d publishes: the bridge's publishes came back to it, or its state went to Kafka", len(recs), len(want))
	}

	_ = edgeSub.Wait() // -W: it exits on its own
	var atEdge []string
	for _, l := range strings.Split(edgeOut.String(), "\n") {
		if v, ok := strings.CutPrefix(l, "sensors/line1/temp "); ok {
			atEdge = append(atEdge, v)
		}
	}
	if !slices.Equal(atEdge, want) {
		t.Fatalf("a subscriber at the edge got %d messages for %d publishes (want each once, in order)", len(atEdge), len(want))
	}

	// Tributary → edge: a device at Tributary commands one at the edge.
	got := make(chan string, 1)
	go func() {
		out, err := exec.Command(sub, "-h", "127.0.0.1", "-p", strconv.Itoa(edge.port), "-t", "cmd/#", "-C", "1", "-W", "20", "-v").CombinedOutput()
		if err != nil {
			got <- fmt.Sprintf("mosquitto_sub: %v: %s", err, out)
			return
		}
		got <- strings.TrimSpace(string(out))
	}()
	device := mqttClient(t, "tcp://"+d.mqttAddr(), uniq("device"))
	deadline := time.Now().Add(20 * time.Second)
	var line string
	for line == "" && time.Now().Before(deadline) {
		// mosquitto_sub may not be subscribed yet: publish until it prints.
		publish(t, device, "cmd/lamp", 1, false, "on")
		select {
		case line = <-got:
		case <-time.After(500 * time.Millisecond):
		}
	}
	if line != "cmd/lamp on" {
		t.Fatalf("mosquitto_sub at the edge printed %q, want %q", line, "cmd/lamp on")
	}

	// A retained message published at Tributary, forwarded while the
	// bridge is subscribed, is retained at the edge too: a device that
	// connects to the edge later gets it.
	publish(t, device, "cmd/mode", 1, true, "eco")
	var retainedAtEdge string
	for deadline := time.Now().Add(20 * time.Second); retainedAtEdge != "cmd/mode eco"; {
		if time.Now().After(deadline) {
			t.Fatalf("a subscriber at the edge asking for retained messages only printed %q, want %q", retainedAtEdge, "cmd/mode eco")
		}
		out, _ := exec.Command(sub, "-h", "127.0.0.1", "-p", strconv.Itoa(edge.port), "-t", "cmd/mode", "--retained-only", "-C", "1", "-W", "2", "-v").CombinedOutput()
		retainedAtEdge = strings.TrimSpace(string(out))
	}

	// The edge goes away without a word: its will says so.
	edge.stop(syscall.SIGKILL)
	waitFor(t, 60*time.Second, "the bridge's will, state 0", func() bool { return strings.HasPrefix(lastState(), "0 ") })
	late := mqttClient(t, "tcp://"+d.mqttAddr(), uniq("late"))
	retained := make(chan string, 1)
	if tok := late.Subscribe(stateTopic, 1, func(_ paho.Client, m paho.Message) {
		select {
		case retained <- fmt.Sprintf("%s retained=%v", m.Payload(), m.Retained()):
		default:
		}
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribing to %s: %v", stateTopic, tok.Error())
	}
	select {
	case s := <-retained:
		if s != "0 retained=true" {
			t.Errorf("a later subscriber got %q, want the retained state 0", s)
		}
	case <-time.After(10 * time.Second):
		t.Error("a later subscriber got no retained state")
	}
	if n := len(settledRecords(t, d.bootstrap, topic)); n != len(want) {
		t.Errorf("%d records in %s, want %d: the state notifications must not go to Kafka", n, topic, len(want))
	}
}
