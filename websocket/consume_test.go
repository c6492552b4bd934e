package websocket

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/tributary-io/tributary/bridge"
	"github.com/tributary-io/tributary/internal/testutil"
)

// groupMember joins group g as client, reading topic t.
func groupMember(t *testing.T, c *kfake.Cluster, client string) *bridge.Consumer {
	t.Helper()
	cons, err := bridge.NewConsumer(bridge.ConsumerConfig{Bootstrap: c.ListenAddrs()[0], GroupID: "g", ClientID: client,
		Topics: []string{"t"}, SessionTimeout: 6 * time.Second}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cons.Close)
	return cons
}

func nextRecords(t *testing.T, cons *bridge.Consumer, n int) []*bridge.ConsumedRecord {
	t.Helper()
	var recs []*bridge.ConsumedRecord
	timeout := time.After(60 * time.Second)
	for len(recs) < n {
		select {
		case r := <-cons.Records():
			recs = append(recs, r)
		case <-timeout:
			t.Fatalf("%d of %d records", len(recs), n)
		}
	}
	return recs
}

// movedAndBack plays a rebalance that takes t[0] from member a and gives
// it back: a reads records 0-9, member b takes the partition and commits
// up to 20, and leaves. It returns the records a read before (its old
// ones) and a's first record of the partition since, at offset 20.
// written runs with the old records before b joins.
func movedAndBack(t *testing.T, c *kfake.Cluster, a *bridge.Consumer, written func(old []*bridge.ConsumedRecord)) (old []*bridge.ConsumedRecord, fresh *bridge.ConsumedRecord) {
	t.Helper()
	testutil.ProduceTo(t, c, 10)
	old = nextRecords(t, a, 10)
	written(old)
	// The range assignor gives the one partition to the member whose id
	// sorts first; Kafka member ids start with the client id.
	b := groupMember(t, c, "a-member")
	nextRecords(t, b, 10) // from the start: nothing was committed
	testutil.ProduceTo(t, c, 10)
	last := nextRecords(t, b, 10)[9]
	done := make(chan error, 1)
	if err := b.Commit(last.Assignment, last.Offset, func(err error) { done <- err }); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	b.Close()
	testutil.ProduceTo(t, c, 1)
	fresh = nextRecords(t, a, 1)[0]
	if fresh.Offset != 20 {
		t.Fatalf("back with the first member at offset %d, want 20, after the other's commit", fresh.Offset)
	}
	return old, fresh
}

// testConsume is a /socket/out socket over cons, without its HTTP
// handler and goroutines: the test calls writeBurst and commit itself.
func testConsume(t *testing.T, cons *bridge.Consumer, autoCommit bool) (*consumeConn, *websocket.Conn) {
	t.Helper()
	client, ws, conn, _ := burstPair(t)
	a := NewAPI(APIConfig{}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	return &consumeConn{sock: newSock(ws, conn, 1<<20, time.Minute), a: a, consumer: cons, topics: map[string]bool{"t": true},
		autoCommit: autoCommit, commitAck: true, ctrl: frameQueue{notify: make(chan struct{}, 1)},
		parts: map[topicPartition]*sentState{}}, client
}

// write writes recs to the socket as the writer would.
func write(t *testing.T, c *consumeConn, recs []*bridge.ConsumedRecord) {
	t.Helper()
	if _, _, err := c.writeBurst(append([]*bridge.ConsumedRecord(nil), recs...), nil); err != nil {
		t.Fatal(err)
	}
}

// sentTen is the start of the commit tests: a Kafka cluster with ten
// records in t, a socket without autoCommit whose consumer read them, and
// the records, which the socket has written.
func sentTen(t *testing.T) (*kfake.Cluster, *consumeConn, *websocket.Conn, []*bridge.ConsumedRecord) {
	t.Helper()
	c := testutil.KafkaCluster(t)
	testutil.ProduceTo(t, c, 10)
	cons := groupMember(t, c, "m")
	s, client := testConsume(t, cons, false)
	recs := nextRecords(t, cons, 10)
	write(t, s, recs)
	return c, s, client, recs
}

func commitFrameFor(r *bridge.ConsumedRecord) []byte {
	return fmt.Appendf(nil, `{"wsProxyMessageId":"%s-%d-%d-%d"}`, r.Topic, r.Partition, r.Offset, r.Timestamp.UnixMilli())
}

// controlFrame waits for the one control frame the socket queued.
func controlFrame(t *testing.T, c *consumeConn) string {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		switch items := c.ctrl.take(); len(items) {
		case 0:
			continue
		case 1:
			b, err := json.Marshal(items[0])
			if err != nil {
				t.Fatal(err)
			}
			return string(b)
		default:
			t.Fatalf("%d control frames, want 1: %+v", len(items), items)
		}
	}
	t.Fatal("no control frame")
	return ""
}

// A client's commit of a record it received before a rebalance took the
// record's partition away, and gave it back, is stale: committing it would
// move the group's offset back over what the other member committed.
func TestConsumeStaleCommitAfterRebalance(t *testing.T) {
	c := testutil.KafkaCluster(t)
	a := groupMember(t, c, "b-member")
	s, _ := testConsume(t, a, false)
	old, fresh := movedAndBack(t, c, a, func(old []*bridge.ConsumedRecord) { write(t, s, old) })
	write(t, s, []*bridge.ConsumedRecord{fresh})
	s.commit(commitFrameFor(old[5]))
	if f := controlFrame(t, s); !strings.Contains(f, `"code":40402`) || !strings.Contains(f, "rebalance") || !strings.Contains(f, `"t-0-5-`) {
		t.Fatalf("commit of a record from before the rebalance: %s, want error 40402 naming the rebalance", f)
	}
	s.commit(commitFrameFor(fresh))
	if f := controlFrame(t, s); f != `{"committed":{"topic":"t","partition":0,"offset":20}}` {
		t.Fatalf("commit of the record since: %s", f)
	}
	if off := testutil.CommittedOffset(t, c, "g"); off != 21 {
		t.Fatalf("group offset %d, want 21", off)
	}
}

// With autoCommit, records fetched before a rebalance took their partition
// away, and still waiting for the writer when it came back, are neither
// sent (the other member read them too) nor committed.
func TestConsumeDropsRecordsOfAnEndedAssignment(t *testing.T) {
	c := testutil.KafkaCluster(t)
	a := groupMember(t, c, "b-member")
	s, client := testConsume(t, a, true)
	old, _ := movedAndBack(t, c, a, func([]*bridge.ConsumedRecord) {})
	write(t, s, old)
	if err := s.writeText([]byte(`"end"`)); err != nil {
		t.Fatal(err)
	}
	if f := readFrames(t, client, 1)[0]; f != `"end"` {
		t.Fatalf("the socket sent %s, a record it had read before the partition moved away", f)
	}
	a.Close() // commits what was stored
	if off := testutil.CommittedOffset(t, c, "g"); off != 20 {
		t.Fatalf("group offset %d, want the other member's 20", off)
	}
}

// A commit Kafka failed may be sent again: it is not taken for committed.
func TestConsumeCommitAgainAfterFailure(t *testing.T) {
	c, s, _, recs := sentTen(t)
	// Kafka refuses the next commit.
	testutil.RefuseNextCommit(c)
	s.commit(commitFrameFor(recs[4]))
	if f := controlFrame(t, s); !strings.Contains(f, `"code":50002`) {
		t.Fatalf("refused commit: %s, want error 50002", f)
	}
	s.commit(commitFrameFor(recs[4]))
	if f := controlFrame(t, s); f != `{"committed":{"topic":"t","partition":0,"offset":4}}` {
		t.Fatalf("the same commit again: %s, want it acknowledged", f)
	}
	s.commit(commitFrameFor(recs[4]))
	if f := controlFrame(t, s); !strings.Contains(f, `"code":40402`) || !strings.Contains(f, "already committed") {
		t.Fatalf("a third time: %s, want error 40402, already committed", f)
	}
}

// A commit frame's wsProxyMessageId is not echoed when it is longer than
// any the server sends, so that refused commits waiting to be answered
// hold little memory.
func TestConsumeCommitIDLimit(t *testing.T) {
	a := NewAPI(APIConfig{}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	c := &consumeConn{a: a, topics: map[string]bool{"t": true}, ctrl: frameQueue{notify: make(chan struct{}, 1)}, parts: map[topicPartition]*sentState{}}
	long := "t-0-1-" + strings.Repeat("1", 4<<20)
	for _, frame := range []string{
		`{"wsProxyMessageId":"` + long + `"}`,
		`{"wsProxyMessageId":"` + long + `","wsProxyMessageId":5}`, // a type error after the id
	} {
		c.commit([]byte(frame))
		f := controlFrame(t, c)
		if len(f) > 500 || !strings.Contains(f, `"code":42205`) || !strings.Contains(f, "1024") {
			t.Fatalf("%d-byte answer %.200s, want error 42205 naming the limit, without the id", len(f), f)
		}
	}
	// Within the limit, an unknown id is echoed.
	c.commit([]byte(`{"wsProxyMessageId":"t-0-1-2"}`))
	if f := controlFrame(t, c); !strings.Contains(f, `"wsProxyMessageId":"t-0-1-2"`) || !strings.Contains(f, `"code":40402`) {
		t.Fatalf("unknown id: %s", f)
	}
}

// Errors that stop the consumer reading reach the client as error frames.
func TestConsumeErrorFrames(t *testing.T) {
	a := NewAPI(APIConfig{}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	c := &consumeConn{a: a, ctrl: frameQueue{notify: make(chan struct{}, 1)}}
	for _, tc := range []struct {
		err  error
		code int
	}{
		{fmt.Errorf("reading t: %w: x", bridge.ErrNoSuchTopic), CodeUnknownTopic},
		{fmt.Errorf("reading t: %w: x", bridge.ErrAccessDenied), CodeForbidden},
		{errors.New("taking partitions [t[0]] assigned by the group: x"), CodeKafka},
	} {
		c.consumerError(tc.err)
		want := fmt.Sprintf(`{"error":{"code":%d,"message":%q}}`, tc.code, tc.err.Error())
		if f := controlFrame(t, c); f != want {
			t.Fatalf("frame %s, want %s", f, want)
		}
	}
}

// A commit names a record the socket sent, its timestamp included, in the
// form the server writes ids: an id with another timestamp, or with a
// number written another way (a sign, leading zeros), is refused rather
// than taken for the record at that offset.
func TestConsumeCommitChecksTheRecord(t *testing.T) {
	c, s, _, recs := sentTen(t)
	ts := recs[4].Timestamp.UnixMilli()
	for _, tc := range []struct {
		id   string
		code int
	}{
		{fmt.Sprintf("t-0-4-%d", ts+1), CodeUnknownMessage},
		{fmt.Sprintf("t-0-4-%d", ts-1000), CodeUnknownMessage},
		{fmt.Sprintf("t-0-+4-%d", ts), CodeInvalidPayload},
		{fmt.Sprintf("t-0-04-%d", ts), CodeInvalidPayload},
		{fmt.Sprintf("t-00-4-%d", ts), CodeInvalidPayload},
		{fmt.Sprintf("t-+0-4-%d", ts), CodeInvalidPayload},
		{fmt.Sprintf("t-0-4-+%d", ts), CodeInvalidPayload},
		{fmt.Sprintf("t-0-4-0%d", ts), CodeInvalidPayload},
		{fmt.Sprintf("t-0-4- %d", ts), CodeInvalidPayload},
		{fmt.Sprintf("u-0-4-%d", ts), CodeUnknownMessage},
		{fmt.Sprintf("t-1-4-%d", ts), CodeUnknownMessage},
		{fmt.Sprintf("t-0-10-%d", ts), CodeUnknownMessage},
	} {
		s.commit(fmt.Appendf(nil, `{"wsProxyMessageId":%q}`, tc.id))
		f := controlFrame(t, s)
		if !strings.Contains(f, fmt.Sprintf(`"code":%d`, tc.code)) || !strings.Contains(f, fmt.Sprintf(`"wsProxyMessageId":%q`, tc.id)) {
			t.Fatalf("commit of %s: %s, want error %d", tc.id, f, tc.code)
		}
	}
	s.commit(commitFrameFor(recs[4]))
	if f := controlFrame(t, s); f != `{"committed":{"topic":"t","partition":0,"offset":4}}` {
		t.Fatalf("commit of the record sent: %s", f)
	}
	if off := testutil.CommittedOffset(t, c, "g"); off != 5 {
		t.Fatalf("group offset %d, want 5: only the commit naming the record sent counts", off)
	}
}

// A socket keeps the timestamps of the latest maxSentWindow records of a
// partition the client has not committed; a commit of an older one is
// refused, saying to commit a later record, rather than taken unchecked.
func TestConsumeCommitTooOldToCheck(t *testing.T) {
	s, _ := testConsume(t, nil, false)
	asg := &bridge.Assignment{}
	var recs []*bridge.ConsumedRecord
	for i := range maxSentWindow + 100 {
		recs = append(recs, &bridge.ConsumedRecord{Topic: "t", Offset: int64(i), Timestamp: time.UnixMilli(int64(1000 + i)), Assignment: asg})
	}
	write(t, s, recs)
	s.commit(commitFrameFor(recs[50]))
	if f := controlFrame(t, s); !strings.Contains(f, `"code":40402`) || !strings.Contains(f, "too old") || !strings.Contains(f, "commit a later record") {
		t.Fatalf("commit of a record %d records back: %s, want error 40402, too old", maxSentWindow+50, f)
	}
	kept := recs[len(recs)-maxSentWindow]
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.parts[topicPartition{"t", 0}]
	if p := sentProblem(true, st, topicPartition{"t", 0}, kept.Offset, kept.Timestamp.UnixMilli()); p != "" {
		t.Fatalf("the oldest record kept: %s", p)
	}
	if p := sentProblem(true, st, topicPartition{"t", 0}, kept.Offset, kept.Timestamp.UnixMilli()+1); !strings.Contains(p, "timestamp") {
		t.Fatalf("the oldest record kept, with another timestamp: %q", p)
	}
	st.sent.forget(kept.Offset + 10) // as a commit does
	if p := sentProblem(true, st, topicPartition{"t", 0}, kept.Offset+11, kept.Timestamp.UnixMilli()+11); p != "" || st.sent.n != maxSentWindow-11 {
		t.Fatalf("after a commit: %q, %d kept", p, st.sent.n)
	}
}

// controlFrames waits for n control frames.
func controlFrames(t *testing.T, c *consumeConn, n int) []string {
	t.Helper()
	var got []string
	for deadline := time.Now().Add(30 * time.Second); len(got) < n; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d control frames, want %d: %q", len(got), n, got)
		}
		for _, item := range c.ctrl.take() {
			b, err := json.Marshal(item)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, string(b))
		}
	}
	return got
}

// A commit of a record that a commit still in flight covers (the same
// record again, or one before it) is answered as it would be once that
// commit is done, already committed, not acknowledged a second time as if
// it had committed something.
func TestConsumeCommitTwiceWhileInFlight(t *testing.T) {
	c, s, _, recs := sentTen(t)
	awaitHeld, let := holdRequests(t, c, kmsg.OffsetCommit, true)
	s.commit(commitFrameFor(recs[4]))
	awaitHeld("the commit")
	s.commit(commitFrameFor(recs[4]))
	s.commit(commitFrameFor(recs[2]))
	let()
	got := controlFrames(t, s, 3)
	if got[0] != `{"committed":{"topic":"t","partition":0,"offset":4}}` {
		t.Fatalf("first answer %s, want the commit acknowledged", got[0])
	}
	for i, r := range []*bridge.ConsumedRecord{recs[4], recs[2]} {
		if f := got[i+1]; !strings.Contains(f, `"code":40402`) || !strings.Contains(f, "already committed") || !strings.Contains(f, fmt.Sprintf(`"t-0-%d-`, r.Offset)) {
			t.Fatalf("answer to the commit of offset %d, covered by the one in flight: %s, want error 40402, already committed", r.Offset, f)
		}
	}
	// Sent again now, the same answer.
	s.commit(commitFrameFor(recs[4]))
	if f := controlFrame(t, s); !strings.Contains(f, `"code":40402`) || !strings.Contains(f, "already committed") {
		t.Fatalf("the same commit after it was confirmed: %s", f)
	}
	if off := testutil.CommittedOffset(t, c, "g"); off != 5 {
		t.Fatalf("group offset %d, want 5", off)
	}
}

// When the commit in flight fails, the commits it covered get its error
// too: none was committed, and the client may send them again.
func TestConsumeCommitCoveredShareFailure(t *testing.T) {
	c, s, _, recs := sentTen(t)
	awaitHeld, let := holdRequests(t, c, kmsg.OffsetCommit, true)
	testutil.RefuseNextCommit(c) // after the hold
	s.commit(commitFrameFor(recs[4]))
	awaitHeld("the commit")
	s.commit(commitFrameFor(recs[4]))
	let()
	for i, f := range controlFrames(t, s, 2) {
		if !strings.Contains(f, `"code":50002`) || !strings.Contains(f, `"t-0-4-`) {
			t.Fatalf("answer %d: %s, want error 50002 for offset 4", i, f)
		}
	}
	s.commit(commitFrameFor(recs[4]))
	if f := controlFrame(t, s); f != `{"committed":{"topic":"t","partition":0,"offset":4}}` {
		t.Fatalf("sent again: %s, want it acknowledged", f)
	}
}

// While Kafka holds a commit, the reader takes at most maxControlFrames
// commits that wait for it (its Commit returns at once, so nothing else
// stops a client sending the same commit without end); it reads on once
// they are answered.
func TestConsumeCommitsAwaitingKafkaBoundReading(t *testing.T) {
	c, s, client, recs := sentTen(t)
	readFrames(t, client, 1) // what write wrote
	awaitHeld, let := holdRequests(t, c, kmsg.OffsetCommit, true)
	readDone := make(chan error, 1)
	go func() { readDone <- s.read() }()
	t.Cleanup(func() {
		s.requestClose(websocket.CloseNormalClosure, "")
		<-readDone
	})
	n := maxControlFrames + 200
	for range n {
		if err := client.WriteMessage(websocket.TextMessage, commitFrameFor(recs[4])); err != nil {
			t.Fatal(err)
		}
	}
	awaitHeld("the commit")
	taken := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		st := s.parts[topicPartition{"t", 0}]
		if len(st.inflight) == 0 {
			return 0
		}
		return 1 + len(st.inflight[0].covered)
	}
	for deadline := time.Now().Add(10 * time.Second); taken() < maxControlFrames; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the reader took %d commits", taken())
		}
	}
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if k := taken(); k > maxControlFrames+1 {
			t.Fatalf("the reader took %d commits while Kafka held the first, want at most %d", k, maxControlFrames+1)
		}
	}
	let()
	answers := controlFrames(t, s, n)
	if answers[0] != `{"committed":{"topic":"t","partition":0,"offset":4}}` {
		t.Fatalf("first answer %s", answers[0])
	}
	for i, f := range answers[1:] {
		if !strings.Contains(f, "already committed") {
			t.Fatalf("answer %d: %s, want error 40402, already committed", i+1, f)
		}
	}
}
