package websocket

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"unicode/utf8"

	"github.com/tributary-io/tributary/bridge"
)

// decodeProduceFrameRef and encodeValueRef are decodeProduceFrame and
// encodeValue as they were before their string fast path: the reference
// the decoder is held to. The frame-level checks of checkFrameText came
// later and apply to both.
func decodeProduceFrameRef(data []byte, topic string, keyType, valType format) (*bridge.Record, json.RawMessage, *frameError) {
	if id, ferr := checkFrameText(data); ferr != nil {
		return nil, id, ferr
	}
	var in inFrame
	if err := json.Unmarshal(data, &in); err != nil {
		var ute *json.UnmarshalTypeError
		if errors.As(err, &ute) {
			// The JSON is well formed but a field has the wrong type; the
			// messageId may still be readable.
			var id struct {
				MessageID json.RawMessage `json:"messageId"`
			}
			_ = json.Unmarshal(data, &id)
			return nil, validID(id.MessageID), invalid("invalid produce message: %s", describeTypeError(ute))
		}
		return nil, nil, invalid("invalid produce message: not a JSON object: %v", err)
	}
	if len(in.MessageID) > maxMessageIDBytes {
		return nil, nil, invalid("invalid produce message: messageId is %d bytes of JSON, longer than the %d allowed", len(in.MessageID), maxMessageIDBytes)
	}
	if !utf8.Valid(in.MessageID) {
		return nil, nil, invalid("invalid produce message: messageId is not valid UTF-8")
	}
	id := validID(in.MessageID)
	if m := bytes.TrimSpace(in.MessageID); id == nil && len(m) > 0 && string(m) != "null" {
		return nil, nil, invalid("invalid produce message: messageId must be a JSON string or number, not %s", jsonKind(m))
	}
	rec := &bridge.Record{Topic: topic}
	var err *frameError
	if in.Key != nil {
		if rec.Key, err = encodeValueRef("key", in.Key, keyType); err != nil {
			return nil, id, err
		}
	}
	if in.Value != nil {
		if rec.Value, err = encodeValueRef("value", in.Value, valType); err != nil {
			return nil, id, err
		}
	}
	if len(in.Headers) > 0 {
		rec.Headers = make([]bridge.Header, 0, len(in.Headers))
	}
	for i, h := range in.Headers {
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
			var s string
			if json.Unmarshal(h.Value, &s) != nil {
				return nil, id, invalid("headers[%d] (%s): value must be a JSON string", i, truncate(h.Key))
			}
			v = []byte(s)
			if f == formatBase64 {
				b, derr := decodeBase64(s)
				if derr != nil {
					return nil, id, invalid("headers[%d] (%s): value is not base64: %v", i, truncate(h.Key), derr)
				}
				v = b
			}
		}
		rec.Headers = append(rec.Headers, bridge.Header{Key: h.Key, Value: v})
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(new(inFrame)); err != nil {
		return nil, id, invalid("invalid produce message: unknown field %s (a frame has headers, key, value and messageId; key and value have value and format; a header has key, value and format)",
			unknownFieldName(err))
	}
	return rec, id, nil
}

func encodeValueRef(what string, v *inValue, def format) ([]byte, *frameError) {
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
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return nil, invalid("%s: format %s needs a JSON string", what, f)
		}
		if f == formatString {
			return []byte(s), nil
		}
		b, err := decodeBase64(s)
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
