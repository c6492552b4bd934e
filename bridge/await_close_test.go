package bridge

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Creating a topic waits, with ListOffsets on the admin client, until its
// partitions take writes (topics.awaitLeaders), outside any caller's
// record: Close flushes nothing for it. Close must not destroy the
// handles under such a wait (a full test run died once with SIGSEGV in
// rd_kafka_ListOffsets), and the wait must end when Close begins.
func TestCloseWhileAwaitingLeaders(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var listed atomic.Int32
	c.ControlKey(int16(kmsg.ListOffsets), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		listed.Add(1)
		r := req.(*kmsg.ListOffsetsRequest)
		resp := r.ResponseKind().(*kmsg.ListOffsetsResponse)
		for _, rt := range r.Topics {
			st := kmsg.NewListOffsetsResponseTopic()
			st.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				sp := kmsg.NewListOffsetsResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = kerr.NotLeaderForPartition.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	for round := range 5 {
		p := testProducer(t, c, true)
		done := make(chan error, 1)
		go func() {
			done <- p.EnsureTopic(context.Background(), "new-"+string(rune('a'+round)))
		}()
		start := time.Now()
		for n := listed.Load(); listed.Load() == n; {
			if time.Since(start) > 10*time.Second {
				t.Fatal("no ListOffsets request after creating the topic")
			}
			time.Sleep(time.Millisecond)
		}
		time.Sleep(time.Duration(round) * 20 * time.Millisecond) // close at different points of the wait
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		closing := time.Now()
		p.Close(ctx)
		cancel()
		if d := time.Since(closing); d > 2*time.Second {
			t.Errorf("round %d: Close took %v: it waited for the leaders' wait", round, d)
		}
		time.Sleep(200 * time.Millisecond) // the wait's next ListOffsets would run on the destroyed handle
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("creating the topic did not end after Close")
		}
	}
}

// ListOffsets on partitions whose leaders librdkafka has not cached looks
// them up asynchronously, and a metadata answer arriving on another thread
// meanwhile can finish and free that lookup while the calling thread still
// uses it: such calls, made concurrently, killed a test process within
// seconds ("double free or corruption", or SIGSEGV at address 0x10 inside
// rd_kafka_ListOffsets). awaitLeaders asks ListOffsets only after a
// metadata answer has named every partition's leader, and still returns
// when its context ends.
func TestAwaitLeadersListsOffsetsOnlyOnceLeadersAreNamed(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := testProducer(t, c, true)
	var listed atomic.Int32
	list := p.topics.listOffsets
	p.topics.listOffsets = func(ctx context.Context, req map[kafka.TopicPartition]kafka.OffsetSpec, opts ...kafka.ListOffsetsAdminOption) (kafka.ListOffsetsResult, error) {
		listed.Add(1)
		return list(ctx, req, opts...)
	}

	// No such topic: no partition has a leader.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	start := time.Now()
	p.topics.awaitLeaders(ctx, "absent", 2)
	cancel()
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("awaitLeaders with a 300ms context took %v", d)
	}
	if n := listed.Load(); n != 0 {
		t.Errorf("%d ListOffsets calls for a topic whose partitions have no leader", n)
	}

	// A topic created: its leaders are named, and ListOffsets confirms them.
	if err := p.EnsureTopic(context.Background(), "present"); err != nil {
		t.Fatal(err)
	}
	if n := listed.Load(); n == 0 {
		t.Error("no ListOffsets call after creating a topic")
	}
}
