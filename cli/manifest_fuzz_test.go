package cli

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/mpfleet/mpfleet/internal/policy"
	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// FuzzManifest feeds parseManifests arbitrary files (YAML or JSON; the
// seeds in testdata/fuzz/FuzzManifest are the files of deploy/examples and
// edge cases: anchors and aliases, huge numbers, deep nesting, duplicate
// keys, bytes that are not UTF-8). FuzzParseManifests checks that errors
// are one line and that accepted groups survive the API's JSON form; this
// checks the rest of what apply relies on:
//
//   - parsing is deterministic: the same bytes give the same groups, or
//     the same error, every time;
//   - an error names the file, and a problem in a document names the
//     document;
//   - an accepted document's name is a group id the API accepts
//     (policy.ValidateGroupID: one rule, one place), its group sets no
//     output-only field, and its position is inside the file;
//   - policy.ValidateGroup, the one validation truth the controller applies
//     to apply's validate-only pass before anything is written, judges
//     every accepted group without panicking, naming fields of the group;
//     a group it accepts is still accepted after the trip over the wire.
func FuzzManifest(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		const source = "fuzz.yaml"
		ms, err := parseManifests(source, data)
		again, errAgain := parseManifests(source, data)
		if fmt.Sprint(err) != fmt.Sprint(errAgain) {
			t.Fatalf("not deterministic: error %v, then %v", err, errAgain)
		}
		if err != nil {
			if !strings.HasPrefix(err.Error(), source+": ") {
				t.Fatalf("error does not name the file: %v", err)
			}
			if msg := strings.TrimPrefix(err.Error(), source+": "); msg != "no documents" && !strings.HasPrefix(msg, "document ") {
				t.Fatalf("error does not name the document: %v", err)
			}
			return
		}
		if len(ms) == 0 || len(again) != len(ms) {
			t.Fatalf("accepted with %d groups, then %d", len(ms), len(again))
		}
		lines := strings.Count(string(data), "\n") + 1
		ids := map[string]bool{}
		for i, m := range ms {
			a := again[i]
			if m.ID != a.ID || m.Index != a.Index || m.Line != a.Line || !proto.Equal(m.Group, a.Group) {
				t.Fatalf("not deterministic: document %d gave %+v, then %+v", m.Index, m, a)
			}
			if ids[m.ID] {
				t.Fatalf("group %q accepted twice", m.ID)
			}
			ids[m.ID] = true
			if m.Index < 1 || m.Line < 1 || m.Line > lines {
				t.Fatalf("document %d at line %d of a %d-line file", m.Index, m.Line, lines)
			}
			var vs policy.Violations
			policy.ValidateGroupID(&vs, "group_id", m.ID)
			if len(vs) != 0 {
				t.Fatalf("document %d: name %q accepted, but the API refuses it: %v", m.Index, m.ID, vs)
			}
			checkManifestGroup(t, m)
		}
	})
}

// checkManifestGroup checks the group of an accepted document.
func checkManifestGroup(t *testing.T, m *manifest) {
	t.Helper()
	g := m.Group
	spec := &mpfleetv1.Group{Description: g.GetDescription(), Selector: g.GetSelector(), Policy: g.GetPolicy(), RolloutStrategy: g.GetRolloutStrategy()}
	if !proto.Equal(g, spec) {
		t.Fatalf("document %d sets more than description, selector, policy and rolloutStrategy: %v", m.Index, g)
	}
	var vs policy.Violations
	policy.ValidateGroup(&vs, "group", g)
	for _, v := range vs {
		if !strings.HasPrefix(v.Field, "group.") || v.Description == "" {
			t.Fatalf("document %d: violation does not name a field of the group: %+v", m.Index, v)
		}
	}
	if len(vs) != 0 {
		return // apply's validate-only pass refuses it before any write
	}
	b, err := proto.Marshal(g)
	if err != nil {
		t.Fatalf("document %d: marshal: %v", m.Index, err)
	}
	sent := &mpfleetv1.Group{}
	if err := proto.Unmarshal(b, sent); err != nil || !proto.Equal(sent, g) {
		t.Fatalf("document %d: the group changes on the wire: %v, %v", m.Index, sent, err)
	}
	policy.ValidateGroup(&vs, "group", sent)
	if len(vs) != 0 {
		t.Fatalf("document %d: valid group refused after the trip over the wire: %v", m.Index, vs)
	}
}
