package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"sigs.k8s.io/yaml"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// hostile is what a compromised agent or controller might put in any
// string to take over the operator's terminal: clear the screen, return to
// the start of the line, back up, reverse the text, a C1 CSI, DEL, BEL, a
// line break and a tab, an isolate.
const hostile = "\x1b[2J\r\b\u202e\u009b\x7f\a\n\t\u2066"

// rawUnsafe returns the first rune of s that would act on a terminal: a
// control character other than newline and tab, or a bidirectional-text
// control.
func rawUnsafe(s string) (rune, bool) {
	for _, r := range s {
		if (unicode.IsControl(r) && r != '\n' && r != '\t') || unicode.Is(unicode.Bidi_Control, r) {
			return r, true
		}
	}
	return 0, false
}

// poison appends hostile to every string set in m: fields, list elements,
// map keys and values, in every nested message.
func poison(m protoreflect.Message) {
	type field struct {
		fd protoreflect.FieldDescriptor
		v  protoreflect.Value
	}
	var fields []field
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		fields = append(fields, field{fd, v})
		return true
	})
	str := func(v protoreflect.Value) protoreflect.Value { return protoreflect.ValueOfString(v.String() + hostile) }
	for _, f := range fields {
		switch {
		case f.fd.IsMap():
			mp := f.v.Map()
			type entry struct{ k, v protoreflect.Value }
			var entries []entry
			mp.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
				entries = append(entries, entry{k.Value(), v})
				return true
			})
			for _, e := range entries {
				k, v := e.k, e.v
				if f.fd.MapKey().Kind() == protoreflect.StringKind {
					mp.Clear(k.MapKey())
					k = str(k)
				}
				switch f.fd.MapValue().Kind() {
				case protoreflect.StringKind:
					v = str(v)
				case protoreflect.MessageKind:
					poison(v.Message())
				}
				mp.Set(k.MapKey(), v)
			}
		case f.fd.IsList():
			l := f.v.List()
			for i := range l.Len() {
				switch f.fd.Kind() {
				case protoreflect.StringKind:
					l.Set(i, str(l.Get(i)))
				case protoreflect.MessageKind:
					poison(l.Get(i).Message())
				}
			}
		case f.fd.Kind() == protoreflect.StringKind:
			m.Set(f.fd, str(f.v))
		case f.fd.Kind() == protoreflect.MessageKind:
			poison(f.v.Message())
		}
	}
}

func poisoned[M proto.Message](m M) M {
	poison(m.ProtoReflect())
	return m
}

// hostileController is a fake controller whose every string, names
// included, ends in hostile. It holds group web (unpoisoned name, for plan)
// and group "web"+hostile with two revisions, hosts, audit events and a
// rolled-back rollout "r1"+hostile.
func hostileController(t *testing.T) *controller {
	t.Helper()
	c := newController(t)
	g := poisoned(fullGroup())
	g.Name, g.PolicyRevision, g.DeployedRevision = groupName("web"+hostile), 2, 2
	g.Etag, g.ActiveRollout = "7"+hostile, rolloutName("r1"+hostile)
	c.groups.groups[g.Name] = g
	v1 := poisoned(fullGroup()).GetPolicy()
	v1.Endpoints = v1.Endpoints[:0]
	for i, p := range []*mpfleetv1.MultipathPolicy{v1, g.GetPolicy()} {
		c.groups.revs[g.Name] = append(c.groups.revs[g.Name], &mpfleetv1.PolicyRevision{
			Name: fmt.Sprintf("%s/revisions/%d", g.Name, i+1), Revision: int64(i + 1), Policy: p,
			Actor: "alice" + hostile, Reason: "why" + hostile,
		})
	}
	plain := poisoned(fullGroup())
	c.groups.put("web", plain)

	for _, h := range testHosts() {
		c.hosts.hosts = append(c.hosts.hosts, poisoned(h))
	}
	// h1 and h2 are in group web, for plan; h2 fails to plan.
	c.hosts.hosts[0].Group, c.hosts.hosts[1].Group = "groups/web", "groups/web"
	c.hosts.hosts[0].Problems = []*mpfleetv1.HostProblem{{Code: mpfleetv1.HostProblem_CODE_GATEWAY_UNKNOWN, Message: "no gateway" + hostile}}
	for _, h := range c.hosts.hosts {
		c.hosts.events = append(c.hosts.events, &mpfleetv1.HostEvent{Type: mpfleetv1.HostEvent_TYPE_UPSERT, Host: h})
	}
	c.hosts.events = append(c.hosts.events, synced)

	for _, e := range auditEvents() {
		c.audit.events = append(c.audit.events, poisoned(e))
	}
	c.audit.verify = poisoned(&mpfleetv1.VerifyAuditLogResponse{
		Ok: false, FirstSequence: 1, EventsChecked: 3, FirstBadSequence: 3, Reason: "hash mismatch", HeadHash: "ab12", KeyId: "k1",
	})

	states := rolloutStates(mpfleetv1.Rollout_STATE_ROLLED_BACK)
	for _, s := range states {
		poison(s.ProtoReflect())
	}
	c.rollouts.put(states[len(states)-1])
	c.rollouts.watches[states[0].GetName()] = states
	return c
}

// TestHostileStringsAreEscaped runs every command that prints what the
// controller sends against a controller whose every string holds terminal
// control sequences, in each output format, and checks that none reaches
// the terminal raw, that the hostile text is shown (escaped), and that
// JSON and YAML still carry it exactly.
func TestHostileStringsAreEscaped(t *testing.T) {
	c := hostileController(t)
	manifest := writeFile(t, "kind: Group\nname: web\npolicy: {enabled: true}\n")
	group, host, rollout := "web"+hostile, "h1"+hostile, "r1"+hostile
	commands := []struct {
		name string
		args []string
		fail bool // the command ends in an error (printed after its output)
		text bool // it prints text whatever the output format
	}{
		{"get groups", []string{"get", "groups"}, false, false},
		{"get group", []string{"get", "group", group}, false, false},
		{"get hosts", []string{"get", "hosts"}, false, false},
		{"get host", []string{"get", "host", host}, false, false},
		{"describe host", []string{"describe", "host", host}, false, false},
		{"label host", []string{"label", "host", host, "zone=b"}, false, true},
		{"revisions", []string{"revisions", group}, false, false},
		// diff's header names the revisions from the arguments, escaped by
		// the writer alone: this checks that stdout is one.
		{"diff", []string{"diff", group, "1", "2"}, false, true},
		{"plan", []string{"plan", "-f", manifest}, false, false},
		{"audit list", []string{"audit", "list"}, false, false},
		{"audit verify", []string{"audit", "verify"}, true, false},
		{"audit watch", []string{"audit", "watch", "--after", "0"}, true, false},
		{"watch hosts", []string{"watch", "hosts"}, true, false},
		{"rollout list", []string{"rollout", "list"}, false, false},
		{"rollout status", []string{"rollout", "status", rollout}, false, false},
		{"rollout status --watch", []string{"rollout", "status", rollout, "--watch"}, true, false},
		{"error from the controller", []string{"describe", "host", "nope" + hostile}, true, false},
		{"error from the controller, rollout", []string{"rollout", "status", "nope" + hostile}, true, false},
		{"refused argument", []string{"get", "hosts", "--state", "bad" + hostile}, true, false},
	}
	for _, cmd := range commands {
		for _, format := range []string{"table", "json", "yaml"} {
			t.Run(cmd.name+"/"+format, func(t *testing.T) {
				r := c.run(t, "", nil, append([]string{"-o", format}, cmd.args...)...)
				if (r.err != nil) != cmd.fail {
					t.Fatalf("error %v, want one: %v; stderr %q", r.err, cmd.fail, r.stderr)
				}
				for stream, out := range map[string]string{"stdout": r.stdout, "stderr": r.stderr} {
					if ch, bad := rawUnsafe(out); bad {
						t.Errorf("%s holds %U raw:\n%q", stream, ch, out)
					}
				}
				if !strings.Contains(r.stdout+r.stderr, "[2J") {
					t.Errorf("the hostile text is not shown at all:\nstdout %q\nstderr %q", r.stdout, r.stderr)
				}
				if r.stdout == "" || format == "table" || cmd.text {
					return
				}
				if !carries(t, format, r.stdout) {
					t.Errorf("%s output lost the hostile text:\n%s", format, r.stdout)
				}
			})
		}
	}
}

// carries reports whether JSON (a document or JSON lines) or YAML (one or
// more documents) parses and holds a string with hostile in it, exactly.
func carries(t *testing.T, format, out string) bool {
	t.Helper()
	var docs []string
	switch format {
	case "json":
		if json.Valid([]byte(out)) {
			docs = []string{out}
		} else {
			docs = strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		}
	case "yaml":
		for _, d := range strings.Split(strings.TrimPrefix(out, "---\n"), "\n---\n") {
			js, err := yaml.YAMLToJSON([]byte(d))
			if err != nil {
				t.Fatalf("YAML does not parse: %v\n%s", err, d)
			}
			docs = append(docs, string(js))
		}
	}
	found := false
	for _, d := range docs {
		var v any
		if err := json.Unmarshal([]byte(d), &v); err != nil {
			t.Fatalf("JSON does not parse: %v\n%s", err, d)
		}
		found = found || holds(v, hostile)
	}
	return found
}

// holds reports whether a decoded JSON value has a string or key
// containing s.
func holds(v any, s string) bool {
	switch v := v.(type) {
	case string:
		return strings.Contains(v, s)
	case []any:
		for _, e := range v {
			if holds(e, s) {
				return true
			}
		}
	case map[string]any:
		for k, e := range v {
			if strings.Contains(k, s) || holds(e, s) {
				return true
			}
		}
	}
	return false
}

// TestHostileLiveRollout checks the live display: its own cursor movements
// go out, nothing from the rollout does.
func TestHostileLiveRollout(t *testing.T) {
	c := hostileController(t)
	var out, errb bytes.Buffer
	err := run(t.Context(), []string{"--controller", c.addr, "rollout", "status", "r1" + hostile, "--watch"},
		stdio{in: strings.NewReader(""), out: &out, err: &errb, tty: true, width: 200},
		func(string) string { return "" }, func() time.Time { return testNow })
	if ExitCode(err) != 1 {
		t.Errorf("exit %d (%v), want 1 (rolled back)", ExitCode(err), err)
	}
	frames := regexp.MustCompile(`\x1b\[(\d+A)?`).Split(out.String(), -1)
	if len(frames) < 5 {
		t.Fatalf("%d frames:\n%q", len(frames), out.String())
	}
	for _, f := range append(frames, errb.String()) {
		if ch, bad := rawUnsafe(f); bad {
			t.Errorf("frame holds %U raw:\n%q", ch, f)
		}
	}
	if !strings.Contains(out.String(), `\x1b[2J`) {
		t.Errorf("the rollout's hostile text is not shown:\n%q", out.String())
	}
}

func TestTerminalWriter(t *testing.T) {
	var b bytes.Buffer
	w := newTerminalWriter(&b)
	// "é→" split inside both runes, then control characters and a
	// control sequence of mpfleetctl's own.
	for _, p := range []string{"caf\xc3", "\xa9 \xe2\x86", "\x92 a\tb\n", "\x1b[31m\r\u202e\u009b\x7f", "\xff end\n"} {
		if n, err := w.Write([]byte(p)); n != len(p) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", p, n, err)
		}
	}
	if err := w.writeControl("\x1b[2A"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("x\xe2")); err != nil {
		t.Fatal(err)
	}
	if err := w.flush(); err != nil {
		t.Fatal(err)
	}
	want := "café → a\tb\n" + `\x1b[31m\x0d\u202e\u009b\x7f\xff end` + "\n\x1b[2Ax" + `\xe2`
	if b.String() != want {
		t.Errorf("wrote %q, want %q", b.String(), want)
	}
}

func TestEscapeQuotedJSON(t *testing.T) {
	in := map[string]string{"k\u202e": "a\u009bb\x7fc\u2066d\x1be é→"}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	out := escapeQuoted(b)
	if ch, bad := rawUnsafe(string(out)); bad {
		t.Errorf("escapeQuoted(%s) = %s, holds %U", b, out, ch)
	}
	var back map[string]string
	if err := json.Unmarshal(out, &back); err != nil || fmt.Sprint(back) != fmt.Sprint(in) {
		t.Errorf("escapeQuoted(%s) = %s, reads back as %q (%v)", b, out, back, err)
	}
}

// TestSafeYAML checks YAML holding unsafe runes in each style go-yaml v2
// writes them in (plain, literal, keys, flow), and that YAML without any is
// left as it is.
func TestSafeYAML(t *testing.T) {
	in := map[string]any{
		"plain":   "x\u202ey",
		"literal": "x\u202ey\nz",
		"k\u2066": "v",
		"ctl":     "\x1b[2J\u009b\x7f",
		"list":    []any{"a\u200fb", map[string]any{"n": "\u061c", "m": []any{}}},
		"long":    strings.Repeat("word ", 30) + "\u202e",
		"safe":    "é→ 1",
	}
	js, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := jsonToYAML(js)
	if err != nil {
		t.Fatal(err)
	}
	if ch, bad := rawUnsafe(string(out)); bad {
		t.Errorf("YAML holds %U raw:\n%s", ch, out)
	}
	back, err := yaml.YAMLToJSON(out)
	if err != nil {
		t.Fatal(err)
	}
	var got any
	if err := json.Unmarshal(back, &got); err != nil || fmt.Sprint(got) != fmt.Sprint(in) {
		t.Errorf("YAML reads back as %v, want %v:\n%s", got, in, out)
	}
	// The layout is go-yaml v2's: lists at their key's indentation.
	if !strings.Contains(string(out), "list:\n- \"a\\u200fb\"\n- m: []\n  \"n\": \"\\u061c\"\n") {
		t.Errorf("layout changed:\n%s", out)
	}

	plain := []byte("a: b\nc:\n- d é→\n")
	if got, err := safeYAML(plain); err != nil || !bytes.Equal(got, plain) {
		t.Errorf("safeYAML changed safe YAML: %q, %v", got, err)
	}
}
