package bridge

import (
	"errors"
	"fmt"
	"strings"
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

// A record within kafka.max_message_bytes that Kafka refuses for its own,
// smaller limit is too large to whoever produced it (an MQTT 5 client
// gets 0x95, not 0x80), refused for good, and still Kafka's error to the
// metrics.
func TestDeliveryTooLargeForKafka(t *testing.T) {
	topic := "t"
	for _, code := range []kafka.ErrorCode{kafka.ErrMsgSizeTooLarge, kafka.ErrInvalidMsgSize, kafka.ErrRecordListTooLarge} {
		ke := kafka.NewError(code, "too large", false)
		d := deliveryOf(&kafka.Message{TopicPartition: kafka.TopicPartition{Topic: &topic, Partition: 1, Offset: kafka.OffsetInvalid, Error: ke}})
		if !errors.Is(d.Err, ErrRecordTooLarge) || !RefusedAsTooLarge(d.Err) || !Permanent(d.Err) {
			t.Errorf("%v: error %v: ErrRecordTooLarge %v, RefusedAsTooLarge %v, Permanent %v; want all", code, d.Err,
				errors.Is(d.Err, ErrRecordTooLarge), RefusedAsTooLarge(d.Err), Permanent(d.Err))
		}
		var got kafka.Error
		if !errors.As(d.Err, &got) || got.Code() != code {
			t.Errorf("%v: the Kafka error is lost from %v", code, d.Err)
		}
		if !strings.Contains(d.Err.Error(), "max.message.bytes") {
			t.Errorf("%v: %q does not name the setting to check", code, d.Err)
		}
	}
	other := kafka.NewError(kafka.ErrMsgTimedOut, "timed out", false)
	if d := deliveryOf(&kafka.Message{TopicPartition: kafka.TopicPartition{Topic: &topic, Error: other}}); errors.Is(d.Err, ErrRecordTooLarge) || RefusedAsTooLarge(d.Err) {
		t.Errorf("a timed-out record is reported too large: %v", d.Err)
	}
	// Refused by Tributary before producing: logged where it was refused.
	if RefusedAsTooLarge(fmt.Errorf("producing to %q: %w", topic, ErrRecordTooLarge)) {
		t.Error("Tributary's own refusal taken for Kafka's")
	}
}
