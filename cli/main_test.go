package cli

import (
	"strings"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
)

// TestMain fails the package if a test leaves goroutines behind: every run
// must close its connection and every fake server must stop.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// FuzzParseManifests checks that the parser never panics, that its errors
// are one line, and that what it accepts survives a round trip through the
// API's JSON form rendered as YAML.
func FuzzParseManifests(f *testing.F) {
	f.Add(fullDoc)
	f.Add(twoGroups)
	f.Add("kind: Group\nname: a\npolicy:\n  endpoints:\n    - {interface: eth0, flags: [1, ENDPOINT_FLAG_BACKUP]}\n")
	f.Add("---\n--- {kind: Group, name: b}\n...\n")
	f.Add("kind: Group\nname: a\nselector: {matchLabels: {a: 'yes'}}\npolicy: {sysctls: {addAddrTimeout: 4294967295}}\n")
	f.Fuzz(func(t *testing.T, in string) {
		ms, err := parseManifests("fuzz", []byte(in))
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error spans lines: %q", err)
			}
			return
		}
		for _, m := range ms {
			js, err := protojson.Marshal(m.Group)
			if err != nil {
				t.Fatal(err)
			}
			body, err := yaml.JSONToYAML(js)
			if err != nil {
				t.Fatal(err)
			}
			doc := "kind: Group\nname: " + m.ID + "\n"
			if s := strings.TrimSpace(string(body)); s != "{}" {
				doc += s + "\n"
			}
			again, err := parseManifests("again", []byte(doc))
			if err != nil {
				t.Fatalf("re-parsing %q: %v", doc, err)
			}
			if len(again) != 1 || !proto.Equal(again[0].Group, m.Group) {
				t.Fatalf("round trip of %q changed the group: %v → %v", in, m.Group, again[0].Group)
			}
		}
	})
}
