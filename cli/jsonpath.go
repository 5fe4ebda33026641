package cli

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/theory/jsonpath"
)

// jsonTemplate is a parsed -o jsonpath=TEMPLATE, in kubectl's syntax: text
// printed as it is, with expressions in braces evaluated against the JSON
// form of what is printed:
//
//	{.items[*].name}                 every item's name, separated by spaces
//	{.items[?(@.syncState=="SYNC_STATE_FAILED")].name}  a filter
//	{range .items[*]}{.name}{"\n"}{end}  once per item, relative to it
//	{"\t"}                           a quoted string literal
//
// A path is RFC 9535 JSONPath (github.com/theory/jsonpath) with the
// leading "$" implied: ".a", "..a", "[0]", "@.a" (the current item) all
// work. Strings print as they are, other values as JSON; a path matching
// nothing prints nothing.
type jsonTemplate struct {
	nodes []tmplNode
}

// tmplNode is literal text, an expression, or a range over an expression
// with its body.
type tmplNode struct {
	text  string
	path  *jsonpath.Path
	body  []tmplNode // for a range
	isRng bool
}

// parseJSONTemplate parses a template; errors are usage errors.
func parseJSONTemplate(s string) (*jsonTemplate, error) {
	if s == "" {
		return nil, usagef("-o jsonpath=: empty template (e.g. -o jsonpath='{.items[*].name}')")
	}
	toks, err := lexTemplate(s)
	if err != nil {
		return nil, usagef("-o jsonpath=%s: %v", s, err)
	}
	nodes, _, err := parseNodes(toks, false)
	if err != nil {
		return nil, usagef("-o jsonpath=%s: %v", s, err)
	}
	return &jsonTemplate{nodes: nodes}, nil
}

// tmplToken is text outside braces, or the inside of one pair.
type tmplToken struct {
	text   string
	action bool
}

func lexTemplate(s string) ([]tmplToken, error) {
	var toks []tmplToken
	for s != "" {
		i := strings.IndexByte(s, '{')
		if i < 0 {
			toks = append(toks, tmplToken{text: s})
			break
		}
		if i > 0 {
			toks = append(toks, tmplToken{text: s[:i]})
		}
		s = s[i+1:]
		// Find the closing brace outside quotes.
		end, quote := -1, byte(0)
		for j := 0; j < len(s) && end < 0; j++ {
			switch c := s[j]; {
			case quote != 0 && c == '\\':
				j++
			case quote != 0 && c == quote:
				quote = 0
			case quote == 0 && (c == '"' || c == '\''):
				quote = c
			case quote == 0 && c == '}':
				end = j
			}
		}
		if end < 0 {
			return nil, fmt.Errorf("unclosed '{'")
		}
		toks = append(toks, tmplToken{text: strings.TrimSpace(s[:end]), action: true})
		s = s[end+1:]
	}
	return toks, nil
}

// parseNodes parses tokens up to the end of the template, or up to {end}
// when inRange; it returns what follows.
func parseNodes(toks []tmplToken, inRange bool) ([]tmplNode, []tmplToken, error) {
	var nodes []tmplNode
	for len(toks) > 0 {
		t := toks[0]
		toks = toks[1:]
		switch {
		case !t.action:
			nodes = append(nodes, tmplNode{text: t.text})
		case t.text == "end":
			if !inRange {
				return nil, nil, fmt.Errorf("{end} without {range}")
			}
			return nodes, toks, nil
		case strings.HasPrefix(t.text, "range ") || strings.HasPrefix(t.text, "range\t"):
			p, err := parsePath(strings.TrimSpace(t.text[len("range"):]))
			if err != nil {
				return nil, nil, err
			}
			body, rest, err := parseNodes(toks, true)
			if err != nil {
				return nil, nil, err
			}
			nodes = append(nodes, tmplNode{path: p, body: body, isRng: true})
			toks = rest
		case strings.HasPrefix(t.text, `"`) || strings.HasPrefix(t.text, `'`):
			lit, err := unquoteLiteral(t.text)
			if err != nil {
				return nil, nil, err
			}
			nodes = append(nodes, tmplNode{text: lit})
		default:
			p, err := parsePath(t.text)
			if err != nil {
				return nil, nil, err
			}
			nodes = append(nodes, tmplNode{path: p})
		}
	}
	if inRange {
		return nil, nil, fmt.Errorf("{range} without {end}")
	}
	return nodes, nil, nil
}

func unquoteLiteral(s string) (string, error) {
	if strings.HasPrefix(s, "'") {
		if len(s) < 2 || !strings.HasSuffix(s, "'") {
			return "", fmt.Errorf("bad string literal %s", s)
		}
		s = `"` + strings.ReplaceAll(s[1:len(s)-1], `"`, `\"`) + `"`
	}
	lit, err := strconv.Unquote(s)
	if err != nil {
		return "", fmt.Errorf("bad string literal %s", s)
	}
	return lit, nil
}

// parsePath parses a kubectl-style path: ".a.b", "..a", "[0]", "@.a",
// "$.a" or "a.b" all select from the current value.
func parsePath(s string) (*jsonpath.Path, error) {
	q := s
	switch {
	case s == "" || s == "@" || s == "$":
		q = "$"
	case strings.HasPrefix(s, "$"):
	case strings.HasPrefix(s, "@"):
		q = "$" + s[1:]
	case strings.HasPrefix(s, ".") || strings.HasPrefix(s, "["):
		q = "$" + s
	default:
		q = "$." + s
	}
	p, err := jsonpath.Parse(q)
	if err != nil {
		return nil, fmt.Errorf("{%s}: %v", s, oneLine(err.Error()))
	}
	return p, nil
}

// execute renders the template with v, decoded JSON, as the root.
func (t *jsonTemplate) execute(v any) (string, error) {
	var b strings.Builder
	if err := execNodes(&b, t.nodes, v); err != nil {
		return "", err
	}
	return b.String(), nil
}

func execNodes(b *strings.Builder, nodes []tmplNode, cur any) error {
	for _, n := range nodes {
		switch {
		case n.isRng:
			for item := range n.path.Select(cur).All() {
				if err := execNodes(b, n.body, item); err != nil {
					return err
				}
			}
		case n.path != nil:
			first := true
			for item := range n.path.Select(cur).All() {
				if !first {
					b.WriteByte(' ')
				}
				first = false
				if s, ok := item.(string); ok {
					b.WriteString(s)
					continue
				}
				js, err := json.Marshal(item)
				if err != nil {
					return err
				}
				b.Write(js)
			}
		default:
			b.WriteString(n.text)
		}
	}
	return nil
}
