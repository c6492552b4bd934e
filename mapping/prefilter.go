package mapping

import (
	"regexp/syntax"
	"strings"
	"unicode/utf8"
)

// literalAffixes returns a literal prefix and suffix that every topic the
// anchored expr matches must have ("" when there is none). Map checks them
// before running the regex: rule lists in the Confluent style (".*temperature",
// ".*brightness") mostly fail, and a failing regex still scans the whole topic.
func literalAffixes(expr string) (prefix, suffix string) {
	// syntax.Perl is what regexp.Compile parses with.
	re, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return "", ""
	}
	return affixes(re)
}

func affixes(re *syntax.Regexp) (prefix, suffix string) {
	switch re.Op {
	case syntax.OpLiteral:
		if re.Flags&syntax.FoldCase != 0 {
			return "", ""
		}
		s := string(re.Rune)
		// The regexp engine decodes each invalid byte of the topic as
		// U+FFFD, so a literal U+FFFD matches bytes that a byte-wise
		// comparison would reject.
		if strings.ContainsRune(s, utf8.RuneError) {
			return "", ""
		}
		return s, s
	case syntax.OpCapture:
		return affixes(re.Sub[0])
	case syntax.OpConcat:
		if len(re.Sub) == 0 {
			return "", ""
		}
		prefix, _ = affixes(re.Sub[0])
		_, suffix = affixes(re.Sub[len(re.Sub)-1])
		return prefix, suffix
	}
	return "", ""
}

// fastKind is a way to decide whether a rule's regexp matches a topic
// without running the regexp engine, for the shapes most rules have.
type fastKind int

const (
	fastNone      fastKind = iota
	fastExact              // a literal: the topic equals it
	fastPrefixNL           // a literal then .*: the topic starts with it and has no newline after it
	fastPrefixAny          // a literal then (?s).*: the topic starts with it
)

// fastMatcher recognises expr when it is a literal, a literal followed by
// .*, or .* alone (as the Confluent-style "topic:prefix/.*" lists are).
func fastMatcher(expr string) (fastKind, string) {
	re, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return fastNone, ""
	}
	literal := func(r *syntax.Regexp) (string, bool) {
		if r.Op != syntax.OpLiteral || r.Flags&syntax.FoldCase != 0 {
			return "", false
		}
		s := string(r.Rune)
		return s, !strings.ContainsRune(s, utf8.RuneError)
	}
	anyStar := func(r *syntax.Regexp) fastKind {
		if r.Op != syntax.OpStar || len(r.Sub) != 1 {
			return fastNone
		}
		switch r.Sub[0].Op {
		case syntax.OpAnyCharNotNL:
			return fastPrefixNL
		case syntax.OpAnyChar:
			return fastPrefixAny
		}
		return fastNone
	}
	if s, ok := literal(re); ok {
		return fastExact, s
	}
	if k := anyStar(re); k != fastNone {
		return k, ""
	}
	if re.Op == syntax.OpConcat && len(re.Sub) == 2 {
		if s, ok := literal(re.Sub[0]); ok {
			if k := anyStar(re.Sub[1]); k != fastNone {
				return k, s
			}
		}
	}
	return fastNone, ""
}

// fastMatch decides a match for a rule fastMatcher recognised.
func fastMatch(kind fastKind, lit, topic string) bool {
	switch kind {
	case fastExact:
		return topic == lit
	case fastPrefixNL:
		return strings.HasPrefix(topic, lit) && strings.IndexByte(topic[len(lit):], '\n') < 0
	case fastPrefixAny:
		return strings.HasPrefix(topic, lit)
	}
	return false
}
