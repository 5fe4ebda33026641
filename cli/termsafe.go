package cli

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"

	yamlnode "go.yaml.in/yaml/v3"
)

// What the controller and agents send (names, descriptions, labels, facts,
// problems, audit reasons, rollout messages, error messages) cannot drive
// the operator's terminal. Two layers make sure of it:
//
//   - Every stream mpfleetctl writes to, stdout and stderr, is a
//     terminalWriter: whatever a command prints, a control character (C0,
//     DEL, C1: ESC and CSI start every escape sequence, CR and BS move back
//     over what was printed) or a bidirectional-text control reaches the
//     terminal as a visible Go escape, \x1b or \u202e. Only newline and tab
//     pass. A new command cannot forget this: it has no other way out.
//   - Table and text cells go through terminalSafe, which also folds line
//     breaks and tabs to spaces, so a value cannot forge lines or break
//     columns.
//
// JSON and YAML output stays parseable: their strings are escaped in the
// format's own syntax (see escapeQuoted and safeYAML), so the writer finds
// nothing to change in them.

// unsafeRune reports whether r must not reach a terminal raw: a control
// character (C0, DEL, C1) or a bidirectional-text control (U+061C, U+200E,
// U+200F, U+202A–U+202E, U+2066–U+2069), which makes text read in another
// order than it is stored.
func unsafeRune(r rune) bool {
	return unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r)
}

// appendTerminalSafe appends s to dst with every unsafe rune written as a
// Go escape: \x1b for C0 and DEL, \u009b for C1 and bidirectional
// controls, and \xff for a byte that is not UTF-8. With fold, tabs and line
// breaks become spaces; without, newline and tab pass and CR, VT and FF
// are escaped.
func appendTerminalSafe(dst []byte, s string, fold bool) []byte {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			dst = fmt.Appendf(dst, `\x%02x`, s[i])
		case r == '\n' || r == '\t':
			if fold {
				dst = append(dst, ' ')
			} else {
				dst = append(dst, byte(r))
			}
		case fold && (r == '\r' || r == '\v' || r == '\f'):
			dst = append(dst, ' ')
		case r < 0x80 && unicode.IsControl(r):
			dst = fmt.Appendf(dst, `\x%02x`, r)
		case unsafeRune(r):
			dst = fmt.Appendf(dst, `\u%04x`, r)
		default:
			dst = append(dst, s[i:i+size]...)
		}
		i += size
	}
	return dst
}

// streamSafe reports whether b can be written as it is: valid UTF-8 with
// no unsafe rune but newline and tab.
func streamSafe(b []byte) bool {
	for i := 0; i < len(b); {
		if c := b[i]; c < utf8.RuneSelf {
			if (c < 0x20 && c != '\n' && c != '\t') || c == 0x7f {
				return false
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(b[i:])
		if (r == utf8.RuneError && size == 1) || unsafeRune(r) {
			return false
		}
		i += size
	}
	return true
}

// terminalWriter is stdout or stderr of mpfleetctl: it writes everything
// through appendTerminalSafe, keeping newlines and tabs. A rune split
// across two writes is held back until it is whole.
type terminalWriter struct {
	w       io.Writer
	pending []byte // the start of a rune the last write ended in
}

func newTerminalWriter(w io.Writer) *terminalWriter { return &terminalWriter{w: w} }

func (t *terminalWriter) Write(p []byte) (int, error) {
	data := p
	if len(t.pending) > 0 {
		data = append(t.pending, p...)
		t.pending = nil
	}
	if n := incompleteRune(data); n > 0 {
		t.pending = bytes.Clone(data[len(data)-n:])
		data = data[:len(data)-n]
	}
	if len(data) == 0 {
		return len(p), nil
	}
	out := data
	if !streamSafe(data) {
		out = appendTerminalSafe(nil, string(data), false)
	}
	if _, err := t.w.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// flush writes a rune start still held back, escaped: nothing completes
// it.
func (t *terminalWriter) flush() error {
	if len(t.pending) == 0 {
		return nil
	}
	out := appendTerminalSafe(nil, string(t.pending), false)
	t.pending = nil
	_, err := t.w.Write(out)
	return err
}

// writeControl writes a terminal control sequence of mpfleetctl's own
// (the live rollout display's cursor movements) past the escaping.
func (t *terminalWriter) writeControl(seq string) error {
	if err := t.flush(); err != nil {
		return err
	}
	_, err := io.WriteString(t.w, seq)
	return err
}

// incompleteRune returns the length of the start of a UTF-8 sequence that
// b ends in, 0 if b ends in a whole rune (or in bytes that are not UTF-8).
func incompleteRune(b []byte) int {
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			if utf8.FullRune(b[i:]) {
				return 0
			}
			return len(b) - i
		}
	}
	return 0
}

// safeStdio returns sio with stdout and stderr escaping what they write,
// and a function that flushes them.
func safeStdio(sio stdio) (stdio, func()) {
	out, errw := newTerminalWriter(sio.out), newTerminalWriter(sio.err)
	sio.out, sio.err = out, errw
	return sio, func() {
		_ = out.flush() // nowhere left to report a failure
		_ = errw.flush()
	}
}

// printControl writes a terminal control sequence to stdout, unescaped.
func (a *app) printControl(seq string) {
	if a.writeErr != nil {
		return
	}
	if t, ok := a.io.out.(*terminalWriter); ok {
		a.writeErr = t.writeControl(seq)
		return
	}
	_, a.writeErr = io.WriteString(a.io.out, seq)
}

// escapeQuoted writes every unsafe rune from U+007F up in b as \u007f,
// \u009b or \u202e. In JSON, and in YAML whose every scalar holding such a
// rune is double-quoted, they can only occur inside quoted strings, where
// that is the rune's escape; encoders already escape C0 controls there.
func escapeQuoted(b []byte) []byte {
	var out []byte
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		if quotedUnsafe(r) {
			if out == nil {
				out = append(make([]byte, 0, len(b)+16), b[:i]...)
			}
			out = fmt.Appendf(out, `\u%04x`, r)
		} else if out != nil {
			out = append(out, b[i:i+size]...)
		}
		i += size
	}
	if out == nil {
		return b
	}
	return out
}

// safeYAML makes YAML rendered by sigs.k8s.io/yaml (go-yaml v2) safe for a
// terminal while keeping its meaning. go-yaml double-quotes and escapes a
// string holding a control character, but writes a bidirectional control
// as it is, in any style. Only then is the YAML read back as nodes, every
// scalar holding an unsafe rune set to double quotes, written again in the
// same layout, and those runes escaped.
func safeYAML(b []byte) ([]byte, error) {
	if !bytes.ContainsFunc(b, quotedUnsafe) {
		return b, nil
	}
	var doc yamlnode.Node
	if err := yamlnode.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("render YAML: %w", err)
	}
	quoteUnsafeScalars(&doc)
	var out bytes.Buffer
	enc := yamlnode.NewEncoder(&out)
	enc.SetIndent(2)
	enc.CompactSeqIndent() // "key:\n- item", as go-yaml v2 writes lists
	if err := enc.Encode(&doc); err != nil {
		return nil, fmt.Errorf("render YAML: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("render YAML: %w", err)
	}
	return escapeQuoted(out.Bytes()), nil
}

// quotedUnsafe reports whether escapeQuoted escapes r.
func quotedUnsafe(r rune) bool { return r >= 0x7f && unsafeRune(r) }

func quoteUnsafeScalars(n *yamlnode.Node) {
	if n.Kind == yamlnode.ScalarNode && strings.ContainsFunc(n.Value, func(r rune) bool { return r != '\n' && unsafeRune(r) }) {
		n.Style = yamlnode.DoubleQuotedStyle
	}
	for _, c := range n.Content {
		quoteUnsafeScalars(c)
	}
}
