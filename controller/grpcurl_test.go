package controller_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/nstest"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..")
}

func grpcurlBinary(t *testing.T) string {
	if p := os.Getenv("MPFLEET_GRPCURL"); p != "" {
		return p
	}
	p := filepath.Join(repoRoot(), ".tools", "bin", "grpcurl")
	if _, err := os.Stat(p); err != nil {
		nstest.Skip(t, "grpcurl not installed: run `make tools` or set MPFLEET_GRPCURL")
	}
	return p
}

// docExample is one ```sh block of docs/api.md and the output block after it.
type docExample struct {
	args       []string
	expect     string // status code name the command must fail with
	outStart   int    // byte range of the output block (fences included)
	outEnd     int
	outputText string
}

var fenceRe = regexp.MustCompile("(?ms)^```sh\n(.*?)^```\n(\n```[a-z]*\n.*?^```\n)?")

func parseDocExamples(t *testing.T, doc string) []docExample {
	t.Helper()
	var exs []docExample
	for _, m := range fenceRe.FindAllStringSubmatchIndex(doc, -1) {
		body := doc[m[2]:m[3]]
		ex := docExample{outStart: -1}
		var cmd []string
		for _, line := range strings.Split(body, "\n") {
			if c, ok := strings.CutPrefix(line, "# expect: "); ok {
				ex.expect = strings.TrimSpace(c)
				continue
			}
			if strings.HasPrefix(line, "#") {
				continue
			}
			cmd = append(cmd, line)
		}
		args, err := shellWords(strings.Join(cmd, "\n"))
		if err != nil {
			t.Fatalf("docs/api.md: %v in %q", err, body)
		}
		if len(args) == 0 || args[0] != "grpcurl" {
			t.Fatalf("docs/api.md: sh block is not a grpcurl command: %q", body)
		}
		ex.args = args[1:]
		if m[4] >= 0 {
			ex.outStart, ex.outEnd = m[4]+1, m[5] // keep the blank line
		}
		exs = append(exs, ex)
	}
	return exs
}

// shellWords splits like a POSIX shell for the subset the docs use: blanks,
// single quotes, double quotes without escapes, backslash-newline.
func shellWords(s string) ([]string, error) {
	var out []string
	var cur strings.Builder
	in := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\'' || c == '"':
			j := strings.IndexByte(s[i+1:], c)
			if j < 0 {
				return nil, errors.New("unterminated quote")
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			in = true
		case c == '\\' && i+1 < len(s) && s[i+1] == '\n':
			i++
		case c == ' ' || c == '\t' || c == '\n':
			if in {
				out = append(out, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteByte(c)
			in = true
		}
	}
	if in {
		out = append(out, cur.String())
	}
	return out, nil
}

var grpcCodeRe = regexp.MustCompile(`Code: (\w+)`)

// TestGRPCurlSession runs every grpcurl example of docs/api.md, in order,
// against a real controller with nothing but reflection, then checks the
// state they left. MPFLEET_UPDATE_DOCS=1 writes the outputs into the doc.
func TestGRPCurlSession(t *testing.T) {
	bin := grpcurlBinary(t)
	docPath := filepath.Join(repoRoot(), "docs", "api.md")
	raw, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	exs := parseDocExamples(t, doc)
	if len(exs) < 10 {
		t.Fatalf("docs/api.md has %d grpcurl examples; expected every GroupService and AuditService method", len(exs))
	}
	r := runController(t, embeddedArgs(t, t.TempDir())...)
	methods := map[string]bool{}
	for i := range exs {
		ex := &exs[i]
		args := make([]string, len(ex.args))
		for j, a := range ex.args {
			args[j] = strings.ReplaceAll(a, "127.0.0.1:7400", r.addr)
			if strings.HasPrefix(a, "mpfleet.v1.") {
				methods[a] = true
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, bin, args...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		cancel()
		switch {
		case ex.expect == "" && err != nil:
			t.Fatalf("example %d (grpcurl %s) failed: %v\n%s%s", i, strings.Join(ex.args, " "), err, stdout.String(), stderr.String())
		case ex.expect != "":
			m := grpcCodeRe.FindStringSubmatch(stderr.String())
			if err == nil || m == nil || m[1] != ex.expect {
				t.Fatalf("example %d (grpcurl %s): want failure %s, got err=%v\n%s", i, strings.Join(ex.args, " "), ex.expect, err, stderr.String())
			}
			ex.outputText = stdout.String() + stderr.String()
		default:
			ex.outputText = stdout.String()
		}
	}
	for _, m := range []string{
		"CreateGroup", "GetGroup", "ListGroups", "UpdateGroup", "DeleteGroup", "ListPolicyRevisions", "GetPolicyRevision",
	} {
		if !methods["mpfleet.v1.GroupService/"+m] {
			t.Errorf("docs/api.md has no grpcurl example of GroupService/%s", m)
		}
	}
	for _, m := range []string{"ListAuditEvents", "WatchAuditEvents", "VerifyAuditLog"} {
		if !methods["mpfleet.v1.AuditService/"+m] {
			t.Errorf("docs/api.md has no grpcurl example of AuditService/%s", m)
		}
	}

	// What the session must have left behind.
	ctx := ctxT(t)
	gc := pb.NewGroupServiceClient(r.conn)
	g, err := gc.GetGroup(ctx, &pb.GetGroupRequest{Name: "groups/web"})
	if err != nil || g.PolicyRevision != 2 || g.GetPolicy().GetLimits().GetSubflows() != 4 || g.Description != "web tier, two uplinks" {
		t.Fatalf("groups/web after the session = %v, %v", g, err)
	}
	for _, gone := range []string{"groups/db", "groups/scratch"} {
		if _, err := gc.GetGroup(ctx, &pb.GetGroupRequest{Name: gone}); status.Code(err) != codes.NotFound {
			t.Fatalf("%s: %v, want NOT_FOUND", gone, err)
		}
	}
	v, err := pb.NewAuditServiceClient(r.conn).VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{})
	// create web, update web, update web (aborted), create scratch, delete scratch
	if err != nil || !v.Ok || v.EventsChecked != 5 {
		t.Fatalf("verify = %v, %v", v, err)
	}

	if os.Getenv("MPFLEET_UPDATE_DOCS") == "1" {
		var b strings.Builder
		last := 0
		for _, ex := range exs {
			if ex.outStart < 0 {
				continue
			}
			lang := "json"
			if ex.expect != "" {
				lang = "text"
			}
			b.WriteString(doc[last:ex.outStart])
			b.WriteString("```" + lang + "\n" + strings.TrimRight(ex.outputText, "\n") + "\n```\n")
			last = ex.outEnd
		}
		b.WriteString(doc[last:])
		if err := os.WriteFile(docPath, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("updated %s", docPath)
	}
}
