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
