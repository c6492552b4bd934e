package bridge

// The check below calls librdkafka's configuration API directly: the Go
// client only checks a ConfigMap while it creates a client (ConfigMap.convert
// is unexported), and a client starts threads, and with some settings runs
// kinit or fetches an OIDC token. A bare configuration object does none of
// that. The declarations are rdkafka.h's (stable since librdkafka 0.9; the
// result, an enum of -2 to 0, is declared int); the symbols come from the
// librdkafka that confluent-kafka-go links, static or dynamic.

/*
#include <stdlib.h>

typedef struct rd_kafka_conf_s rd_kafka_conf_t;
typedef struct rd_kafka_topic_conf_s rd_kafka_topic_conf_t;

rd_kafka_conf_t *rd_kafka_conf_new(void);
void rd_kafka_conf_destroy(rd_kafka_conf_t *conf);
int rd_kafka_conf_set(rd_kafka_conf_t *conf, const char *name, const char *value, char *errstr, size_t errstr_size);

rd_kafka_topic_conf_t *rd_kafka_topic_conf_new(void);
void rd_kafka_topic_conf_destroy(rd_kafka_topic_conf_t *conf);
int rd_kafka_topic_conf_set(rd_kafka_topic_conf_t *conf, const char *name, const char *value, char *errstr, size_t errstr_size);
*/
import "C"

import (
	"fmt"
	"slices"
	"strings"
	"unsafe"

	// The librdkafka the declarations above resolve against.
	_ "github.com/confluentinc/confluent-kafka-go/v2/kafka"
)

const (
	// rd_kafka_conf_res_t
	confUnknown = -2
	confOK      = 0

	errstrSize = 512
)

// PropertyError is a property librdkafka refuses.
type PropertyError struct {
	// Name is the property as given (without the kafka.properties prefix).
	Name string
	// Unknown means librdkafka has no property of that name, as opposed to
	// refusing its value.
	Unknown bool
	// Reason is librdkafka's explanation.
	Reason string
}

// Error returns the property's name and librdkafka's reason.
func (e *PropertyError) Error() string { return e.Name + ": " + e.Reason }

// CheckProperties asks librdkafka whether it accepts each of props, the
// way NewProducer and NewConsumer pass them on, and returns the refused
// ones in name order (plugin.library.paths first). It sets them on a configuration object it then
// destroys: no client is created, no thread started, no broker contacted.
// The one exception is plugin.library.paths, whose plugins librdkafka loads
// as soon as it is set (it is set first, as the clients do, so that the
// plugins' own properties are known).
//
// Producer and consumer properties are both accepted: librdkafka tells
// them apart only when a client is created, and then ignores the other
// kind with a warning. What librdkafka checks only then is not checked
// here: settings against each other (acks with enable.idempotence, say),
// assignor names, and the files SSL settings name.
func CheckProperties(props map[string]string) []*PropertyError {
	conf := C.rd_kafka_conf_new()
	defer C.rd_kafka_conf_destroy(conf)
	topicConf := C.rd_kafka_topic_conf_new()
	defer C.rd_kafka_topic_conf_destroy(topicConf)

	names := make([]string, 0, len(props))
	for k := range props {
		names = append(names, k)
	}
	slices.Sort(names)
	if i := slices.Index(names, "plugin.library.paths"); i > 0 {
		names = append(append([]string{names[i]}, names[:i]...), names[i+1:]...)
	}

	var errs []*PropertyError
	errstr := (*C.char)(C.malloc(errstrSize))
	defer C.free(unsafe.Pointer(errstr))
	for _, name := range names {
		if strings.HasPrefix(name, "go.") {
			// confluent-kafka-go takes these off the map before librdkafka
			// sees it, and they need typed values a YAML map of strings
			// cannot give; Tributary sets the ones it needs.
			errs = append(errs, &PropertyError{Name: name, Unknown: true,
				Reason: fmt.Sprintf("%q is a setting of the Go client, which Tributary manages, not a librdkafka property", name)})
			continue
		}
		cName, cValue := C.CString(name), C.CString(props[name])
		*errstr = 0
		var res C.int
		// ConfigMap.SetKey puts "{topic}." properties in the default topic
		// configuration.
		if topicName, ok := strings.CutPrefix(name, "{topic}."); ok {
			cTopicName := C.CString(topicName)
			res = C.rd_kafka_topic_conf_set(topicConf, cTopicName, cValue, errstr, errstrSize)
			C.free(unsafe.Pointer(cTopicName))
		} else {
			res = C.rd_kafka_conf_set(conf, cName, cValue, errstr, errstrSize)
		}
		C.free(unsafe.Pointer(cName))
		C.free(unsafe.Pointer(cValue))
		if res != confOK {
			reason := strings.TrimSpace(C.GoString(errstr))
			if reason == "" {
				reason = "refused by librdkafka"
			}
			errs = append(errs, &PropertyError{Name: name, Unknown: res == confUnknown, Reason: reason})
		}
	}
	return errs
}
