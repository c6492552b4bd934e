package bridge

import (
	"unsafe"

	"github.com/tributary-io/tributary/mapping"
)

// Header values shared by every record; the producer only reads them.
var (
	qosValue    = [3][]byte{[]byte("0"), []byte("1"), []byte("2")}
	retainValue = map[bool][]byte{false: []byte("false"), true: []byte("true")}
)

// AppendMQTTHeaders appends the headers that every record made from an MQTT
// message carries, whichever face received it (device publish or upstream
// feed): mqtt.topic, mqtt.qos, mqtt.retain and mqtt.client_id. Values
// share memory with the strings given, so the record must be handed to
// Produce (which copies it) before those strings could change.
func AppendMQTTHeaders(hs []Header, topic string, qos byte, retain bool, clientID string) []Header {
	return append(hs,
		Header{Key: "mqtt.topic", Value: View(topic)},
		Header{Key: "mqtt.qos", Value: qosValue[qos%3]},
		Header{Key: "mqtt.retain", Value: retainValue[retain]},
		Header{Key: "mqtt.client_id", Value: View(clientID)},
	)
}

// ReservedHeader reports whether key names a header Tributary sets on a
// record made from an MQTT message (those above, mqtt.content_type and
// an upstream's mqtt.source). A device's MQTT 5 user property of such a
// name is not copied, so that it cannot pass for Tributary's; a mapping
// rule may not set one either.
func ReservedHeader(key string) bool { return mapping.ReservedHeader(key) }

// View returns the bytes of s without copying. Only for record fields
// handed to Produce, which copies them during the call and never writes to
// them.
func View(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }
