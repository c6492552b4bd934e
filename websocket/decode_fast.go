package websocket

import (
	"unicode/utf8"
)

// maxScanDepth bounds how deeply nested a JSON value scanProduceFrame
// follows; deeper frames go to encoding/json, which has its own limit and
// error for them.
const maxScanDepth = 64

// scannedFrame is an inFrame without pointers to the caller's stack (the
// headers come back on their own), so that escape analysis, which does not
// tell one field from another, lets decodeProduceFrame keep it and the
// headers' array there.
type scannedFrame struct {
	key, value       inValue
	hasKey, hasValue bool
	messageID        []byte
}

// scanProduceFrame reads data, without reflection, exactly as
// json.Unmarshal into an inFrame would, and reports whether it did. It only
// takes frames it fully understands: valid JSON, one object of the fields
// "headers", "key", "value" and "messageId" spelt exactly, each at most
// once, with the JSON types inFrame expects. Anything else (unknown,
// escaped or differently cased field names, which encoding/json may match
// case-insensitively; duplicates, which it merges; wrong types and syntax
// errors, whose messages the API reports) returns false and is left to
// encoding/json.
//
// Headers are appended to buf and returned as hs. Raw values are slices of
// data.
func scanProduceFrame(data []byte, buf []inHeader) (in scannedFrame, hs []inHeader, ok bool) {
	s := scanner{data: data}
	if !s.consume('{') {
		return in, nil, false
	}
	var seen uint8
	if !s.consume('}') {
		for {
			var name []byte
			if name, ok = s.fieldName(); !ok {
				return in, nil, false
			}
			var bit uint8
			switch string(name) {
			case "headers":
				bit = 1
				if hs, ok = s.headers(buf); !ok {
					return in, nil, false
				}
			case "key":
				bit = 2
				if in.hasKey, ok = s.valueObject(&in.key); !ok {
					return in, nil, false
				}
			case "value":
				bit = 4
				if in.hasValue, ok = s.valueObject(&in.value); !ok {
					return in, nil, false
				}
			case "messageId":
				bit = 8
				if in.messageID, ok = s.raw(); !ok {
					return in, nil, false
				}
			default:
				return in, nil, false
			}
			if seen&bit != 0 {
				return in, nil, false
			}
			seen |= bit
			if s.consume(',') {
				continue
			}
			if !s.consume('}') {
				return in, nil, false
			}
			break
		}
	}
	s.space()
	return in, hs, s.i == len(s.data)
}

// scanner reads JSON strictly: whatever it accepts, encoding/json's own
// scanner accepts too.
type scanner struct {
	data []byte
	i    int
}

func (s *scanner) space() {
	for s.i < len(s.data) {
		switch s.data[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// peek returns the next byte after white space, or 0 at the end.
func (s *scanner) peek() byte {
	s.space()
	if s.i < len(s.data) {
		return s.data[s.i]
	}
	return 0
}

func (s *scanner) consume(c byte) bool {
	if s.peek() == c {
		s.i++
		return true
	}
	return false
}

func (s *scanner) literal(lit string) bool {
	if len(s.data)-s.i >= len(lit) && string(s.data[s.i:s.i+len(lit)]) == lit {
		s.i += len(lit)
		return true
	}
	return false
}

// str reads a JSON string at s.i and returns what is between its quotes
// and whether that holds no escapes. Invalid UTF-8 is accepted, as
// encoding/json's scanner accepts it.
func (s *scanner) str() (body []byte, plain, ok bool) {
	if s.i >= len(s.data) || s.data[s.i] != '"' {
		return nil, false, false
	}
	start := s.i + 1
	plain = true
	for i := start; i < len(s.data); {
		switch c := s.data[i]; {
		case c == '"':
			s.i = i + 1
			return s.data[start:i], plain, true
		case c == '\\':
			plain = false
			if i+1 >= len(s.data) {
				return nil, false, false
			}
			switch s.data[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if len(s.data)-i < 6 {
					return nil, false, false
				}
				for _, h := range s.data[i+2 : i+6] {
					if !isHex(h) {
						return nil, false, false
					}
				}
				i += 6
			default:
				return nil, false, false
			}
		case c < 0x20:
			return nil, false, false
		default:
			i++
		}
	}
	return nil, false, false
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// text reads a JSON string that decodes to itself: no escapes and valid
// UTF-8 (encoding/json would replace invalid bytes with U+FFFD).
func (s *scanner) text() ([]byte, bool) {
	s.space()
	b, plain, ok := s.str()
	return b, ok && plain && utf8.Valid(b)
}

// fieldName reads an object's field name and the colon after it.
func (s *scanner) fieldName() ([]byte, bool) {
	name, ok := s.text()
	return name, ok && s.consume(':')
}

// raw reads any JSON value and returns its text, as json.RawMessage holds
// it.
func (s *scanner) raw() ([]byte, bool) {
	s.space()
	start := s.i
	if !s.skip(0) {
		return nil, false
	}
	return s.data[start:s.i], true
}

// skip reads one JSON value at s.i.
func (s *scanner) skip(depth int) bool {
	if s.i >= len(s.data) {
		return false
	}
	switch c := s.data[s.i]; c {
	case '"':
		_, _, ok := s.str()
		return ok
	case '{', '[':
		if depth >= maxScanDepth {
			return false
		}
		end := byte('}')
		if c == '[' {
			end = ']'
		}
		s.i++
		if s.consume(end) {
			return true
		}
		for {
			if c == '{' {
				s.space()
				if _, _, ok := s.str(); !ok || !s.consume(':') {
					return false
				}
			}
			s.space()
			if !s.skip(depth + 1) {
				return false
			}
			if s.consume(',') {
				continue
			}
			return s.consume(end)
		}
	case 't':
		return s.literal("true")
	case 'f':
		return s.literal("false")
	case 'n':
		return s.literal("null")
	}
	return s.number()
}

// number reads -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?. What
// follows it is checked by the caller, which expects ',', '}' or ']'.
func (s *scanner) number() bool {
	d := s.data
	i := s.i
	if i < len(d) && d[i] == '-' {
		i++
	}
	switch {
	case i < len(d) && d[i] == '0':
		i++
	case i < len(d) && '1' <= d[i] && d[i] <= '9':
		i = digits(d, i)
	default:
		return false
	}
	if i < len(d) && d[i] == '.' {
		if j := digits(d, i+1); j > i+1 {
			i = j
		} else {
			return false
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		if j := digits(d, i); j > i {
			i = j
		} else {
			return false
		}
	}
	s.i = i
	return true
}

func digits(d []byte, i int) int {
	for i < len(d) && '0' <= d[i] && d[i] <= '9' {
		i++
	}
	return i
}

// valueObject reads a key or value into v: null (no object, present
// false) or an object of "value" and "format".
func (s *scanner) valueObject(v *inValue) (present, ok bool) {
	switch s.peek() {
	case 'n':
		return false, s.literal("null")
	case '{':
	default:
		return false, false
	}
	s.i++
	var seen uint8
	if s.consume('}') {
		return true, true
	}
	for {
		var name []byte
		if name, ok = s.fieldName(); !ok {
			return false, false
		}
		var bit uint8
		switch string(name) {
		case "value":
			bit = 1
			v.Value, ok = s.raw()
		case "format":
			bit = 2
			v.Format, ok = s.format()
		default:
			return false, false
		}
		if !ok || seen&bit != 0 {
			return false, false
		}
		seen |= bit
		if s.consume(',') {
			continue
		}
		return true, s.consume('}')
	}
}

// format reads a "format" field: a string, or null, which leaves it unset
// (""). The known names come back without allocating.
func (s *scanner) format() (string, bool) {
	b, ok := s.stringOrNull()
	if !ok || len(b) == 0 {
		return "", ok
	}
	for _, n := range formatNames {
		if string(b) == n {
			return n, true
		}
	}
	return string(b), true
}

// stringOrNull reads a plain string (see text) or null, for which it
// returns nil: encoding/json leaves a string field alone on null.
func (s *scanner) stringOrNull() ([]byte, bool) {
	if s.peek() == 'n' {
		return nil, s.literal("null")
	}
	return s.text()
}

// headers reads "headers": null or an array of header objects, appended
// to hs.
func (s *scanner) headers(hs []inHeader) ([]inHeader, bool) {
	switch s.peek() {
	case 'n':
		return nil, s.literal("null")
	case '[':
	default:
		return nil, false
	}
	s.i++
	if s.consume(']') {
		// encoding/json makes an empty, non-nil slice.
		if hs == nil {
			hs = []inHeader{}
		}
		return hs[:0], true
	}
	for {
		if !s.consume('{') {
			return nil, false
		}
		var h inHeader
		var seen uint8
		if !s.consume('}') {
			for {
				name, ok := s.fieldName()
				if !ok {
					return nil, false
				}
				var bit uint8
				switch string(name) {
				case "key":
					bit = 1
					var b []byte
					if b, ok = s.stringOrNull(); ok && len(b) > 0 {
						h.Key = string(b)
					}
				case "value":
					bit = 2
					h.Value, ok = s.raw()
				case "format":
					bit = 4
					h.Format, ok = s.format()
				default:
					return nil, false
				}
				if !ok || seen&bit != 0 {
					return nil, false
				}
				seen |= bit
				if s.consume(',') {
					continue
				}
				if !s.consume('}') {
					return nil, false
				}
				break
			}
		}
		hs = append(hs, h)
		if s.consume(',') {
			continue
		}
		return hs, s.consume(']')
	}
}
