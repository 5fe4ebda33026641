package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
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
		b, err := marshalJSON(m, true)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(a.io.out, "%s\n", b)
		return err
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
	b, err := marshalJSON(m, false)
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

// formatTime renders a timestamp in UTC, RFC 3339 to the second.
func formatTime(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

// age renders how long ago ts was, kubectl style: 45s, 12m, 3h, 5d.
func (a *app) age(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return humanDuration(a.now().Sub(ts.AsTime()))
}

func humanDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	default:
		return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
	}
}

// formatLatency renders a probe's connect time to about three significant
// digits: 850µs, 1.23ms, 12.3ms, 123ms, 1.23s.
func formatLatency(d time.Duration) string {
	unit := time.Microsecond
	switch {
	case d >= time.Second:
		unit = 10 * time.Millisecond
	case d >= 100*time.Millisecond:
		unit = time.Millisecond
	case d >= 10*time.Millisecond:
		unit = 100 * time.Microsecond
	case d >= time.Millisecond:
		unit = 10 * time.Microsecond
	}
	return d.Round(unit).String()
}

// formatLabels renders labels as "k=v,k2=v2", sorted.
func formatLabels(m map[string]string) string {
	keys := sortedKeys(m)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ",")
}

// trimName drops a resource name's collection prefix: "web" for
// "groups/web".
func trimName(name string) string {
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		return name[i+1:]
	}
	return name
}

func joinTrimmed(names []string) string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = trimName(n)
	}
	slices.Sort(out)
	return strings.Join(out, ",")
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
