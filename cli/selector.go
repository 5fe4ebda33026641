package cli

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// labelSelector is a parsed -l value in Kubernetes' syntax: requirements
// separated by commas, all of which must hold.
//
//	k=v, k==v   the label k is v
//	k!=v        the label k is not v (or k is not set)
//	k in (a,b)  k is a or b
//	k notin (a,b)  k is neither a nor b (or k is not set)
//	k           k is set
//	!k          k is not set
type labelSelector []labelRequirement

// labelRequirement is one requirement of a selector.
type labelRequirement struct {
	key    string
	op     string // "=", "!=", "in", "notin", "exists", "!"
	values []string
}

var (
	setRequirementRE = regexp.MustCompile(`^(\S+)\s+(in|notin)\s*\((.*)\)$`)
	labelKeyRE       = regexp.MustCompile(`^[^\s,()=!]+$`)
	labelValueRE     = regexp.MustCompile(`^[^\s,()=!]*$`)
)

// parseLabelSelector parses a -l value; an empty one selects everything.
// Errors are usage errors naming the requirement.
func parseLabelSelector(s string) (labelSelector, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	terms, err := splitSelector(s)
	if err != nil {
		return nil, usagef("-l %q: %v", s, err)
	}
	var sel labelSelector
	for _, t := range terms {
		r, err := parseRequirement(t)
		if err != nil {
			return nil, usagef("-l %q: %q: %v", s, t, err)
		}
		sel = append(sel, r)
	}
	return sel, nil
}

// splitSelector splits at the commas outside parentheses.
func splitSelector(s string) ([]string, error) {
	var (
		out   []string
		depth int
		start int
	)
	for i, c := range s {
		switch c {
		case '(':
			if depth++; depth > 1 {
				return nil, fmt.Errorf("nested parentheses")
			}
		case ')':
			if depth--; depth < 0 {
				return nil, fmt.Errorf("')' without '('")
			}
		case ',':
			if depth == 0 {
				out = append(out, strings.TrimSpace(s[start:i]))
				start = i + 1
			}
		}
	}
	if depth != 0 {
		return nil, fmt.Errorf("'(' without ')'")
	}
	return append(out, strings.TrimSpace(s[start:])), nil
}

func parseRequirement(t string) (labelRequirement, error) {
	if t == "" {
		return labelRequirement{}, fmt.Errorf("empty requirement (want k=v, k!=v, k in (a,b), k notin (a,b), k or !k)")
	}
	var r labelRequirement
	switch m := setRequirementRE.FindStringSubmatch(t); {
	case m != nil:
		r = labelRequirement{key: m[1], op: m[2]}
		for _, v := range strings.Split(m[3], ",") {
			r.values = append(r.values, strings.TrimSpace(v))
		}
	case strings.HasPrefix(t, "!") && !strings.ContainsAny(t, "=()"):
		r = labelRequirement{key: strings.TrimSpace(t[1:]), op: "!"}
	case strings.Contains(t, "!="):
		k, v, _ := strings.Cut(t, "!=")
		r = labelRequirement{key: strings.TrimSpace(k), op: "!=", values: []string{strings.TrimSpace(v)}}
	case strings.Contains(t, "=="):
		k, v, _ := strings.Cut(t, "==")
		r = labelRequirement{key: strings.TrimSpace(k), op: "=", values: []string{strings.TrimSpace(v)}}
	case strings.Contains(t, "="):
		k, v, _ := strings.Cut(t, "=")
		r = labelRequirement{key: strings.TrimSpace(k), op: "=", values: []string{strings.TrimSpace(v)}}
	default:
		r = labelRequirement{key: t, op: "exists"}
	}
	if !labelKeyRE.MatchString(r.key) {
		return r, fmt.Errorf("bad label key %q (want k=v, k!=v, k in (a,b), k notin (a,b), k or !k)", r.key)
	}
	if (r.op == "in" || r.op == "notin") && slices.Contains(r.values, "") && len(r.values) == 1 {
		return r, fmt.Errorf("%s needs at least one value", r.op)
	}
	for _, v := range r.values {
		if !labelValueRE.MatchString(v) {
			return r, fmt.Errorf("bad label value %q", v)
		}
	}
	return r, nil
}

// matches reports whether labels satisfy every requirement.
func (sel labelSelector) matches(labels map[string]string) bool {
	for _, r := range sel {
		v, ok := labels[r.key]
		var hold bool
		switch r.op {
		case "=":
			hold = ok && v == r.values[0]
		case "!=":
			hold = !ok || v != r.values[0]
		case "in":
			hold = ok && slices.Contains(r.values, v)
		case "notin":
			hold = !ok || !slices.Contains(r.values, v)
		case "exists":
			hold = ok
		case "!":
			hold = !ok
		}
		if !hold {
			return false
		}
	}
	return true
}

// split returns the equality requirements in the API's form, "k=v,k2=v2",
// which the controller filters on, and the selector of the rest, which
// only the client can check (nil when the controller can do it all).
func (sel labelSelector) split() (server string, rest labelSelector) {
	var eq []string
	for _, r := range sel {
		if r.op == "=" {
			eq = append(eq, r.key+"="+r.values[0])
			continue
		}
		rest = append(rest, r)
	}
	return strings.Join(eq, ","), rest
}
