package websocket

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math"
	"strconv"
	"unicode/utf8"

	"github.com/tributary-io/tributary/bridge"
)

// The hot outgoing frames (consumed records, produce results) are written
// by hand rather than with json.Marshal, which spent most of the writer's
// time in reflection. They come out byte for byte as encoding/json writes
// them without HTML escaping (an Encoder with SetEscapeHTML(false)): '<',
// '>' and '&' as they are, as kafka-websocket-proxy writes them and as
// the record holds them. encode_test.go checks every path against
// encoding/json.

// appendRecord appends r as the /socket/out record frame
// {"wsProxyMessageId":...,"topic":...,"partition":...,"offset":...,
// "timestamp":...,"headers":[...],"key":{...},"value":{...}}, headers and
// key left out when there are none.
func appendRecord(dst []byte, r *bridge.ConsumedRecord, keyType, valType format) []byte {
	ts := r.Timestamp.UnixMilli()
	dst = append(dst, `{"wsProxyMessageId":"`...)
	dst = appendEscaped(dst, r.Topic)
	dst = append(dst, '-')
	dst = strconv.AppendInt(dst, int64(r.Partition), 10)
	dst = append(dst, '-')
	dst = strconv.AppendInt(dst, r.Offset, 10)
	dst = append(dst, '-')
	dst = strconv.AppendInt(dst, ts, 10)
	dst = append(dst, `","topic":`...)
	dst = appendString(dst, r.Topic)
	dst = append(dst, `,"partition":`...)
	dst = strconv.AppendInt(dst, int64(r.Partition), 10)
	dst = append(dst, `,"offset":`...)
	dst = strconv.AppendInt(dst, r.Offset, 10)
	dst = append(dst, `,"timestamp":`...)
	dst = strconv.AppendInt(dst, ts, 10)
	if len(r.Headers) > 0 {
		dst = append(dst, `,"headers":[`...)
		for i, h := range r.Headers {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, `{"key":`...)
			dst = appendString(dst, h.Key)
			dst = append(dst, `,"value":`...)
			if utf8.Valid(h.Value) {
				dst = appendString(dst, h.Value)
				dst = append(dst, '}')
			} else {
				dst = appendBase64(dst, h.Value)
				dst = append(dst, `,"format":"base64"}`...)
			}
		}
		dst = append(dst, ']')
	}
	if r.Key != nil {
		dst = append(dst, `,"key":`...)
		dst = appendValue(dst, r.Key, keyType)
	}
	dst = append(dst, `,"value":`...)
	dst = appendValue(dst, r.Value, valType)
	return append(dst, '}')
}

// appendRecords appends a batchSize > 1 frame: an array of records.
func appendRecords(dst []byte, batch []*bridge.ConsumedRecord, keyType, valType format) []byte {
	dst = append(dst, '[')
	for i, r := range batch {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendRecord(dst, r, keyType, valType)
	}
	return append(dst, ']')
}

// appendValue appends a key or value object, {"value":...,"format":"..."},
// rendering b in format f. Bytes that do not fit f (a string that is not
// UTF-8, a long that is not 8 bytes, ...) are sent as base64 with
// "format":"base64", so the client gets the data and can tell.
func appendValue(dst, b []byte, f format) []byte {
	dst = append(dst, `{"value":`...)
	if b == nil {
		dst = append(dst, "null"...)
		return appendFormat(dst, f)
	}
	switch f {
	case formatString:
		if utf8.Valid(b) {
			return appendFormat(appendString(dst, b), f)
		}
	case formatJSON:
		// json.Valid lets invalid UTF-8 inside strings through, and a text
		// frame that is not UTF-8 makes the client fail the connection
		// (RFC 6455 §8.1).
		if json.Valid(b) && utf8.Valid(b) {
			return appendFormat(appendCompact(dst, b), f)
		}
	case formatInt:
		if len(b) == 4 {
			return appendFormat(strconv.AppendInt(dst, int64(int32(binary.BigEndian.Uint32(b))), 10), f)
		}
	case formatLong:
		if len(b) == 8 {
			return appendFormat(strconv.AppendInt(dst, int64(binary.BigEndian.Uint64(b)), 10), f)
		}
	case formatDouble:
		if len(b) == 8 {
			if x := math.Float64frombits(binary.BigEndian.Uint64(b)); !math.IsNaN(x) && !math.IsInf(x, 0) {
				return appendFormat(strconv.AppendFloat(dst, x, 'g', -1, 64), f)
			}
		}
	case formatFloat:
		if len(b) == 4 {
			if x := float64(math.Float32frombits(binary.BigEndian.Uint32(b))); !math.IsNaN(x) && !math.IsInf(x, 0) {
				return appendFormat(strconv.AppendFloat(dst, x, 'g', -1, 32), f)
			}
		}
	}
	return appendFormat(appendBase64(dst, b), formatBase64)
}

func appendFormat(dst []byte, f format) []byte {
	dst = append(dst, `,"format":"`...)
	dst = append(dst, formatNames[f]...)
	return append(dst, `"}`...)
}

// appendProduceResult appends the /socket/in result frame
// {"topic":...,"partition":...,"offset":...,"timestamp":...,"messageId":...},
// messageId left out when id is empty. id must be valid JSON, as validID
// returns it.
func appendProduceResult(dst []byte, d *bridge.Delivery, ts int64, id json.RawMessage) []byte {
	dst = append(dst, `{"topic":`...)
	dst = appendString(dst, d.Topic)
	dst = append(dst, `,"partition":`...)
	dst = strconv.AppendInt(dst, int64(d.Partition), 10)
	dst = append(dst, `,"offset":`...)
	dst = strconv.AppendInt(dst, d.Offset, 10)
	dst = append(dst, `,"timestamp":`...)
	dst = strconv.AppendInt(dst, ts, 10)
	if len(id) > 0 {
		dst = append(dst, `,"messageId":`...)
		dst = appendCompact(dst, id)
	}
	return append(dst, '}')
}

// appendBase64 appends b as a JSON string in standard base64, whose
// alphabet needs no escaping.
func appendBase64(dst, b []byte) []byte {
	dst = append(dst, '"')
	dst = base64.StdEncoding.AppendEncode(dst, b)
	return append(dst, '"')
}

// appendString appends s as a JSON string, as encoding/json does.
func appendString[T string | []byte](dst []byte, s T) []byte {
	dst = append(dst, '"')
	dst = appendEscaped(dst, s)
	return append(dst, '"')
}

// jsonSafe marks the ASCII bytes a JSON string holds unescaped: not the
// control characters, '"' and '\\'. '<', '>' and '&' are not escaped:
// the frames are JSON, not HTML.
var jsonSafe = func() (t [utf8.RuneSelf]bool) {
	for b := 0x20; b < utf8.RuneSelf; b++ {
		t[b] = b != '"' && b != '\\'
	}
	return t
}()

const hexDigits = "0123456789abcdef"

// appendEscaped appends the inside of a JSON string holding s: invalid
// UTF-8 becomes U+FFFD, and U+2028 and U+2029, which JavaScript does not
// allow in a string literal, are escaped.
func appendEscaped[T string | []byte](dst []byte, s T) []byte {
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if jsonSafe[b] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '"', '\\':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xf])
			}
			i++
			start = i
			continue
		}
		// At most 4 bytes are converted, which stays on the stack.
		c, size := utf8.DecodeRuneInString(string(s[i:min(len(s), i+utf8.UTFMax)]))
		switch {
		case c == utf8.RuneError && size == 1:
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
		case c == '\u2028' || c == '\u2029':
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[c&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	return append(dst, s[start:]...)
}

// appendCompact appends the valid JSON text src without its insignificant
// white space, its strings as they are (escapes and all, invalid UTF-8
// included), as encoding/json does with a json.RawMessage when not
// escaping HTML: the text is the record's or the client's, only compacted.
func appendCompact(dst, src []byte) []byte {
	start := 0
	inString := false
	for i := 0; i < len(src); i++ {
		b := src[i]
		if !inString {
			switch b {
			case ' ', '\t', '\n', '\r':
				dst = append(dst, src[start:i]...)
				start = i + 1
			case '"':
				inString = true
			}
			continue
		}
		switch b {
		case '"':
			inString = false
		case '\\':
			i++ // an escaped quote does not end the string
		}
	}
	return append(dst, src[start:]...)
}
