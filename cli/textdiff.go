package cli

import (
	"fmt"
	"strings"
)

// diffOp is one line of an edit script: ' ' kept, '-' removed, '+' added.
type diffOp struct {
	kind byte
	text string
}

// unifiedDiff returns the unified diff (as diff -u prints it) turning a into
// b, with ctx lines of context, or "" when they are equal. It finds a
// longest common subsequence of lines, which is quadratic and fine for
// policies of a few hundred lines.
func unifiedDiff(nameA, nameB, a, b string, ctx int) string {
	x, y := splitLines(a), splitLines(b)
	ops := editScript(x, y)
	changed := false
	for _, op := range ops {
		if op.kind != ' ' {
			changed = true
			break
		}
	}
	if !changed {
		return ""
	}
	var out strings.Builder
	fmt.Fprintf(&out, "--- %s\n+++ %s\n", nameA, nameB)

	// Line numbers (from 1) in a and b before each op.
	la, lb := make([]int, len(ops)+1), make([]int, len(ops)+1)
	la[0], lb[0] = 1, 1
	for i, op := range ops {
		la[i+1], lb[i+1] = la[i], lb[i]
		if op.kind != '+' {
			la[i+1]++
		}
		if op.kind != '-' {
			lb[i+1]++
		}
	}
	for i := 0; i < len(ops); {
		if ops[i].kind == ' ' {
			i++
			continue
		}
		// A hunk starts ctx lines before the change and runs until more than
		// 2*ctx unchanged lines follow a change.
		start := max(0, i-ctx)
		end := i
		for j := i; j < len(ops); j++ {
			if ops[j].kind != ' ' {
				end = j + 1
				continue
			}
			if j-end >= 2*ctx {
				break
			}
		}
		end = min(len(ops), end+ctx)
		var ca, cb int
		for _, op := range ops[start:end] {
			if op.kind != '+' {
				ca++
			}
			if op.kind != '-' {
				cb++
			}
		}
		fmt.Fprintf(&out, "@@ -%s +%s @@\n", hunkRange(la[start], ca), hunkRange(lb[start], cb))
		for _, op := range ops[start:end] {
			out.WriteByte(op.kind)
			out.WriteString(op.text)
			out.WriteByte('\n')
		}
		i = end
	}
	return out.String()
}

// hunkRange renders "start,count" the way diff -u does: an empty range
// names the line before it.
func hunkRange(start, count int) string {
	switch count {
	case 0:
		return fmt.Sprintf("%d,0", start-1)
	case 1:
		return fmt.Sprintf("%d", start)
	}
	return fmt.Sprintf("%d,%d", start, count)
}

func splitLines(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}

// editScript returns the ops turning x into y, removals before additions
// within a change.
func editScript(x, y []string) []diffOp {
	// lcs[i][j] is the length of a longest common subsequence of x[i:] and
	// y[j:].
	lcs := make([][]int, len(x)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(y)+1)
	}
	for i := len(x) - 1; i >= 0; i-- {
		for j := len(y) - 1; j >= 0; j-- {
			if x[i] == y[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var ops []diffOp
	i, j := 0, 0
	for i < len(x) || j < len(y) {
		switch {
		case i < len(x) && j < len(y) && x[i] == y[j]:
			ops = append(ops, diffOp{' ', x[i]})
			i++
			j++
		case i < len(x) && (j == len(y) || lcs[i+1][j] >= lcs[i][j+1]):
			ops = append(ops, diffOp{'-', x[i]})
			i++
		default:
			ops = append(ops, diffOp{'+', y[j]})
			j++
		}
	}
	return ops
}
