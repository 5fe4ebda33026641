package cli

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

func TestUnifiedDiff(t *testing.T) {
	tests := []struct {
		name string
		a, b string
		want string
	}{
		{"equal", "a\nb\n", "a\nb\n", ""},
		{"both empty", "", "", ""},
		{"from nothing", "", "a\nb\n", "--- x\n+++ y\n@@ -0,0 +1,2 @@\n+a\n+b\n"},
		{"to nothing", "a\n", "", "--- x\n+++ y\n@@ -1 +0,0 @@\n-a\n"},
		{"one change in the middle", "1\n2\n3\n4\n5\n6\n7\n8\n9\n", "1\n2\n3\n4\nfive\n6\n7\n8\n9\n",
			"--- x\n+++ y\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n"},
		{"two hunks", "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n", "one\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\ntwelve\n",
			"--- x\n+++ y\n@@ -1,4 +1,4 @@\n-1\n+one\n 2\n 3\n 4\n@@ -9,4 +9,4 @@\n 9\n 10\n 11\n-12\n+twelve\n"},
		{"close changes share a hunk", "1\n2\n3\n4\n5\n6\n7\n8\n", "one\n2\n3\n4\n5\n6\n7\neight\n",
			"--- x\n+++ y\n@@ -1,8 +1,8 @@\n-1\n+one\n 2\n 3\n 4\n 5\n 6\n 7\n-8\n+eight\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := unifiedDiff("x", "y", tt.a, tt.b, 3); got != tt.want {
				t.Errorf("unifiedDiff:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

var hunkHeader = regexp.MustCompile(`^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@$`)

// applyPatch applies a unified diff made by unifiedDiff to a, checking each
// hunk's header and context as patch(1) would.
func applyPatch(t *testing.T, a, diff string) string {
	t.Helper()
	src := splitLines(a)
	lines := splitLines(diff)
	var out []string
	next := 0 // index in src of the next line not yet copied
	for i := 2; i < len(lines); {
		m := hunkHeader.FindStringSubmatch(lines[i])
		if m == nil {
			t.Fatalf("line %d: %q is not a hunk header", i, lines[i])
		}
		num := func(s string, def int) int {
			if s == "" {
				return def
			}
			n, _ := strconv.Atoi(s)
			return n
		}
		start, count := num(m[1], 0), num(m[2], 1)
		bcount := num(m[4], 1)
		from := start - 1
		if count == 0 {
			from = start
		}
		out = append(out, src[next:from]...)
		next = from
		i++
		var seenA, seenB int
		for ; i < len(lines) && !strings.HasPrefix(lines[i], "@@"); i++ {
			l := lines[i]
			switch l[0] {
			case ' ', '-':
				if next >= len(src) || src[next] != l[1:] {
					t.Fatalf("hunk line %q does not match source line %d", l, next+1)
				}
				next++
				seenA++
				if l[0] == ' ' {
					out = append(out, l[1:])
					seenB++
				}
			case '+':
				out = append(out, l[1:])
				seenB++
			}
		}
		if seenA != count || seenB != bcount {
			t.Fatalf("hunk %q holds %d/%d lines", m[0], seenA, seenB)
		}
	}
	out = append(out, src[next:]...)
	if len(out) == 0 {
		return ""
	}
	return strings.Join(out, "\n") + "\n"
}

// TestUnifiedDiffApplies checks on random texts that applying the diff to
// the first text gives the second.
func TestUnifiedDiffApplies(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	text := func() string {
		var b strings.Builder
		for range r.IntN(30) {
			fmt.Fprintf(&b, "%c\n", 'a'+r.IntN(4))
		}
		return b.String()
	}
	for i := range 500 {
		a, b := text(), text()
		d := unifiedDiff("a", "b", a, b, r.IntN(4))
		if (d == "") != (a == b) {
			t.Fatalf("case %d: diff %q for %q → %q", i, d, a, b)
		}
		if d == "" {
			continue
		}
		if got := applyPatch(t, a, d); got != b {
			t.Fatalf("case %d: patching %q with\n%s\ngave %q, want %q", i, a, d, got, b)
		}
	}
}

func TestMarshalJSONIsStable(t *testing.T) {
	g := fullGroup()
	first, err := marshalJSON(g, false)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"description":"web tier, two uplinks","selector":{"matchLabels":{"role":"web"}},"policy":{"enabled":true,` +
		`"limits":{"subflows":2,"addAddrAccepted":2},"endpoints":[{"interface":"eth*","cidr":"198.18.0.0/15",` +
		`"family":"ADDRESS_FAMILY_IPV4","flags":["ENDPOINT_FLAG_SUBFLOW","ENDPOINT_FLAG_BACKUP"]}],` +
		`"routing":{"enabled":true},"sysctls":{"scheduler":"default","checksumEnabled":false}}}`
	if string(first) != want {
		t.Errorf("marshalJSON:\n%s\nwant:\n%s", first, want)
	}
	for range 20 {
		again, _ := marshalJSON(g, true)
		compact, _ := marshalJSON(g, false)
		if string(compact) != string(first) || !strings.Contains(string(again), "\n  \"description\": \"web tier, two uplinks\",\n") {
			t.Fatalf("marshalJSON varies: %s / %s", compact, again)
		}
	}
}

func TestHumanDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second: "0s", 0: "0s", 59 * time.Second: "59s", time.Minute: "1m", 59 * time.Minute: "59m",
		time.Hour: "1h", 47 * time.Hour: "47h", 48 * time.Hour: "2d", 400 * 24 * time.Hour: "400d",
	} {
		if got := humanDuration(d); got != want {
			t.Errorf("humanDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestRPCErrorRendering(t *testing.T) {
	bad, _ := status.New(codes.InvalidArgument, "invalid group").WithDetails(&errdetails.BadRequest{
		FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: "group.policy.limits.subflows", Description: "must be at most 8 (kernel maximum)"},
			{Field: "group.policy.endpoints[1].flags", Reason: "FULLMESH_WITH_SIGNAL"},
		},
	})
	tests := []struct {
		err  error
		want string
	}{
		{status.Error(codes.NotFound, `group "web" not found`), "not found"},
		{status.Error(codes.AlreadyExists, "exists"), "already exists"},
		{status.Error(codes.Aborted, `group "web" (etag 1, stored 3): etag mismatch`), "changed since it was read (stale etag): read it again and retry"},
		{bad.Err(), "invalid argument: group.policy.limits.subflows: must be at most 8 (kernel maximum); group.policy.endpoints[1].flags: FULLMESH_WITH_SIGNAL"},
		{status.Error(codes.InvalidArgument, "group_id: must start with a letter"), "invalid argument: group_id: must start with a letter"},
		{status.Error(codes.Unavailable, `connection error: desc = "transport: Error while dialing: dial tcp 127.0.0.1:7400: connect: connection refused"`),
			"cannot reach controller 127.0.0.1:7400: dial tcp 127.0.0.1:7400: connect: connection refused"},
		{status.Error(codes.DeadlineExceeded, "context deadline exceeded"), "no answer from controller 127.0.0.1:7400 within 10s (deadline exceeded)"},
		{context.DeadlineExceeded, "no answer from controller 127.0.0.1:7400 within 10s (deadline exceeded)"},
		{status.Error(codes.Unauthenticated, "missing bearer token"), "unauthenticated: missing bearer token (give a token with --token or MPFLEET_TOKEN)"},
		{status.Error(codes.PermissionDenied, "viewer may not update groups"), "permission denied: viewer may not update groups"},
		{status.Error(codes.FailedPrecondition, "rollout in progress"), "failed precondition: rollout in progress"},
		{status.Error(codes.ResourceExhausted, ""), "resource exhausted"},
		{status.Error(codes.Unimplemented, "unknown service mpfleet.v1.HostService"), "not supported by controller 127.0.0.1:7400: unknown service mpfleet.v1.HostService"},
	}
	a := &app{controller: "127.0.0.1:7400", timeout: 10 * time.Second}
	for _, tt := range tests {
		err := a.rpcErr(tt.err)
		if got := err.Error(); got != tt.want {
			t.Errorf("rpcErr(%v) = %q, want %q", tt.err, got, tt.want)
		}
		if s, ok := status.FromError(tt.err); ok && status.Code(err) != s.Code() {
			t.Errorf("status.Code(rpcErr(%v)) = %v, want %v", tt.err, status.Code(err), s.Code())
		}
	}
}

func TestParseController(t *testing.T) {
	tests := []struct {
		in       string
		dial     string
		loopback bool
		bad      bool
	}{
		{in: "127.0.0.1:7400", dial: "127.0.0.1:7400", loopback: true},
		{in: "127.1.2.3:80", dial: "127.1.2.3:80", loopback: true},
		{in: "localhost", dial: "localhost:7400", loopback: true},
		{in: "[::1]:9000", dial: "[::1]:9000", loopback: true},
		{in: "::1", dial: "[::1]:7400", loopback: true},
		{in: "::ffff:127.0.0.1", dial: "[::ffff:127.0.0.1]:7400", loopback: true},
		{in: "dns:///localhost:7400", dial: "localhost:7400", loopback: true},
		{in: "unix:/run/mpfleet.sock", dial: "unix:/run/mpfleet.sock", loopback: true},
		{in: "198.18.0.1", dial: "198.18.0.1:7400"},
		{in: "ctl.example:7400", dial: "ctl.example:7400"},
		{in: "localhost.evil.example:7400", dial: "localhost.evil.example:7400"},
		{in: "", bad: true},
		{in: "http://x/y", bad: true},
	}
	for _, tt := range tests {
		got, err := parseController(tt.in)
		if tt.bad {
			if !IsUsageError(err) {
				t.Errorf("parseController(%q) = %v, %v; want a usage error", tt.in, got, err)
			}
			continue
		}
		if err != nil || got.dial != tt.dial || got.loopback != tt.loopback {
			t.Errorf("parseController(%q) = %+v, %v; want dial %q loopback %v", tt.in, got, err, tt.dial, tt.loopback)
		}
	}
}

func TestSameSpecIgnoresEmptyMessages(t *testing.T) {
	a := &mpfleetv1.Group{Policy: &mpfleetv1.MultipathPolicy{Limits: &mpfleetv1.Limits{}, Routing: &mpfleetv1.Routing{}}, Selector: &mpfleetv1.Selector{}}
	b := &mpfleetv1.Group{Policy: &mpfleetv1.MultipathPolicy{}, Etag: "7", PolicyRevision: 3}
	if !sameSpec(a, b) {
		t.Error("empty limits, routing and selector differ from none")
	}
	c := proto.Clone(b).(*mpfleetv1.Group)
	c.Policy.Limits = &mpfleetv1.Limits{Subflows: proto.Uint32(0)}
	if sameSpec(a, c) {
		t.Error("subflows: 0 equals unset limits")
	}
	if sameSpec(&mpfleetv1.Group{}, &mpfleetv1.Group{Policy: &mpfleetv1.MultipathPolicy{Enabled: proto.Bool(false)}}) {
		t.Error("enabled: false equals unset")
	}
	if a.GetPolicy().GetLimits() == nil {
		t.Error("sameSpec changed its argument")
	}
}

// TestDocsExamples parses every Group document of docs/cli.md, so the
// documentation cannot drift from the parser.
func TestDocsExamples(t *testing.T) {
	data, err := os.ReadFile("../docs/cli.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(data), -1)
	n := 0
	for _, b := range blocks {
		if !strings.Contains(b[1], "kind: Group") {
			continue
		}
		n++
		if _, err := parseManifests("docs/cli.md", []byte(b[1])); err != nil {
			t.Errorf("docs/cli.md example %d: %v\n%s", n, err, b[1])
		}
	}
	if n == 0 {
		t.Error("docs/cli.md has no Group example")
	}
}
