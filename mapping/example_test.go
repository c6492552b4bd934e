package mapping_test

import (
	"fmt"

	"github.com/tributary-io/tributary/mapping"
)

func ExampleParseRegexList() {
	rules, err := mapping.ParseRegexList("temperature:.*temperature, brightness:.*brightness")
	if err != nil {
		panic(err)
	}
	m, err := mapping.New(mapping.Config{Rules: rules})
	if err != nil {
		panic(err)
	}
	res, err := m.Map("", "house/kitchen/temperature")
	if err != nil {
		panic(err)
	}
	fmt.Println(res.Action, res.Topic, string(res.Key))
	// Output: produce temperature house/kitchen/temperature
}

func ExampleMapper_Explain() {
	m, err := mapping.New(mapping.Config{
		Rules: []mapping.Rule{{
			Match:      `sensors/(?P<site>[a-z]+)/(?P<kind>[a-z]+)`,
			KafkaTopic: "iot.${kind}",
			Key:        "${site}",
		}},
		Unmatched: mapping.PolicyDrop,
	})
	if err != nil {
		panic(err)
	}
	fmt.Print(m.Explain("", "sensors/lyon/temp"))
	fmt.Print(m.Explain("", "garden/lyon"))
	// Output:
	// MQTT topic "sensors/lyon/temp" from a local device
	// rules[0] match "sensors/(?P<site>[a-z]+)/(?P<kind>[a-z]+)" (any source): matched, first match wins
	// Kafka topic: "iot.temp" (from kafka_topic "iot.${kind}")
	// key: "lyon" (from key "${site}")
	// MQTT topic "garden/lyon" from a local device
	// rules[0] match "sensors/(?P<site>[a-z]+)/(?P<kind>[a-z]+)" (any source): no match
	// no rule matched; unmatched policy is "drop": the publish is dropped, not produced to Kafka
}
