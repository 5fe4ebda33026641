package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
)

// The kubectl output formats, beside table, json and yaml, that only the
// commands listing resources print (get groups, get hosts, rollout list):
//
//	-o name             the resource names, one a line: groups/web
//	-o wide             the table with more columns
//	-o jsonpath=TMPL    a template over the JSON form (jsonpath.go)
const (
	formatName     = "name"
	formatWide     = "wide"
	formatJSONPath = "jsonpath"
)

// listFormatsAnnotation marks a command that prints -o name, wide and
// jsonpath.
const listFormatsAnnotation = "mpfleetctl/list-formats"

// withListFormats marks cmd as printing the list formats.
func withListFormats(cmd *cobra.Command) *cobra.Command {
	if cmd.Annotations == nil {
		cmd.Annotations = map[string]string{}
	}
	cmd.Annotations[listFormatsAnnotation] = "true"
	return cmd
}

// parseOutput checks --output for cmd: table, json and yaml everywhere;
// name, wide and jsonpath=TMPL where cmd lists resources. It sets a.output
// to "table" for the list formats (their fallback) and a.listFormat.
func (a *app) parseOutput(cmd *cobra.Command) error {
	out := a.output
	var tmpl string
	if t, ok := strings.CutPrefix(out, "jsonpath="); ok {
		out, tmpl = formatJSONPath, t
	}
	switch out {
	case "table", "json", "yaml":
		return nil
	case formatName, formatWide, formatJSONPath:
	default:
		return usagef("--output %q: must be table, json, yaml, name, wide or jsonpath=TEMPLATE", a.output)
	}
	if cmd.Annotations[listFormatsAnnotation] == "" {
		return usagef("--output %s: only get groups, get hosts and rollout list print it (here: table, json or yaml)", out)
	}
	if out == formatJSONPath {
		t, err := parseJSONTemplate(tmpl)
		if err != nil {
			return err
		}
		a.jsonTmpl = t
	}
	a.listFormat, a.output = out, "table"
	return nil
}

// named is a resource with an API name: groups/web, hosts/h1.
type named interface {
	proto.Message
	GetName() string
}

// resourceList is what a list command prints: the items and how.
type resourceList[T named] struct {
	items  []T
	single bool // one named resource: json, yaml and jsonpath print it alone
	wrap   func([]T) proto.Message
	header []string
	row    func(T) []string
	// wideHeader and wideRow are the columns -o wide adds.
	wideHeader []string
	wideRow    func(T) []string
}

// print prints the list per --output.
func (l resourceList[T]) print(a *app) error {
	switch a.listFormat {
	case formatName:
		for _, it := range l.items {
			a.printf("%s\n", terminalSafe(it.GetName()))
		}
		return nil
	case formatJSONPath:
		return l.printJSONPath(a)
	}
	var obj proto.Message
	if l.single {
		obj = l.items[0]
	} else {
		obj = l.wrap(l.items)
	}
	return a.printObject(obj, func(w io.Writer) error {
		t := newTable(w, l.headerCells(a)...)
		for _, it := range l.items {
			t.row(l.cells(a, it)...)
		}
		return t.flush()
	})
}

// headerCells is the table's header, with the wide columns for -o wide.
func (l resourceList[T]) headerCells(a *app) []string {
	h := append([]string(nil), l.header...)
	if a.listFormat == formatWide && l.wideRow != nil {
		h = append(h, l.wideHeader...)
	}
	return h
}

// cells is an item's row, with the wide columns for -o wide.
func (l resourceList[T]) cells(a *app, it T) []string {
	row := l.row(it)
	if a.listFormat == formatWide && l.wideRow != nil {
		row = append(row, l.wideRow(it)...)
	}
	return row
}

// printJSONPath renders the template over one resource's JSON form, or
// over {"items": [...]} for a list.
func (l resourceList[T]) printJSONPath(a *app) error {
	var v any
	if l.single {
		var err error
		if v, err = protoToAny(l.items[0]); err != nil {
			return err
		}
	} else {
		items := make([]any, 0, len(l.items))
		for _, it := range l.items {
			x, err := protoToAny(it)
			if err != nil {
				return err
			}
			items = append(items, x)
		}
		v = map[string]any{"items": items}
	}
	s, err := a.jsonTmpl.execute(v)
	if err != nil {
		return fmt.Errorf("-o jsonpath: %w", err)
	}
	a.printf("%s", s)
	return nil
}

// protoToAny decodes m's JSON form (protojson, camelCase names) into maps
// and slices.
func protoToAny(m proto.Message) (any, error) {
	b, err := marshalJSON(m, false)
	if err != nil {
		return nil, err
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, err
	}
	return v, nil
}
