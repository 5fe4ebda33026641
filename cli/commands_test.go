package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"sigs.k8s.io/yaml"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

const twoGroups = `kind: Group
name: web
description: web tier
selector:
  matchLabels: {role: web}
policy:
  enabled: true
  limits: {subflows: 2, addAddrAccepted: 2}
  endpoints:
    - interface: "eth*"
      flags: [subflow]
  routing: {enabled: true}
---
kind: Group
name: db
selector:
  matchLabels: {role: db}
policy:
  limits: {}
  endpoints:
    - cidr: 198.18.0.0/15
      flags: [signal]
`

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "groups.yaml")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// wantOneLineError checks that r failed with exit code code and printed
// exactly want (one line) on stderr.
func wantOneLineError(t *testing.T, r result, code int, want string) {
	t.Helper()
	if r.code() != code {
		t.Errorf("exit code %d (err %v), want %d", r.code(), r.err, code)
	}
	if r.stderr != want+"\n" {
		t.Errorf("stderr = %q, want %q", r.stderr, want+"\n")
	}
}

func TestApplyIsIdempotent(t *testing.T) {
	c := newController(t)
	file := writeFile(t, twoGroups)

	r := c.run(t, "", nil, "apply", "-f", file, "--reason", "first")
	if r.err != nil {
		t.Fatalf("apply: %v (stderr %q)", r.err, r.stderr)
	}
	if want := "group/web created (revision 1)\ngroup/db created (revision 1)\n"; r.stdout != want {
		t.Errorf("first apply printed %q, want %q", r.stdout, want)
	}
	if got := c.groups.writeCount(); got != 2 {
		t.Errorf("first apply wrote %d times, want 2", got)
	}
	stored, _ := c.groups.GetGroup(t.Context(), &mpfleetv1.GetGroupRequest{Name: "groups/db"})
	if stored.GetPolicy().GetLimits() == nil {
		t.Errorf("stored db group lost its empty limits: %v", stored)
	}

	// Second run: same file, nothing to write, and not even a validation.
	before := len(c.methods())
	r = c.run(t, "", nil, "apply", "-f", file)
	if r.err != nil {
		t.Fatalf("second apply: %v (stderr %q)", r.err, r.stderr)
	}
	if want := "group/web unchanged\ngroup/db unchanged\n"; r.stdout != want {
		t.Errorf("second apply printed %q, want %q", r.stdout, want)
	}
	if got := c.groups.writeCount(); got != 2 {
		t.Errorf("second apply wrote: %d writes in all, want 2", got)
	}
	if got := c.methods()[before:]; !cmp.Equal(got, []string{"GetGroup", "GetGroup"}) {
		t.Errorf("second apply called %v, want only two GetGroup", got)
	}

	// A changed policy is an update guarded by the stored etag.
	etag := c.groups.groups["groups/web"].GetEtag()
	changed := strings.Replace(twoGroups, "subflows: 2,", "subflows: 4,", 1)
	r = c.run(t, changed, nil, "apply", "-f", "-", "--reason", "more subflows")
	if r.err != nil {
		t.Fatalf("third apply: %v (stderr %q)", r.err, r.stderr)
	}
	if want := "group/web configured (revision 2)\ngroup/db unchanged\n"; r.stdout != want {
		t.Errorf("third apply printed %q, want %q", r.stdout, want)
	}
	if len(c.groups.updates) != 1 {
		t.Fatalf("got %d updates, want 1", len(c.groups.updates))
	}
	u := c.groups.updates[0]
	if u.GetGroup().GetEtag() != etag || u.GetReason() != "more subflows" ||
		!cmp.Equal(u.GetUpdateMask().GetPaths(), []string{"description", "selector", "policy"}) ||
		u.GetGroup().GetPolicy().GetLimits().GetSubflows() != 4 {
		t.Errorf("update request = %v; want etag %q, reason, mask description,selector,policy and subflows 4", u, etag)
	}
}

func TestApplyValidatesEveryDocumentBeforeWriting(t *testing.T) {
	c := newController(t)
	bad := strings.Replace(twoGroups, "flags: [signal]", "flags: [signal]\n  limits: {subflows: 9}", 1)
	bad = strings.Replace(bad, "  limits: {}\n", "", 1)
	r := c.run(t, "", nil, "apply", "-f", writeFile(t, bad))
	wantOneLineError(t, r, 1,
		`mpfleetctl: group "db" (document 2, line 14): invalid argument: group.policy.limits.subflows: must be at most 8 (kernel maximum)`)
	if got := c.groups.writeCount(); got != 0 {
		t.Errorf("apply wrote %d groups although document 2 is invalid", got)
	}
	if r.stdout != "" {
		t.Errorf("stdout = %q, want nothing", r.stdout)
	}
}

func TestApplyRendersEveryFieldViolation(t *testing.T) {
	c := newController(t)
	doc := "kind: Group\nname: web\npolicy:\n  limits: {subflows: 9, addAddrAccepted: 10}\n"
	r := c.run(t, doc, nil, "apply", "-f", "-")
	wantOneLineError(t, r, 1, `mpfleetctl: group "web" (document 1, line 1): invalid argument: `+
		`group.policy.limits.subflows: must be at most 8 (kernel maximum); `+
		`group.policy.limits.add_addr_accepted: must be at most 8 (kernel maximum)`)
}

func TestApplyParseErrorCallsNothing(t *testing.T) {
	c := newController(t)
	bad := twoGroups + "---\nkind: Group\nname: x\npolicy:\n  endpoints:\n    - interface: eth0\n      flags: [subflw]\n"
	r := c.run(t, bad, nil, "apply", "-f", "-")
	wantOneLineError(t, r, 1, `mpfleetctl: stdin: document 3 (line 24): policy.endpoints[0].flags[0]: unknown value "subflw" (one of signal, subflow, backup, fullmesh, laminar)`)
	if m := c.methods(); len(m) != 0 {
		t.Errorf("a bad file made calls %v, want none", m)
	}
}

func TestApplyDryRun(t *testing.T) {
	c := newController(t)
	c.groups.put("web", &mpfleetv1.Group{Description: "old"})
	r := c.run(t, twoGroups, nil, "apply", "-f", "-", "--dry-run")
	if r.err != nil {
		t.Fatalf("apply --dry-run: %v (stderr %q)", r.err, r.stderr)
	}
	if want := "group/web configured (dry run)\ngroup/db created (dry run)\n"; r.stdout != want {
		t.Errorf("printed %q, want %q", r.stdout, want)
	}
	if got := c.groups.writeCount(); got != 0 {
		t.Errorf("--dry-run wrote %d times", got)
	}
	want := []string{"GetGroup", "UpdateGroup", "GetGroup", "CreateGroup"}
	if got := c.methods(); !cmp.Equal(got, want) {
		t.Errorf("calls %v, want %v (validate_only)", got, want)
	}
}

func TestApplyStaleEtag(t *testing.T) {
	c := newController(t)
	c.groups.put("web", &mpfleetv1.Group{Description: "old"})
	// Someone changes the group between apply's read and its write.
	c.groups.afterGet = func(g *mpfleetv1.Group) { g.Etag = "theirs" }
	r := c.run(t, "kind: Group\nname: web\ndescription: new\n", nil, "apply", "-f", "-")
	wantOneLineError(t, r, 1, `mpfleetctl: group "web" (document 1, line 1): changed since it was read (stale etag): read it again and retry`)
	if c.groups.writeCount() != 0 {
		t.Error("a stale etag wrote")
	}
}

func TestGetGroups(t *testing.T) {
	c := newController(t)
	for _, id := range []string{"e", "d", "c", "b", "a"} {
		c.groups.put(id, &mpfleetv1.Group{
			Selector: &mpfleetv1.Selector{MatchLabels: map[string]string{"role": id, "zone": "z1"}},
			Policy: &mpfleetv1.MultipathPolicy{
				Endpoints: []*mpfleetv1.EndpointRule{
					{Interface: "eth*", Flags: []mpfleetv1.EndpointFlag{mpfleetv1.EndpointFlag_ENDPOINT_FLAG_SUBFLOW, mpfleetv1.EndpointFlag_ENDPOINT_FLAG_BACKUP}},
					{Cidr: "2001:db8::/32", Family: mpfleetv1.AddressFamily_ADDRESS_FAMILY_IPV6, Flags: []mpfleetv1.EndpointFlag{mpfleetv1.EndpointFlag_ENDPOINT_FLAG_SIGNAL}, Port: 8080},
				},
				Routing: &mpfleetv1.Routing{Enabled: id == "a"},
			},
		})
	}

	// b has a rollout moving its hosts from revision 3 to 4; c's
	// controller does not say what its hosts run.
	b := c.groups.groups["groups/b"]
	b.PolicyRevision, b.DeployedRevision, b.ActiveRollout = 4, 3, "rollouts/b-4"
	c.groups.groups["groups/c"].DeployedRevision = 0

	r := c.run(t, "", nil, "get", "groups")
	if r.err != nil {
		t.Fatal(r.err)
	}
	want := `NAME   REVISION   DEPLOYED   ROLLOUT   SELECTOR         ENDPOINT RULES                                                 ROUTING   UPDATED
a      1          1          -         role=a,zone=z1   eth* [subflow,backup]; 2001:db8::/32 ipv6 [signal] port 8080   on        1h
b      4          3          b-4       role=b,zone=z1   eth* [subflow,backup]; 2001:db8::/32 ipv6 [signal] port 8080   off       1h
c      1          -          -         role=c,zone=z1   eth* [subflow,backup]; 2001:db8::/32 ipv6 [signal] port 8080   off       1h
d      1          1          -         role=d,zone=z1   eth* [subflow,backup]; 2001:db8::/32 ipv6 [signal] port 8080   off       1h
e      1          1          -         role=e,zone=z1   eth* [subflow,backup]; 2001:db8::/32 ipv6 [signal] port 8080   off       1h
`
	if r.stdout != want {
		t.Errorf("get groups printed:\n%s\nwant:\n%s", r.stdout, want)
	}
	if n := strings.Count(strings.Join(c.methods(), " "), "ListGroups"); n != 3 {
		t.Errorf("5 groups at 2 per page took %d ListGroups calls, want 3", n)
	}

	r = c.run(t, "", nil, "get", "groups", "--limit", "3")
	if got := strings.Count(r.stdout, "\n"); got != 4 {
		t.Errorf("--limit 3 printed %d lines, want header and 3:\n%s", got, r.stdout)
	}

	r = c.run(t, "", nil, "get", "groups", "-o", "json")
	var list mpfleetv1.ListGroupsResponse
	if err := protojson.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatalf("-o json is not a ListGroupsResponse: %v\n%s", err, r.stdout)
	}
	if len(list.GetGroups()) != 5 || list.GetGroups()[0].GetName() != "groups/a" {
		t.Errorf("-o json listed %v", list.GetGroups())
	}

	r = c.run(t, "", nil, "get", "group", "a", "-o", "yaml")
	js, err := yaml.YAMLToJSON([]byte(r.stdout))
	if err != nil {
		t.Fatal(err)
	}
	var g mpfleetv1.Group
	if err := protojson.Unmarshal(js, &g); err != nil {
		t.Fatalf("-o yaml is not a Group: %v\n%s", err, r.stdout)
	}
	if diff := cmp.Diff(c.groups.groups["groups/a"], &g, protocmp.Transform()); diff != "" {
		t.Errorf("-o yaml round trip (-stored +printed):\n%s", diff)
	}
	if !strings.Contains(r.stdout, "- ENDPOINT_FLAG_SUBFLOW") || !strings.Contains(r.stdout, "policyRevision:") {
		t.Errorf("-o yaml is not the API's form:\n%s", r.stdout)
	}
}

func TestNotFoundIsOneLine(t *testing.T) {
	c := newController(t)
	wantOneLineError(t, c.run(t, "", nil, "get", "group", "web"), 1, `mpfleetctl: group "web": not found`)
	wantOneLineError(t, c.run(t, "", nil, "delete", "group", "web"), 1, `mpfleetctl: group "web": not found`)
	wantOneLineError(t, c.run(t, "", nil, "describe", "host", "h1"), 1, `mpfleetctl: host "h1": not found`)
	wantOneLineError(t, c.run(t, "", nil, "revisions", "web"), 1, `mpfleetctl: group "web": not found`)
}

func TestDeleteGroup(t *testing.T) {
	c := newController(t)
	c.groups.put("web", &mpfleetv1.Group{})
	r := c.run(t, "", nil, "delete", "group", "web", "--etag", "nope")
	wantOneLineError(t, r, 1, `mpfleetctl: group "web": changed since it was read (stale etag): read it again and retry`)
	etag := c.groups.groups["groups/web"].GetEtag()
	r = c.run(t, "", nil, "delete", "group", "groups/web", "--etag", etag, "--reason", "retired")
	if r.err != nil || r.stdout != "group/web deleted\n" {
		t.Fatalf("delete: %v, printed %q", r.err, r.stdout)
	}
	if d := c.groups.deletes[0]; d.GetName() != "groups/web" || d.GetEtag() != etag || d.GetReason() != "retired" {
		t.Errorf("delete request %v", d)
	}
}

func TestRevisionsAndDiff(t *testing.T) {
	c := newController(t)
	doc := "kind: Group\nname: web\npolicy:\n  limits: {subflows: 1}\n  endpoints:\n    - interface: eth0\n      flags: [subflow]\n"
	for i, change := range []string{"", "subflows: 2", "subflows: 3"} {
		d := doc
		if change != "" {
			d = strings.Replace(doc, "subflows: 1", change, 1)
		}
		if r := c.run(t, d, nil, "apply", "-f", "-", "--reason", "step "+string(rune('a'+i))); r.err != nil {
			t.Fatal(r.err)
		}
	}
	r := c.run(t, "", nil, "revisions", "web")
	want := `REVISION   CREATED                ACTOR                 REASON
3          2025-11-25T12:00:00Z   anonymous@127.0.0.1   step c
2          2025-11-25T12:00:00Z   anonymous@127.0.0.1   step b
1          2025-11-25T11:00:00Z   anonymous@127.0.0.1   step a
`
	if r.stdout != want {
		t.Errorf("revisions printed:\n%s\nwant:\n%s", r.stdout, want)
	}

	r = c.run(t, "", nil, "diff", "web", "1", "3")
	want = `--- groups/web/revisions/1
+++ groups/web/revisions/3
@@ -3,4 +3,4 @@
   - ENDPOINT_FLAG_SUBFLOW
   interface: eth0
 limits:
-  subflows: 1
+  subflows: 3
`
	if r.err != nil || r.stdout != want {
		t.Errorf("diff: %v, printed:\n%s\nwant:\n%s", r.err, r.stdout, want)
	}
	if r := c.run(t, "", nil, "diff", "web", "2", "2"); r.err != nil || r.stdout != "" {
		t.Errorf("diff of a revision with itself: %v, %q", r.err, r.stdout)
	}
	wantOneLineError(t, c.run(t, "", nil, "diff", "web", "1", "9"), 1, `mpfleetctl: group "web" revision 9: not found`)
	wantOneLineError(t, c.run(t, "", nil, "diff", "web", "1", "x"), 2, `mpfleetctl: diff: revision "x": want a number from 1 (see 'mpfleetctl diff --help')`)
}

func auditEvents() []*mpfleetv1.AuditEvent {
	at := func(m int) *timestamppb.Timestamp {
		return timestamppb.New(testNow.Add(time.Duration(m-60) * time.Minute))
	}
	return []*mpfleetv1.AuditEvent{
		{Name: "auditEvents/1", Sequence: 1, Time: at(0), Actor: "alice", Action: "groups.create", Resource: "groups/web", Result: mpfleetv1.AuditResult_AUDIT_RESULT_SUCCESS, StatusCode: "OK", Reason: "first"},
		{Name: "auditEvents/2", Sequence: 2, Time: at(10), Actor: "bob", Action: "groups.update", Resource: "groups/web", Result: mpfleetv1.AuditResult_AUDIT_RESULT_FAILURE, StatusCode: "ABORTED", Error: "stale etag"},
		{Name: "auditEvents/3", Sequence: 3, Time: at(20), Actor: "agent:h1", Action: "agent.applied", Resource: "groups/web", Host: "hosts/h1", Result: mpfleetv1.AuditResult_AUDIT_RESULT_SUCCESS, Reason: "applied revision 1"},
		{Name: "auditEvents/4", Sequence: 4, Time: at(50), Actor: "alice", Action: "groups.update", Resource: "groups/db", Result: mpfleetv1.AuditResult_AUDIT_RESULT_SUCCESS, Reason: "tabs\tand\nnewlines"},
	}
}

func TestAuditList(t *testing.T) {
	c := newController(t)
	c.audit.events = auditEvents()

	r := c.run(t, "", nil, "audit", "list")
	want := `SEQ   TIME                   ACTOR      ACTION          RESOURCE              RESULT              REASON
1     2025-11-25T11:00:00Z   alice      groups.create   groups/web            success             first
2     2025-11-25T11:10:00Z   bob        groups.update   groups/web            failure (ABORTED)   stale etag
3     2025-11-25T11:20:00Z   agent:h1   agent.applied   groups/web hosts/h1   success             applied revision 1
4     2025-11-25T11:50:00Z   alice      groups.update   groups/db             success             tabs and newlines
`
	if r.stdout != want {
		t.Errorf("audit list printed:\n%s\nwant:\n%s", r.stdout, want)
	}

	// JSON lines: one event per line, each the API's form.
	r = c.run(t, "", nil, "audit", "list", "-o", "json", "--action", "groups.", "--since", "55m")
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	var got []*mpfleetv1.AuditEvent
	for sc.Scan() {
		e := &mpfleetv1.AuditEvent{}
		if err := protojson.Unmarshal(sc.Bytes(), e); err != nil {
			t.Fatalf("line %q is not an AuditEvent: %v", sc.Text(), err)
		}
		got = append(got, e)
	}
	if diff := cmp.Diff([]*mpfleetv1.AuditEvent{auditEvents()[1], auditEvents()[3]}, got, protocmp.Transform()); diff != "" {
		t.Errorf("audit list -o json (-want +got):\n%s", diff)
	}
	req := c.audit.requests[len(c.audit.requests)-1]
	if req.GetAction() != "groups." || !req.GetStartTime().AsTime().Equal(testNow.Add(-55*time.Minute)) || req.GetEndTime() != nil {
		t.Errorf("filters sent: %v", req)
	}

	r = c.run(t, "", nil, "audit", "list", "--limit", "3", "--host", "h1", "--until", "2025-11-25T12:00:00Z", "-o", "json")
	if n := strings.Count(r.stdout, "\n"); n != 1 {
		t.Errorf("--host h1 printed %d events:\n%s", n, r.stdout)
	}
	req = c.audit.requests[len(c.audit.requests)-1]
	if req.GetHost() != "hosts/h1" || req.GetPageSize() != 3 || !req.GetEndTime().AsTime().Equal(testNow) {
		t.Errorf("request %v: want host hosts/h1, page size 3, end time %v", req, testNow)
	}
	r = c.run(t, "", nil, "audit", "list", "--limit", "3")
	if n := strings.Count(r.stdout, "\n"); n != 4 {
		t.Errorf("--limit 3 printed %d lines:\n%s", n, r.stdout)
	}

	wantOneLineError(t, c.run(t, "", nil, "audit", "list", "--since", "yesterday"), 2,
		`mpfleetctl: --since "yesterday": want a duration (90m, 24h) or an RFC 3339 time (2025-01-02T15:04:05Z) (see 'mpfleetctl audit list --help')`)
}

func TestAuditVerify(t *testing.T) {
	c := newController(t)
	for _, tc := range []struct {
		resp *mpfleetv1.VerifyAuditLogResponse
		want string
	}{
		{&mpfleetv1.VerifyAuditLogResponse{Ok: true, EventsChecked: 42, FirstSequence: 1, LastSequence: 42, HeadHash: "ab12",
			KeyId: "0123456789abcdef", KeyedEvents: 42, FirstKeyedSequence: 1},
			"OK: 42 events verified (sequences 1 to 42), head ab12\n" +
				"  keyed: all 42 events, with audit key 0123456789abcdef\n" +
				"  pruned: none (the log starts at sequence 1)\n"},
		{&mpfleetv1.VerifyAuditLogResponse{Ok: true, EventsChecked: 42, FirstSequence: 8, LastSequence: 49, HeadHash: "ab12",
			KeyId: "0123456789abcdef", KeyedEvents: 40, UnkeyedEvents: 2, FirstKeyedSequence: 10, PrunedEvents: 7, CheckpointSequence: 30},
			"OK: 42 events verified (sequences 8 to 49), head ab12\n" +
				"  keyed: 40 events from sequence 10, with audit key 0123456789abcdef; 2 older events unkeyed (plain SHA-256, written before the key was introduced)\n" +
				"  pruned: events 1..7, removed by retention as the checkpoint at sequence 30 records\n"},
		// A controller that predates audit keys and checkpoints.
		{&mpfleetv1.VerifyAuditLogResponse{Ok: true, EventsChecked: 5, FirstSequence: 3, LastSequence: 7, HeadHash: "ab12"},
			"OK: 5 events verified (sequences 3 to 7), head ab12\n" +
				"  keyed: not reported (the controller predates audit keys: plain SHA-256 hashes, which anyone who can write etcd can recompute)\n" +
				"  pruned: events 1..2 (not checked against a checkpoint: the controller predates them)\n"},
	} {
		c.audit.verify = tc.resp
		r := c.run(t, "", nil, "audit", "verify")
		if r.err != nil || r.stdout != tc.want {
			t.Errorf("verify: %v, printed\n%s\nwant\n%s", r.err, r.stdout, tc.want)
		}
	}
	c.audit.verify = &mpfleetv1.VerifyAuditLogResponse{EventsChecked: 17, FirstSequence: 1, LastSequence: 42, FirstBadSequence: 17, Reason: "hash mismatch"}
	r := c.run(t, "", nil, "audit", "verify")
	if r.stdout != "BROKEN: sequence 17: hash mismatch (17 events checked from sequence 1)\n" {
		t.Errorf("verify of a broken chain printed %q", r.stdout)
	}
	wantOneLineError(t, r, 1, "mpfleetctl: audit log does not verify: first bad sequence 17: hash mismatch")
	c.audit.verify = &mpfleetv1.VerifyAuditLogResponse{EventsChecked: 3, FirstSequence: 4, LastSequence: 6, FirstBadSequence: 1,
		Reason: "events 1..3 missing and no checkpoint accounts for them: they were deleted by hand, not by retention", PrunedEvents: 3}
	r = c.run(t, "", nil, "audit", "verify")
	if r.stdout != "BROKEN: sequence 1: events 1..3 missing and no checkpoint accounts for them: they were deleted by hand, not by retention (3 events checked from sequence 4)\n" || r.code() != 1 {
		t.Errorf("verify of a log with its start deleted printed %q, exit %d", r.stdout, r.code())
	}
	c.audit.verify = &mpfleetv1.VerifyAuditLogResponse{EventsChecked: 17, FirstSequence: 1, LastSequence: 42, FirstBadSequence: 17, Reason: "hash mismatch"}

	r = c.run(t, "", nil, "audit", "verify", "-o", "json")
	var resp mpfleetv1.VerifyAuditLogResponse
	if err := protojson.Unmarshal([]byte(r.stdout), &resp); err != nil || resp.GetFirstBadSequence() != 17 || r.code() != 1 {
		t.Errorf("verify -o json: %v, %q, exit %d", err, r.stdout, r.code())
	}
}

func TestAuditWatch(t *testing.T) {
	c := newController(t)
	c.audit.events = auditEvents()
	r := c.run(t, "", nil, "audit", "watch", "--after", "2", "--resource", "groups/")
	want := "3  2025-11-25T11:20:00Z  agent:h1  agent.applied  groups/web hosts/h1  success  applied revision 1\n" +
		"4  2025-11-25T11:50:00Z  alice  groups.update  groups/db  success  tabs and newlines\n"
	if r.stdout != want {
		t.Errorf("audit watch printed %q, want %q", r.stdout, want)
	}
	// A watch runs until interrupted: the controller ending it is an error.
	wantOneLineError(t, r, 1, "mpfleetctl: watch audit events: the controller ended the stream")
	if w := c.audit.watches[0]; w.GetAfterSequence() != 2 || w.GetResource() != "groups/" {
		t.Errorf("watch request %v", w)
	}
}

func TestWatchEndsCleanlyWhenInterrupted(t *testing.T) {
	c := newController(t)
	c.audit.events = auditEvents()
	c.audit.block = true
	c.audit.sent = make(chan struct{})
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		<-c.audit.sent
		cancel()
	}()
	var out, errb bytes.Buffer
	err := run(ctx, []string{"--controller", c.addr, "audit", "watch", "--after", "0"}, stdio{in: strings.NewReader(""), out: &out, err: &errb},
		func(string) string { return "" }, func() time.Time { return testNow })
	if err != nil || errb.Len() != 0 {
		t.Errorf("interrupted watch: %v, stderr %q; want a clean exit", err, errb.String())
	}
}

func testHosts() []*mpfleetv1.Host {
	return []*mpfleetv1.Host{
		{
			Name: "hosts/h1", Labels: map[string]string{"role": "web", "zone": "a"}, Group: "groups/web",
			DesiredRevision: 3, AppliedRevision: 3, SyncState: mpfleetv1.SyncState_SYNC_STATE_IN_SYNC, Connected: true,
			LastSeenTime: timestamppb.New(testNow.Add(-5 * time.Second)), AgentVersion: "v0.1.0",
			Facts: &mpfleetv1.HostFacts{
				Hostname: "h1", KernelVersion: "6.18.0", MptcpSupported: true,
				AvailableSchedulers: []string{"default"}, AvailablePathManagers: []string{"kernel", "userspace"},
				Interfaces: []*mpfleetv1.Interface{
					{Name: "eth0", Index: 2, Up: true, Addresses: []string{"198.18.1.2/24"}, Gateways: []string{"198.18.1.1"}},
					{Name: "eth1", Index: 3, Up: true, Addresses: []string{"198.18.2.2/24"}, Gateways: []string{"198.18.2.1"}},
				},
			},
			Applied: &mpfleetv1.AppliedState{
				Endpoints: []*mpfleetv1.AppliedEndpoint{
					{Id: 1, Address: "198.18.1.2", Flags: []mpfleetv1.EndpointFlag{mpfleetv1.EndpointFlag_ENDPOINT_FLAG_SUBFLOW}, Interface: "eth0"},
					{Id: 2, Address: "198.18.2.2", Flags: []mpfleetv1.EndpointFlag{mpfleetv1.EndpointFlag_ENDPOINT_FLAG_SUBFLOW, mpfleetv1.EndpointFlag_ENDPOINT_FLAG_BACKUP}, Interface: "eth1"},
				},
				Limits:  &mpfleetv1.Limits{Subflows: proto.Uint32(2), AddAddrAccepted: proto.Uint32(2)},
				Rules:   []*mpfleetv1.AppliedRule{{Priority: 7100, From: "198.18.1.2/32", Table: 7100}},
				Routes:  []*mpfleetv1.AppliedRoute{{Table: 7100, Destination: "0.0.0.0/0", Gateway: "198.18.1.1", Interface: "eth0", Source: "198.18.1.2"}},
				Sysctls: map[string]string{"enabled": "1"},
			},
			Health: &mpfleetv1.MptcpHealth{
				Connections: 2, Subflows: 3, Fallbacks: 1, ReadTime: timestamppb.New(testNow.Add(-3 * time.Second)),
				Counters: map[string]uint64{"MPCapableSYNRX": 12, "MPJoinSynRx": 4},
				ConnectionsList: []*mpfleetv1.MptcpConnection{
					{Local: "198.18.1.2:5201", Remote: "198.18.9.9:40000", Subflows: 1, Token: 0xdeadbeef},
					{Local: "198.18.1.2:5201", Remote: "198.18.9.9:40002", Fallback: true, Token: 7},
				},
				Paths: []*mpfleetv1.PathStatus{
					{Interface: "eth0", Address: "198.18.1.2", State: mpfleetv1.PathState_PATH_STATE_OK, Gateway: "198.18.1.1", Table: 7100,
						LastCheckTime: timestamppb.New(testNow.Add(-4 * time.Second)), ProbeLatency: durationpb.New(1234 * time.Microsecond)},
					{Interface: "eth1", Address: "198.18.2.2", State: mpfleetv1.PathState_PATH_STATE_UNPROBED, Gateway: "198.18.2.1", Table: 7101,
						LastCheckTime: timestamppb.New(testNow.Add(-4 * time.Second))},
				},
			},
		},
		{Name: "hosts/h2", Labels: map[string]string{"role": "web"}, Group: "groups/web", DesiredRevision: 3, AppliedRevision: 2,
			SyncState: mpfleetv1.SyncState_SYNC_STATE_FAILED, LastError: "add endpoint: ERANGE"},
		{Name: "hosts/h3", Labels: map[string]string{"role": "db"}, ConflictingGroups: []string{"groups/x", "groups/db"},
			SyncState: mpfleetv1.SyncState_SYNC_STATE_CONFLICT},
		degradedHost(),
		{
			Name: "hosts/h5", Labels: map[string]string{"role": "lab"}, Group: "groups/lab", DesiredRevision: 5, AppliedRevision: 5,
			SyncState: mpfleetv1.SyncState_SYNC_STATE_DISCONNECTED, LastSeenTime: timestamppb.New(testNow.Add(-3 * time.Hour)),
			Problems: []*mpfleetv1.HostProblem{{Code: mpfleetv1.HostProblem_CODE_LINK_DOWN, Interface: "eth1", Address: "198.18.2.5",
				Message: "link eth1 is down: its subflows cannot be established"}},
			Health: &mpfleetv1.MptcpHealth{ReadTime: timestamppb.New(testNow.Add(-3 * time.Hour)), Paths: []*mpfleetv1.PathStatus{
				{Interface: "eth0", Address: "198.18.1.5", State: mpfleetv1.PathState_PATH_STATE_OK, Table: 7100},
				{Interface: "eth1", Address: "198.18.2.5", State: mpfleetv1.PathState_PATH_STATE_LINK_DOWN, Table: 7101},
			}},
		},
	}
}

// degradedHost is a host whose revision is applied but whose policy is not
// fully realized: one address has no gateway, one path fails its probe.
func degradedHost() *mpfleetv1.Host {
	checked := timestamppb.New(testNow.Add(-4 * time.Second))
	return &mpfleetv1.Host{
		Name: "hosts/h4", Labels: map[string]string{"role": "lab"}, Group: "groups/lab", DesiredRevision: 5, AppliedRevision: 5,
		SyncState: mpfleetv1.SyncState_SYNC_STATE_DEGRADED, Connected: true, LastSeenTime: timestamppb.New(testNow.Add(-2 * time.Second)),
		AgentVersion: "v0.2.0",
		Problems: []*mpfleetv1.HostProblem{
			{Code: mpfleetv1.HostProblem_CODE_GATEWAY_UNKNOWN, Interface: "eth2", Address: "198.18.3.2",
				Message: "no gateway known for 198.18.3.2: table 7102 gets no default route; name one in routing.gateways " +
					"(gateway or host_index), or give eth2 a route in the main table"},
			{Code: mpfleetv1.HostProblem_CODE_PATH_FAILED, Interface: "eth1", Address: "198.18.2.2",
				Message: "no MPTCP connection from 198.18.2.2 reached probe 198.18.9.9:5201 within 3s"},
		},
		Health: &mpfleetv1.MptcpHealth{
			ReadTime: timestamppb.New(testNow.Add(-2 * time.Second)),
			Paths: []*mpfleetv1.PathStatus{
				{Interface: "eth0", Address: "198.18.1.2", State: mpfleetv1.PathState_PATH_STATE_OK, Gateway: "198.18.1.1", Table: 7100,
					LastCheckTime: checked, ProbeLatency: durationpb.New(1234 * time.Microsecond)},
				{Interface: "eth1", Address: "198.18.2.2", State: mpfleetv1.PathState_PATH_STATE_FAILED, Gateway: "198.18.2.1", Table: 7101,
					LastCheckTime: checked, Message: "probe 198.18.9.9:5201: connect: connection timed out after 3s"},
				{Interface: "eth2", Address: "198.18.3.2", State: mpfleetv1.PathState_PATH_STATE_NO_GATEWAY, Table: 7102,
					LastCheckTime: checked, Message: "no gateway known"},
			},
		},
	}
}

func TestGetHosts(t *testing.T) {
	c := newController(t)
	c.hosts.hosts = testHosts()
	r := c.run(t, "", nil, "get", "hosts")
	want := `NAME   GROUP   STATE          HEALTH                 DESIRED   APPLIED   ENDPOINTS   CONNS   SUBFLOWS   LAST SEEN
h1     web     in_sync        ok                     3         3         2           2       3          5s
h2     web     failed         -                      3         2         0           0       0          never
h3     db,x    conflict       -                      -         -         0           0       0          never
h4     lab     degraded       degraded: 2 problems   5         5         0           0       0          2s
h5     lab     disconnected   degraded: 1 problem    5         5         0           0       0          3h
`
	if r.err != nil || r.stdout != want {
		t.Errorf("get hosts: %v, printed:\n%s\nwant:\n%s", r.err, r.stdout, want)
	}

	r = c.run(t, "", nil, "get", "hosts", "-l", "role=web", "--group", "web", "--state", "failed", "-o", "json")
	var list mpfleetv1.ListHostsResponse
	if err := protojson.Unmarshal([]byte(r.stdout), &list); err != nil || len(list.GetHosts()) != 1 || list.GetHosts()[0].GetName() != "hosts/h2" {
		t.Errorf("filtered -o json: %v, %v", err, r.stdout)
	}
	req := c.hosts.requests[len(c.hosts.requests)-1]
	if req.GetLabelSelector() != "role=web" || req.GetGroup() != "groups/web" || req.GetSyncState() != mpfleetv1.SyncState_SYNC_STATE_FAILED {
		t.Errorf("request %v", req)
	}
	wantOneLineError(t, c.run(t, "", nil, "get", "hosts", "--state", "sideways"), 2,
		`mpfleetctl: --state "sideways": want one of in_sync, applying, drifted, failed, conflict, unmanaged, disconnected, degraded (see 'mpfleetctl get hosts --help')`)
	wantOneLineError(t, c.run(t, "", nil, "get", "hosts", "-l", "role in (a"), 2,
		`mpfleetctl: -l "role in (a": '(' without ')' (see 'mpfleetctl get hosts --help')`)
}

func TestDescribeHost(t *testing.T) {
	c := newController(t)
	c.hosts.hosts = testHosts()
	r := c.run(t, "", nil, "describe", "host", "h1")
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Logf("describe host h1:\n%s", r.stdout)
	for _, want := range []string{
		"Name:       h1\n",
		"Group:      web\n",
		"State:      in_sync\n",
		"Revision:   desired 3, applied 3\n",
		"Connected:  yes, last seen 5s ago (2025-11-25T11:59:55Z)\n",
		"Labels:     role=web,zone=a\n",
		"  Kernel:        6.18.0 (MPTCP supported)\n",
		"  eth1   3       up      198.18.2.2/24   198.18.2.1\n",
		"  Limits: subflows 2, add_addr_accepted 2\n",
		"    2    198.18.2.2   -      subflow,backup   eth1\n",
		"    7100       198.18.1.2/32   7100\n",
		"    7100    0.0.0.0/0     198.18.1.1   eth0        198.18.1.2\n",
		"    net.mptcp.enabled = 1\n",
		"MPTCP health (read 3s ago):\n",
		"  Connections: 2 open, 3 subflows, 1 fell back to TCP\n",
		"  198.18.1.2:5201   198.18.9.9:40000   1          no         deadbeef\n",
		"    MPCapableSYNRX   12\n",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("describe host lacks %q; printed:\n%s", want, r.stdout)
		}
	}
}

func TestWatchHostsPrintsChangesOnly(t *testing.T) {
	c := newController(t)
	hosts := testHosts()
	h1b := proto.Clone(hosts[0]).(*mpfleetv1.Host)
	h1b.LastSeenTime = timestamppb.New(testNow) // a report that changes nothing shown
	h1c := proto.Clone(h1b).(*mpfleetv1.Host)
	h1c.SyncState = mpfleetv1.SyncState_SYNC_STATE_DRIFTED
	c.hosts.events = []*mpfleetv1.HostEvent{
		{Type: mpfleetv1.HostEvent_TYPE_UPSERT, Host: hosts[0]},
		{Type: mpfleetv1.HostEvent_TYPE_UPSERT, Host: hosts[1]},
		{Type: mpfleetv1.HostEvent_TYPE_SYNCED},
		{Type: mpfleetv1.HostEvent_TYPE_UPSERT, Host: h1b},
		{Type: mpfleetv1.HostEvent_TYPE_UPSERT, Host: h1c},
		{Type: mpfleetv1.HostEvent_TYPE_DELETED, Host: hosts[1]},
	}
	r := c.run(t, "", nil, "watch", "hosts")
	want := `12:00:00 host/h1 in_sync group=web rev=3/3 endpoints=2 conns=2 subflows=3 fallbacks=1
12:00:00 host/h2 failed group=web rev=2/3 endpoints=0 conns=0 subflows=0 fallbacks=0 error="add endpoint: ERANGE"
12:00:00 host/h1 drifted group=web rev=3/3 endpoints=2 conns=2 subflows=3 fallbacks=1
12:00:00 host/h2 deleted
`
	if r.stdout != want {
		t.Errorf("watch hosts printed:\n%s\nwant:\n%s", r.stdout, want)
	}
	if r.stderr != "mpfleetctl: 2 hosts listed; watching for changes\nmpfleetctl: watch hosts: the controller ended the stream\n" || r.code() != 1 {
		t.Errorf("exit %d, stderr %q", r.code(), r.stderr)
	}
	r = c.run(t, "", nil, "watch", "hosts", "-o", "json")
	if n := strings.Count(r.stdout, "\n"); n != 6 {
		t.Errorf("-o json printed %d lines, want every event:\n%s", n, r.stdout)
	}
}

func TestPlan(t *testing.T) {
	c := newController(t)
	c.groups.put("web", &mpfleetv1.Group{})
	c.hosts.hosts = testHosts()
	file := writeFile(t, twoGroups)
	r := c.run(t, "", nil, "plan", "-f", file)
	want := `group/web: 2 hosts, 2 to change
  host/h1: 2 operations
    + endpoint 198.18.1.2 subflow dev eth0
    + endpoint 198.18.2.2 subflow dev eth1
  host/h2: cannot plan: add endpoint: ERANGE
group/db: does not exist yet, no hosts to plan
`
	if r.err != nil || r.stdout != want {
		t.Errorf("plan: %v, printed:\n%s\nwant:\n%s", r.err, r.stdout, want)
	}
	if p := c.hosts.plans[0]; p.GetGroup() != "groups/web" || p.GetPolicy().GetLimits().GetSubflows() != 2 {
		t.Errorf("plan request %v", p)
	}
	r = c.run(t, "", nil, "plan", "-f", file, "-o", "json")
	var got []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || len(got) != 2 || got[0]["group"] != "groups/web" || got[1]["error"] == nil {
		t.Errorf("plan -o json: %v\n%s", err, r.stdout)
	}
	if c.groups.writeCount() != 0 {
		t.Error("plan wrote")
	}
}

var hexID = regexp.MustCompile(`^[0-9a-f]{32}$`)

func TestMetadata(t *testing.T) {
	c := newController(t)
	c.groups.put("a", &mpfleetv1.Group{})
	c.groups.put("b", &mpfleetv1.Group{})
	c.groups.put("c", &mpfleetv1.Group{})
	if r := c.run(t, "", map[string]string{"MPFLEET_TOKEN": "s3cret"}, "get", "groups"); r.err != nil {
		t.Fatal(r.err)
	}
	if r := c.run(t, "", nil, "get", "group", "a"); r.err != nil {
		t.Fatal(r.err)
	}
	c.mu.Lock()
	calls := c.calls
	c.mu.Unlock()
	if len(calls) != 3 {
		t.Fatalf("got %d calls, want 3", len(calls))
	}
	seen := map[string]bool{}
	for i, cl := range calls {
		if !hexID.MatchString(cl.requestID) || seen[cl.requestID] {
			t.Errorf("call %d: x-request-id %q is not a fresh random id", i, cl.requestID)
		}
		seen[cl.requestID] = true
		wantAuth := ""
		if i < 2 {
			wantAuth = "Bearer s3cret"
		}
		if cl.auth != wantAuth {
			t.Errorf("call %d: authorization %q, want %q", i, cl.auth, wantAuth)
		}
	}
}

func TestControllerFromEnvironment(t *testing.T) {
	c := newController(t)
	r := runCLI(t, "", map[string]string{"MPFLEET_CONTROLLER": c.addr, "MPFLEET_OUTPUT": "json"}, "get", "groups")
	if r.err != nil || strings.TrimSpace(r.stdout) != "{}" {
		t.Errorf("get groups via MPFLEET_CONTROLLER and MPFLEET_OUTPUT: %v, %q", r.err, r.stdout)
	}
	// The flag wins over the environment.
	r = runCLI(t, "", map[string]string{"MPFLEET_CONTROLLER": "127.0.0.1:1"}, "--controller", c.addr, "get", "groups")
	if r.err != nil {
		t.Errorf("--controller did not win over MPFLEET_CONTROLLER: %v", r.err)
	}
	wantOneLineError(t, runCLI(t, "", map[string]string{"MPFLEET_TIMEOUT": "soon"}, "get", "groups"), 2,
		`mpfleetctl: MPFLEET_TIMEOUT="soon": time: invalid duration "soon" (see 'mpfleetctl get groups --help')`)
}

func TestConnectionRefusals(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"plaintext to a remote controller", []string{"--controller", "198.18.0.1:7400", "get", "groups"},
			"mpfleetctl: controller 198.18.0.1:7400 is not a loopback address: use --tls (with --ca-file for a private CA), or --insecure to send plaintext anyway"},
		{"a name is not trusted to be loopback", []string{"--controller", "ctl.example", "get", "groups"},
			"mpfleetctl: controller ctl.example:7400 is not a loopback address: use --tls (with --ca-file for a private CA), or --insecure to send plaintext anyway"},
		{"token in plaintext", []string{"--controller", "198.18.0.1:7400", "--insecure", "--token", "t", "get", "groups"},
			"mpfleetctl: refusing to send the token in plaintext to 198.18.0.1:7400: use --tls"},
		{"insecure with tls", []string{"--insecure", "--tls", "get", "groups"},
			"mpfleetctl: --insecure (plaintext) cannot be combined with TLS flags (see 'mpfleetctl get groups --help')"},
		{"cert without key", []string{"--cert-file", "c.pem", "get", "groups"},
			"mpfleetctl: --cert-file and --key-file go together (see 'mpfleetctl get groups --help')"},
		{"bad output", []string{"-o", "xml", "get", "groups"},
			`mpfleetctl: --output "xml": must be table, json, yaml, name, wide or jsonpath=TEMPLATE (see 'mpfleetctl get groups --help')`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantOneLineError(t, runCLI(t, "", nil, tt.args...), 2, tt.want)
		})
	}
	r := runCLI(t, "", nil, "--tls", "--ca-file", filepath.Join(t.TempDir(), "missing.pem"), "get", "groups")
	if r.code() != 1 || !strings.HasPrefix(r.stderr, "mpfleetctl: --ca-file: open ") || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("missing CA file: exit %d, %q", r.code(), r.stderr)
	}
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"frobnicate"}, `mpfleetctl: unknown command "frobnicate" for "mpfleetctl" (see 'mpfleetctl --help')`},
		{[]string{"get", "groups", "--colour"}, `mpfleetctl: unknown flag: --colour (see 'mpfleetctl get groups --help')`},
		{[]string{"get"}, `mpfleetctl: get: missing resource type (one of: groups, hosts) (see 'mpfleetctl get --help')`},
		{[]string{"get", "rollouts"}, `mpfleetctl: get: unknown resource type "rollouts" (one of: groups, hosts) (see 'mpfleetctl get --help')`},
		{[]string{"apply"}, `mpfleetctl: -f FILE is required (-f - reads stdin; -f DIR reads a directory) (see 'mpfleetctl apply --help')`},
		{[]string{"delete", "group"}, `mpfleetctl: group: want NAME, got 0 argument(s) (see 'mpfleetctl delete group --help')`},
		{[]string{"diff", "web", "1"}, `mpfleetctl: diff: want GROUP REV1 REV2 (or -f FILE), got 2 argument(s) (see 'mpfleetctl diff --help')`},
		{[]string{"audit"}, `mpfleetctl: audit: missing command (one of: list, verify, watch) (see 'mpfleetctl audit --help')`},
		{[]string{"audit", "list", "extra"}, `mpfleetctl: unknown command "extra" for "mpfleetctl audit list" (see 'mpfleetctl audit list --help')`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			wantOneLineError(t, runCLI(t, "", nil, tt.args...), 2, tt.want)
		})
	}
}

func TestUnreachableController(t *testing.T) {
	r := runCLI(t, "", nil, "--controller", "127.0.0.1:1", "--timeout", "2s", "get", "groups")
	if r.code() != 1 || !strings.HasPrefix(r.stderr, "mpfleetctl: list groups: cannot reach controller 127.0.0.1:1: ") || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("unreachable controller: exit %d, stderr %q", r.code(), r.stderr)
	}
}

func allCommands(cmd *cobra.Command) []*cobra.Command {
	out := []*cobra.Command{cmd}
	for _, c := range cmd.Commands() {
		out = append(out, allCommands(c)...)
	}
	return out
}

func TestHelpExplainsEveryCommand(t *testing.T) {
	a := &app{}
	for _, cmd := range allCommands(a.rootCommand()) {
		if cmd.Name() == "help" || cmd.Name() == "completion" || cmd.HasParent() && cmd.Parent().Name() == "completion" {
			continue
		}
		if cmd.Short == "" || cmd.Example == "" {
			t.Errorf("%q has no short help or no example", cmd.CommandPath())
		}
	}
	r := runCLI(t, "", nil, "apply", "--help")
	if r.err != nil || !strings.Contains(r.stdout, "group/web configured (revision 2)") || !strings.Contains(r.stdout, "--dry-run") {
		t.Errorf("apply --help: %v\n%s", r.err, r.stdout)
	}
}
