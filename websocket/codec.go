package websocket

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/tributary-io/tributary/bridge"
)

// Error codes of error frames. They reuse Confluent REST Proxy's numbers
// where one fits.
const (
	CodeBadRequest     = 40000 // bad query parameters (sent before closing the socket)
	CodeUnauthorized   = 40101 // missing or wrong credentials (HTTP 401 before the upgrade)
	CodeForbidden      = 40301 // the user may not produce to or consume from the topic
	CodeUnknownTopic   = 40401 // the Kafka topic does not exist
	CodeUnknownMessage = 40402 // a commit named a record this socket does not own or already committed
	CodeInvalidPayload = 42205 // malformed JSON, a wrong format, a value that does not fit its format
	CodeRateLimited    = 42901 // the socket is over its rate limit
	CodeKafka          = 50002 // Kafka refused or failed the record or commit
	CodeShuttingDown   = 50302 // the server is shutting down: at connect, or a record read as it began (not produced)
)

// format is how a key, value or header value is written in JSON.
type format int

const (
	formatString format = iota
	formatJSON
	formatInt
	formatLong
	formatDouble
	formatFloat
	formatBase64
)

var formatNames = [...]string{"string", "json", "int", "long", "double", "float", "base64"}

func (f format) String() string { return formatNames[f] }

func parseFormat(s string) (format, error) {
	for i, n := range formatNames {
		if strings.EqualFold(s, n) {
			return format(i), nil
		}
	}
	return 0, fmt.Errorf("format %s is not one of %s", quote(s), strings.Join(formatNames[:], ", "))
}

// frameError is a problem with one client frame, sent back as an error frame.
type frameError struct {
	code int
	msg  string
}

func (e *frameError) Error() string { return e.msg }

func invalid(format string, args ...any) *frameError {
	return &frameError{code: CodeInvalidPayload, msg: fmt.Sprintf(format, args...)}
}

type inValue struct {
	Value  json.RawMessage `json:"value"`
	Format string          `json:"format"`
}

type inHeader struct {
	Key    string          `json:"key"`
	Value  json.RawMessage `json:"value"`
	Format string          `json:"format"`
}

type inFrame struct {
	Headers   []inHeader      `json:"headers"`
	Key       *inValue        `json:"key"`
	Value     *inValue        `json:"value"`
	MessageID json.RawMessage `json:"messageId"`
}

// notAnObject is the error for a produce message that is valid JSON but
// not an object.
const notAnObject = "a produce message must be a JSON object like {\"key\": {...}, \"value\": {...}, \"headers\": [...], \"messageId\": ...}"

// describeTypeError says in the API's terms which part of a produce
// message has the wrong JSON type.
func describeTypeError(e *json.UnmarshalTypeError) string {
	switch {
	case e.Field == "":
		return notAnObject
	case e.Field == "key" || e.Field == "value":
		return fmt.Sprintf("%q must be an object like {\"value\": ..., \"format\": \"string\"}, got a JSON %s", e.Field, e.Value)
	case e.Field == "headers":
		return fmt.Sprintf("\"headers\" must be an array of {\"key\": \"...\", \"value\": \"...\"}, got a JSON %s", e.Value)
	case strings.HasPrefix(e.Field, "headers."):
		return fmt.Sprintf("each header must be an object {\"key\": \"...\", \"value\": \"...\"} (field %q got a JSON %s)", e.Field, e.Value)
	case strings.HasSuffix(e.Field, ".format"):
		return fmt.Sprintf("%q must be a string (\"string\", \"base64\", \"json\" ...), got a JSON %s", e.Field, e.Value)
	}
	return fmt.Sprintf("field %q has the wrong type (got a JSON %s)", e.Field, e.Value)
}

// decodeProduceFrame turns one /socket/in text frame into a record for
// topic. keyType and valType apply where the frame names no format. It
// returns the frame's messageId (raw JSON, nil if absent or unreadable)
// even when the frame is otherwise invalid, so the error can be correlated.
//
// Frames of the usual shape are read by scanProduceFrame; the rest, and
// every frame that is not valid JSON, by encoding/json, whose errors are
// the ones the API reports.
//
// The record's bytes may be slices of data, which the caller must leave
// alone until the record has been produced (the socket reads every frame
// into a buffer of its own).
func decodeProduceFrame(data []byte, topic string, keyType, valType format) (*bridge.Record, json.RawMessage, *frameError) {
	if id, ferr := checkFrameText(data); ferr != nil {
		return nil, id, ferr
	}
	var hbuf [4]inHeader
	if in, headers, ok := scanProduceFrame(data, hbuf[:0]); ok {
		var key, value *inValue
		if in.hasKey {
			key = &in.key
		}
		if in.hasValue {
			value = &in.value
		}
		// The id waits with the record for Kafka's answer: a copy of its
		// own, as on the slow path, so that it does not keep the whole
		// frame alive meanwhile. One too long is refused, not copied.
		id := in.messageID
		if len(id) <= maxMessageIDBytes {
			id = bytes.Clone(id)
		}
		return buildRecord(topic, keyType, valType, key, value, headers, id)
	}
	return decodeProduceFrameJSON(data, topic, keyType, valType)
}

// decodeProduceFrameJSON is decodeProduceFrame by encoding/json, for any
// input.
func decodeProduceFrameJSON(data []byte, topic string, keyType, valType format) (*bridge.Record, json.RawMessage, *frameError) {
	var in inFrame
	if err := json.Unmarshal(data, &in); err != nil {
		var ute *json.UnmarshalTypeError
		if errors.As(err, &ute) {
			// The JSON is well formed but a field has the wrong type; the
			// messageId may still be readable.
			return nil, messageIDOf(data), invalid("invalid produce message: %s", describeTypeError(ute))
		}
		return nil, nil, invalid("invalid produce message: not a JSON object: %v", err)
	}
	rec, id, ferr := buildRecord(topic, keyType, valType, in.Key, in.Value, in.Headers, in.MessageID)
	if ferr == nil {
		// A misspelt field ("vaule", "fromat") would otherwise be ignored
		// and the record produced without what the client meant to send.
		// Only frames the fast path left here can have one.
		if field := unknownField(data); field != "" {
			return nil, id, invalid("invalid produce message: unknown field %s (a frame has headers, key, value and messageId; key and value have value and format; a header has key, value and format)", field)
		}
	}
	return rec, id, ferr
}

// unknownField names the first field of a produce frame that inFrame does
// not have, quoted as quote does, or returns "" if there is none.
func unknownField(data []byte) string {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var in inFrame
	err := dec.Decode(&in)
	if err == nil {
		return ""
	}
	// encoding/json's only words for it: `json: unknown field "name"`,
	// with the whole name, which may be as long as the frame.
	return unknownFieldName(err)
}

// checkFrameText refuses a frame that encoding/json would read as
// something other than what was sent: bytes that are not UTF-8, which it
// turns into U+FFFD, and a bare null, which it reads as an empty record.
// The error carries the frame's messageId when it can be read.
func checkFrameText(data []byte) (json.RawMessage, *frameError) {
	if !utf8.Valid(data) {
		return messageIDOf(data), invalid("invalid produce message: not valid UTF-8 (at byte %d); JSON is text: send binary keys, values and header values with \"format\": \"base64\"", invalidUTF8At(data))
	}
	if bytes.Equal(bytes.TrimSpace(data), []byte("null")) {
		return nil, invalid("invalid produce message: %s", notAnObject)
	}
	if bytes.Contains(data, []byte(`\u`)) {
		if at := loneSurrogateAt(data); at >= 0 {
			return messageIDOf(data), invalid("invalid produce message: %s at byte %d is half of a UTF-16 surrogate pair, which is no text; send binary keys, values and header values with \"format\": \"base64\"", data[at:at+6], at)
		}
	}
	return nil, nil
}

// messageIDOf reads only the messageId of a frame refused for something
// else, for the error frame; nil if it cannot be read or may not be
// echoed (validID).
func messageIDOf(data []byte) json.RawMessage {
	var id struct {
		MessageID json.RawMessage `json:"messageId"`
	}
	_ = json.Unmarshal(data, &id)
	return validID(id.MessageID)
}

// loneSurrogateAt returns the offset of the first \u escape in b of a
// UTF-16 surrogate that is not half of a pair, or -1. encoding/json reads
// one as U+FFFD. Backslashes appear only in JSON strings, so b is read
// escape by escape from the start.
func loneSurrogateAt(b []byte) int {
	hex4 := func(i int) (rune, bool) {
		if i+4 > len(b) {
			return 0, false
		}
		n, err := strconv.ParseUint(string(b[i:i+4]), 16, 16)
		return rune(n), err == nil
	}
	for i := 0; i+1 < len(b); i++ {
		if b[i] != '\\' {
			continue
		}
		if b[i+1] != 'u' {
			i++ // \", \\, \n ...: the escaped character is no escape itself
			continue
		}
		r, ok := hex4(i + 2)
		switch {
		case !ok, r < 0xd800, r >= 0xe000:
		case r < 0xdc00 && i+12 <= len(b) && b[i+6] == '\\' && b[i+7] == 'u':
			if low, ok := hex4(i + 8); ok && low >= 0xdc00 && low < 0xe000 {
				i += 6 // the pair's low half
				break
			}
			return i
		default:
			return i
		}
		i += 5
	}
	return -1
}

// invalidUTF8At returns the offset of the first byte of b that is not
// part of valid UTF-8.
func invalidUTF8At(b []byte) int {
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n == 1 {
			return i
		}
		i += n
	}
	return len(b)
}

// buildRecord checks and converts a decoded frame; both decoders end
// here, so they differ only in how they read the JSON. It takes the
// frame's fields one by one rather than an *inFrame so that the fast
// path's key and value can stay on the stack.
func buildRecord(topic string, keyType, valType format, key, value *inValue, headers []inHeader, messageID json.RawMessage) (*bridge.Record, json.RawMessage, *frameError) {
	if len(messageID) > maxMessageIDBytes {
		return nil, nil, invalid("invalid produce message: messageId is %d bytes of JSON, longer than the %d allowed", len(messageID), maxMessageIDBytes)
	}
	if !utf8.Valid(messageID) {
		// Echoed as it came in a text frame, which must be UTF-8: a
		// browser would fail the whole socket (1007) on the result.
		return nil, nil, invalid("invalid produce message: messageId is not valid UTF-8")
	}
	id := validID(messageID)
	if id == nil && len(bytes.TrimSpace(messageID)) > 0 && !bytes.Equal(bytes.TrimSpace(messageID), []byte("null")) {
		// Produced without it, the result could not be matched to the frame.
		return nil, nil, invalid("invalid produce message: messageId must be a JSON string or number, not %s", jsonKind(messageID))
	}
	rec := &bridge.Record{Topic: topic}
	var err *frameError
	if key != nil {
		if rec.Key, err = encodeValue("key", key, keyType); err != nil {
			return nil, id, err
		}
	}
	if value != nil {
		if rec.Value, err = encodeValue("value", value, valType); err != nil {
			return nil, id, err
		}
	}
	if len(headers) > 0 {
		rec.Headers = make([]bridge.Header, 0, len(headers))
	}
	for i, h := range headers {
		if h.Key == "" {
			return nil, id, invalid("headers[%d]: key is missing or empty", i)
		}
		f := formatString
		if h.Format != "" {
			var ferr error
			if f, ferr = parseFormat(h.Format); ferr != nil || (f != formatString && f != formatBase64) {
				return nil, id, invalid("headers[%d] (%s): format %s: header values are string or base64", i, truncate(h.Key), quote(h.Format))
			}
		}
		var v []byte
		if len(h.Value) > 0 && !bytes.Equal(h.Value, []byte("null")) {
			var ok bool
			if v, ok = jsonString(h.Value); !ok {
				return nil, id, invalid("headers[%d] (%s): value must be a JSON string", i, truncate(h.Key))
			}
			if f == formatBase64 {
				b, derr := decodeBase64(string(v))
				if derr != nil {
					return nil, id, invalid("headers[%d] (%s): value is not base64: %v", i, truncate(h.Key), derr)
				}
				v = b
			}
		}
		rec.Headers = append(rec.Headers, bridge.Header{Key: h.Key, Value: v})
	}
	return rec, id, nil
}

// maxMessageIDBytes bounds the ids clients choose: a produce frame's
// messageId (its JSON text) and a commit's wsProxyMessageId. A produce
// socket holds each messageId until its record's result is written, up to
// websocket.max_inflight of them, and a consume socket holds the id of
// each commit it refuses until the error frame is written; ids as large as
// a frame would multiply the frame limit by those counts. A
// wsProxyMessageId the server sends is a topic name (at most 249 bytes)
// and three numbers.
const maxMessageIDBytes = 1024

// jsonKind names the kind of a JSON value that is not null, a string or a
// number, for error messages.
func jsonKind(raw json.RawMessage) string {
	switch bytes.TrimSpace(raw)[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	}
	return "a boolean"
}

// validID keeps a messageId only if it is a JSON string or number of at
// most maxMessageIDBytes, in UTF-8; other values are not echoed back.
func validID(raw json.RawMessage) json.RawMessage {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || len(raw) > maxMessageIDBytes || bytes.Equal(raw, []byte("null")) || !json.Valid(raw) || !utf8.Valid(raw) {
		return nil
	}
	if raw[0] == '"' || raw[0] == '-' || (raw[0] >= '0' && raw[0] <= '9') {
		return raw
	}
	return nil
}

// encodeValue turns a key or value object into bytes as Kafka's own
// serializers would: UTF-8 for string, the JSON text for json, big-endian
// two's complement and IEEE 754 for the numbers, raw bytes for base64.
func encodeValue(what string, v *inValue, def format) ([]byte, *frameError) {
	f := def
	if v.Format != "" {
		var err error
		if f, err = parseFormat(v.Format); err != nil {
			return nil, invalid("%s: %v", what, err)
		}
	}
	raw := bytes.TrimSpace(v.Value)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, nil
	}
	switch f {
	case formatJSON:
		var buf bytes.Buffer
		if err := json.Compact(&buf, raw); err != nil {
			return nil, invalid("%s: not JSON: %v", what, err)
		}
		return buf.Bytes(), nil
	case formatString, formatBase64:
		s, ok := jsonString(raw)
		if !ok {
			return nil, invalid("%s: format %s needs a JSON string", what, f)
		}
		if f == formatString {
			return s, nil
		}
		b, err := decodeBase64(string(s))
		if err != nil {
			return nil, invalid("%s: not base64: %v", what, err)
		}
		return b, nil
	case formatInt, formatLong:
		bits := 32
		if f == formatLong {
			bits = 64
		}
		n, err := strconv.ParseInt(string(raw), 10, bits)
		if err != nil {
			return nil, invalid("%s: format %s needs an integer that fits in %d bits, got %s", what, f, bits, truncate(string(raw)))
		}
		if f == formatInt {
			return binary.BigEndian.AppendUint32(nil, uint32(int32(n))), nil
		}
		return binary.BigEndian.AppendUint64(nil, uint64(n)), nil
	case formatDouble:
		x, err := strconv.ParseFloat(string(raw), 64)
		if err != nil || raw[0] == '"' {
			return nil, invalid("%s: format double needs a number, got %s", what, truncate(string(raw)))
		}
		return binary.BigEndian.AppendUint64(nil, math.Float64bits(x)), nil
	case formatFloat:
		x, err := strconv.ParseFloat(string(raw), 32)
		if err != nil || raw[0] == '"' {
			return nil, invalid("%s: format float needs a number that fits in 32 bits, got %s", what, truncate(string(raw)))
		}
		return binary.BigEndian.AppendUint32(nil, math.Float32bits(float32(x))), nil
	}
	return nil, invalid("%s: unsupported format %s", what, f)
}

// jsonString returns the text of the JSON string raw, or false if raw is
// not one. A string without escapes, the usual kind, is sliced out of raw
// rather than decoded a second time by json.Unmarshal; raw is the frame's
// own copy (json.RawMessage copies, and so does decodeProduceFrame before
// scanning), so nothing else shares it.
func jsonString(raw []byte) ([]byte, bool) {
	if n := len(raw); n >= 2 && raw[0] == '"' && raw[n-1] == '"' {
		s := raw[1 : n-1 : n-1]
		plain := true
		for _, b := range s {
			if b == '\\' || b == '"' || b < 0x20 {
				plain = false
				break
			}
		}
		// Invalid UTF-8, which json.Unmarshal would replace with U+FFFD,
		// never gets here: checkFrameText refused the frame.
		if plain {
			return s, true
		}
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return nil, false
	}
	return []byte(s), true
}

func decodeBase64(s string) ([]byte, error) {
	if b, err := base64.StdEncoding.DecodeString(s); err == nil {
		return b, nil
	}
	if b, err := base64.RawStdEncoding.DecodeString(s); err == nil {
		return b, nil
	}
	if b, err := base64.URLEncoding.DecodeString(s); err == nil {
		return b, nil
	}
	return base64.RawURLEncoding.DecodeString(s)
}

// Error messages show a string the client sent whole up to maxShown
// bytes, and past that only its first shownCut bytes or fewer. An error
// frame waits on its socket until written, as a result does, up to
// websocket.max_inflight of them (see maxMessageIDBytes): one showing a
// string as long as the frame it came in would multiply the frame limit
// by that count.
const (
	maxShown = 40
	shownCut = 32
)

// clip returns the start of s that an error message shows, cut at a rune
// boundary, and what marks the cut: "..." and the length of the whole, or
// "" if s is shown whole.
func clip(s string) (start, mark string) {
	if len(s) <= maxShown {
		return s, ""
	}
	n := shownCut
	// Back to the start of the rune at the cut, if s is UTF-8 there.
	for i := n; i > n-utf8.UTFMax; i-- {
		if utf8.RuneStart(s[i]) {
			n = i
			break
		}
	}
	return s[:n], "... (" + strconv.Itoa(len(s)) + " bytes)"
}

// quote is strconv.Quote for a string the client sent, as clip cuts it.
func quote(s string) string {
	start, mark := clip(s)
	return strconv.Quote(start) + mark
}

// truncate is s, text the client sent, as clip cuts it.
func truncate(s string) string {
	start, mark := clip(s)
	return start + mark
}

// unknownFieldName names the field of encoding/json's unknown-field error
// err, quoted as quote does, or returns "" if err is another error.
func unknownFieldName(err error) string {
	f, ok := strings.CutPrefix(err.Error(), "json: unknown field ")
	if !ok {
		return ""
	}
	if name, uerr := strconv.Unquote(f); uerr == nil {
		return quote(name)
	}
	return truncate(f)
}

// parseMessageID reads a wsProxyMessageId,
// <topic>-<partition>-<offset>-<timestamp>, from the right, since topic
// names may contain '-'. Only an id written as the server writes them is
// read: numbers in decimal without a sign or leading zeros, but for a
// negative timestamp's '-' (<topic>-0-5--1). Another spelling of the
// numbers ("+5", "05") names no record the server sent.
func parseMessageID(id string) (topic string, partition int32, offset, ts int64, ok bool) {
	rest, tsText, ok := cutLast(id)
	if !ok {
		return "", 0, 0, 0, false
	}
	negative := false
	if r, found := strings.CutSuffix(rest, "-"); found {
		rest, negative = r, true
	}
	rest, offText, ok1 := cutLast(rest)
	topic, pText, ok2 := cutLast(rest)
	ts, ok3 := decimal(tsText, negative, 64)
	off, ok4 := decimal(offText, false, 64)
	p, ok5 := decimal(pText, false, 32)
	if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 || topic == "" || (negative && ts == 0) {
		return "", 0, 0, 0, false
	}
	return topic, int32(p), off, ts, true
}

// cutLast splits s around its last '-'.
func cutLast(s string) (before, after string, ok bool) {
	i := strings.LastIndexByte(s, '-')
	if i < 0 {
		return "", "", false
	}
	return s[:i], s[i+1:], true
}

// decimal reads s, the digits of a number of at most bits bits (with the
// sign) as strconv.FormatInt writes them, negated if negative.
func decimal(s string, negative bool, bits int) (int64, bool) {
	if s == "" || (s[0] == '0' && len(s) > 1) {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	if negative {
		s = "-" + s
	}
	n, err := strconv.ParseInt(s, 10, bits)
	return n, err == nil
}

// Frames the server writes.

type errorBody struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

type produceError struct {
	MessageID json.RawMessage `json:"messageId"`
	Error     errorBody       `json:"error"`
}

type commitFrame struct {
	ID string `json:"wsProxyMessageId"`
}

type committed struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	Offset    int64  `json:"offset"`
}

type commitAck struct {
	Committed committed `json:"committed"`
}

type consumeError struct {
	ID    string    `json:"wsProxyMessageId,omitempty"`
	Error errorBody `json:"error"`
}
