package websocket

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/tributary-io/tributary/bridge"
	"github.com/tributary-io/tributary/internal/testutil"
)

// produceAPI is an API whose producer writes to c, served on a test
// server; it returns the API and the server's ws:// address. Each of set
// changes the API before it serves.
func produceAPI(t *testing.T, c *kfake.Cluster, set ...func(*API)) (*API, string) {
	t.Helper()
	return produceAPIBudget(t, c, 8<<20, set...)
}

// produceAPIBudget is produceAPI with an in-flight budget of budget bytes.
func produceAPIBudget(t *testing.T, c *kfake.Cluster, budget int64, set ...func(*API)) (*API, string) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	p, err := bridge.NewProducer(bridge.ProducerConfig{Bootstrap: c.ListenAddrs()[0], MaxMessageBytes: 1 << 20,
		InflightBudgetBytes: budget, AckLinger: time.Millisecond}, log)
	if err != nil {
		t.Fatal(err)
	}
	a := NewAPI(APIConfig{Registerer: prometheus.NewRegistry()}, p, log)
	for _, f := range set {
		f(a)
	}
	mux := http.NewServeMux()
	a.routes(mux, func(h http.Handler) http.Handler { return h })
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		p.Close(ctx)
		a.Close(ctx)
		srv.Close()
	})
	return a, "ws" + strings.TrimPrefix(srv.URL, "http")
}

// frames reads c's frames into the returned channel until c fails.
func frames(c *websocket.Conn) <-chan string {
	ch := make(chan string, 100)
	go func() {
		defer close(ch)
		for {
			_, b, err := c.ReadMessage()
			if err != nil {
				return
			}
			ch <- string(b)
		}
	}()
	return ch
}

// holdRequests makes c hold its requests of key until let lets them
// through: every one when all is set, else only the first. awaitHeld
// waits until c has the first, failing the test after 30 s with what
// ("the commit") did not reach Kafka. let may be called more than once; it
// is called at cleanup.
func holdRequests(t *testing.T, c *kfake.Cluster, key kmsg.Key, all bool) (awaitHeld func(what string), let func()) {
	t.Helper()
	held, release := make(chan struct{}), make(chan struct{})
	var first, once atomic.Bool
	c.ControlKey(int16(key), func(kmsg.Request) (kmsg.Response, error, bool) {
		if all {
			c.KeepControl()
		}
		isFirst := first.CompareAndSwap(false, true)
		if isFirst {
			close(held)
		}
		if all || isFirst {
			c.SleepControl(func() { <-release })
		}
		if isFirst && !all {
			c.DropControl()
		}
		return nil, nil, false // then answered as usual
	})
	awaitHeld = func(what string) {
		t.Helper()
		select {
		case <-held:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s did not reach Kafka", what)
		}
	}
	let = func() {
		if once.CompareAndSwap(false, true) {
			close(release)
		}
	}
	t.Cleanup(let)
	return awaitHeld, let
}

// The answers to a socket's frames come back in the order the frames were
// sent, errors included: the error to a frame that could not be read
// (messageId null) does not overtake the result of a record sent before
// it that Kafka has not acknowledged yet, so the client can tell which
// frame it answers.
func TestProduceAnswersInFrameOrder(t *testing.T) {
	c := testutil.KafkaCluster(t)
	_, addr := produceAPI(t, c)
	awaitHeld, let := holdRequests(t, c, kmsg.Produce, false)
	in, _, err := websocket.DefaultDialer.Dial(addr+"/socket/in?"+url.Values{"clientId": {"c"}, "topic": {"t"}}.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() })
	got := frames(in)
	send := func(frame string) {
		t.Helper()
		if err := in.WriteMessage(websocket.TextMessage, []byte(frame)); err != nil {
			t.Fatal(err)
		}
	}
	send(`{"value":{"value":"a"},"messageId":"m1"}`)
	awaitHeld("the record")
	send(`{not json`)
	send(`{"value":{"value":"b"},"messageId":"m3"}`)
	send(`{"value":"bare","messageId":"m4"}`)
	select {
	case f := <-got:
		t.Fatalf("answer %s came before the result of m1, which Kafka has not acknowledged", f)
	case <-time.After(time.Second):
	}
	let()
	want := []string{`"messageId":"m1"`, `{"messageId":null,"error":{"code":42205`, `"messageId":"m3"`, `{"messageId":"m4","error":{"code":42205`}
	for i, w := range want {
		select {
		case f := <-got:
			if !strings.Contains(f, w) {
				t.Fatalf("answer %d: %s, want one with %s", i+1, f, w)
			}
			if i == 0 || i == 2 {
				var r struct{ Offset *int64 }
				if json.Unmarshal([]byte(f), &r) != nil || r.Offset == nil {
					t.Fatalf("answer %d: %s, want a result", i+1, f)
				}
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("answer %d did not come", i+1)
		}
	}
}

// A record waiting for room in the in-flight budget when the server
// drains for shutdown is not produced, and its socket says so: produced
// once the budget freed, it could reach Kafka after the flush, with no
// result frame to follow, and the client's resend would be a duplicate.
func TestProduceWaitingAtDrainIsNotProduced(t *testing.T) {
	c := testutil.KafkaCluster(t)
	a, addr := produceAPIBudget(t, c, 1000)
	awaitHeld, let := holdRequests(t, c, kmsg.Produce, true)
	in, _, err := websocket.DefaultDialer.Dial(addr+"/socket/in?"+url.Values{"clientId": {"c"}, "topic": {"t"}}.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() })
	got := frames(in)
	value := strings.Repeat("v", 600) // two do not fit the budget together
	for _, id := range []string{"m1", "m2"} {
		if err := in.WriteMessage(websocket.TextMessage, []byte(`{"value":{"value":"`+value+`"},"messageId":"`+id+`"}`)); err != nil {
			t.Fatal(err)
		}
	}
	awaitHeld("m1")
	// m2, read right after m1, waits for m1's bytes to be freed.
	time.Sleep(300 * time.Millisecond)
	if used := a.producer.InflightBytes(); used < 600 || used > 1000 {
		t.Fatalf("%d bytes of the budget in use, want m1's alone", used)
	}
	a.Drain()
	let()
	want := []string{`"messageId":"m1"`, `{"messageId":"m2","error":{"code":50302,"message":"record not produced: the server is shutting down`}
	for i, w := range want {
		select {
		case f := <-got:
			if !strings.Contains(f, w) {
				t.Fatalf("answer %d: %.200s, want one with %s", i+1, f, w)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("answer %d did not come", i+1)
		}
	}
}

// At shutdown a produce socket sends the results still due until the
// producer's flush is over (Close), as long as kafka.flush_timeout lets it
// run, not for a time of its own: a record Kafka acknowledged late in the
// flush would get no result, and the client's resend be a duplicate.
func TestProduceShutdownWaitsForTheFlush(t *testing.T) {
	// closeWait stands for the 30 s a socket the server closes waits
	// otherwise, which a longer flush outlasts.
	a, got, let := produceHeldAtDrain(t, func(a *API) { a.closeWait = 200 * time.Millisecond })
	select {
	case f, ok := <-got:
		if !ok {
			t.Fatal("socket closed during the flush, before Kafka acknowledged m1")
		}
		t.Fatalf("frame %s before Kafka acknowledged m1", f)
	case <-time.After(time.Second):
	}
	let() // Kafka acknowledges m1, the flush still running
	select {
	case f := <-got:
		if !strings.Contains(f, `"messageId":"m1"`) || !strings.Contains(f, `"offset":`) {
			t.Fatalf("frame %s, want the result of m1", f)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no result for m1, which Kafka acknowledged during the flush")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a.Close(ctx)
	for f := range got {
		t.Fatalf("frame %s after the result, want the socket closed", f)
	}
}

// produceHeldAtDrain opens a produce socket on an API set up by set,
// sends record m1, whose produce request Kafka holds until let is
// called, and then begins the shutdown (Drain). got has the socket's
// frames.
func produceHeldAtDrain(t *testing.T, set func(*API)) (a *API, got <-chan string, let func()) {
	t.Helper()
	c := testutil.KafkaCluster(t)
	a, addr := produceAPI(t, c, set)
	awaitHeld, let := holdRequests(t, c, kmsg.Produce, false)
	in, _, err := websocket.DefaultDialer.Dial(addr+"/socket/in?"+url.Values{"clientId": {"c"}, "topic": {"t"}}.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() })
	got = frames(in)
	if err := in.WriteMessage(websocket.TextMessage, []byte(`{"value":{"value":"a"},"messageId":"m1"}`)); err != nil {
		t.Fatal(err)
	}
	awaitHeld("the record")
	a.Drain() // the flush begins
	return a, got, let
}

// A socket closing at shutdown waits for its results only so long when
// Close does not come to end the wait.
func TestProduceShutdownWaitBounded(t *testing.T) {
	_, got, _ := produceHeldAtDrain(t, func(a *API) { a.shutdownWait = 200 * time.Millisecond })
	select {
	case f, ok := <-got:
		if ok {
			t.Fatalf("frame %s, want the socket closed without the result Kafka has not given", f)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("socket still open 20 s into a shutdown whose wait is 200 ms, Close not called")
	}
}

// The writer puts answers that Kafka's acknowledgements (of records in
// different partitions) bring out of order back in frame order; as the
// socket closes, it sends those that came, past the ones that did not.
func TestProduceWriterOrder(t *testing.T) {
	client, ws, conn, _ := burstPair(t)
	a := NewAPI(APIConfig{}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	c := &produceConn{sock: newSock(ws, conn, 1<<20, time.Minute), a: a, out: make(chan outFrame, 8),
		slots: make(chan struct{}, 8)}
	answer := func(seq uint64) outFrame {
		return outFrame{seq: seq, id: json.RawMessage(`"m` + string(rune('0'+seq)) + `"`), d: bridge.Delivery{Topic: "t", Offset: int64(seq)}, ts: 1}
	}
	for _, step := range []struct {
		arrive []uint64
		want   []string // messageIds written, in order
	}{
		{[]uint64{2}, nil},
		{[]uint64{0}, []string{"m0"}},
		{[]uint64{3, 1}, []string{"m1", "m2", "m3"}},
		{[]uint64{5, 7}, nil},
	} {
		for _, seq := range step.arrive {
			c.slots <- struct{}{}
			c.out <- answer(seq)
		}
		n, err := c.writeReady(nil)
		c.release(n)
		if err != nil || n != len(step.want) {
			t.Fatalf("after %v: wrote %d (%v), want %v", step.arrive, n, err, step.want)
		}
		for i, f := range readFrames(t, client, n) {
			if !strings.Contains(f, `"messageId":"`+step.want[i]+`"`) {
				t.Fatalf("after %v: frame %d is %s, want %s", step.arrive, i, f, step.want[i])
			}
		}
	}
	c.writeParked() // 4 and 6 will not come
	for i, f := range readFrames(t, client, 2) {
		if want := []string{"m5", "m7"}[i]; !strings.Contains(f, `"messageId":"`+want+`"`) {
			t.Fatalf("closing: frame %d is %s, want %s", i, f, want)
		}
	}
	if len(c.slots) != 0 || len(c.parked) != 0 {
		t.Fatalf("%d slots still taken, %d answers parked; want each written answer's slot freed", len(c.slots), len(c.parked))
	}
}

// A record whose topic Kafka no longer has (deleted after Tributary
// checked it, with kafka.create_topics false) gets error 40401, as one to
// a topic found missing before producing does, whether librdkafka or the
// broker says so in the delivery report. With topic creation on the topic
// is created again, and the client sends the record again (50002).
func TestProduceDeliveryUnknownTopic(t *testing.T) {
	client, ws, conn, _ := burstPair(t)
	a := NewAPI(APIConfig{}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	c := &produceConn{sock: newSock(ws, conn, 1<<20, time.Minute), a: a, out: make(chan outFrame, 8),
		slots: make(chan struct{}, 8)}
	local := kafka.NewError(kafka.ErrUnknownTopic, "Local: Unknown topic", false)
	broker := kafka.NewError(kafka.ErrUnknownTopicOrPart, "Broker: Unknown topic or partition", false)
	for i, tc := range []struct {
		name string
		err  error
		want int
	}{
		{"librdkafka", local, CodeUnknownTopic},
		{"broker", broker, CodeUnknownTopic},
		{"created again", fmt.Errorf("%w: %w", bridge.ErrTopicGone, broker), CodeKafka},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.slots <- struct{}{}
			d := &delivery{c: c, seq: uint64(i), id: json.RawMessage(`"m"`), ts: 1}
			d.Delivered(bridge.Delivery{Topic: "t", Partition: -1, Offset: -1, Err: tc.err})
			n, err := c.writeReady(nil)
			c.release(n)
			if err != nil || n != 1 {
				t.Fatalf("wrote %d (%v), want the error frame", n, err)
			}
			var f produceError
			if b := readFrames(t, client, 1)[0]; json.Unmarshal([]byte(b), &f) != nil || f.Error.Code != tc.want {
				t.Fatalf("frame %s, want error %d", b, tc.want)
			}
		})
	}
}

// records_total{direction="in"} counts the records Kafka acknowledged,
// as its help says, whether or not their results reached the client: one
// whose client went away while Kafka had it is still in Kafka.
func TestProduceRecordsCountedWhenKafkaAcknowledges(t *testing.T) {
	c := testutil.KafkaCluster(t)
	a, addr := produceAPI(t, c)
	awaitHeld, let := holdRequests(t, c, kmsg.Produce, false)
	in, _, err := websocket.DefaultDialer.Dial(addr+"/socket/in?"+url.Values{"clientId": {"c"}, "topic": {"t"}}.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, frame := range []string{`{"value":{"value":"a"},"messageId":"m1"}`, `{"value":"bare","messageId":"m2"}`} {
		if err := in.WriteMessage(websocket.TextMessage, []byte(frame)); err != nil {
			t.Fatal(err)
		}
	}
	awaitHeld("the record")
	in.Close() // gone before Kafka answers
	let()
	for deadline := time.Now().Add(20 * time.Second); recordsTotal(t, a, "in") != 1; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("records_total{direction=\"in\"} %v, want 1: Kafka acknowledged the record", recordsTotal(t, a, "in"))
		}
	}
	if n := testutil.RecordsIn(t, c); n != 1 {
		t.Fatalf("%d records in Kafka, want 1", n)
	}
}

// recordsTotal reads tributary_websocket_records_total{direction} from
// a's registry.
func recordsTotal(t *testing.T, a *API, direction string) float64 {
	t.Helper()
	mfs, err := a.cfg.Registerer.(prometheus.Gatherer).Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "tributary_websocket_records_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "direction" && l.GetValue() == direction {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
