package cli

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestManifestKeysCollide checks that keys which differ in YAML but become
// one JSON key are refused, naming the key's path and both lines.
func TestManifestKeysCollide(t *testing.T) {
	const head = "kind: Group\nname: web\n"
	tests := []struct {
		name string
		body string // from line 3
		want string
	}{
		{"integer and string", "selector:\n  matchLabels:\n    1: a\n    \"1\": b\n",
			`selector.matchLabels.1: duplicate key: 1 (line 5) and "1" (line 6) are the same key "1" once YAML keys are made JSON strings; keep one`},
		{"boolean and string", "selector:\n  matchLabels: {true: a, 'true': b}\n",
			`selector.matchLabels.true: duplicate key: true (line 4) and 'true' (line 4) are the same key "true"`},
		{"YAML 1.1 boolean", "selector:\n  matchLabels:\n    yes: a\n    true: b\n",
			`selector.matchLabels.true: duplicate key: yes (line 5) and true (line 6) are the same key "true"`},
		{"float and hexadecimal", "selector:\n  matchLabels:\n    1.0: a\n    0x1: b\n",
			`selector.matchLabels.1: duplicate key: 1.0 (line 5) and 0x1 (line 6) are the same key "1"`},
		{"octal and decimal", "selector:\n  matchLabels:\n    010: a\n    8: b\n",
			`selector.matchLabels.8: duplicate key: 010 (line 5) and 8 (line 6) are the same key "8"`},
		{"floats equal at single precision", "selector:\n  matchLabels:\n    0.1: a\n    0.1000000001: b\n",
			`selector.matchLabels.0.1: duplicate key: 0.1 (line 5) and 0.1000000001 (line 6) are the same key "0.1"`},
		{"not-a-number twice", "selector:\n  matchLabels:\n    .nan: a\n    .nan: b\n",
			`selector.matchLabels..nan: duplicate key, on line 5 and line 6`},
		{"tagged string", "selector:\n  matchLabels:\n    !!str 2: a\n    2: b\n",
			`selector.matchLabels.2: duplicate key: !!str 2 (line 5) and 2 (line 6) are the same key "2"`},
		{"binary", "selector:\n  matchLabels:\n    !!binary cm9sZQ==: a\n    role: b\n",
			`selector.matchLabels.role: duplicate key: !!binary cm9sZQ== (line 5) and role (line 6) are the same key "role"`},
		{"alias as key", "description: &k role\nselector:\n  matchLabels:\n    *k : a\n    \"role\": b\n",
			`selector.matchLabels.role: duplicate key: *k (line 6) and "role" (line 7) are the same key "role"`},
		{"top level", "name: db\n", `name: duplicate key, on line 2 and line 3`},
		{"merged and own key", "policy:\n  endpoints:\n    - &rule {interface: eth1, flags: [subflow]}\n    - <<: *rule\n      \"interface\": eth2\n",
			`policy.endpoints[1].interface: duplicate key: interface (line 5) and "interface" (line 7) are the same key "interface"`},
		{"two merges", "description: x\nx-a: &a {interface: eth1}\nx-b: &b {interface: eth2}\npolicy:\n  endpoints:\n    - <<: [*a, *b]\n",
			`policy.endpoints[0].interface: duplicate key, on line 4 and line 5`},
		{"inside a merged mapping", "x-a: &a {1: a, \"1\": b}\npolicy:\n  endpoints:\n    - <<: *a\n",
			`x-a.1: duplicate key: 1 (line 3) and "1" (line 3) are the same key "1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseManifests("f.yaml", []byte(head+tt.body))
			want := "f.yaml: document 1 (line 1): " + tt.want
			if err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Errorf("parse:\n%s\ngot  %v\nwant %s…", head+tt.body, err, want)
			}
		})
	}
}

// TestManifestKeysDistinct checks that keys that stay distinct in JSON are
// accepted, whatever they look like in YAML.
func TestManifestKeysDistinct(t *testing.T) {
	doc := "kind: Group\nname: web\nselector:\n  matchLabels:\n    1: a\n    \"01\": b\n    'yes': c\n    true: d\n    1.5: e\n    \"<<\": f\n    .inf: g\n"
	ms, err := parseManifests("f.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	got := ms[0].Group.GetSelector().GetMatchLabels()
	want := map[string]string{"1": "a", "01": "b", "yes": "c", "true": "d", "1.5": "e", "<<": "f", ".inf": "g"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("matchLabels = %v, want %v", got, want)
	}
}

// TestManifestKeysDeterministic parses a document with many colliding
// pairs in one mapping: before the check, which value won each pair
// depended on Go's map order. Now it is the same error every time, naming
// the first pair.
func TestManifestKeysDeterministic(t *testing.T) {
	var b strings.Builder
	b.WriteString("kind: Group\nname: web\nselector:\n  matchLabels:\n")
	for i := range 20 {
		fmt.Fprintf(&b, "    %d: plain\n    \"%d\": quoted\n", i, i)
	}
	const want = `f.yaml: document 1 (line 1): selector.matchLabels.0: duplicate key: 0 (line 5) and "0" (line 6) are the same key "0"`
	for range 50 {
		_, err := parseManifests("f.yaml", []byte(b.String()))
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Fatalf("got %v, want %s…", err, want)
		}
	}
}

// TestManifestKeyAsConverted checks that the checker reads each key as
// sigs.k8s.io/yaml converts it, for the spellings it resolves without the
// converter (plain words, quoted and tagged scalars) as well as those it
// hands over.
func TestManifestKeyAsConverted(t *testing.T) {
	keys := []string{
		"role", "name", "null-ish", "Yes", "y", "n", "NO", "on", "Off", "~x", "true", "True", "TRUE",
		"1", "+1", "-1", "0x1F", "0o17", "017", "1_000", "0b101", "-0b101", "1.0", "1e3", ".5", "-.inf", ".NaN",
		"2001-12-14", "2001-12-14t21:59:43.10-05:00", "9223372036854775807",
		`"1"`, `'true'`, `"a\tb"`, "!!str 1", "!!int \"7\"", "!!float 1", "!!bool yes", "!custom 1", "!!binary aGk=",
		"<<x", "x<<", "é",
	}
	for _, k := range keys {
		doc := k + ": 0\n"
		js, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			t.Errorf("%q: conversion: %v", doc, err)
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(js, &m); err != nil || len(m) != 1 {
			t.Fatalf("%q: converted to %s", doc, js)
		}
		var want string
		for want = range m {
		}
		quoted, _ := json.Marshal(want)
		if err := checkDuplicateKeys(document{text: []byte(doc + string(quoted) + ": 1\n"), start: 1}); err == nil {
			t.Errorf("%q: the checker does not see that it converts to %q", k, want)
		}
	}
}
