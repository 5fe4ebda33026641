package cli

import (
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// fullDoc is the example of docs/cli.md.
const fullDoc = `kind: Group
name: web            # group id
description: web tier, two uplinks
selector:
  matchLabels: {role: web}
policy:
  enabled: true
  limits: {subflows: 2, addAddrAccepted: 2}
  endpoints:
    - interface: "eth*"
      cidr: 198.18.0.0/15
      family: ipv4      # ipv4|ipv6, optional
      flags: [subflow, backup]   # signal|subflow|backup|fullmesh|laminar
      port: 0
  routing: {enabled: true}
  sysctls: {scheduler: default, checksumEnabled: false}
`

func fullGroup() *mpfleetv1.Group {
	return &mpfleetv1.Group{
		Description: "web tier, two uplinks",
		Selector:    &mpfleetv1.Selector{MatchLabels: map[string]string{"role": "web"}},
		Policy: &mpfleetv1.MultipathPolicy{
			Enabled: proto.Bool(true),
			Limits:  &mpfleetv1.Limits{Subflows: proto.Uint32(2), AddAddrAccepted: proto.Uint32(2)},
			Endpoints: []*mpfleetv1.EndpointRule{{
				Interface: "eth*",
				Cidr:      "198.18.0.0/15",
				Family:    mpfleetv1.AddressFamily_ADDRESS_FAMILY_IPV4,
				Flags:     []mpfleetv1.EndpointFlag{mpfleetv1.EndpointFlag_ENDPOINT_FLAG_SUBFLOW, mpfleetv1.EndpointFlag_ENDPOINT_FLAG_BACKUP},
			}},
			Routing: &mpfleetv1.Routing{Enabled: true},
			Sysctls: &mpfleetv1.Sysctls{Scheduler: proto.String("default"), ChecksumEnabled: proto.Bool(false)},
		},
	}
}

func TestParseManifestsGood(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []*manifest
	}{
		{
			name: "full example",
			yaml: fullDoc,
			want: []*manifest{{Index: 1, Line: 1, ID: "web", Group: fullGroup()}},
		},
		{
			name: "snake_case, full enum names, groups/ prefix",
			yaml: `kind: Group
name: groups/web
description: web tier, two uplinks
selector:
  match_labels: {role: web}
policy:
  enabled: true
  limits: {subflows: 2, add_addr_accepted: 2}
  endpoints:
    - interface: "eth*"
      cidr: 198.18.0.0/15
      family: ADDRESS_FAMILY_IPV4
      flags: [ENDPOINT_FLAG_SUBFLOW, Backup]
  routing: {enabled: true}
  sysctls: {scheduler: default, checksum_enabled: false}
`,
			want: []*manifest{{Index: 1, Line: 1, ID: "web", Group: fullGroup()}},
		},
		{
			name: "several documents, empty ones and comments skipped",
			yaml: `# groups of the lab
---
kind: Group
name: a
---
# nothing here
---
kind: Group
name: b
policy:
  endpoints:
    - cidr: 2001:db8::/32
      family: ipv6
      flags: [signal, fullmesh, laminar]
      port: 8080
...
`,
			want: []*manifest{
				{Index: 1, Line: 3, ID: "a", Group: &mpfleetv1.Group{}},
				{Index: 2, Line: 8, ID: "b", Group: &mpfleetv1.Group{Policy: &mpfleetv1.MultipathPolicy{
					Endpoints: []*mpfleetv1.EndpointRule{{
						Cidr:   "2001:db8::/32",
						Family: mpfleetv1.AddressFamily_ADDRESS_FAMILY_IPV6,
						Flags: []mpfleetv1.EndpointFlag{mpfleetv1.EndpointFlag_ENDPOINT_FLAG_SIGNAL,
							mpfleetv1.EndpointFlag_ENDPOINT_FLAG_FULLMESH, mpfleetv1.EndpointFlag_ENDPOINT_FLAG_LAMINAR},
						Port: 8080,
					}},
				}}},
			},
		},
		{
			name: "nulls are unset",
			yaml: "kind: Group\nname: a\ndescription:\npolicy:\n  limits:\n  routing: {enabled: false}\n",
			want: []*manifest{{Index: 1, Line: 1, ID: "a", Group: &mpfleetv1.Group{
				Policy: &mpfleetv1.MultipathPolicy{Routing: &mpfleetv1.Routing{}},
			}}},
		},
		{
			name: "JSON is YAML",
			yaml: `{"kind": "Group", "name": "j", "policy": {"limits": {"subflows": 8}}}`,
			want: []*manifest{{Index: 1, Line: 1, ID: "j", Group: &mpfleetv1.Group{
				Policy: &mpfleetv1.MultipathPolicy{Limits: &mpfleetv1.Limits{Subflows: proto.Uint32(8)}},
			}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseManifests("f.yaml", []byte(tt.yaml))
			if err != nil {
				t.Fatalf("parseManifests: %v", err)
			}
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("parseManifests mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseManifestsBad(t *testing.T) {
	const good = "kind: Group\nname: ok\n---\n"
	tests := []struct {
		name string
		yaml string
		want []string // substrings of the error
	}{
		{"empty file", "# only a comment\n", []string{"f.yaml: no documents"}},
		{"not YAML", good + "kind: Group\nname: [\n", []string{"document 2 (line 4)", "not valid YAML", "line 5"}},
		{"duplicate key", good + "kind: Group\nname: a\nname: b\n", []string{"document 2 (line 4): name: duplicate key, on line 5 and line 6"}},
		{"not a mapping", good + "- a\n- b\n", []string{"document 2", "want a mapping with kind: Group"}},
		{"missing kind", good + "name: a\n", []string{"document 2", "kind: missing"}},
		{"wrong kind", good + "kind: Rollout\nname: a\n", []string{"document 2", `kind: "Rollout" is not supported`}},
		{"missing name", good + "kind: Group\n", []string{"document 2", "name: missing"}},
		{"bad name", good + "kind: Group\nname: Web_1\n", []string{"document 2", `name: "Web_1" is not a valid group id`}},
		{"duplicate name", good + "kind: Group\nname: ok\n", []string{"document 2", `name: group "ok" already appears in document 1`}},
		{"unknown top-level field", good + "kind: Group\nname: a\nspec: {}\n", []string{"document 2", "spec: unknown field"}},
		{"output-only field", good + "kind: Group\nname: a\netag: x\n", []string{"document 2", "etag: unknown field"}},
		{"unknown policy field", good + "kind: Group\nname: a\npolicy:\n  limits: {subflow: 2}\n",
			[]string{"document 2 (line 4)", "policy.limits.subflow: unknown field", `did you mean "subflows"?`}},
		{"unknown rule field", good + "kind: Group\nname: a\npolicy:\n  endpoints:\n    - iface: eth0\n",
			[]string{"document 2", "policy.endpoints[0].iface: unknown field"}},
		{"bad flag", good + "kind: Group\nname: a\npolicy:\n  endpoints:\n    - interface: eth0\n      flags: [subflow, subflw]\n",
			[]string{"document 2", `policy.endpoints[0].flags[1]: unknown value "subflw"`, "signal, subflow, backup, fullmesh, laminar"}},
		{"bad family", good + "kind: Group\nname: a\npolicy:\n  endpoints:\n    - interface: eth0\n      family: ipx\n",
			[]string{"document 2", `policy.endpoints[0].family: unknown value "ipx"`, "ipv4, ipv6"}},
		{"flags not a list", good + "kind: Group\nname: a\npolicy:\n  endpoints:\n    - interface: eth0\n      flags: subflow\n",
			[]string{"policy.endpoints[0].flags: want a list"}},
		{"string for integer", good + "kind: Group\nname: a\npolicy:\n  limits: {subflows: two}\n",
			[]string{"document 2", `policy.limits.subflows: want an integer from 0 to 4294967295, got string "two"`}},
		{"negative integer", good + "kind: Group\nname: a\npolicy:\n  endpoints:\n    - interface: eth0\n      port: -1\n",
			[]string{"policy.endpoints[0].port: want an integer from 0 to 4294967295, got number -1"}},
		{"fraction", good + "kind: Group\nname: a\npolicy:\n  limits: {subflows: 1.5}\n",
			[]string{"policy.limits.subflows: want an integer"}},
		{"string for bool", good + "kind: Group\nname: a\npolicy:\n  enabled: maybe\n",
			[]string{"policy.enabled: want true or false"}},
		{"label value not a string", good + "kind: Group\nname: a\nselector:\n  matchLabels: {tier: 1}\n",
			[]string{"selector.matchLabels.tier: want a string, got number 1 (quote it)"}},
		{"scalar for message", good + "kind: Group\nname: a\npolicy:\n  routing: true\n",
			[]string{"policy.routing: want a mapping, got boolean true"}},
		{"first of several problems", "kind: Group\nname: a\nbad: 1\n---\nkind: Group\n",
			[]string{"document 1", "bad: unknown field", "(and 1 more problems)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseManifests("f.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatal("parseManifests succeeded, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q spans several lines", err)
			}
		})
	}
}

// TestExampleFile keeps deploy/examples/two-links.yaml valid and saying what
// it says it does.
func TestExampleFile(t *testing.T) {
	data, err := os.ReadFile("../deploy/examples/two-links.yaml")
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseManifests("two-links.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	want := &mpfleetv1.Group{
		Description: "lab hosts with two uplinks, one subflow per link",
		Selector:    &mpfleetv1.Selector{MatchLabels: map[string]string{"role": "mptcp-host"}},
		Policy: &mpfleetv1.MultipathPolicy{
			Enabled: proto.Bool(true),
			Limits:  &mpfleetv1.Limits{Subflows: proto.Uint32(2), AddAddrAccepted: proto.Uint32(2)},
			Endpoints: []*mpfleetv1.EndpointRule{{
				Interface: "eth*",
				Flags:     []mpfleetv1.EndpointFlag{mpfleetv1.EndpointFlag_ENDPOINT_FLAG_SUBFLOW},
			}},
			Routing: &mpfleetv1.Routing{Enabled: true},
		},
	}
	if len(got) != 1 || got[0].ID != "lab" {
		t.Fatalf("got %d groups (%v), want one named lab", len(got), got)
	}
	if diff := cmp.Diff(want, got[0].Group, protocmp.Transform()); diff != "" {
		t.Errorf("two-links.yaml mismatch (-want +got):\n%s", diff)
	}
}

func TestEnumNames(t *testing.T) {
	flag := mpfleetv1.EndpointFlag(0).Descriptor()
	family := mpfleetv1.AddressFamily(0).Descriptor()
	state := mpfleetv1.SyncState(0).Descriptor()
	lookups := []struct {
		in   string
		want string
	}{
		{"subflow", "ENDPOINT_FLAG_SUBFLOW"},
		{"SUBFLOW", "ENDPOINT_FLAG_SUBFLOW"},
		{"Backup", "ENDPOINT_FLAG_BACKUP"},
		{"ENDPOINT_FLAG_SIGNAL", "ENDPOINT_FLAG_SIGNAL"},
		{"endpoint_flag_fullmesh", "ENDPOINT_FLAG_FULLMESH"},
		{"laminar", "ENDPOINT_FLAG_LAMINAR"},
		{"subflw", ""},
		{"", ""},
		{"ADDRESS_FAMILY_IPV4", ""}, // another enum's name
	}
	for _, l := range lookups {
		ev, ok := enumByName(flag, l.in)
		got := ""
		if ok {
			got = string(ev.Name())
		}
		if got != l.want {
			t.Errorf("EndpointFlag %q = %q, want %q", l.in, got, l.want)
		}
	}
	for in, want := range map[string]string{"ipv4": "ADDRESS_FAMILY_IPV4", "IPv6": "ADDRESS_FAMILY_IPV6", "ADDRESS_FAMILY_IPV6": "ADDRESS_FAMILY_IPV6"} {
		if ev, ok := enumByName(family, in); !ok || string(ev.Name()) != want {
			t.Errorf("AddressFamily %q = %v, want %s", in, ev, want)
		}
	}
	for in, want := range map[string]mpfleetv1.SyncState{
		"in_sync": mpfleetv1.SyncState_SYNC_STATE_IN_SYNC, "in-sync": mpfleetv1.SyncState_SYNC_STATE_IN_SYNC,
		"DRIFTED": mpfleetv1.SyncState_SYNC_STATE_DRIFTED, "SYNC_STATE_DISCONNECTED": mpfleetv1.SyncState_SYNC_STATE_DISCONNECTED,
	} {
		got, err := parseSyncState(in)
		if err != nil || got != want {
			t.Errorf("parseSyncState(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := parseSyncState("unspecified"); !IsUsageError(err) {
		t.Errorf("parseSyncState(unspecified) = %v, want a usage error", err)
	}

	shorts := []struct{ got, want string }{
		{shortEnum(mpfleetv1.EndpointFlag_ENDPOINT_FLAG_SUBFLOW), "subflow"},
		{shortEnum(mpfleetv1.AddressFamily_ADDRESS_FAMILY_IPV6), "ipv6"},
		{shortEnum(mpfleetv1.SyncState_SYNC_STATE_IN_SYNC), "in_sync"},
		{shortEnum(mpfleetv1.AuditResult_AUDIT_RESULT_FAILURE), "failure"},
		{shortEnum(mpfleetv1.EndpointFlag(42)), "42"},
		{strings.Join(enumShortNames(flag), ","), "signal,subflow,backup,fullmesh,laminar"},
		{strings.Join(enumShortNames(state), ","), "in_sync,applying,drifted,failed,conflict,unmanaged,disconnected,degraded"},
	}
	for _, s := range shorts {
		if s.got != s.want {
			t.Errorf("short name %q, want %q", s.got, s.want)
		}
	}
}
