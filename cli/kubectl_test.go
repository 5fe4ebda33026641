package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// writeTree writes files (path → content) under a new directory.
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for p, content := range files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func groupDoc(name, role string) string {
	return "kind: Group\nname: " + name + "\nselector: {matchLabels: {role: " + role + "}}\npolicy:\n  endpoints: [{interface: eth0, flags: [subflow]}]\n"
}

func TestApplyManyFiles(t *testing.T) {
	dir := writeTree(t, map[string]string{
		"a.yaml":      groupDoc("web", "web"),
		"b.yml":       groupDoc("db", "db"),
		"c.json":      `{"kind": "Group", "name": "cache", "selector": {"matchLabels": {"role": "cache"}}}`,
		"notes.txt":   "not a manifest",
		"sub/d.yaml":  groupDoc("deep", "deep"),
		"bad/x.yaml":  groupDoc("ok", "ok"),
		"bad/y.yaml":  groupDoc("fine", "fine") + "---\nkind: Group\nname: broken\npolicy: {limits: {subflow: 2}}\n",
		"dup/1.yaml":  groupDoc("web", "web"),
		"dup/2.yaml":  groupDoc("web", "other"),
		"empty/x.txt": "",
	})
	c := newController(t)

	// A directory: its manifests in name order, not its subdirectories.
	r := c.run(t, "", nil, "apply", "-f", dir)
	if want := "group/web created (revision 1)\ngroup/db created (revision 1)\ngroup/cache created (revision 1)\n"; r.err != nil || r.stdout != want {
		t.Errorf("apply -f DIR: %v, printed %q, want %q", r.err, r.stdout, want)
	}
	// -R also reads the subdirectories; what exists is unchanged.
	r = c.run(t, "", nil, "apply", "-f", filepath.Join(dir, "sub"), "-f", filepath.Join(dir, "a.yaml"))
	if want := "group/deep created (revision 1)\ngroup/web unchanged\n"; r.err != nil || r.stdout != want {
		t.Errorf("apply -f FILE -f FILE: %v, printed %q, want %q", r.err, r.stdout, want)
	}

	// A bad document in the second file: nothing at all is written, and
	// the error names the file and the document.
	writes := c.groups.writeCount()
	r = c.run(t, "", nil, "apply", "-f", filepath.Join(dir, "bad"))
	wantOneLineError(t, r, 1, "mpfleetctl: "+filepath.Join(dir, "bad", "y.yaml")+`: document 2 (line 7): policy.limits.subflow: unknown field (did you mean "subflows"?)`)
	if c.groups.writeCount() != writes || r.stdout != "" {
		t.Errorf("a bad document wrote %d groups, printed %q", c.groups.writeCount()-writes, r.stdout)
	}
	// The same group in two files is refused, naming both.
	r = c.run(t, "", nil, "apply", "-f", filepath.Join(dir, "dup"))
	wantOneLineError(t, r, 1, "mpfleetctl: "+filepath.Join(dir, "dup", "2.yaml")+`: document 1 (line 1): name: group "web" already appears in `+filepath.Join(dir, "dup", "1.yaml")+" document 1")
	// A directory without manifests, and stdin twice.
	wantOneLineError(t, c.run(t, "", nil, "apply", "-f", filepath.Join(dir, "empty")), 1,
		"mpfleetctl: "+filepath.Join(dir, "empty")+": no .yaml, .yml, .json files in the directory")
	wantOneLineError(t, c.run(t, "", nil, "apply", "-f", "-", "-f", "-"), 2,
		"mpfleetctl: -f -: stdin can be read once (see 'mpfleetctl apply --help')")
	if c.groups.writeCount() != writes {
		t.Errorf("refused applies wrote %d groups", c.groups.writeCount()-writes)
	}

	// -R from the top reads everything (and refuses the duplicate web).
	r = c.run(t, "", nil, "apply", "-R", "-f", dir, "--dry-run")
	if r.code() != 1 || !strings.Contains(r.stderr, filepath.Join("bad", "y.yaml")+": document 2") || !strings.HasSuffix(r.stderr, "(and 2 more files with problems)\n") {
		t.Errorf("apply -R: exit %d, stderr %q", r.code(), r.stderr)
	}
}

func TestLabelSelector(t *testing.T) {
	labels := map[string]string{"role": "web", "zone": "a"}
	tests := []struct {
		sel   string
		match bool
		eq    string // what the controller filters on
	}{
		{"", true, ""},
		{"role=web", true, "role=web"},
		{"role==web,zone=a", true, "role=web,zone=a"},
		{"role!=web", false, ""},
		{"role!=db", true, ""},
		{"absent!=x", true, ""},
		{"zone in (a,b)", true, ""},
		{"zone in (b, c)", false, ""},
		{"zone notin (b,c),role=web", true, "role=web"},
		{"absent notin (a)", true, ""},
		{"absent in (a)", false, ""},
		{"zone", true, ""},
		{"!zone", false, ""},
		{"!rack", true, ""},
		{" role = web , zone ", true, "role=web"},
	}
	for _, tt := range tests {
		sel, err := parseLabelSelector(tt.sel)
		if err != nil {
			t.Errorf("%q: %v", tt.sel, err)
			continue
		}
		if got := sel.matches(labels); got != tt.match {
			t.Errorf("%q matches %v: %v, want %v", tt.sel, labels, got, tt.match)
		}
		if eq, _ := sel.split(); eq != tt.eq {
			t.Errorf("%q: server part %q, want %q", tt.sel, eq, tt.eq)
		}
	}
	for sel, want := range map[string]string{
		"role in (a":   `-l "role in (a": '(' without ')'`,
		"role,":        `-l "role,": "": empty requirement (want k=v, k!=v, k in (a,b), k notin (a,b), k or !k)`,
		"=web":         `-l "=web": "=web": bad label key "" (want k=v, k!=v, k in (a,b), k notin (a,b), k or !k)`,
		"role in ()":   `-l "role in ()": "role in ()": in needs at least one value`,
		"role=a b":     `-l "role=a b": "role=a b": bad label value "a b"`,
		"a in ((b))":   `-l "a in ((b))": nested parentheses`,
		"role in (a))": `-l "role in (a))": ')' without '('`,
	} {
		_, err := parseLabelSelector(sel)
		if err == nil || err.Error() != want || !IsUsageError(err) {
			t.Errorf("%q: %v, want usage error %q", sel, err, want)
		}
	}
}

func TestGetSelectors(t *testing.T) {
	c := newController(t)
	c.hosts.hosts = testHosts()
	c.run(t, twoGroups, nil, "apply", "-f", "-")

	// Equality goes to the controller, the rest is checked here.
	r := c.run(t, "", nil, "get", "hosts", "-l", "role=web,zone notin (b)", "-o", "name")
	if r.err != nil || r.stdout != "hosts/h1\nhosts/h2\n" {
		t.Errorf("get hosts -l: %v, printed %q", r.err, r.stdout)
	}
	if got := c.hosts.requests[len(c.hosts.requests)-1].GetLabelSelector(); got != "role=web" {
		t.Errorf("label_selector sent %q, want role=web", got)
	}
	r = c.run(t, "", nil, "get", "hosts", "-l", "zone,role in (web,db)", "-o", "name")
	if r.err != nil || r.stdout != "hosts/h1\n" {
		t.Errorf("get hosts -l zone: %v, printed %q", r.err, r.stdout)
	}
	r = c.run(t, "", nil, "get", "hosts", "-l", "role in (web,db)", "--limit", "2", "-o", "name")
	if r.err != nil || r.stdout != "hosts/h1\nhosts/h2\n" {
		t.Errorf("get hosts -l --limit 2: %v, printed %q", r.err, r.stdout)
	}
	// Groups by the labels their selector matches.
	r = c.run(t, "", nil, "get", "groups", "-l", "role!=web", "-o", "name")
	if r.err != nil || r.stdout != "groups/db\n" {
		t.Errorf("get groups -l: %v, printed %q", r.err, r.stdout)
	}
	wantOneLineError(t, c.run(t, "", nil, "get", "groups", "web", "-l", "role=web"), 2,
		"mpfleetctl: get groups: -l does not apply to named groups (see 'mpfleetctl get groups --help')")
	wantOneLineError(t, c.run(t, "", nil, "get", "groups", "-w"), 2,
		"mpfleetctl: get groups --watch: the API has no watch of groups (get hosts --watch follows hosts) (see 'mpfleetctl get groups --help')")
}

func TestOutputFormats(t *testing.T) {
	c := newController(t)
	c.hosts.hosts = testHosts()
	c.run(t, twoGroups, nil, "apply", "-f", "-")
	c.groups.groups["groups/web"].RolloutStrategy = &mpfleetv1.RolloutStrategy{CanaryCount: 1, BatchPercent: 25}

	r := c.run(t, "", nil, "get", "groups", "-o", "name")
	if r.err != nil || r.stdout != "groups/db\ngroups/web\n" {
		t.Errorf("-o name: %v, %q", r.err, r.stdout)
	}
	r = c.run(t, "", nil, "get", "groups", "-o", "wide")
	lines := strings.Split(r.stdout, "\n")
	if r.err != nil || !strings.HasPrefix(strings.Fields(lines[0])[9], "STRATEGY") || !strings.HasSuffix(lines[0], "DESCRIPTION") ||
		!strings.Contains(lines[2], "canary 1, batch 25%, max failures 0, roll back when halted   web tier") {
		t.Errorf("-o wide:\n%s", r.stdout)
	}
	r = c.run(t, "", nil, "get", "hosts", "h1", "-o", "wide")
	if r.err != nil || !strings.Contains(r.stdout, "AGENT    KERNEL   LABELS") || !strings.Contains(r.stdout, "v0.1.0   6.18.0   role=web,zone=a") {
		t.Errorf("get hosts -o wide:\n%s", r.stdout)
	}

	// jsonpath over {"items": [...]}, or the one named resource.
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"get", "groups", "-o", "jsonpath={.items[*].name}"}, "groups/db groups/web"},
		{[]string{"get", "groups", "-o", `jsonpath={range .items[*]}{.name}{"\t"}{.policyRevision}{"\n"}{end}`}, "groups/db\t1\ngroups/web\t1\n"},
		{[]string{"get", "group", "web", "-o", "jsonpath=rev {.policyRevision}, {.selector.matchLabels.role}"}, "rev 1, web"},
		{[]string{"get", "hosts", "-o", `jsonpath={.items[?(@.syncState=="SYNC_STATE_FAILED")].name}`}, "hosts/h2"},
		{[]string{"get", "hosts", "-o", "jsonpath={.items[0].facts.interfaces[*].name}"}, "eth0 eth1"},
		{[]string{"get", "groups", "-o", "jsonpath={.items[0].nothing}"}, ""},
		{[]string{"get", "group", "web", "-o", "jsonpath={.policy.limits}"}, `{"addAddrAccepted":2,"subflows":2}`},
	}
	for _, tt := range tests {
		r := c.run(t, "", nil, tt.args...)
		if r.err != nil || r.stdout != tt.want {
			t.Errorf("%v: %v, printed %q, want %q", tt.args, r.err, r.stdout, tt.want)
		}
	}
	// rollout list prints names too.
	c.rollouts.put(&mpfleetv1.Rollout{Name: "rollouts/r-1", Group: "groups/web", State: mpfleetv1.Rollout_STATE_RUNNING})
	if r := c.run(t, "", nil, "rollout", "list", "-o", "name"); r.err != nil || r.stdout != "rollouts/r-1\n" {
		t.Errorf("rollout list -o name: %v, %q", r.err, r.stdout)
	}

	// Refused before any call: a bad template, a list format elsewhere.
	before := len(c.methods())
	wantOneLineError(t, c.run(t, "", nil, "get", "groups", "-o", "jsonpath={.items[*].name"), 2,
		"mpfleetctl: -o jsonpath={.items[*].name: unclosed '{' (see 'mpfleetctl get groups --help')")
	wantOneLineError(t, c.run(t, "", nil, "get", "groups", "-o", "jsonpath={range .items[*]}{.name}"), 2,
		"mpfleetctl: -o jsonpath={range .items[*]}{.name}: {range} without {end} (see 'mpfleetctl get groups --help')")
	wantOneLineError(t, c.run(t, "", nil, "revisions", "web", "-o", "name"), 2,
		"mpfleetctl: --output name: only get groups, get hosts and rollout list print it (here: table, json or yaml) (see 'mpfleetctl revisions --help')")
	wantOneLineError(t, c.run(t, "", nil, "get", "groups", "-o", "xml"), 2,
		`mpfleetctl: --output "xml": must be table, json, yaml, name, wide or jsonpath=TEMPLATE (see 'mpfleetctl get groups --help')`)
	if got := c.methods()[before:]; len(got) != 0 {
		t.Errorf("refused output formats called %v", got)
	}
}

func TestGetHostsWatch(t *testing.T) {
	c := newController(t)
	hosts := testHosts()
	h1b := proto.Clone(hosts[0]).(*mpfleetv1.Host)
	h1b.LastSeenTime = nil // a report that changes nothing shown but LAST SEEN
	h1c := proto.Clone(h1b).(*mpfleetv1.Host)
	h1c.SyncState = mpfleetv1.SyncState_SYNC_STATE_DRIFTED
	c.hosts.events = []*mpfleetv1.HostEvent{
		{Type: mpfleetv1.HostEvent_TYPE_UPSERT, Host: hosts[1]},
		{Type: mpfleetv1.HostEvent_TYPE_UPSERT, Host: hosts[0]},
		{Type: mpfleetv1.HostEvent_TYPE_UPSERT, Host: hosts[2]}, // role=db: -l leaves it out
		{Type: mpfleetv1.HostEvent_TYPE_SYNCED},
		{Type: mpfleetv1.HostEvent_TYPE_UPSERT, Host: h1b},
		{Type: mpfleetv1.HostEvent_TYPE_UPSERT, Host: h1c},
		{Type: mpfleetv1.HostEvent_TYPE_DELETED, Host: &mpfleetv1.Host{Name: "hosts/h2"}},
	}
	r := c.run(t, "", nil, "get", "hosts", "-w", "-l", "role in (web)")
	want := `NAME   GROUP   STATE     HEALTH   DESIRED   APPLIED   ENDPOINTS   CONNS   SUBFLOWS   LAST SEEN
h1     web     in_sync   ok       3         3         2           2       3          5s
h2     web     failed    -        3         2         0           0       0          never
h1     web     drifted   ok       3         3         2           2       3          never
h2     web     deleted   -        3         2         0           0       0          never
`
	if r.stdout != want {
		t.Errorf("get hosts -w printed:\n%s\nwant:\n%s\n%s", r.stdout, want, cmp.Diff(want, r.stdout))
	}
	// The fake ends the stream: a watch that ends is an error.
	if r.code() != 1 || r.stderr != "mpfleetctl: get hosts --watch: the controller ended the stream\n" {
		t.Errorf("exit %d, stderr %q", r.code(), r.stderr)
	}
	if got := c.hosts.watches[len(c.hosts.watches)-1]; got.GetLabelSelector() != "" {
		t.Errorf("watch request %v: the set requirement is checked here", got)
	}
	r = c.run(t, "", nil, "get", "hosts", "-w", "-l", "role notin (db)", "-o", "name")
	if r.stdout != "hosts/h1\nhosts/h2\nhosts/h1\nhosts/h2\n" {
		t.Errorf("get hosts -w -o name printed %q", r.stdout)
	}
	wantOneLineError(t, c.run(t, "", nil, "get", "hosts", "h1", "-w"), 2,
		"mpfleetctl: get hosts: filters and --watch do not apply to named hosts (see 'mpfleetctl get hosts --help')")
}

func TestDiffFile(t *testing.T) {
	c := newController(t)
	file := writeFile(t, twoGroups)
	c.run(t, "", nil, "apply", "-f", file)
	writes := c.groups.writeCount()

	// Equal: no output, exit 0.
	r := c.run(t, "", nil, "diff", "-f", file)
	if r.err != nil || r.stdout != "" || r.stderr != "" {
		t.Errorf("diff -f of what is live: %v, %q, %q", r.err, r.stdout, r.stderr)
	}
	// A change and a new group: the diff, exit 1, nothing on stderr.
	changed := strings.Replace(twoGroups, "subflows: 2,", "subflows: 4,", 1) + "---\nkind: Group\nname: new\nselector: {matchLabels: {role: new}}\n"
	r = c.run(t, changed, nil, "diff", "-f", "-")
	want := `--- live/groups/web
+++ file/groups/web
@@ -8,7 +8,7 @@
     interface: eth*
   limits:
     addAddrAccepted: 2
-    subflows: 2
+    subflows: 4
   routing:
     enabled: true
 selector:
--- /dev/null
+++ file/groups/new
@@ -0,0 +1,4 @@
+name: groups/new
+selector:
+  matchLabels:
+    role: new
`
	if r.code() != 1 || r.stdout != want || r.stderr != "" {
		t.Errorf("diff -f of a change: exit %d, stderr %q, printed:\n%s\nwant:\n%s", r.code(), r.stderr, r.stdout, want)
	}
	// Errors exit 2: a bad file, an unreachable controller, a usage error.
	r = c.run(t, "kind: Group\nname: web\npolicy: {limits: {subflow: 2}}\n", nil, "diff", "-f", "-")
	if r.code() != 2 || !strings.Contains(r.stderr, "policy.limits.subflow: unknown field") {
		t.Errorf("diff -f of a bad file: exit %d, %q", r.code(), r.stderr)
	}
	r = runCLI(t, "", nil, "--controller", "127.0.0.1:1", "--timeout", "2s", "diff", "-f", file)
	if r.code() != 2 || !strings.HasPrefix(r.stderr, `mpfleetctl: group "web": `) {
		t.Errorf("diff -f without a controller: exit %d, %q", r.code(), r.stderr)
	}
	wantOneLineError(t, c.run(t, "", nil, "diff", "-f", file, "web"), 2,
		"mpfleetctl: diff -f: takes no arguments, got 1 (see 'mpfleetctl diff --help')")
	wantOneLineError(t, c.run(t, "", nil, "diff", "web"), 2,
		"mpfleetctl: diff: want GROUP REV1 REV2 (or -f FILE), got 1 argument(s) (see 'mpfleetctl diff --help')")
	if c.groups.writeCount() != writes {
		t.Errorf("diff wrote %d groups", c.groups.writeCount()-writes)
	}
}

// TestDiffColour checks that the diff is coloured on a terminal only, and
// not with NO_COLOR.
func TestDiffColour(t *testing.T) {
	c := newController(t)
	file := writeFile(t, twoGroups)
	c.run(t, "", nil, "apply", "-f", file)
	changed := writeFile(t, strings.Replace(twoGroups, "subflows: 2,", "subflows: 4,", 1))
	runTTY := func(tty bool, env map[string]string) string {
		var out, errb bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = run(ctx, []string{"--controller", c.addr, "diff", "-f", changed}, stdio{in: strings.NewReader(""), out: &out, err: &errb, tty: tty},
			func(k string) string { return env[k] }, func() time.Time { return testNow })
		return out.String()
	}
	if got := runTTY(true, nil); !strings.Contains(got, "\x1b[31m-    subflows: 2\x1b[0m\n") || !strings.Contains(got, "\x1b[32m+    subflows: 4\x1b[0m\n") {
		t.Errorf("diff on a terminal is not coloured: %q", got)
	}
	for name, got := range map[string]string{
		"not a terminal": runTTY(false, nil),
		"NO_COLOR":       runTTY(true, map[string]string{"NO_COLOR": "1"}),
	} {
		if strings.Contains(got, "\x1b") || !strings.Contains(got, "-    subflows: 2\n") {
			t.Errorf("diff, %s: %q", name, got)
		}
	}
}

func TestCompletion(t *testing.T) {
	c := newController(t)
	c.hosts.hosts = testHosts()
	c.run(t, twoGroups, nil, "apply", "-f", "-")

	tests := []struct {
		args []string
		want string
	}{
		{[]string{"get", "hosts", ""}, "h1\nh2\nh3\nh4\nh5\n"},
		{[]string{"get", "hosts", "h1", ""}, "h2\nh3\nh4\nh5\n"},
		{[]string{"describe", "host", "h"}, "h1\nh2\nh3\nh4\nh5\n"},
		{[]string{"describe", "host", "h1", ""}, ""},
		{[]string{"get", "groups", "w"}, "web\n"},
		{[]string{"delete", "group", ""}, "db\nweb\n"},
		{[]string{"diff", ""}, "db\nweb\n"},
		{[]string{"rollout", "start", "d"}, "db\n"},
	}
	for _, tt := range tests {
		r := c.run(t, "", nil, append([]string{"__complete"}, tt.args...)...)
		got, _, _ := strings.Cut(r.stdout, ":")
		if r.err != nil || got != tt.want || !strings.Contains(r.stdout, ":4\n") {
			t.Errorf("complete %q: %v, printed %q, want %q then :4 (no file completion)", tt.args, r.err, r.stdout, tt.want)
		}
	}
	// No controller: no completions, no error.
	r := runCLI(t, "", nil, "--controller", "127.0.0.1:1", "__complete", "get", "hosts", "")
	if got, _, _ := strings.Cut(r.stdout, ":"); r.err != nil || got != "" {
		t.Errorf("complete without a controller: %v, printed %q", r.err, r.stdout)
	}
}
