package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
)

// marshalJSON renders m in the API's JSON form (protojson, camelCase names)
// with stable formatting: protojson's own spacing varies on purpose, so it
// is compacted, and indented when indent is set.
func marshalJSON(m proto.Message, indent bool) ([]byte, error) {
	b, err := protojson.Marshal(m)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if indent {
		err = json.Indent(&out, b, "", "  ")
	} else {
		err = json.Compact(&out, b)
	}
	return escapeQuoted(out.Bytes()), err
}

// marshalYAML renders m as YAML through its JSON form.
func marshalYAML(m proto.Message) ([]byte, error) {
	b, err := protojson.Marshal(m)
	if err != nil {
		return nil, err
	}
	return jsonToYAML(b)
}

// printf writes to stdout. The first write error is kept, later writes are
// dropped, and run returns the error.
func (a *app) printf(format string, args ...any) {
	if a.writeErr == nil {
		_, a.writeErr = fmt.Fprintf(a.io.out, format, args...)
	}
}

// jsonToYAML converts JSON to YAML, safe for a terminal (safeYAML). The
// JSON's strings are escaped first: go-yaml refuses to read DEL and C1
// controls written as they are.
func jsonToYAML(b []byte) ([]byte, error) {
	y, err := yaml.JSONToYAML(escapeQuoted(b))
	if err != nil {
		return nil, err
	}
	return safeYAML(y)
}

// printObject prints m as JSON or YAML, per --output. table is printed for
// the table format.
func (a *app) printObject(m proto.Message, table func(w io.Writer) error) error {
	switch a.output {
	case "json":
		return a.printJSON(m, true)
	case "yaml":
		b, err := marshalYAML(m)
		if err != nil {
			return err
		}
		_, err = a.io.out.Write(b)
		return err
	}
	return table(a.io.out)
}

// printJSONLine prints m as one line of JSON (JSON lines, for export and
// streams).
func (a *app) printJSONLine(m proto.Message) error {
	return a.printJSON(m, false)
}

// printJSON prints m as JSON, indented or on one line.
func (a *app) printJSON(m proto.Message, indent bool) error {
	b, err := marshalJSON(m, indent)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(a.io.out, "%s\n", b)
	return err
}

// table writes aligned columns.
type table struct {
	tw  *tabwriter.Writer
	err error
}

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)}
	if len(header) > 0 {
		t.row(header...)
	}
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		if c == "" {
			c = "-"
		}
		cells[i] = terminalSafe(c)
	}
	if t.err == nil {
		_, t.err = fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
	}
}

func (t *table) flush() error {
	if t.err != nil {
		return t.err
	}
	return t.tw.Flush()
}

// terminalSafe makes text that comes from agents or the controller (host
// names, interface names, problem and path messages, errors) safe to print
// on a terminal, on one line. Tabs and line breaks become spaces, so they
// cannot break table columns or forge lines. Every other control character
// (C0, DEL and C1: ESC and CSI start every terminal escape sequence), every
// bidirectional-text control (which can make text read in another order than
// it is stored) and every byte that is not UTF-8 is written as a Go escape,
// \x1b or \u202e, so it shows instead of acting.
func terminalSafe(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f {
			return string(appendTerminalSafe(make([]byte, 0, len(s)+8), s, true))
		}
	}
	return s // printable ASCII, the common case
}

// printPlain prints a plain Go value as JSON or YAML, per --output.
func (a *app) printPlain(v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if a.output == "yaml" {
		b, err = jsonToYAML(b)
		if err != nil {
			return err
		}
		_, err = a.io.out.Write(b)
		return err
	}
	_, err = fmt.Fprintf(a.io.out, "%s\n", escapeQuoted(b))
	return err
}

// printStreamItem prints one streamed message: a JSON line, or a YAML
// document.
func (a *app) printStreamItem(m proto.Message) error {
	if a.output == "yaml" {
		b, err := marshalYAML(m)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(a.io.out, "---\n%s", b)
		return err
	}
	return a.printJSONLine(m)
}

// printList prints list, the API's list response, as JSON or YAML per
// --output, or its items as a table under header, a row each.
func printList[T any](a *app, list proto.Message, items []T, header []string, row func(T) []string) error {
	return a.printObject(list, func(w io.Writer) error {
		t := newTable(w, header...)
		for _, it := range items {
			t.row(row(it)...)
		}
		return t.flush()
	})
}
