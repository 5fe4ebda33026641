package cli

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	yamlnode "go.yaml.in/yaml/v3"
	"sigs.k8s.io/yaml"
)

// checkDuplicateKeys refuses a document in which two keys of one mapping
// become the same JSON key.
//
// sigs.k8s.io/yaml, which turns a manifest into JSON, decodes YAML keys to
// typed values (1, "1", true, 1.0, 0x1) and then writes each as a string:
// keys that differ in YAML, such as 1 and "1", or true and "true", or 1.0
// and 0x1, end up as one JSON key, and which value wins depends on Go's map
// order, so the same file could apply differently from one run to the
// next. Keys equal in YAML are refused by its strict mode, but with only
// one line; this names the mapping's path and both lines, always the same
// pair for the same document. Keys brought in by a merge key (<<: *base)
// count as keys of the mapping that merges them, as sigs.k8s.io/yaml's
// strict mode counts them.
//
// A document the node parser cannot read is left to the JSON conversion,
// which reports it.
func checkDuplicateKeys(d document) error {
	var root yamlnode.Node
	if err := yamlnode.Unmarshal(d.text, &root); err != nil {
		return nil
	}
	c := &keyChecker{
		lineOffset: d.start - 1,
		places:     map[*yamlnode.Node]place{},
		keys:       map[*yamlnode.Node][]mapKey{},
		busy:       map[*yamlnode.Node]bool{},
		converted:  map[*yamlnode.Node]convertedKey{},
	}
	c.place(&root, place{})
	return c.check(&root)
}

// mapKey is one key of a mapping.
type mapKey struct {
	json string // the JSON object key it becomes
	text string // as written, for messages
	line int    // file line
}

type keyChecker struct {
	lineOffset int
	// places holds where each mapping and list is written (an alias does
	// not move it), to name its path in a message.
	places map[*yamlnode.Node]place
	// keys memoises each mapping's keys, its own and merged ones, so that a
	// mapping merged many times is read once.
	keys map[*yamlnode.Node][]mapKey
	busy map[*yamlnode.Node]bool // mappings whose keys are being read
	// converted memoises keyOf.
	converted map[*yamlnode.Node]convertedKey
}

type convertedKey struct {
	key mapKey
	ok  bool
}

// place is where a mapping or list is: under parent, at a key or an
// index.
type place struct {
	parent *yamlnode.Node
	key    string
	index  int
	inList bool // at index, not key
}

// place records where every mapping and list under n is, in document
// order.
func (c *keyChecker) place(n *yamlnode.Node, at place) {
	switch n.Kind {
	case yamlnode.DocumentNode:
		for _, ch := range n.Content {
			c.place(ch, place{})
		}
	case yamlnode.SequenceNode:
		c.places[n] = at
		for i, ch := range n.Content {
			c.place(ch, place{parent: n, index: i, inList: true})
		}
	case yamlnode.MappingNode:
		c.places[n] = at
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			name := k.Value
			if key, ok := c.keyOf(k); ok {
				name = key.json
			}
			c.place(v, place{parent: n, key: name})
		}
	}
}

// path returns the field path of mapping or list n: policy.endpoints[1].
func (c *keyChecker) path(n *yamlnode.Node) string {
	var steps []place
	for p, ok := c.places[n]; ok && p.parent != nil; p, ok = c.places[p.parent] {
		steps = append(steps, p)
	}
	var b strings.Builder
	for i := len(steps) - 1; i >= 0; i-- {
		switch s := steps[i]; {
		case s.inList:
			fmt.Fprintf(&b, "[%d]", s.index)
		case b.Len() == 0:
			b.WriteString(s.key)
		default:
			b.WriteString("." + s.key)
		}
	}
	return b.String()
}

// check checks every mapping under n, in document order.
func (c *keyChecker) check(n *yamlnode.Node) error {
	switch n.Kind {
	case yamlnode.DocumentNode, yamlnode.SequenceNode:
		for _, ch := range n.Content {
			if err := c.check(ch); err != nil {
				return err
			}
		}
	case yamlnode.MappingNode:
		if _, err := c.mappingKeys(n); err != nil {
			return err
		}
		for i := 1; i < len(n.Content); i += 2 {
			if err := c.check(n.Content[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

// mappingKeys returns the keys of mapping m, its own and merged ones, or
// an error naming the first two that become one JSON key.
func (c *keyChecker) mappingKeys(m *yamlnode.Node) ([]mapKey, error) {
	if ks, ok := c.keys[m]; ok {
		return ks, nil
	}
	if c.busy[m] {
		return nil, nil // a mapping merging itself; the conversion refuses it
	}
	c.busy[m] = true
	defer delete(c.busy, m)
	var (
		out  []mapKey
		seen = map[string]mapKey{}
	)
	add := func(k mapKey) error {
		if first, dup := seen[k.json]; dup {
			return c.collision(m, first, k)
		}
		seen[k.json] = k
		out = append(out, k)
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if !isMergeKey(k) {
			if key, ok := c.keyOf(k); ok {
				if err := add(key); err != nil {
					return nil, err
				}
			}
			continue
		}
		for _, src := range mergeSources(v) {
			ks, err := c.mappingKeys(src)
			if err != nil {
				return nil, err
			}
			for _, key := range ks {
				if err := add(key); err != nil {
					return nil, err
				}
			}
		}
	}
	c.keys[m] = out
	return out, nil
}

func (c *keyChecker) collision(m *yamlnode.Node, first, second mapKey) error {
	path := joinPath(c.path(m), first.json)
	switch {
	case first.text == second.text && first.line == second.line:
		return fmt.Errorf("%s: duplicate key, twice on line %d", path, first.line)
	case first.text == second.text:
		return fmt.Errorf("%s: duplicate key, on line %d and line %d", path, first.line, second.line)
	}
	return fmt.Errorf("%s: duplicate key: %s (line %d) and %s (line %d) are the same key %q once YAML keys are made JSON strings; keep one",
		path, clip(first.text), first.line, clip(second.text), second.line, clip(first.json))
}

// isMergeKey reports whether k is a merge key, <<, as go-yaml v2 (under
// sigs.k8s.io/yaml) sees one: plain, untagged or tagged !!merge.
func isMergeKey(k *yamlnode.Node) bool {
	return k.Kind == yamlnode.ScalarNode && k.Value == "<<" && !quotedStyle(k) &&
		(k.Style&yamlnode.TaggedStyle == 0 || k.ShortTag() == "!!merge")
}

// mergeSources returns the mappings a merge key's value brings in: a
// mapping, an alias of one, or a list of those. Anything else is refused by
// the conversion.
func mergeSources(v *yamlnode.Node) []*yamlnode.Node {
	deref := func(n *yamlnode.Node) *yamlnode.Node {
		if n.Kind == yamlnode.AliasNode && n.Alias != nil {
			return n.Alias
		}
		return n
	}
	v = deref(v)
	switch v.Kind {
	case yamlnode.MappingNode:
		return []*yamlnode.Node{v}
	case yamlnode.SequenceNode:
		var out []*yamlnode.Node
		for _, e := range v.Content {
			if e = deref(e); e.Kind == yamlnode.MappingNode {
				out = append(out, e)
			}
		}
		return out
	}
	return nil
}

func quotedStyle(n *yamlnode.Node) bool {
	return n.Style&(yamlnode.DoubleQuotedStyle|yamlnode.SingleQuotedStyle|yamlnode.LiteralStyle|yamlnode.FoldedStyle) != 0
}

// keyOf returns key k as the JSON key it becomes. It reports false for a
// key that cannot be one (null, a list or mapping, an integer past int64):
// the conversion refuses those.
func (c *keyChecker) keyOf(k *yamlnode.Node) (mapKey, bool) {
	if r, done := c.converted[k]; done {
		return r.key, r.ok
	}
	key, ok := c.convert(k)
	c.converted[k] = convertedKey{key, ok}
	return key, ok
}

func (c *keyChecker) convert(k *yamlnode.Node) (mapKey, bool) {
	text := keyText(k)
	line := k.Line + c.lineOffset
	if k.Kind == yamlnode.AliasNode && k.Alias != nil {
		k = k.Alias
	}
	if k.Kind != yamlnode.ScalarNode {
		return mapKey{}, false
	}
	var src string
	switch {
	case k.Style&yamlnode.TaggedStyle != 0:
		tag := k.Tag
		if !strings.HasPrefix(tag, "!") {
			tag = "!<" + tag + ">"
		}
		q, _ := json.Marshal(k.Value) // a JSON string is a YAML double-quoted scalar
		src = tag + " " + string(q)
	case quotedStyle(k) || strings.Contains(k.Value, "\n") || plainIsString(k.Value):
		return mapKey{json: k.Value, text: text, line: line}, true
	default:
		src = k.Value
	}
	key, ok := convertKey(src)
	if !ok {
		return mapKey{}, false
	}
	return mapKey{json: key, text: text, line: line}, true
}

// plainIsString reports whether go-yaml v2 reads plain scalar s as a string
// without looking further: it tries other types only for scalars starting
// with a sign, a digit, '.', '~' or the first letter, in either case, of
// yes, no, true, false, on, off or null.
func plainIsString(s string) bool {
	return s != "" && !strings.ContainsRune("+-0123456789.~yYnNtTfFoO", rune(s[0]))
}

// convertKey returns the JSON key sigs.k8s.io/yaml makes of the YAML key
// src, by converting a mapping holding only that key: one rule, the
// converter's own.
func convertKey(src string) (string, bool) {
	js, err := yaml.YAMLToJSON([]byte("? " + src + "\n: 0\n"))
	if err != nil {
		return "", false
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(js, &m); err != nil || len(m) != 1 {
		return "", false
	}
	for k := range m {
		return k, true
	}
	return "", false
}

// keyText renders key k as written, for messages.
func keyText(k *yamlnode.Node) string {
	if k.Kind == yamlnode.AliasNode {
		return "*" + k.Value
	}
	v := k.Value
	switch {
	case k.Style&yamlnode.SingleQuotedStyle != 0:
		v = "'" + strings.ReplaceAll(v, "'", "''") + "'"
	case quotedStyle(k) || strings.Contains(v, "\n"):
		v = strconv.Quote(v)
	}
	if k.Style&yamlnode.TaggedStyle != 0 {
		v = k.Tag + " " + v
	}
	return v
}

// clip shortens s for a message.
func clip(s string) string {
	const most = 40
	if r := []rune(s); len(r) > most {
		return string(r[:most]) + "…"
	}
	return s
}
