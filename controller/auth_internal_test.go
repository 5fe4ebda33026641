package controller

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// apiMethods lists every method of every service of package mpfleet.v1,
// from the descriptors compiled into the binary.
func apiMethods(t *testing.T) []string {
	t.Helper()
	_ = pb.File_mpfleet_v1_host_proto // make sure the files are registered
	var out []string
	protoregistry.GlobalFiles.RangeFilesByPackage("mpfleet.v1", func(fd protoreflect.FileDescriptor) bool {
		for i := range fd.Services().Len() {
			sd := fd.Services().Get(i)
			for j := range sd.Methods().Len() {
				out = append(out, fmt.Sprintf("/%s/%s", sd.FullName(), sd.Methods().Get(j).Name()))
			}
		}
		return true
	})
	slices.Sort(out)
	if len(out) < 20 {
		t.Fatalf("found only %d methods: %v", len(out), out)
	}
	return out
}

// TestAuthorizationTable: every method of the API has an entry (a new
// method without one is denied to everyone, and fails here), and every entry
// is a method.
func TestAuthorizationTable(t *testing.T) {
	methods := apiMethods(t)
	for _, m := range methods {
		if _, ok := methodRoles[m]; !ok {
			t.Errorf("%s has no entry in methodRoles: decide which role may call it", m)
		}
	}
	for m := range methodRoles {
		if !slices.Contains(methods, m) {
			t.Errorf("methodRoles names %s, which is not a method of the API", m)
		}
	}
	if r := minRole("/mpfleet.v1.GroupService/Invented"); r != roleUnknown || allowed(RoleAdmin, r) {
		t.Errorf("an unknown method needs %v and admin may call it: want denied", r)
	}
}

// TestAuthorizationMatrix: every method × every credential, decided by the
// authenticator as a request would be.
func TestAuthorizationMatrix(t *testing.T) {
	sum := func(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }
	store := &credStore{}
	store.tokens.Store(&tokenSet{entries: []tokenEntry{
		{name: "victor", role: RoleViewer, sum: sum("v")},
		{name: "olga", role: RoleOperator, sum: sum("o")},
		{name: "adam", role: RoleAdmin, sum: sum("a")},
		{name: "web-1-agent", role: RoleAgent, sum: sum("g"), host: "web-1"},
	}})
	a := &authenticator{creds: store}
	creds := []struct {
		name  string
		token string
		role  Role
	}{
		{"none", "", RoleNone}, {"viewer", "v", RoleViewer}, {"operator", "o", RoleOperator},
		{"admin", "a", RoleAdmin}, {"agent", "g", RoleAgent},
	}
	for _, m := range apiMethods(t) {
		need := methodRoles[m]
		for _, c := range creds {
			ctx := context.Background()
			if c.token != "" {
				ctx = metadata.NewIncomingContext(ctx, metadata.Pairs("authorization", "Bearer "+c.token))
			}
			_, err := a.identify(ctx, m)
			var want codes.Code
			switch {
			case c.role == RoleNone:
				want = codes.Unauthenticated
			case c.role == RoleAgent && need != RoleAgent, need == RoleAgent && c.role != RoleAgent, c.role < need:
				want = codes.PermissionDenied
			default:
				want = codes.OK
			}
			if got := status.Code(err); got != want {
				t.Errorf("%s as %s: %v, want %s", m, c.name, err, want)
			}
		}
	}
	// The agent token is bound to its host.
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer g"))
	c, err := a.identify(ctx, "/mpfleet.v1.AgentService/Connect")
	if err != nil {
		t.Fatal(err)
	}
	if cl := callerFrom(c); !cl.mayBeHost("web-1") || cl.mayBeHost("web-2") || cl.Actor != "agent:web-1" {
		t.Errorf("agent caller %+v", cl)
	}
}

func TestAgentTokensAreBound(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ yaml, want string }{
		{"- {name: a, role: agent, tokenSHA256: %s}\n", "bound to one host"},
		{"- {name: a, role: agent, host: Web_1, tokenSHA256: %s}\n", "bound to one host"},
		{"- {name: a, role: viewer, host: web-1, tokenSHA256: %s}\n", "only for role agent"},
	} {
		p := dir + "/t.yaml"
		if err := writeFile(p, fmt.Sprintf(tc.yaml, strings.Repeat("ab", 32))); err != nil {
			t.Fatal(err)
		}
		if _, err := loadTokens(p); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err %v, want %q", tc.yaml, err, tc.want)
		}
	}
}

func writeFile(p, s string) error { return os.WriteFile(p, []byte(s), 0o600) }
