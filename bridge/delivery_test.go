package bridge

import (
	"errors"
	"testing"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
)

// librdkafka's idempotent producer can report a batch that failed as
// delivered, without an offset, when a later batch of its partition
// succeeded; Kafka may have written the later batch without it. Such a
// report must not become an acknowledgement.
func TestDeliveryWithoutOffsetIsUnconfirmed(t *testing.T) {
	topic := "t"
	for _, tc := range []struct {
		name    string
		offset  kafka.Offset
		err     error
		wantErr error
	}{
		{"written", 42, nil, nil},
		{"first record", 0, nil, nil},
		{"no offset", kafka.OffsetInvalid, nil, ErrUnconfirmed},
		{"failed", kafka.OffsetInvalid, kafka.NewError(kafka.ErrMsgTimedOut, "timed out", false), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := deliveryOf(&kafka.Message{TopicPartition: kafka.TopicPartition{Topic: &topic, Partition: 2, Offset: tc.offset, Error: tc.err}})
			switch {
			case tc.wantErr != nil && !errors.Is(d.Err, tc.wantErr):
				t.Fatalf("error %v, want %v", d.Err, tc.wantErr)
			case tc.wantErr == nil && tc.err == nil && d.Err != nil:
				t.Fatalf("a written record got error %v", d.Err)
			case tc.err != nil && !errors.Is(d.Err, tc.err):
				t.Fatalf("error %v, want the delivery's own %v", d.Err, tc.err)
			}
			if d.Topic != "t" || d.Partition != 2 {
				t.Fatalf("delivery %+v", d)
			}
			if Permanent(d.Err) && errors.Is(d.Err, ErrUnconfirmed) {
				t.Fatal("an unconfirmed record must be retried, not refused for good")
			}
		})
	}
}
