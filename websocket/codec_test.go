package websocket

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/tributary-io/tributary/bridge"
)

func TestDecodeProduceFrame(t *testing.T) {
	for _, tc := range []struct {
		name      string
		frame     string
		key, val  format
		wantKey   []byte
		wantValue []byte
		wantID    string
		wantCode  int
		wantMsg   string
	}{
		{name: "kpmeen shape", frame: `{"headers":[{"key":"h1","value":"v1"}],"key":{"value":"foo","format":"string"},"value":{"value":"bar","format":"string"},"messageId":"m1"}`,
			wantKey: []byte("foo"), wantValue: []byte("bar"), wantID: `"m1"`},
		{name: "types from query", frame: `{"key":{"value":7},"value":{"value":-2}}`, key: formatInt, val: formatLong,
			wantKey: []byte{0, 0, 0, 7}, wantValue: []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe}},
		{name: "base64", frame: `{"value":{"value":"AP8Q","format":"base64"},"messageId":3}`, wantValue: []byte{0, 0xff, 0x10}, wantID: `3`},
		{name: "json", frame: `{"value":{"value":{ "a" : [1, 2] },"format":"json"}}`, wantValue: []byte(`{"a":[1,2]}`)},
		{name: "double", frame: `{"value":{"value":1.5}}`, val: formatDouble, wantValue: []byte{0x3f, 0xf8, 0, 0, 0, 0, 0, 0}},
		{name: "float", frame: `{"value":{"value":1.5}}`, val: formatFloat, wantValue: []byte{0x3f, 0xc0, 0, 0}},
		{name: "tombstone", frame: `{"key":{"value":"k"},"value":{"value":null}}`, wantKey: []byte("k")},
		{name: "malformed", frame: `{not json`, wantCode: CodeInvalidPayload},
		{name: "wrong format", frame: `{"value":{"value":"abc"},"messageId":"x"}`, val: formatInt, wantCode: CodeInvalidPayload, wantID: `"x"`},
		{name: "int overflow", frame: `{"value":{"value":3000000000}}`, val: formatInt, wantCode: CodeInvalidPayload},
		{name: "unknown format", frame: `{"value":{"value":"a","format":"avro"},"messageId":"y"}`, wantCode: CodeInvalidPayload, wantID: `"y"`},
		{name: "bad base64", frame: `{"value":{"value":"!!","format":"base64"}}`, wantCode: CodeInvalidPayload},
		{name: "wrong field type keeps id", frame: `{"headers":"x","messageId":"z"}`, wantCode: CodeInvalidPayload, wantID: `"z"`},
		{name: "header without key", frame: `{"headers":[{"value":"v"}]}`, wantCode: CodeInvalidPayload},
		{name: "messageId at the limit", frame: `{"value":{"value":"v"},"messageId":"` + longID(maxMessageIDBytes) + `"}`,
			wantValue: []byte("v"), wantID: `"` + longID(maxMessageIDBytes) + `"`},
		{name: "messageId not UTF-8 not echoed with another error", frame: "{\"headers\":\"x\",\"messageId\":\"a\xff\"}", wantCode: CodeInvalidPayload},
		{name: "messageId not UTF-8", frame: "{\"value\":{\"value\":\"v\"},\"messageId\":\"a\xff\"}",
			wantCode: CodeInvalidPayload, wantMsg: "UTF-8"},
		{name: "null", frame: `null`, wantCode: CodeInvalidPayload, wantMsg: "must be a JSON object"},
		{name: "null with spaces", frame: " null\n", wantCode: CodeInvalidPayload, wantMsg: "must be a JSON object"},
		{name: "value not UTF-8", frame: "{\"value\":{\"value\":\"\xff\xfe\"},\"messageId\":\"bin\"}",
			wantCode: CodeInvalidPayload, wantMsg: "not valid UTF-8 (at byte 19)", wantID: `"bin"`},
		{name: "value with an escape not UTF-8", frame: "{\"value\":{\"value\":\"\\n\xff\"}}", wantCode: CodeInvalidPayload, wantMsg: "base64"},
		{name: "lone high surrogate", frame: `{"value":{"value":"a\ud800b"},"messageId":"s"}`, wantCode: CodeInvalidPayload, wantMsg: `\ud800 at byte 20`, wantID: `"s"`},
		{name: "lone low surrogate", frame: `{"headers":[{"key":"h\uDC00","value":"v"}]}`, wantCode: CodeInvalidPayload, wantMsg: "surrogate"},
		{name: "high surrogate before another escape", frame: `{"value":{"value":"\ud83d\n"}}`, wantCode: CodeInvalidPayload, wantMsg: "surrogate"},
		{name: "surrogate pair", frame: `{"value":{"value":"\ud83d\ude00"}}`, wantValue: []byte("\U0001F600")},
		{name: "escaped backslash before u", frame: `{"value":{"value":"\\ud800"}}`, wantValue: []byte(`\ud800`)},
		{name: "header key not UTF-8", frame: "{\"headers\":[{\"key\":\"\xff\",\"value\":\"v\"}],\"value\":{\"value\":\"v\"}}",
			wantCode: CodeInvalidPayload, wantMsg: "UTF-8"},
		{name: "messageId over the limit", frame: `{"value":{"value":"v"},"messageId":"` + longID(maxMessageIDBytes+1) + `"}`,
			wantCode: CodeInvalidPayload, wantMsg: "1024"},
		{name: "messageId over the limit, slow path", frame: `{"extra":1,"messageId":` + strings.Repeat("9", 4<<20) + `}`,
			wantCode: CodeInvalidPayload, wantMsg: "1024"},
		{name: "unknown field", frame: `{"vaule":{"value":"x"},"messageId":"p14"}`, wantCode: CodeInvalidPayload, wantMsg: `unknown field "vaule"`, wantID: `"p14"`},
		{name: "unknown field in value", frame: `{"value":{"vlue":"x"}}`, wantCode: CodeInvalidPayload, wantMsg: `unknown field "vlue"`},
		{name: "unknown field beside value", frame: `{"value":{"value":"x","fromat":"int"}}`, wantCode: CodeInvalidPayload, wantMsg: `unknown field "fromat"`},
		{name: "unknown field in a header", frame: `{"headers":[{"key":"h","valeu":"v"}],"value":{"value":"x"}}`, wantCode: CodeInvalidPayload, wantMsg: `unknown field "valeu"`},
		{name: "field names in another case", frame: `{"Value":{"Value":"x","FORMAT":"string"},"MessageId":"c"}`, wantValue: []byte("x"), wantID: `"c"`},
		{name: "messageId an object", frame: `{"value":{"value":"v"},"messageId":{"a":1}}`, wantCode: CodeInvalidPayload, wantMsg: "string or number, not an object"},
		{name: "messageId a boolean", frame: `{"value":{"value":"v"},"messageId":true}`, wantCode: CodeInvalidPayload, wantMsg: "not a boolean"},
		{name: "messageId null", frame: `{"value":{"value":"v"},"messageId":null}`, wantValue: []byte("v")},
		{name: "messageId over the limit not echoed with another error", frame: `{"headers":"x","messageId":"` + longID(maxMessageIDBytes+1) + `"}`,
			wantCode: CodeInvalidPayload},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec, id, ferr := decodeProduceFrame([]byte(tc.frame), "t", tc.key, tc.val)
			if string(id) != tc.wantID {
				t.Errorf("messageId %s, want %s", id, tc.wantID)
			}
			if tc.wantCode != 0 {
				if ferr == nil || ferr.code != tc.wantCode || !strings.Contains(ferr.msg, tc.wantMsg) {
					t.Fatalf("error %v, want code %d saying %q", ferr, tc.wantCode, tc.wantMsg)
				}
				return
			}
			if ferr != nil {
				t.Fatalf("unexpected error %v", ferr)
			}
			if !bytes.Equal(rec.Key, tc.wantKey) || !bytes.Equal(rec.Value, tc.wantValue) {
				t.Fatalf("key %x value %x, want %x %x", rec.Key, rec.Value, tc.wantKey, tc.wantValue)
			}
		})
	}
}

// An error frame shows only the start of a long string the client sent
// (a header key, a format, a field name), cut at a rune boundary and
// marked with its length: error frames wait on the socket to be written,
// up to websocket.max_inflight of them, and one holding the whole string
// would make a socket hold that many frames' worth of memory.
func TestErrorsShowLongStringsCut(t *testing.T) {
	long := strings.Repeat("€", 1<<20/3) // 3 bytes a rune: a cut at a byte count lands inside one
	for _, tc := range []struct {
		name, frame string
		val         format
		want        string
		json        bool // the error shows the JSON text, quotes included
	}{
		{"header key, bad format", `{"headers":[{"key":"` + long + `","value":"v","format":"json"}]}`, formatString, "header values are string or base64", false},
		{"header format", `{"headers":[{"key":"k","value":"v","format":"` + long + `"}]}`, formatString, "header values are string or base64", false},
		{"header key, value not a string", `{"headers":[{"key":"` + long + `","value":1}]}`, formatString, "value must be a JSON string", false},
		{"header key, value not base64", `{"headers":[{"key":"` + long + `","value":"!!","format":"base64"}]}`, formatString, "value is not base64", false},
		{"unknown field", `{"value":{"value":"v"},"` + long + `":1}`, formatString, "unknown field", false},
		{"value format", `{"value":{"value":"v","format":"` + long + `"}}`, formatString, "is not one of string, json", false},
		{"key format", `{"key":{"value":"v","format":"` + long + `"}}`, formatString, "is not one of string, json", false},
		{"value not a number", `{"value":{"value":"` + long + `"}}`, formatDouble, "needs a number", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, ferr := decodeProduceFrame([]byte(tc.frame), "t", formatString, tc.val)
			if ferr == nil {
				t.Fatal("no error")
			}
			if len(ferr.msg) >= 2<<10 || !strings.Contains(ferr.msg, tc.want) {
				t.Fatalf("error of %d bytes %.300q..., want one under 2 KiB saying %q", len(ferr.msg), ferr.msg, tc.want)
			}
			n := len(long)
			if tc.json {
				n += 2
			}
			if !utf8.ValidString(ferr.msg) || strings.Contains(ferr.msg, `\x`) || !strings.Contains(ferr.msg, strconv.Itoa(n)+" bytes") {
				t.Fatalf("error %q: want the string cut between runes, marked with its length", ferr.msg)
			}
		})
	}
}

// longID is the JSON text of a string messageId n bytes long, quotes
// included, without them.
func longID(n int) string { return strings.Repeat("x", n-2) }

func TestHeadersBase64(t *testing.T) {
	rec, _, ferr := decodeProduceFrame([]byte(`{"headers":[{"key":"a","value":"x"},{"key":"b","value":"AP8=","format":"base64"}],"value":{"value":"v"}}`), "t", formatString, formatString)
	if ferr != nil {
		t.Fatal(ferr)
	}
	if len(rec.Headers) != 2 || string(rec.Headers[0].Value) != "x" || !bytes.Equal(rec.Headers[1].Value, []byte{0, 0xff}) {
		t.Fatalf("headers %+v", rec.Headers)
	}
}

// What a produce socket writes, a consume socket reads back the same.
func TestFormatsRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		f   format
		val string
	}{
		{formatString, `"héllo"`}, {formatJSON, `{"a":1}`}, {formatInt, `-5`}, {formatLong, `9007199254740993`},
		{formatDouble, `2.25`}, {formatFloat, `0.5`}, {formatBase64, `"AAEC"`},
	} {
		b, ferr := encodeValue("value", &inValue{Value: json.RawMessage(tc.val)}, tc.f)
		if ferr != nil {
			t.Fatalf("%s: %v", tc.f, ferr)
		}
		want := `{"value":` + tc.val + `,"format":"` + tc.f.String() + `"}`
		if got := appendValue(nil, b, tc.f); string(got) != want {
			t.Errorf("%s: %s came back as %s", tc.f, tc.val, got)
		}
	}
	// Bytes that do not fit the requested format come back as base64.
	if got := appendValue(nil, []byte{0xff, 0xfe}, formatString); string(got) != `{"value":"//4=","format":"base64"}` {
		t.Errorf("invalid UTF-8 as string: %s", got)
	}
	if got := appendValue(nil, []byte{1, 2, 3}, formatLong); string(got) != `{"value":"AQID","format":"base64"}` {
		t.Errorf("3 bytes as long: %s", got)
	}
}

func TestMessageID(t *testing.T) {
	id := messageID("my-topic-1", 2, 40, 1554402266846)
	if id != "my-topic-1-2-40-1554402266846" {
		t.Fatalf("id %q", id)
	}
	topic, p, off, ts, ok := parseMessageID(id)
	if !ok || topic != "my-topic-1" || p != 2 || off != 40 || ts != 1554402266846 {
		t.Fatalf("parsed %q %d %d %d %v", topic, p, off, ts, ok)
	}
	// Ids as the server writes them, a negative timestamp and a topic
	// ending in '-' included, read back as they were written.
	for _, r := range []struct {
		topic   string
		p       int32
		off, ts int64
	}{
		{"t", 0, 0, 0}, {"t", 0, 5, -1}, {"a-", 1, 2, 3}, {"a-", 1, 2, -62135596800000}, {"x-1-2-3", 2147483647, 9223372036854775807, -9223372036854775808},
	} {
		id := messageID(r.topic, r.p, r.off, r.ts)
		if topic, p, off, ts, ok := parseMessageID(id); !ok || topic != r.topic || p != r.p || off != r.off || ts != r.ts {
			t.Errorf("%q parsed as %q %d %d %d %v", id, topic, p, off, ts, ok)
		}
	}
	for _, bad := range []string{"", "foo", "foo-1-2", "-1-2-3", "foo-x-2-3", "foo-1--2-3", "foo-1-2-x",
		"foo-+1-2-3", "foo-1-+2-3", "foo-1-2-+3", "foo-01-2-3", "foo-1-02-3", "foo-1-2-03", "foo-1-2--0", "foo-1-2- 3", "foo-1-2-3 ",
		"foo-2147483648-2-3", "foo-1-9223372036854775808-3", "foo-1-2-1e3", "foo-1-2-"} {
		if _, _, _, _, ok := parseMessageID(bad); ok {
			t.Errorf("%q parsed", bad)
		}
	}
}

// An id that parses is the one the server writes for what it parses to:
// no other spelling names the same record.
func FuzzParseMessageID(f *testing.F) {
	for _, id := range []string{"foo-0-1-1554402266846", "my-topic-1-2-40-1554402266846", "t-0-5--1", "a--1-2-3", "t-0-+5-1", "t-0-05-1", "t--0-5-1", "t-0-5-", ""} {
		f.Add(id)
	}
	f.Fuzz(func(t *testing.T, id string) {
		topic, p, off, ts, ok := parseMessageID(id)
		if ok && messageID(topic, p, off, ts) != id {
			t.Fatalf("%q parsed as %q %d %d %d, which the server writes %q", id, topic, p, off, ts, messageID(topic, p, off, ts))
		}
	})
}

func TestOutRecordShape(t *testing.T) {
	r := &bridge.ConsumedRecord{Topic: "foo", Partition: 0, Offset: 1, Timestamp: time.UnixMilli(1554402266846),
		Key: []byte("foo"), Value: []byte("bar"), Headers: []bridge.Header{{Key: "h", Value: []byte("v")}}}
	b := appendRecord(nil, r, formatString, formatString)
	want := `{"wsProxyMessageId":"foo-0-1-1554402266846","topic":"foo","partition":0,"offset":1,"timestamp":1554402266846,"headers":[{"key":"h","value":"v"}],"key":{"value":"foo","format":"string"},"value":{"value":"bar","format":"string"}}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
}

func TestBucket(t *testing.T) {
	b := newBucket(10, 2)
	if !b.allow() || !b.allow() || b.allow() {
		t.Fatal("burst of 2 not enforced")
	}
	if d := b.reserve(5); d < 400*time.Millisecond {
		t.Fatalf("reserve(5) at 10/s waits %s", d)
	}
}

func FuzzDecodeProduceFrame(f *testing.F) {
	for _, s := range []string{
		`{"headers":[{"key":"h1","value":"v1"}],"key":{"value":"foo","format":"string"},"value":{"value":"bar","format":"string"},"messageId":"client-chosen-id"}`,
		`{"key":{"value":"foo","format":"string"},"value":{"value":"bar","format":"string"}}`,
		`{"value":{"value":"AP8Q","format":"base64"},"messageId":3}`,
		`{"value":{"value":{"a":[1,2]},"format":"json"}}`,
		`{"value":{"value":12},"key":{"value":1.5,"format":"double"}}`,
		`{"headers":[{"key":"b","value":"AP8=","format":"base64"}],"value":{"value":null}}`,
		`{not json`,
		`[]`,
		`null`,
	} {
		f.Add([]byte(s), uint8(0), uint8(0))
	}
	for i, s := range decodeFrames {
		f.Add([]byte(s), uint8(0), uint8(6))
		f.Add([]byte(s), uint8(i), uint8(i/len(formatNames)))
	}
	f.Fuzz(func(t *testing.T, data []byte, k, v uint8) {
		kf, vf := format(int(k)%len(formatNames)), format(int(v)%len(formatNames))
		checkDecode(t, data, kf, vf)
		rec, id, ferr := decodeProduceFrame(data, "t", kf, vf)
		if ferr != nil {
			if rec != nil || ferr.code != CodeInvalidPayload || ferr.msg == "" {
				t.Fatalf("bad error result: %v %v", rec, ferr)
			}
		} else if rec == nil || rec.Topic != "t" {
			t.Fatalf("no record and no error")
		}
		if id != nil && !json.Valid(id) {
			t.Fatalf("messageId %q is not JSON", id)
		}
		// An error frame must always be encodable.
		if _, err := json.Marshal(produceError{MessageID: id, Error: errorBody{Code: 1, Message: "x"}}); err != nil {
			t.Fatalf("error frame does not encode: %v", err)
		}
	})
}

// decodeProduceFrame against the reference decoder and its own
// encoding/json fallback, in one run.
func BenchmarkDecodeProduceFrame(b *testing.B) {
	for _, tc := range []struct{ name, frame string }{
		{"strings", `{"headers":[{"key":"source","value":"gateway-7"}],"key":{"value":"device-0042","format":"string"},"value":{"value":"temperature reading 21.5 C from the north wing, floor 3","format":"string"},"messageId":"msg-000123"}`},
		{"json", `{"key":{"value":"device-0042"},"value":{"value":{"device":"0042","temperature":21.5,"unit":"C"},"format":"json"},"messageId":123}`},
	} {
		for _, d := range []struct {
			name   string
			decode func([]byte, string, format, format) (*bridge.Record, json.RawMessage, *frameError)
		}{{"reference", decodeProduceFrameRef}, {"fallback", decodeProduceFrameJSON}, {"now", decodeProduceFrame}} {
			b.Run(tc.name+"/"+d.name, func(b *testing.B) {
				frame := []byte(tc.frame)
				b.ReportAllocs()
				for b.Loop() {
					if _, _, err := d.decode(frame, "t", formatString, formatString); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// decodeFrames are frames whose strings take the fast path or miss it.
var decodeFrames = []string{
	`{"key":{"value":""},"value":{"value":"","format":"base64"},"headers":[{"key":"h","value":""}]}`,
	`{"key":{"value":"a\"b\\c\u00e9\n"},"value":{"value":"\ud83d\ude00 \ud800 lone"}}`,
	"{\"key\":{\"value\":\"\xff\xfe\"},\"value\":{\"value\":\"ok \xe2\x80\xa8 \u00e9\"},\"headers\":[{\"key\":\"\xff\",\"value\":\"\xc0\xaf\"}]}",
	`{"value":{"value":"AP8Q"},"headers":[{"key":"b","value":"AP8","format":"base64"},{"key":"c","value":"A\/8=","format":"BASE64"}]}`,
	`{"value":{"value":123,"format":"string"}}`,
	`{"value":{"value":["a"],"format":"string"}}`,
	`{"headers":[{"key":"h","value":7}]}`,
	`{"headers":[{"key":"h","value":null},{"key":"i"}]}`,
	`{"key":{"value":"x"},"key":null,"value":{"value":"v"},"value":{"format":"int"}}`,
	`{"value":{"value":"<&>\u2028"},"messageId":"<id>"}`,
	`{"value":{"value":  "  spaced  "  ,"format":"string"} }`,

	// Boundaries of scanProduceFrame: what it takes must decode as
	// encoding/json decodes it, what it leaves must fall back.
	` {"key":{"value":"k"},"value":{"value":"v"}} `,
	" \t\r\n{ \n\"headers\" :\t[ { \"key\" : \"h\" , \"value\" : \"v\" , \"format\" : \"string\" } ] , \"key\"\n:\n{ \"value\" : 7 } ,\"value\" : { \"format\" : \"json\" , \"value\" : [ 1 , { \"a\" : null } ] } , \"messageId\" : -1.5e+3 }\r\n",
	`{"value":{"value":"line\nbreak \"quoted\" caf\u00e9 \ud83d\ude00 \/ \b\f\r\t"}}`,
	`{"value":{"value":"\ud83d"},"key":{"value":"\ude00\ud83d\u0041"}}`,
	`{"headers":[{"key":"caf\u00e9","value":"v"}]}`,
	`{"headers":[{"key":"k","value":"v\n\u00e9","format":"string"}]}`,
	`{"headers":[{"key":"k","value":"v","format":"b\u0061se64"}]}`,
	"{\"value\":{\"value\":\"caf\xc3\xa9 \xed\xa0\x80 \xf0\x9f\x98\x80\"}}",
	"{\"value\":{\"value\":\"v\",\"format\":\"str\xffing\"}}",
	"{\"value\":{\"value\":\"tab\tinside\"}}",
	`{"key":{"value":"a"},"key":{"value":"b"}}`,
	`{"value":{"value":"a","value":"b"}}`,
	`{"value":{"value":"a","format":"string","format":"json"}}`,
	`{"headers":[{"key":"a","key":"b","value":"v"}]}`,
	`{"headers":[],"headers":[{"key":"a"}]}`,
	`{"messageId":1,"messageId":"two"}`,
	`{"key":null,"value":null,"headers":null,"messageId":null}`,
	`{"key":{"value":null,"format":null},"value":{"format":null}}`,
	`{"headers":[{"key":null,"value":"v"}]}`,
	`{"headers":[{"key":"k","value":null,"format":null}]}`,
	`{"headers":[null]}`,
	`{"headers":[{"key":"k","value":"v"},]}`,
	`{"value":{"value":true}}`,
	`{"value":{"value":false,"format":"json"}}`,
	`{"value":{"value":-0.0e-0}}`,
	`{"value":{"value":01}}`,
	`{"value":{"value":1.}}`,
	`{"value":{"value":-}}`,
	`{"value":{"value":1e}}`,
	`{"value":{"value":2147483648}}`,
	`{"value":{"value":"12"},"key":{"value":"1.5"}}`,
	`{"value":{"value":1,"format":1}}`,
	`{"headers":[{"key":1,"value":"v"}]}`,
	`{"headers":[{"key":"k","value":1}]}`,
	`{"headers":{}}`,
	`{"key":"k"}`,
	`{"key":[]}`,
	`{"value":7}`,
	`{"messageId":{"a":1}}`,
	`{"messageId":["x"]}`,
	`{"messageId":true}`,
	`{"messageId":"\u00e9\n"}`,
	`{"value":{"value":{"a":{"b":[[],{},[{"c":"\u0000"}]]}},"format":"json"}}`,
	`{"value":{"value":{ },"format":"json"},"key":{"value":[ ],"format":"json"}}`,
	`{"value":{"value":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],"format":"json"}}`,
	`{}`,
	`{"key":{},"value":{}}`,
	`{"headers":[{}]}`,
	`{"headers":[]}`,
	`{"value":{"value":"` + strings.Repeat("long value ", 2000) + `"},"headers":[{"key":"` + strings.Repeat("k", 5000) + `","value":"v"}]}`,
	`{"value":{"value":"v"},"extra":1}`,
	`{"value":{"value":"v","extra":1}}`,
	`{"headers":[{"key":"k","value":"v","extra":1}]}`,
	`{"Value":{"value":"v"},"KEY":{"Value":"k"},"messageid":1}`,
	`{"\u0076alue":{"value":"v"}}`,
	"{\"me\xc5\xbfsageId\":1}",
	`{"value":{"value":"v"}} x`,
	`{"value":{"value":"v"}}{}`,
	`{"value":{"value":"v"}`,
	`{"value":{"value":"v"},}`,
	`{"value":{"value":"v"` + "\x00" + `}}`,
	`{"value" {"value":"v"}}`,
	`{"value":{"value":"v"}` + "\n\n",
	`{"value":{"value":"AP8","format":"base64"},"key":{"value":"ZZ==","format":"Base64"}}`,
	`{"value":{"value":"not b64!","format":"base64"},"messageId":"m"}`,
	`{"value":{"value":"v","format":"avro"},"messageId":5}`,
	`{"value":{"value":"v","format":""}}`,
	`{"value":{"value":1.5,"format":"JSON"}}`,
	`{"headers":[{"key":"k","value":"!!","format":"base64"}],"messageId":"m"}`,
	`{"headers":[{"key":"k","value":"v","format":"json"}]}`,
	`{"headers":[{"key":"","value":"v"}]}`,
	"\xef\xbb\xbf{}",
	``,
	`null`,
	`"str"`,
	`[{"value":{"value":"v"}}]`,
}

// checkDecode fails t unless decodeProduceFrame decodes data exactly as
// the reference decoder does, and scanProduceFrame, where it takes data,
// fills in the frame exactly as encoding/json does.
func checkDecode(t *testing.T, data []byte, kf, vf format) {
	t.Helper()
	if sf, hs, ok := scanProduceFrame(data, nil); ok {
		fast := inFrame{Headers: hs, MessageID: sf.messageID}
		if sf.hasKey {
			fast.Key = &sf.key
		}
		if sf.hasValue {
			fast.Value = &sf.value
		}
		var slow inFrame
		if err := json.Unmarshal(data, &slow); err != nil {
			t.Fatalf("%q: scanned, but encoding/json fails: %v", data, err)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%q: scanned %s, encoding/json %s", data, dumpFrame(&fast), dumpFrame(&slow))
		}
	}
	rec, id, ferr := decodeProduceFrame(data, "t", kf, vf)
	wrec, wid, wferr := decodeProduceFrameRef(data, "t", kf, vf)
	if !bytes.Equal(id, wid) || (id == nil) != (wid == nil) {
		t.Fatalf("%q: messageId %q, want %q", data, id, wid)
	}
	if (ferr == nil) != (wferr == nil) || (ferr != nil && *ferr != *wferr) {
		t.Fatalf("%q: error %v, want %v", data, ferr, wferr)
	}
	if (rec == nil) != (wrec == nil) {
		t.Fatalf("%q: record %v, want %v", data, rec, wrec)
	}
	if rec == nil {
		return
	}
	same := func(a, b []byte) bool { return bytes.Equal(a, b) && (a == nil) == (b == nil) }
	if rec.Topic != wrec.Topic || !same(rec.Key, wrec.Key) || !same(rec.Value, wrec.Value) || len(rec.Headers) != len(wrec.Headers) ||
		(rec.Headers == nil) != (wrec.Headers == nil) {
		t.Fatalf("%q: record %+v, want %+v", data, rec, wrec)
	}
	for i, h := range rec.Headers {
		if h.Key != wrec.Headers[i].Key || !same(h.Value, wrec.Headers[i].Value) {
			t.Fatalf("%q: header %d %+v, want %+v", data, i, h, wrec.Headers[i])
		}
	}
}

func dumpFrame(in *inFrame) string {
	s := fmt.Sprintf("{messageId %q headers %q", in.MessageID, in.Headers)
	for _, v := range []*inValue{in.Key, in.Value} {
		if v == nil {
			s += " nil"
		} else {
			s += fmt.Sprintf(" {%q %q}", v.Value, v.Format)
		}
	}
	return s + "}"
}

// Every keyType and valType, since they decide how a value is read.
func TestDecodeMatchesReference(t *testing.T) {
	for _, frame := range decodeFrames {
		for kf := range format(len(formatNames)) {
			for vf := range format(len(formatNames)) {
				checkDecode(t, []byte(frame), kf, vf)
			}
		}
	}
}

// The usual frames must take the fast path, or it buys nothing.
func TestScanProduceFrameTakesUsualFrames(t *testing.T) {
	for _, frame := range []string{
		`{"headers":[{"key":"h1","value":"v1"},{"key":"raw","value":"AP8=","format":"base64"}],"key":{"value":"foo","format":"string"},"value":{"value":"bar","format":"string"},"messageId":"client-chosen-id"}`,
		`{"key":{"value":"device-0042"},"value":{"value":{"device":"0042","temperature":21.5,"unit":"C"},"format":"json"},"messageId":123}`,
		`{"value":{"value":"line\nbreak \u00e9"}}`,
		`{"key":{"value":7},"value":{"value":null}}`,
		`{}`,
	} {
		if _, _, ok := scanProduceFrame([]byte(frame), nil); !ok {
			t.Errorf("%s: left to encoding/json", frame)
		}
	}
}
