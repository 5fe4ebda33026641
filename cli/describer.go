package cli

import (
	"fmt"
	"io"
	"strings"
)

// describer writes the indented sections of describe host. Fields of one
// block are aligned together until flush.
type describer struct {
	w      io.Writer
	fields [][3]string // indent, label, value
	err    error
}

const indentUnit = "  "

func (d *describer) printf(format string, args ...any) {
	if d.err == nil {
		_, d.err = fmt.Fprintf(d.w, format, args...)
	}
}

func (d *describer) field(level int, label, value string) {
	if value == "" {
		value = "-"
	}
	d.fields = append(d.fields, [3]string{strings.Repeat(indentUnit, level), label + ":", terminalSafe(value)})
}

func (d *describer) flush() {
	width := 0
	for _, f := range d.fields {
		width = max(width, len(f[1]))
	}
	for _, f := range d.fields {
		d.printf("%s%-*s %s\n", f[0], width, f[1], f[2])
	}
	d.fields = nil
}

func (d *describer) section(level int, title string) {
	d.flush()
	d.printf("%s%s:\n", strings.Repeat(indentUnit, level), title)
}

func (d *describer) line(level int, s string) {
	d.flush()
	d.printf("%s%s\n", strings.Repeat(indentUnit, level), terminalSafe(s))
}

// indentWriter prefixes every line written through it.
type indentWriter struct {
	w       io.Writer
	prefix  string
	midLine bool
}

func (iw *indentWriter) Write(p []byte) (int, error) {
	var b strings.Builder
	for _, c := range string(p) {
		if !iw.midLine {
			b.WriteString(iw.prefix)
			iw.midLine = true
		}
		b.WriteRune(c)
		if c == '\n' {
			iw.midLine = false
		}
	}
	if _, err := io.WriteString(iw.w, b.String()); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (d *describer) table(level int, header ...string) *table {
	d.flush()
	return newTable(&indentWriter{w: d.w, prefix: strings.Repeat(indentUnit, level)}, header...)
}

func (d *describer) flushTable(t *table) {
	if err := t.flush(); err != nil && d.err == nil {
		d.err = err
	}
}

// describeRows writes items as a table under header (none given: no header
// row), indented by level, a row each. With no items it writes the line
// none instead, or nothing when none is "".
func describeRows[T any](d *describer, level int, none string, items []T, header []string, row func(T) []string) {
	if len(items) == 0 {
		if none != "" {
			d.line(level, none)
		}
		return
	}
	t := d.table(level, header...)
	for _, it := range items {
		t.row(row(it)...)
	}
	d.flushTable(t)
}
