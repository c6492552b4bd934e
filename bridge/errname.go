package bridge

// librdkafka names each error code (rd_kafka_err2name: "_MSG_TIMED_OUT",
// "TOPIC_AUTHORIZATION_FAILED"); the Go client exposes only the sentence
// (err2str). The declaration is rdkafka.h's, with the enum argument as int.

/*
const char *rd_kafka_err2name(int err);
*/
import "C"

import (
	"strconv"
	"strings"
	"sync"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
)

var errorNames sync.Map // kafka.ErrorCode -> string

// errorName is librdkafka's name for code in lower case without the
// leading underscore of local errors ("msg_timed_out"), for metric labels.
func errorName(code kafka.ErrorCode) string {
	if v, ok := errorNames.Load(code); ok {
		return v.(string)
	}
	name := strings.ToLower(strings.TrimLeft(C.GoString(C.rd_kafka_err2name(C.int(code))), "_"))
	if name == "" || strings.ContainsRune(name, '?') { // "ERR_31999?" for a code it does not know
		name = "code_" + strconv.Itoa(int(code))
	}
	errorNames.Store(code, name)
	return name
}
