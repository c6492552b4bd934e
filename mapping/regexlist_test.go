package mapping_test

import (
	"slices"
	"testing"

	"github.com/tributary-io/tributary/mapping"
)

func TestParseRegexList(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []mapping.Rule
	}{
		{"empty", "", nil},
		{"white space only", " \t\n ", nil},
		{
			"confluent example",
			confluentExample,
			[]mapping.Rule{{Match: ".*temperature", KafkaTopic: "temperature"}, {Match: ".*brightness", KafkaTopic: "brightness"}},
		},
		{
			"spaces around items",
			"  temperature:.*temperature ,  brightness:.*brightness  ",
			[]mapping.Rule{{Match: ".*temperature", KafkaTopic: "temperature"}, {Match: ".*brightness", KafkaTopic: "brightness"}},
		},
		{
			"comma inside regex",
			"t:a{1,3},u:b",
			[]mapping.Rule{{Match: "a{1,3}", KafkaTopic: "t"}, {Match: "b", KafkaTopic: "u"}},
		},
		{
			"comma then spaces inside regex",
			"t:(x, y)",
			[]mapping.Rule{{Match: "(x, y)", KafkaTopic: "t"}},
		},
		{
			"colon inside regex",
			"t:a:b,u:c:d",
			[]mapping.Rule{{Match: "a:b", KafkaTopic: "t"}, {Match: "c:d", KafkaTopic: "u"}},
		},
		{
			"comma inside a character class",
			"t:[,;]x,u:y",
			[]mapping.Rule{{Match: "[,;]x", KafkaTopic: "t"}, {Match: "y", KafkaTopic: "u"}},
		},
		{
			"comma after a named class inside a character class",
			"a:[[:alpha:],]+,b:y",
			[]mapping.Rule{{Match: "[[:alpha:],]+", KafkaTopic: "a"}, {Match: "y", KafkaTopic: "b"}},
		},
		{
			"escaped comma",
			`t:a\,b,u:y`,
			[]mapping.Rule{{Match: `a\,b`, KafkaTopic: "t"}, {Match: "y", KafkaTopic: "u"}},
		},
		{
			"topic characters",
			"Iot_data.v-2:sensors/.*",
			[]mapping.Rule{{Match: "sensors/.*", KafkaTopic: "Iot_data.v-2"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mustParseList(t, tt.in)
			if !slices.EqualFunc(got, tt.want, equalRule) {
				t.Errorf("ParseRegexList(%q)\n got %+v\nwant %+v", tt.in, got, tt.want)
			}
		})
	}
}

func equalRule(a, b mapping.Rule) bool {
	return a.Match == b.Match && a.KafkaTopic == b.KafkaTopic && a.Key == b.Key &&
		a.Source == b.Source && len(a.Headers) == 0 && len(b.Headers) == 0
}

func TestParseRegexListErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"missing colon", "temperature", []string{`item 1 at byte 0 "temperature"`, "missing ':'"}},
		{"empty topic", " :.*", []string{`item 1 at byte 1 ":.*"`, "empty Kafka topic"}},
		{"empty regex", "a:.*,b:", []string{`item 2 at byte 5 "b:"`, "empty regex"}},
		{"invalid topic", "a/b:.*", []string{`item 1 at byte 0 "a/b:.*"`, `Kafka topic "a/b"`, "contains '/'"}},
		{"bad regex", "bad:([", []string{`item 1 at byte 0 "bad:(["`, `regex "(["`, "error parsing regexp"}},
		{"missing colon after a comma", "temperature:.*temperature,nocolon", []string{`item 2 at byte 26 "nocolon"`, "missing ':'"}},
		{"invalid topic after a comma", "a:x, b/c:y", []string{`item 2`, `"b/c"`}},
		{"Kafka's internal topic", "a:x, __consumer_offsets:y", []string{`item 2`, `Kafka topic "__consumer_offsets"`, `starts with "__"`}},
		{"empty item between commas", "t:x, ,u:y", []string{`item 2`, "empty item"}},
		{"trailing comma", "a:x,", []string{`item 2 at byte 4 ""`, "empty item"}},
		{"leading comma", ",a:x", []string{`item 1 at byte 0 ""`, "empty item"}},
		{"line break instead of a comma", "a:x\nb:y", []string{`regex "x\nb:y" holds a line break`}},
		{"space after the colon", "temperature: .*temperature", []string{`regex " .*temperature" starts with white space`}},
		{"MQTT single-level wildcard", "a:house/+/temperature", []string{"item 1", "MQTT topic filter"}},
		{"MQTT multi-level wildcard", "a:x, b:house/#", []string{"item 2", "MQTT topic filter"}},
		{
			"all problems at once",
			"ok:a, bad:(, x:, fine:c",
			[]string{`item 2 at byte 6 "bad:("`, `item 3 at byte 13 "x:"`, "empty regex"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rules, err := mapping.ParseRegexList(tt.in)
			if rules != nil {
				t.Errorf("got rules %+v with error %v", rules, err)
			}
			wantErrContains(t, err, tt.want...)
		})
	}
}
