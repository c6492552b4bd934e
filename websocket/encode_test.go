package websocket

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/tributary-io/tributary/bridge"
)

// The reference the hand-written encoders are held to: the frames as
// encoding/json writes them without HTML escaping (marshal), types and
// all.

// outValue is a key or value in a consumed record.
type outValue struct {
	Value  json.RawMessage `json:"value"`
	Format string          `json:"format,omitempty"`
}

// decodeValue renders bytes in format f. Bytes that do not fit f (a
// string that is not UTF-8, a long that is not 8 bytes, ...) are sent as
// base64 with "format":"base64", so the client gets the data and can tell.
func decodeValue(b []byte, f format) outValue {
	if b == nil {
		return outValue{Value: json.RawMessage("null"), Format: f.String()}
	}
	switch f {
	case formatString:
		if utf8.Valid(b) {
			s, _ := marshal(string(b))
			return outValue{Value: s, Format: "string"}
		}
	case formatJSON:
		if json.Valid(b) && utf8.Valid(b) {
			return outValue{Value: json.RawMessage(b), Format: "json"}
		}
	case formatInt:
		if len(b) == 4 {
			return outValue{Value: strconv.AppendInt(nil, int64(int32(binary.BigEndian.Uint32(b))), 10), Format: "int"}
		}
	case formatLong:
		if len(b) == 8 {
			return outValue{Value: strconv.AppendInt(nil, int64(binary.BigEndian.Uint64(b)), 10), Format: "long"}
		}
	case formatDouble:
		if len(b) == 8 {
			if x := math.Float64frombits(binary.BigEndian.Uint64(b)); !math.IsNaN(x) && !math.IsInf(x, 0) {
				return outValue{Value: strconv.AppendFloat(nil, x, 'g', -1, 64), Format: "double"}
			}
		}
	case formatFloat:
		if len(b) == 4 {
			if x := float64(math.Float32frombits(binary.BigEndian.Uint32(b))); !math.IsNaN(x) && !math.IsInf(x, 0) {
				return outValue{Value: strconv.AppendFloat(nil, x, 'g', -1, 32), Format: "float"}
			}
		}
	}
	s, _ := marshal(base64.StdEncoding.EncodeToString(b))
	return outValue{Value: s, Format: "base64"}
}

type outHeader struct {
	Key    string `json:"key"`
	Value  string `json:"value"`
	Format string `json:"format,omitempty"`
}

// outRecord is a consumed record as /socket/out sends it.
type outRecord struct {
	ID        string      `json:"wsProxyMessageId"`
	Topic     string      `json:"topic"`
	Partition int32       `json:"partition"`
	Offset    int64       `json:"offset"`
	Timestamp int64       `json:"timestamp"`
	Headers   []outHeader `json:"headers,omitempty"`
	Key       *outValue   `json:"key,omitempty"`
	Value     outValue    `json:"value"`
}

func newOutRecord(r *bridge.ConsumedRecord, keyType, valType format) outRecord {
	ts := r.Timestamp.UnixMilli()
	o := outRecord{
		ID:        messageID(r.Topic, r.Partition, r.Offset, ts),
		Topic:     r.Topic,
		Partition: r.Partition,
		Offset:    r.Offset,
		Timestamp: ts,
		Value:     decodeValue(r.Value, valType),
	}
	if r.Key != nil {
		k := decodeValue(r.Key, keyType)
		o.Key = &k
	}
	for _, h := range r.Headers {
		if utf8.Valid(h.Value) {
			o.Headers = append(o.Headers, outHeader{Key: h.Key, Value: string(h.Value)})
		} else {
			o.Headers = append(o.Headers, outHeader{Key: h.Key, Value: base64.StdEncoding.EncodeToString(h.Value), Format: "base64"})
		}
	}
	return o
}

// messageID is a consumed record's wsProxyMessageId, as kafka-websocket-proxy
// writes it: topic-partition-offset-timestamp.
func messageID(topic string, partition int32, offset, ts int64) string {
	return topic + "-" + strconv.FormatInt(int64(partition), 10) + "-" + strconv.FormatInt(offset, 10) + "-" + strconv.FormatInt(ts, 10)
}

// produceResult is a /socket/in result frame.
type produceResult struct {
	Topic     string          `json:"topic"`
	Partition int32           `json:"partition"`
	Offset    int64           `json:"offset"`
	Timestamp int64           `json:"timestamp"`
	MessageID json.RawMessage `json:"messageId,omitempty"`
}

// trickyStrings are strings encoding/json escapes or rewrites.
var trickyStrings = []string{
	"", "plain", "héllo wörld", "日本語", "emoji 😀", "\U0010ffff",
	"<script>&amp;</script>", `quote" backslash\ slash/`,
	"\x00\x01\x1f\x7f", "\b\f\n\r\t", "\u2028 and \u2029", "\ufffd",
	"\xff\xfe invalid", "cut \xe2\x80", "\xe2\x80", "\xed\xa0\x80 surrogate", "\xf4\x90\x80\x80 too big",
	"\xc0\xaf overlong", "a\xe2\x80\xa8\xe2\x80\xa9b",
}

// trickyJSON are JSON texts (and near misses) a record may carry.
var trickyJSON = []string{
	`{"a": [1, 2, {"b": "<x>"}]}`, " 1 ", "\t[ ]\n", `"\u2028 raw ` + "\u2028\u2029" + `"`, `"a\"b\\"`,
	`{"k":"` + "\xff" + `"}`, `"esc \u003c <&>"`, "true", "null", `-1.5e+300`, `"\\"`, `{"":""}`,
	`"\" <x> ` + "\u2028" + ` "`, `["\\", " <&> "]`, "not json", `{"a":}`, `"unterminated`, "",
}

func trickyValues() [][]byte {
	vals := [][]byte{nil, {}, {0, 0, 0, 7}, {0xff, 0xff, 0xff, 0xfe}, {1, 2, 3},
		binary.BigEndian.AppendUint64(nil, math.Float64bits(1.5)),
		binary.BigEndian.AppendUint64(nil, math.Float64bits(1e21)),
		binary.BigEndian.AppendUint64(nil, math.Float64bits(5e-324)),
		binary.BigEndian.AppendUint64(nil, math.Float64bits(math.Copysign(0, -1))),
		binary.BigEndian.AppendUint64(nil, math.Float64bits(math.NaN())),
		binary.BigEndian.AppendUint64(nil, math.Float64bits(math.Inf(-1))),
		binary.BigEndian.AppendUint64(nil, math.MaxUint64),
		binary.BigEndian.AppendUint32(nil, math.Float32bits(0.1)),
		binary.BigEndian.AppendUint32(nil, math.Float32bits(float32(math.Inf(1)))),
		binary.BigEndian.AppendUint32(nil, 0x7fc00001), // a float32 NaN
		binary.BigEndian.AppendUint32(nil, math.Float32bits(3.4e38)),
	}
	for _, s := range trickyStrings {
		vals = append(vals, []byte(s))
	}
	for _, s := range trickyJSON {
		vals = append(vals, []byte(s))
	}
	return vals
}

// checkRecord fails t unless appendRecord writes r as marshal does.
func checkRecord(t *testing.T, r *bridge.ConsumedRecord, kt, vt format) {
	t.Helper()
	want, err := marshal(newOutRecord(r, kt, vt))
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	got := appendRecord(nil, r, kt, vt)
	if !bytes.Equal(got, want) {
		t.Fatalf("key %s value %s:\ngot  %q\nwant %q", kt, vt, got, want)
	}
	// A text frame must be UTF-8: a client fails the connection otherwise.
	if !utf8.Valid(got) {
		t.Fatalf("key %s value %s: the frame is not UTF-8: %q", kt, vt, got)
	}
}

func TestEncodeRecordMatchesJSON(t *testing.T) {
	base := bridge.ConsumedRecord{Topic: "t", Partition: 1, Offset: 2, Timestamp: time.UnixMilli(1554402266846)}
	t.Run("numbers", func(t *testing.T) {
		for _, p := range []int32{0, -1, math.MaxInt32, math.MinInt32} {
			for _, off := range []int64{0, -1, math.MaxInt64, math.MinInt64} {
				for _, ts := range []int64{0, -1, 1554402266846, 1 << 50, -(1 << 50)} {
					r := base
					r.Partition, r.Offset, r.Timestamp = p, off, time.UnixMilli(ts)
					checkRecord(t, &r, formatString, formatString)
				}
			}
		}
	})
	t.Run("topics and headers", func(t *testing.T) {
		for _, s := range trickyStrings {
			r := base
			r.Topic = s
			r.Headers = []bridge.Header{{Key: s, Value: []byte(s)}, {Key: "", Value: nil}, {Key: "b", Value: []byte{}}}
			checkRecord(t, &r, formatString, formatString)
		}
		for _, hs := range [][]bridge.Header{nil, {}, {{Key: "k", Value: []byte{0xff}}}} {
			r := base
			r.Headers = hs
			checkRecord(t, &r, formatString, formatString)
		}
	})
	t.Run("keys and values", func(t *testing.T) {
		for _, v := range trickyValues() {
			for f := range format(len(formatNames)) {
				r := base
				r.Key, r.Value = v, v
				checkRecord(t, &r, f, f)
				r.Key = nil
				checkRecord(t, &r, formatString, f)
			}
		}
	})
	t.Run("batch", func(t *testing.T) {
		var batch []*bridge.ConsumedRecord
		var out []outRecord
		for i, v := range trickyValues() {
			r := base
			r.Offset, r.Key, r.Value = int64(i), v, v
			batch = append(batch, &r)
			out = append(out, newOutRecord(&r, formatJSON, formatString))
		}
		want, err := marshal(out)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendRecords(nil, batch, formatJSON, formatString); !bytes.Equal(got, want) {
			t.Fatalf("got  %q\nwant %q", got, want)
		}
	})
}

func TestEncodeProduceResultMatchesJSON(t *testing.T) {
	ids := []string{"", "null", `"m1"`, ` "m1" `, "3", "-1.5e10", "12345678901234567890", `"<&>"`,
		`"` + "\u2028\u2029" + `"`, `"` + "\xff" + `"`, `"a\"b\\c"`, `"\u003c"`, "{}", "[1]", "true"}
	for _, topic := range trickyStrings {
		for _, raw := range ids {
			id := validID(json.RawMessage(raw))
			d := bridge.Delivery{Topic: topic, Partition: 7, Offset: math.MaxInt64}
			want, err := marshal(produceResult{Topic: d.Topic, Partition: d.Partition, Offset: d.Offset, Timestamp: -5, MessageID: id})
			if err != nil {
				t.Fatalf("id %q: marshal: %v", raw, err)
			}
			if got := appendProduceResult(nil, &d, -5, id); !bytes.Equal(got, want) {
				t.Fatalf("topic %q id %q:\ngot  %q\nwant %q", topic, raw, got, want)
			}
		}
	}
}

// The encoders append: what dst already holds stays.
func TestEncodeAppends(t *testing.T) {
	r := &bridge.ConsumedRecord{Topic: "t", Value: []byte("v")}
	got := appendRecord([]byte("prefix"), r, formatString, formatString)
	if !strings.HasPrefix(string(got), "prefix{") || !json.Valid(got[len("prefix"):]) {
		t.Fatalf("got %q", got)
	}
}

func FuzzEncodeRecord(f *testing.F) {
	f.Add("foo", int32(0), int64(1), int64(1554402266846), []byte("foo"), []byte("bar"), "h", []byte("v"), uint8(0), uint8(0), uint8(0))
	f.Add("a<b>&c", int32(-1), int64(-1), int64(-1), []byte{0, 0, 0, 7}, []byte(`{"a": "<\u2028>"}`), "\xff", []byte{0xff}, uint8(0x10), uint8(2), uint8(1))
	f.Add("t\u2028", int32(3), int64(1<<40), int64(0), []byte(nil), []byte(" [1, 2] "), "", []byte(nil), uint8(0x0f), uint8(5), uint8(1))
	f.Add("q", int32(1), int64(2), int64(3), []byte(`["\\", " <&> "]`), []byte(`"\" <x> \u2028 "`), "k", []byte("v"), uint8(0), uint8(1), uint8(1))
	f.Add("x", int32(1), int64(2), int64(3), binary.BigEndian.AppendUint64(nil, math.Float64bits(0.1)), []byte("\xe2\x80\xa8"), "k", []byte("\u2029"), uint8(0x08), uint8(4), uint8(6))
	f.Fuzz(func(t *testing.T, topic string, partition int32, offset, ts int64, key, value []byte, hkey string, hval []byte, flags, kt, vt uint8) {
		// flags: 1 no key, 2 no value, 4 no headers, 8 a second header,
		// 16 also as a batch.
		r := &bridge.ConsumedRecord{Topic: topic, Partition: partition, Offset: offset, Timestamp: time.UnixMilli(ts),
			Key: key, Value: value, Headers: []bridge.Header{{Key: hkey, Value: hval}}}
		if r.Key == nil {
			r.Key = []byte{} // the fuzzer's nil and empty are the same; flags choose
		}
		if flags&1 != 0 {
			r.Key = nil
		}
		if flags&2 != 0 {
			r.Value = nil
		}
		if flags&4 != 0 {
			r.Headers = nil
		}
		if flags&8 != 0 {
			r.Headers = append(r.Headers, bridge.Header{Key: string(hval), Value: []byte(hkey)})
		}
		kf, vf := format(int(kt)%len(formatNames)), format(int(vt)%len(formatNames))
		checkRecord(t, r, kf, vf)
		if flags&16 != 0 {
			r2 := *r
			r2.Offset++
			want, err := marshal([]outRecord{newOutRecord(r, kf, vf), newOutRecord(&r2, kf, vf)})
			if err != nil {
				t.Fatal(err)
			}
			if got := appendRecords(nil, []*bridge.ConsumedRecord{r, &r2}, kf, vf); !bytes.Equal(got, want) {
				t.Fatalf("batch:\ngot  %q\nwant %q", got, want)
			}
		}
	})
}

func FuzzEncodeProduceResult(f *testing.F) {
	f.Add("foo", int32(2), int64(4), int64(1554896731782), []byte(`"client-chosen-id"`))
	f.Add("t", int32(0), int64(0), int64(0), []byte(`3`))
	f.Add("<&>", int32(-1), int64(-1), int64(-1), []byte(" \"\u2028<\xff\" "))
	f.Add("", int32(0), int64(0), int64(0), []byte(nil))
	f.Fuzz(func(t *testing.T, topic string, partition int32, offset, ts int64, rawID []byte) {
		id := validID(rawID)
		want, err := marshal(produceResult{Topic: topic, Partition: partition, Offset: offset, Timestamp: ts, MessageID: id})
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		d := bridge.Delivery{Topic: topic, Partition: partition, Offset: offset}
		if got := appendProduceResult(nil, &d, ts, id); !bytes.Equal(got, want) {
			t.Fatalf("got  %q\nwant %q", got, want)
		}
	})
}

// benchRecord is a typical consumed record: a short string key, a line of
// text, one header.
var benchRecord = &bridge.ConsumedRecord{Topic: "sensors.temperature", Partition: 3, Offset: 1234567, Timestamp: time.UnixMilli(1554402266846),
	Key: []byte("device-0042"), Value: []byte(`temperature reading 21.5 C from the north wing, floor 3 <ok>`),
	Headers: []bridge.Header{{Key: "source", Value: []byte("gateway-7")}}}

// The encoders against json.Marshal of the frame types it replaced, in one run.
func BenchmarkEncodeRecord(b *testing.B) {
	b.Run("json.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(newOutRecord(benchRecord, formatString, formatString)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			buf = appendRecord(buf[:0], benchRecord, formatString, formatString)
		}
	})
}

func BenchmarkEncodeRecordJSONValue(b *testing.B) {
	r := *benchRecord
	r.Value = []byte(`{"device": "0042", "temperature": 21.5, "unit": "C", "site": {"wing": "north", "floor": 3}}`)
	b.Run("json.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(newOutRecord(&r, formatString, formatJSON)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			buf = appendRecord(buf[:0], &r, formatString, formatJSON)
		}
	})
}

func BenchmarkEncodeProduceResult(b *testing.B) {
	d := bridge.Delivery{Topic: "sensors.temperature", Partition: 3, Offset: 1234567}
	id := json.RawMessage(`"msg-000123"`)
	b.Run("json.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(produceResult{Topic: d.Topic, Partition: d.Partition, Offset: d.Offset, Timestamp: 1554896731782, MessageID: id}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			buf = appendProduceResult(buf[:0], &d, 1554896731782, id)
		}
	})
}

// Encoding into a buffer that is large enough allocates nothing, whatever
// the strings hold.
func TestEncodeDoesNotAllocate(t *testing.T) {
	r := &bridge.ConsumedRecord{Topic: "tópic<1>", Key: []byte("ключ \u2028"), Value: []byte(`{"a": "<é>"}`),
		Headers: []bridge.Header{{Key: "h\xff", Value: []byte("v\n")}, {Key: "b", Value: []byte{0xff}}}}
	buf := make([]byte, 0, 4096)
	if n := testing.AllocsPerRun(100, func() {
		buf = appendRecord(buf[:0], r, formatString, formatJSON)
		buf = appendProduceResult(buf[:0], &bridge.Delivery{Topic: r.Topic}, 1, json.RawMessage(`"<id>"`))
	}); n != 0 {
		t.Fatalf("%v allocations", n)
	}
}

// Keys, values, headers and echoed messageIds come out as the client
// sent them or as Kafka holds them, without encoding/json's HTML escaping
// of '<', '>' and '&' (which kafka-websocket-proxy does not do either):
// "<a&b>", not "\u003ca\u0026b\u003e". Error frames too.
func TestEncodeNoHTMLEscaping(t *testing.T) {
	const v = "<a&b>"
	r := &bridge.ConsumedRecord{Topic: "t", Key: []byte(v), Value: []byte(v), Headers: []bridge.Header{{Key: "h" + v, Value: []byte(v)}}}
	got := string(appendRecord(nil, r, formatString, formatString))
	for _, want := range []string{`"key":{"value":"<a&b>"`, `"value":{"value":"<a&b>"`, `{"key":"h<a&b>","value":"<a&b>"}`} {
		if !strings.Contains(got, want) {
			t.Fatalf("record %s, want %s in it", got, want)
		}
	}
	r.Value = []byte(`{"x": "<a&b>"}`)
	if got := string(appendRecord(nil, r, formatString, formatJSON)); !strings.Contains(got, `"value":{"value":{"x":"<a&b>"},"format":"json"}`) {
		t.Fatalf("JSON value: %s", got)
	}
	id := json.RawMessage(`"<a&b>"`)
	if got := string(appendProduceResult(nil, &bridge.Delivery{Topic: "t"}, 1, id)); !strings.HasSuffix(got, `"messageId":"<a&b>"}`) {
		t.Fatalf("result %s", got)
	}
	client, ws, conn, _ := burstPair(t)
	s := newSock(ws, conn, 1<<20, time.Minute)
	if err := s.writeJSON(produceError{MessageID: id, Error: errorBody{Code: CodeInvalidPayload, Message: "bad " + v}}); err != nil {
		t.Fatal(err)
	}
	if f := readFrames(t, client, 1)[0]; f != `{"messageId":"<a&b>","error":{"code":42205,"message":"bad <a&b>"}}` {
		t.Fatalf("error frame %s", f)
	}
}
