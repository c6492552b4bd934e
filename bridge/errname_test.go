package bridge

import (
	"testing"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
)

// records_failed_total's error label names the error, not its number.
func TestErrorName(t *testing.T) {
	for code, want := range map[kafka.ErrorCode]string{
		kafka.ErrMsgTimedOut:              "msg_timed_out",
		kafka.ErrTopicAuthorizationFailed: "topic_authorization_failed",
		kafka.ErrMsgSizeTooLarge:          "msg_size_too_large",
		kafka.ErrUnknownTopicOrPart:       "unknown_topic_or_part",
	} {
		for range 2 { // the second time from the cache
			if got := errorName(code); got != want {
				t.Errorf("errorName(%d) = %q, want %q", code, got, want)
			}
		}
	}
	if got := errorName(kafka.ErrorCode(31999)); got != "code_31999" {
		t.Errorf("a code librdkafka does not know: %q, want code_31999", got)
	}
}
