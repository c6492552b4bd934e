package main

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestProduceFrames(t *testing.T) {
	f, err := newProduceFrames("bench/ws-001", []byte(`ab"c\`))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 7, 123456} {
		var got struct {
			Key       struct{ Value, Format string }
			Value     struct{ Value, Format string }
			MessageID string
		}
		if err := json.Unmarshal(f.frame(n), &got); err != nil {
			t.Fatalf("frame %d is not JSON: %v: %s", n, err, f.frame(n))
		}
		if got.Key.Value != "bench/ws-001" || got.Key.Format != "string" ||
			got.Value.Value != `ab"c\` || got.Value.Format != "string" {
			t.Errorf("frame %d: got %+v", n, got)
		}
		if want := json.Number(itoa(n)).String(); got.MessageID != want {
			t.Errorf("frame %d: messageId %q, want %q", n, got.MessageID, want)
		}
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func TestParseRecords(t *testing.T) {
	rec := func(p, o int, value string) string {
		v, _ := json.Marshal(value)
		return `{"wsProxyMessageId":"t-` + itoa(p) + `-` + itoa(o) + `-1","topic":"t","partition":` + itoa(p) +
			`,"offset":` + itoa(o) + `,"timestamp":1,"key":{"value":"k","format":"string"},"value":{"value":` + string(v) + `,"format":"string"}}`
	}
	tests := []struct {
		name    string
		frames  []string
		want    int
		wantErr string
	}{
		{name: "single records", frames: []string{rec(0, 0, "a"), rec(1, 0, "b"), rec(0, 1, "c")}, want: 3},
		{name: "a batch", frames: []string{"[" + rec(0, 0, "a") + "," + rec(0, 1, "b") + "," + rec(2, 0, "c") + "]"}, want: 3},
		{name: "field names inside a value", frames: []string{rec(0, 0, `"partition":9,"offset":9`)}, want: 1},
		{name: "a duplicate", frames: []string{rec(0, 0, "a"), rec(0, 0, "a")}, want: 1, wantErr: "duplicate"},
		{name: "a gap", frames: []string{rec(0, 0, "a"), rec(0, 2, "a")}, want: 1, wantErr: "expected 1"},
		{name: "an error frame", frames: []string{`{"error":{"code":40000,"message":"bad"}}`}, wantErr: "error frame"},
		{name: "no records", frames: []string{`{"committed":{"topic":"t"}}`}, wantErr: "without records"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			check := offsetCheck{}
			got := 0
			var err error
			for _, f := range tt.frames {
				var n int
				n, err = parseRecords([]byte(f), check)
				got += n
				if err != nil {
					break
				}
			}
			if got != tt.want {
				t.Errorf("got %d records, want %d", got, tt.want)
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}
