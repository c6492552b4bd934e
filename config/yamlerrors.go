package config

import (
	"fmt"
	"math"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// yaml.v3 reports a key it does not know, or a value of the wrong type,
// with a line number and the Go type it was decoding into
// ("line 9: field bogus not found in type config.UpstreamConfig"). A user
// knows the YAML keys, not the Go types: these problems are rewritten to
// name the key's path in the file, the way validation names it
// ("upstreams[0] (plant).bogus"), with the known key a typo was probably
// meant to be.

var (
	yamlUnknownField = regexp.MustCompile(`^line (\d+): field (.+) not found in type \S+$`)
	yamlBadValue     = regexp.MustCompile("^line (\\d+): cannot unmarshal \\S+ `(.*)` into (\\S+)$")
	yamlBadNode      = regexp.MustCompile(`^line (\d+): cannot unmarshal (!!seq|!!map) into (\S+)$`)
)

// documentRoot is the top node of the YAML document data, or nil.
func documentRoot(data []byte) *yaml.Node {
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil || len(doc.Content) == 0 {
		return nil
	}
	return doc.Content[0]
}

// describeTypeErrors rewrites the problems of a yaml.TypeError of the
// document under root decoded into a Config; a problem it cannot place
// is kept as it is.
func describeTypeErrors(root *yaml.Node, errs []string) *FileError {
	fe := &FileError{}
	if root == nil {
		fe.Problems = errs
		return fe
	}
	for _, msg := range errs {
		if m := yamlUnknownField.FindStringSubmatch(msg); m != nil {
			line, _ := strconv.Atoi(m[1])
			if f, ok := findKey(root, reflect.TypeFor[Config](), "", line, m[2]); ok {
				p := fmt.Sprintf("line %d: %s: unknown key", line, f.path)
				if s := closestKey(m[2], f.known); s != "" {
					p += fmt.Sprintf(" (did you mean %s?)", s)
				}
				fe.add(p, f.path)
				continue
			}
		}
		if m := yamlBadValue.FindStringSubmatch(msg); m != nil {
			line, _ := strconv.Atoi(m[1])
			if f, ok := findValue(root, "", line, func(v *yaml.Node) bool { return sameText(v.Value, m[2]) }); ok {
				fe.add(fmt.Sprintf("line %d: %s %s: not a %s", line, f.path, m[2], describeGoType(m[3])), f.path)
				continue
			}
		}
		if m := yamlBadNode.FindStringSubmatch(msg); m != nil {
			line, _ := strconv.Atoi(m[1])
			kind := yaml.SequenceNode
			what := "a list"
			if m[2] == "!!map" {
				kind, what = yaml.MappingNode, "a mapping"
			}
			if f, ok := findValue(root, "", line, func(v *yaml.Node) bool { return v.Kind == kind }); ok {
				fe.add(fmt.Sprintf("line %d: %s: %s, not a %s", line, f.path, what, describeGoType(m[3])), f.path)
				continue
			}
		}
		fe.add(msg, "")
	}
	return fe
}

// sameText reports whether a scalar's text is what yaml.v3 quoted in a
// problem, which shortens long values to their first 7 characters and
// "...".
func sameText(v, quoted string) bool {
	if short, cut := strings.CutSuffix(quoted, "..."); cut && len(short) == 7 {
		return strings.HasPrefix(v, short)
	}
	return v == quoted
}

// describeGoType names a Go type the way the README does.
func describeGoType(t string) string {
	switch t {
	case "time.Duration":
		return "duration (a number with a unit: 500ms, 30s, 1m)"
	case "int", "int64", "int32", "*int":
		return "whole number"
	case "bool":
		return "boolean (true or false)"
	case "string":
		return "string"
	}
	switch {
	case strings.HasPrefix(t, "[]"):
		return "list"
	case strings.HasPrefix(t, "map["), strings.HasPrefix(t, "config."), strings.HasPrefix(t, "mapping."):
		return "mapping of keys to values"
	}
	return t
}

// FileError lists the keys of a configuration file that are unknown or
// hold a value of the wrong type, each as "line N: path: what". The rest
// of the file was decoded.
type FileError struct {
	Problems []string
	// Keys are the paths the problems name ("upstreams[0] (plant).qos"),
	// so that validation does not report them again.
	Keys []string
	// Nulls are the problems of keys and list items left null (see
	// addNulls), by path: not problems once the environment or a flag
	// gives the key, or the whole list, a value.
	Nulls map[string]string
}

func (e *FileError) Error() string { return strings.Join(e.Problems, "; ") }

func (e *FileError) add(problem, key string) {
	e.Problems = append(e.Problems, problem)
	if key != "" {
		e.Keys = append(e.Keys, key)
	}
}

// addNulls adds a problem for each null value under root (a key with
// nothing after it, ~ or null) that yaml.v3 passes over, leaving what was
// there before: "ws_addr:" meant to turn a listener off would keep the
// default one on. That is a key of a section whose value is one piece (a
// string, number, duration, on/off), and a list item, which yaml.v3
// leaves out. yaml.v3 does apply a null elsewhere, so those are
// accepted: in a mapping of any keys (kafka.properties, headers) it is
// the empty value, for an optional setting (a pointer) it is unset, as
// the setting's default is, and beside a merge key (<<) it keeps the key
// from being inherited.
func (e *FileError) addNulls(root *yaml.Node) {
	if root == nil {
		return
	}
	e.nullValues(root, reflect.TypeFor[Config](), "")
	// With the problems yaml.v3 found, in the order of the file.
	slices.SortStableFunc(e.Problems, func(a, b string) int { return problemLine(a) - problemLine(b) })
}

// problemLine is the line a problem starts by naming ("line 4: ..."), or
// a line after every other.
func problemLine(p string) int {
	var n int
	if _, err := fmt.Sscanf(p, "line %d:", &n); err == nil {
		return n
	}
	return math.MaxInt32
}

// nullValues adds the problems of addNulls under n, decoded into t.
func (e *FileError) nullValues(n *yaml.Node, t reflect.Type, prefix string) {
	t = deref(t)
	switch n.Kind {
	case yaml.MappingNode:
		merges := slices.ContainsFunc(n.Content, func(k *yaml.Node) bool { return k.ShortTag() == "!!merge" })
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			ft := fieldType(t, k.Value)
			if ft == nil {
				continue // an unknown key, reported as that
			}
			name := join(prefix, k.Value)
			if !isNull(v) {
				e.nullValues(v, ft, name)
				continue
			}
			if merges || t.Kind() != reflect.Struct {
				continue
			}
			switch ft.Kind() {
			case reflect.Pointer, reflect.Interface, reflect.Struct, reflect.Map, reflect.Slice:
				continue
			}
			hint := "give it one, or remove the key for the default"
			if slices.ContainsFunc((&Config{}).optionalListeners(), func(l listener) bool { return problemKey(l.key) == name }) {
				hint = `write "" to disable the listener`
			}
			if e.Nulls == nil {
				e.Nulls = map[string]string{}
			}
			p := fmt.Sprintf("line %d: %s: null is not a value; %s", k.Line, name, hint)
			e.Nulls[name] = p
			e.add(p, name)
		}
	case yaml.SequenceNode:
		if t == nil || t.Kind() != reflect.Slice {
			return
		}
		shifted := false
		for i, c := range n.Content {
			name := item(prefix, i, c)
			null := isNull(c)
			if null {
				p := fmt.Sprintf("line %d: %s: a list item cannot be null; remove it", c.Line, name)
				e.add(p, name)
				if e.Nulls == nil {
					e.Nulls = map[string]string{}
				}
				e.Nulls[name] = p
			}
			// yaml.v3 leaves a null item out of the list, and one that
			// did not decode (a problem already names it): the items
			// after it move up, and validation would name them by other
			// numbers, so it does not judge them (Keys) until that item
			// is mended.
			if !shifted && (null || slices.Contains(e.Keys, name)) {
				shifted = true
				for j := i; j < len(n.Content); j++ {
					e.Keys = append(e.Keys, fmt.Sprintf("%s[%d]", prefix, j))
				}
			}
			if !null {
				e.nullValues(c, t.Elem(), name)
			}
		}
	case yaml.AliasNode:
		e.nullValues(n.Alias, t, prefix)
	}
}

// isNull reports whether n is YAML's null, written or left empty.
func isNull(n *yaml.Node) bool {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// found is a key's place in the file.
type found struct {
	path  string   // as validation names it: upstreams[0] (plant).tls.ca_file
	known []string // the keys its mapping may hold (unknown keys only)
}

// findKey finds the mapping key named key on line under n, decoded into
// t, and returns its path with the keys t knows.
func findKey(n *yaml.Node, t reflect.Type, prefix string, line int, key string) (found, bool) {
	t = deref(t)
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			name := join(prefix, k.Value)
			ft := fieldType(t, k.Value)
			if k.Value == key && k.Line == line && ft == nil {
				return found{path: name, known: knownKeys(t)}, true
			}
			if ft != nil {
				if f, ok := findKey(v, ft, name, line, key); ok {
					return f, true
				}
			}
		}
	case yaml.SequenceNode:
		if t == nil || t.Kind() != reflect.Slice {
			return found{}, false
		}
		for i, c := range n.Content {
			if f, ok := findKey(c, t.Elem(), item(prefix, i, c), line, key); ok {
				return f, true
			}
		}
	}
	return found{}, false
}

// findValue finds a value on line under n that is, by is, and returns
// its path.
func findValue(n *yaml.Node, prefix string, line int, is func(*yaml.Node) bool) (found, bool) {
	check := func(v *yaml.Node, name string) (found, bool) {
		if v.Line == line && is(v) {
			return found{path: name}, true
		}
		return findValue(v, name, line, is)
	}
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			if f, ok := check(n.Content[i+1], join(prefix, n.Content[i].Value)); ok {
				return f, true
			}
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			if f, ok := check(c, item(prefix, i, c)); ok {
				return f, true
			}
		}
	}
	return found{}, false
}

func join(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

// item names element i of the list at prefix; an upstream is named too,
// as validation names it.
func item(prefix string, i int, n *yaml.Node) string {
	s := fmt.Sprintf("%s[%d]", prefix, i)
	if prefix == "upstreams" && n.Kind == yaml.MappingNode {
		for j := 0; j+1 < len(n.Content); j += 2 {
			v := n.Content[j+1]
			if v.Kind == yaml.AliasNode && v.Alias != nil {
				v = v.Alias // the value the name is decoded to
			}
			if n.Content[j].Value == "name" && v.Kind == yaml.ScalarNode && !isNull(v) && v.Value != "" {
				s += " (" + v.Value + ")"
			}
		}
	}
	return s
}

func deref(t reflect.Type) reflect.Type {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

// fieldType returns the type a key of t decodes into, or nil if t has no
// such key. A map takes any key.
func fieldType(t reflect.Type, key string) reflect.Type {
	switch {
	case t == nil:
		return nil
	case t.Kind() == reflect.Map:
		return t.Elem()
	case t.Kind() != reflect.Struct:
		return nil
	}
	var out reflect.Type
	eachKey(t, func(name string, ft reflect.Type) {
		if name == key && out == nil {
			out = ft
		}
	})
	return out
}

// knownKeys lists the keys of struct type t.
func knownKeys(t reflect.Type) []string {
	var keys []string
	if t != nil && t.Kind() == reflect.Struct {
		eachKey(t, func(name string, _ reflect.Type) { keys = append(keys, name) })
	}
	return keys
}

// eachKey calls fn for each YAML key of struct type t, as yaml.v3 names
// them: the yaml tag's name, or the field's name in lower case; inline
// structs contribute their own keys.
func eachKey(t reflect.Type, fn func(name string, ft reflect.Type)) {
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if strings.Contains(","+opts+",", ",inline,") && deref(f.Type).Kind() == reflect.Struct {
			eachKey(deref(f.Type), fn)
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		fn(name, f.Type)
	}
}

// closestKey returns the known key that key most probably misspells, or
// "": the same key with '-' for '_' or in another case, or one at most
// two edits away.
func closestKey(key string, known []string) string {
	norm := func(s string) string { return strings.ReplaceAll(strings.ToLower(s), "-", "_") }
	best, bestDist := "", 3
	for _, k := range known {
		if norm(k) == norm(key) {
			return k
		}
		if d := editDistance(key, k); d < bestDist {
			best, bestDist = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
