package cli

import (
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"sigs.k8s.io/yaml"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

func TestHostHealth(t *testing.T) {
	problem := &mpfleetv1.HostProblem{Code: mpfleetv1.HostProblem_CODE_LINK_DOWN, Interface: "eth1"}
	path := func(s mpfleetv1.PathState) *mpfleetv1.PathStatus {
		return &mpfleetv1.PathStatus{Interface: "eth0", Address: "198.18.1.2", State: s}
	}
	read := timestamppb.New(testNow)
	tests := []struct {
		name string
		host *mpfleetv1.Host
		want string
	}{
		{"never reported, nothing wrong", &mpfleetv1.Host{SyncState: mpfleetv1.SyncState_SYNC_STATE_UNMANAGED}, "-"},
		{"empty health message", &mpfleetv1.Host{Health: &mpfleetv1.MptcpHealth{}}, "-"},
		{"health read, no paths", &mpfleetv1.Host{Health: &mpfleetv1.MptcpHealth{ReadTime: read}}, "ok"},
		{"paths ok and unprobed", &mpfleetv1.Host{Health: &mpfleetv1.MptcpHealth{Paths: []*mpfleetv1.PathStatus{
			path(mpfleetv1.PathState_PATH_STATE_OK), path(mpfleetv1.PathState_PATH_STATE_UNPROBED), path(mpfleetv1.PathState_PATH_STATE_UNSPECIFIED)}}}, "ok"},
		{"one problem", &mpfleetv1.Host{Problems: []*mpfleetv1.HostProblem{problem}}, "degraded: 1 problem"},
		{"problems counted, not paths", &mpfleetv1.Host{
			Problems: []*mpfleetv1.HostProblem{problem, problem},
			Health: &mpfleetv1.MptcpHealth{Paths: []*mpfleetv1.PathStatus{
				path(mpfleetv1.PathState_PATH_STATE_LINK_DOWN), path(mpfleetv1.PathState_PATH_STATE_FAILED), path(mpfleetv1.PathState_PATH_STATE_NO_GATEWAY)}},
		}, "degraded: 2 problems"},
		{"broken paths no problem names", &mpfleetv1.Host{Health: &mpfleetv1.MptcpHealth{ReadTime: read, Paths: []*mpfleetv1.PathStatus{
			path(mpfleetv1.PathState_PATH_STATE_OK), path(mpfleetv1.PathState_PATH_STATE_NO_GATEWAY)}}}, "degraded: 1 broken path"},
		{"degraded state alone", &mpfleetv1.Host{SyncState: mpfleetv1.SyncState_SYNC_STATE_DEGRADED}, "degraded"},
		{"disconnected keeps its last problems", &mpfleetv1.Host{SyncState: mpfleetv1.SyncState_SYNC_STATE_DISCONNECTED,
			Problems: []*mpfleetv1.HostProblem{problem}}, "degraded: 1 problem"},
	}
	for _, tt := range tests {
		if got := hostHealth(tt.host); got != tt.want {
			t.Errorf("%s: hostHealth = %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestGetHostsStateDegraded(t *testing.T) {
	c := newController(t)
	c.hosts.hosts = testHosts()
	r := c.run(t, "", nil, "get", "hosts", "--state", "degraded")
	want := `NAME   GROUP   STATE      HEALTH                 DESIRED   APPLIED   ENDPOINTS   CONNS   SUBFLOWS   LAST SEEN
h4     lab     degraded   degraded: 2 problems   5         5         0           0       0          2s
`
	if r.err != nil || r.stdout != want {
		t.Errorf("get hosts --state degraded: %v, printed:\n%s\nwant:\n%s", r.err, r.stdout, want)
	}
	if req := c.hosts.requests[len(c.hosts.requests)-1]; req.GetSyncState() != mpfleetv1.SyncState_SYNC_STATE_DEGRADED {
		t.Errorf("request sync_state = %v, want SYNC_STATE_DEGRADED", req.GetSyncState())
	}
}

func TestDescribeHostProblemsAndPaths(t *testing.T) {
	c := newController(t)
	c.hosts.hosts = testHosts()

	r := c.run(t, "", nil, "describe", "host", "h4")
	if r.err != nil {
		t.Fatal(r.err)
	}
	// Right after the state block, before the facts.
	want := `Last error: -
Problems:
  gateway_unknown   eth2   198.18.3.2
    no gateway known for 198.18.3.2: table 7102 gets no default route; name one in routing.gateways (gateway or host_index), or give eth2 a route in the main table
  path_failed       eth1   198.18.2.2
    no MPTCP connection from 198.18.2.2 reached probe 198.18.9.9:5201 within 3s
Paths:
  INTERFACE   ADDRESS      GATEWAY      TABLE   STATE        LAST CHECK   LATENCY   MESSAGE
  eth0        198.18.1.2   198.18.1.1   7100    ok           4s           1.23ms    -
  eth1        198.18.2.2   198.18.2.1   7101    failed       4s           -         probe 198.18.9.9:5201: connect: connection timed out after 3s
  eth2        198.18.3.2   -            7102    no_gateway   4s           -         no gateway known
Facts:
`
	if !strings.Contains(r.stdout, want) {
		t.Errorf("describe host h4 printed:\n%s\nwant it to hold:\n%s", r.stdout, want)
	}
	for _, w := range []string{"State:      degraded\n", "Health:     degraded: 2 problems\n"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("describe host h4 lacks %q:\n%s", w, r.stdout)
		}
	}

	// A healthy host has paths and no Problems section.
	r = c.run(t, "", nil, "describe", "host", "h1")
	want = `Paths:
  INTERFACE   ADDRESS      GATEWAY      TABLE   STATE      LAST CHECK   LATENCY   MESSAGE
  eth0        198.18.1.2   198.18.1.1   7100    ok         4s           1.23ms    -
  eth1        198.18.2.2   198.18.2.1   7101    unprobed   4s           -         -
Facts:
`
	if r.err != nil || !strings.Contains(r.stdout, want) || strings.Contains(r.stdout, "Problems:") || !strings.Contains(r.stdout, "Health:     ok\n") {
		t.Errorf("describe host h1: %v, printed:\n%s\nwant health ok, no problems and:\n%s", r.err, r.stdout, want)
	}

	// A disconnected host shows what it last reported, and says how old.
	r = c.run(t, "", nil, "describe", "host", "h5")
	for _, w := range []string{
		"Health:     degraded: 1 problem (last reported 3h ago)\n",
		"Problems:\n  link_down   eth1   198.18.2.5\n    link eth1 is down: its subflows cannot be established\nPaths:\n",
		"  eth1        198.18.2.5   -         7101    link_down   -            -         -\n",
	} {
		if r.err != nil || !strings.Contains(r.stdout, w) {
			t.Errorf("describe host h5: %v, lacks %q:\n%s", r.err, w, r.stdout)
		}
	}

	// A host that never reported says so.
	r = c.run(t, "", nil, "describe", "host", "h2")
	if r.err != nil || !strings.Contains(r.stdout, "Health:     -\n") || !strings.Contains(r.stdout, "Paths:\n  none reported\nFacts:\n") {
		t.Errorf("describe host h2: %v, printed:\n%s", r.err, r.stdout)
	}
}

// TestHostStringsAreTerminalSafe checks that what an agent reports cannot
// drive the operator's terminal: escape sequences are shown, not sent.
func TestHostStringsAreTerminalSafe(t *testing.T) {
	c := newController(t)
	h := degradedHost()
	h.Problems[0].Message = "clear\x1b[2J\x1b]0;pwned\a screen"
	h.Problems[1].Interface = "eth1\x1b[31m"
	h.Problems[1].Message = "two\nlines\rover \u202ereversed"
	// (Invalid UTF-8 cannot cross gRPC in a string field; TestTerminalSafe
	// covers it.)
	h.Health.Paths[1].Message = "csi \u009b31m and \u2066isolate"
	h.Health.Paths[2].Interface = "eth2\tx"
	h.LastError = "bell\a"
	h.Labels = map[string]string{"role": "lab\x1b[0m"}
	c.hosts.hosts = []*mpfleetv1.Host{h}

	for _, args := range [][]string{{"describe", "host", "h4"}, {"get", "hosts"}, {"get", "hosts", "h4"}} {
		r := c.run(t, "", nil, args...)
		if r.err != nil {
			t.Fatalf("%v: %v", args, r.err)
		}
		if i := strings.IndexFunc(r.stdout, func(c rune) bool {
			return c != '\n' && (c < 0x20 || c == 0x7f || c >= 0x80 && c < 0xa0 || c == '\u202e' || c == '\u2066')
		}); i >= 0 {
			t.Errorf("%v printed a control character at %d: %q", args, i, r.stdout)
		}
	}
	r := c.run(t, "", nil, "describe", "host", "h4")
	for _, w := range []string{
		`    clear\x1b[2J\x1b]0;pwned\x07 screen` + "\n",
		`  path_failed       eth1\x1b[31m   198.18.2.2` + "\n",
		`    two lines over \u202ereversed` + "\n",
		`csi \u009b31m and \u2066isolate` + "\n",
		"  eth2 x      198.18.3.2",
		`Last error: bell\x07` + "\n",
		`Labels:     role=lab\x1b[0m` + "\n",
	} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("describe host lacks %q:\n%s", w, r.stdout)
		}
	}
	// JSON keeps the strings as they are: it is for programs, and JSON
	// escapes them itself.
	r = c.run(t, "", nil, "describe", "host", "h4", "-o", "json")
	if !strings.Contains(r.stdout, `"clear\u001b[2J\u001b]0;pwned\u0007 screen"`) {
		t.Errorf("-o json changed the message:\n%s", r.stdout)
	}
}

func TestHostHealthJSONAndYAML(t *testing.T) {
	c := newController(t)
	c.hosts.hosts = testHosts()

	r := c.run(t, "", nil, "describe", "host", "h4", "-o", "json")
	var got mpfleetv1.Host
	if err := protojson.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("-o json is not a Host: %v\n%s", err, r.stdout)
	}
	if diff := cmp.Diff(degradedHost(), &got, protocmp.Transform()); diff != "" {
		t.Errorf("-o json round trip (-stored +printed):\n%s", diff)
	}
	for _, w := range []string{
		`"syncState": "SYNC_STATE_DEGRADED"`, `"problems": [`, `"code": "CODE_GATEWAY_UNKNOWN"`, `"code": "CODE_PATH_FAILED"`,
		`"paths": [`, `"state": "PATH_STATE_NO_GATEWAY"`, `"probeLatency": "0.001234s"`, `"lastCheckTime": "2025-11-25T11:59:56Z"`,
	} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("-o json lacks %s:\n%s", w, r.stdout)
		}
	}

	r = c.run(t, "", nil, "get", "hosts", "--group", "lab", "-o", "yaml")
	js, err := yaml.YAMLToJSON([]byte(r.stdout))
	if err != nil {
		t.Fatal(err)
	}
	var list mpfleetv1.ListHostsResponse
	if err := protojson.Unmarshal(js, &list); err != nil {
		t.Fatalf("-o yaml is not a ListHostsResponse: %v\n%s", err, r.stdout)
	}
	want := &mpfleetv1.ListHostsResponse{Hosts: testHosts()[3:]}
	if diff := cmp.Diff(want, &list, protocmp.Transform()); diff != "" {
		t.Errorf("-o yaml round trip (-stored +printed):\n%s", diff)
	}
	if !strings.Contains(r.stdout, "  code: CODE_LINK_DOWN\n") || !strings.Contains(r.stdout, "state: PATH_STATE_LINK_DOWN\n") {
		t.Errorf("-o yaml lacks the problems or paths:\n%s", r.stdout)
	}
}

func TestGetHostsHelpListsEveryState(t *testing.T) {
	a := &app{}
	cmd := a.getHostsCommand()
	for _, s := range enumShortNames(mpfleetv1.SyncState(0).Descriptor()) {
		if !strings.Contains(cmd.Long, s) {
			t.Errorf("get hosts --help does not name state %q:\n%s", s, cmd.Long)
		}
	}
	if !strings.Contains(cmd.Long, "HEALTH") || !strings.Contains(cmd.Flags().Lookup("state").Usage, "degraded") {
		t.Errorf("get hosts --help does not explain HEALTH or --state degraded")
	}
}

func TestTerminalSafe(t *testing.T) {
	for in, want := range map[string]string{
		"":                      "",
		"eth0 198.18.1.2/24":    "eth0 198.18.1.2/24",
		"tabs\tand\nnewlines\r": "tabs and newlines ",
		"\x1b[2J":               `\x1b[2J`,
		"\x00\x07\x7f":          `\x00\x07\x7f`,
		"\u009b1m":              `\u009b1m`,
		"\xff\xfe":              `\xff\xfe`,
		"a\u202eb\u2066c":       `a\u202eb\u2066c`,
		"µs, café, 日本":          "µs, café, 日本",
	} {
		if got := terminalSafe(in); got != want {
			t.Errorf("terminalSafe(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestFormatLatency(t *testing.T) {
	for d, want := range map[time.Duration]string{
		850 * time.Microsecond:     "850µs",
		1234 * time.Microsecond:    "1.23ms",
		12345 * time.Microsecond:   "12.3ms",
		123456 * time.Microsecond:  "123ms",
		1234567 * time.Microsecond: "1.23s",
	} {
		if got := formatLatency(d); got != want {
			t.Errorf("formatLatency(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestParseManifestsProbesAndHostIndex(t *testing.T) {
	doc := `kind: Group
name: lab
policy:
  probes:
    - {address: "198.18.9.9:5201", interval: 5s, timeout: 1500ms}
    - {address: "[2001:db8::9]:5201", interval: 0.100s}
  routing:
    enabled: true
    gateways:
      - {interface: "eth*", hostIndex: 1}
      - {interface: "wg*", host_index: -1}
      - {interface: "ppp0", gateway: 198.18.7.1}
`
	got, err := parseManifests("f.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	want := &mpfleetv1.MultipathPolicy{
		Probes: []*mpfleetv1.Probe{
			{Address: "198.18.9.9:5201", Interval: durationpb.New(5 * time.Second), Timeout: durationpb.New(1500 * time.Millisecond)},
			{Address: "[2001:db8::9]:5201", Interval: durationpb.New(100 * time.Millisecond)},
		},
		Routing: &mpfleetv1.Routing{Enabled: true, Gateways: []*mpfleetv1.GatewayOverride{
			{Interface: "eth*", HostIndex: 1}, {Interface: "wg*", HostIndex: -1}, {Interface: "ppp0", Gateway: "198.18.7.1"},
		}},
	}
	if diff := cmp.Diff(want, got[0].Group.GetPolicy(), protocmp.Transform()); diff != "" {
		t.Errorf("policy (-want +got):\n%s", diff)
	}

	for in, msg := range map[string]string{
		"interval: 5":      `policy.probes[0].interval: want a duration such as 5s, 100ms or 1m30s, got number 5`,
		"interval: soon":   `policy.probes[0].interval: want a duration such as 5s, 100ms or 1m30s, got string "soon"`,
		"interval: {s: 1}": `policy.probes[0].interval: want a duration such as 5s, 100ms or 1m30s, got a mapping`,
	} {
		_, err := parseManifests("f.yaml", []byte("kind: Group\nname: lab\npolicy:\n  probes:\n    - address: 198.18.9.9:5201\n      "+in+"\n"))
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: error %v, want %q", in, err, msg)
		}
	}
}

// TestDocsSampleOutput runs every "$ mpfleetctl …" block of docs/cli.md
// against the fake controller holding testHosts and the groups and rollouts
// of seedDocsRollouts, and compares what it prints with the block, so the
// samples cannot drift from the code. A block ending in a "…" line shows
// only the start of the output.
func TestDocsSampleOutput(t *testing.T) {
	data, err := os.ReadFile("../docs/cli.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```\n(\\$ mpfleetctl [^\n]*)\n(.*?)```").FindAllStringSubmatch(string(data), -1)
	if len(blocks) < 2 {
		t.Fatalf("docs/cli.md has %d sample outputs, want get hosts and describe host", len(blocks))
	}
	c := newController(t)
	c.hosts.hosts = testHosts()
	seedDocsRollouts(c)
	for _, b := range blocks {
		args := strings.Fields(strings.TrimPrefix(b[1], "$ mpfleetctl "))
		want, partial := strings.CutSuffix(b[2], "…\n")
		r := c.run(t, "", nil, args...)
		got := r.stdout
		if partial && len(got) > len(want) {
			got = got[:len(want)]
		}
		if r.err != nil || got != want {
			t.Errorf("docs/cli.md %q: %v; the command prints:\n%s\nthe docs show:\n%s", b[1], r.err, r.stdout, b[2])
		}
	}
}

func TestPlanShowsProblems(t *testing.T) {
	c := newController(t)
	c.groups.put("lab", &mpfleetv1.Group{})
	c.hosts.hosts = testHosts()
	r := c.run(t, "kind: Group\nname: lab\n", nil, "plan", "-f", "-")
	want := `group/lab: 2 hosts, 0 to change
  host/h4: no changes
    problem: no gateway known for 198.18.3.2: table 7102 gets no default route; name one in routing.gateways (gateway or host_index), or give eth2 a route in the main table
  host/h5: no changes
`
	if r.err != nil || r.stdout != want {
		t.Errorf("plan: %v, printed:\n%s\nwant:\n%s", r.err, r.stdout, want)
	}
}
