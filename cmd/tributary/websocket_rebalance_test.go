package main

import (
	"context"
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// A commit of a record a socket received before a rebalance took the
// record's partition away, and another gave it back, is refused (40402):
// committing it would move the group's offset back over what the other
// member committed meanwhile.
func TestWebSocketStaleCommitAfterRebalance(t *testing.T) {
	cfg := wsConfig(t)
	cfg.Kafka.TopicPartitions = 1
	d := startDaemon(t, cfg)
	topic, group := uniq("back"), uniq("g")
	produce := func(prefix string, n int) {
		in := wsDial(t, d, "/socket/in", url.Values{"clientId": {uniq("p")}, "topic": {topic}})
		produceStrings(t, in, prefix, n)
		closeWS(in)
	}
	q := func(client string) url.Values {
		return url.Values{"clientId": {client}, "groupId": {group}, "topic": {topic}, "autoCommit": {"false"}, "commitAck": {"true"}}
	}
	produce("a", 10)
	// The range assignor gives the one partition to the member whose id
	// sorts first; Kafka member ids start with the client id.
	firstWS := wsDial(t, d, "/socket/out", q("b-"+uniq("c")))
	first := wsFrames(firstWS)
	old := nextRecords(t, first, 10)

	secondWS := wsDial(t, d, "/socket/out", q("a-"+uniq("c")))
	second := wsFrames(secondWS)
	nextRecords(t, second, 10) // from the start: nothing was committed
	produce("b", 10)
	last := nextRecords(t, second, 10)[9]
	sendJSON(t, secondWS, map[string]string{"wsProxyMessageId": last.ID})
	if r := nextResult(t, second); r.Committed == nil || r.Committed.Offset != 19 {
		t.Fatalf("the second member's commit: %+v", r)
	}
	_ = secondWS.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"), time.Now().Add(time.Second))
	for range second {
	}

	produce("c", 1)
	if fresh := nextRecords(t, first, 1)[0]; fresh.Offset != 20 {
		t.Fatalf("back with the first member at offset %d, want 20, after the second's commit", fresh.Offset)
	}
	sendJSON(t, firstWS, map[string]string{"wsProxyMessageId": old[5].ID})
	if r := nextResult(t, first); r.Error == nil || r.Error.Code != 40402 || r.WsProxyMessageID != old[5].ID {
		if r.Committed != nil {
			t.Fatalf("commit of a record received before the rebalance: committed %+v, want error 40402", *r.Committed)
		}
		t.Fatalf("commit of a record received before the rebalance: %+v, want error 40402", r)
	}
	if off := groupOffset(t, d.bootstrap, group, topic); off != 20 {
		t.Fatalf("group offset %d, want the second member's 20", off)
	}
}

// wsFrames reads c's frames in the background, answering its pings, until
// c closes.
func wsFrames(c *websocket.Conn) <-chan []byte {
	ch := make(chan []byte, 1000)
	go func() {
		defer close(ch)
		for {
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Minute))
			_, b, err := c.ReadMessage()
			if err != nil {
				return
			}
			ch <- b
		}
	}()
	return ch
}

func nextFrame(t *testing.T, frames <-chan []byte) []byte {
	t.Helper()
	select {
	case b, ok := <-frames:
		if !ok {
			t.Fatal("socket closed")
		}
		return b
	case <-time.After(60 * time.Second):
		t.Fatal("no frame in 60s")
	}
	return nil
}

func nextRecords(t *testing.T, frames <-chan []byte, n int) []wsRecord {
	t.Helper()
	out := make([]wsRecord, n)
	for i := range out {
		b := nextFrame(t, frames)
		if err := json.Unmarshal(b, &out[i]); err != nil || out[i].ID == "" {
			t.Fatalf("expected a record, got %s (%v)", b, err)
		}
	}
	return out
}

func nextResult(t *testing.T, frames <-chan []byte) wsResult {
	t.Helper()
	b := nextFrame(t, frames)
	var r wsResult
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("frame %s: %v", b, err)
	}
	return r
}

// groupOffset is group's committed offset of partition 0 of topic (-1 for
// none).
func groupOffset(t *testing.T, bootstrap, group, topic string) int64 {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	offs, err := kadm.NewClient(cl).FetchOffsetsForTopics(ctx, group, topic)
	if err != nil {
		t.Fatal(err)
	}
	o, ok := offs.Lookup(topic, 0)
	if !ok {
		t.Fatalf("no offset for %s[0] in %+v", topic, offs)
	}
	return o.At
}

// A topic deleted under a consume socket: the client is told, with an
// error frame, rather than left waiting for records.
func TestWebSocketConsumedTopicDeleted(t *testing.T) {
	cfg := wsConfig(t)
	// Notice the deletion in seconds, not minutes.
	cfg.Kafka.Properties = map[string]string{"topic.metadata.refresh.interval.ms": "1000"}
	d := startDaemon(t, cfg)
	topic := uniq("gone")
	in := wsDial(t, d, "/socket/in", url.Values{"clientId": {uniq("p")}, "topic": {topic}})
	total := recordsIn(produceStrings(t, in, "a", 5))
	closeWS(in)
	outWS := wsDial(t, d, "/socket/out", url.Values{"clientId": {uniq("c")}, "topic": {topic}})
	out := wsFrames(outWS)
	nextRecords(t, out, total)

	cl, err := kgo.NewClient(kgo.SeedBrokers(d.bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	req := kmsg.NewPtrDeleteTopicsRequest()
	req.TopicNames = []string{topic}
	rt := kmsg.NewDeleteTopicsRequestTopic()
	rt.Topic = &topic
	req.Topics = append(req.Topics, rt)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := req.RequestWith(ctx, cl); err != nil {
		t.Fatal(err)
	}
	r := nextResult(t, out)
	if r.Error == nil || r.Error.Code != 40401 || !strings.Contains(r.Error.Message, topic) {
		t.Fatalf("after the topic was deleted: %+v, want error 40401 naming it", r)
	}
	t.Logf("error frame: %s", r.Error.Message)
}
