package controller_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// TestAgentIdentity: over real gRPC, an agent token may speak
// AgentService.Connect as its own host only, and nothing else of the API; an
// admin token may not pose as an agent; DeleteHost removes a disconnected
// host (admin only) and refuses a connected one.
func TestAgentIdentity(t *testing.T) {
	dir := t.TempDir()
	sum := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
	tokens := filepath.Join(dir, "tokens.yaml")
	if err := os.WriteFile(tokens, []byte(fmt.Sprintf(
		"- {name: adam, role: admin, tokenSHA256: %s}\n- {name: olga, role: operator, tokenSHA256: %s}\n- {name: web-1, role: agent, host: web-1, tokenSHA256: %s}\n",
		sum("adam-secret"), sum("olga-secret"), sum("web-1-secret"))), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runController(t, append(embeddedArgs(t, filepath.Join(dir, "data")), "--tokens-file", tokens)...)
	ctx := ctxT(t)
	as := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	gc := pb.NewGroupServiceClient(r.conn)
	if _, err := gc.CreateGroup(as("web-1-secret"), &pb.CreateGroupRequest{GroupId: "web", Group: webGroup()}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("an agent token creating a group: %v, want PermissionDenied", err)
	}
	if _, err := pb.NewAuditServiceClient(r.conn).ListAuditEvents(as("web-1-secret"), &pb.ListAuditEventsRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("an agent token reading the audit log: %v, want PermissionDenied", err)
	}
	hello := func(tok, host string) (pb.AgentService_ConnectClient, context.CancelFunc, error) {
		cctx, cancel := context.WithCancel(as(tok))
		st, err := pb.NewAgentServiceClient(r.conn).Connect(cctx)
		if err != nil {
			return nil, cancel, err
		}
		if err := st.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Hello{Hello: &pb.AgentHello{HostId: host, AgentVersion: "test"}}}); err != nil {
			return nil, cancel, err
		}
		_, err = st.Recv()
		return st, cancel, err
	}
	if _, cancel, err := hello("web-1-secret", "web-2"); status.Code(err) != codes.PermissionDenied {
		cancel()
		t.Fatalf("agent web-1 saying hello as web-2: %v, want PermissionDenied", err)
	} else {
		cancel()
	}
	if _, cancel, err := hello("adam-secret", "web-1"); status.Code(err) != codes.PermissionDenied {
		cancel()
		t.Fatalf("an admin token posing as an agent: %v, want PermissionDenied", err)
	} else {
		cancel()
	}
	_, cancel, err := hello("web-1-secret", "web-1")
	if err != nil {
		cancel()
		t.Fatalf("agent web-1 as itself: %v", err)
	}
	hc := pb.NewHostServiceClient(r.conn)
	waitConnected := func(want bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			h, err := hc.GetHost(as("olga-secret"), &pb.GetHostRequest{Name: "hosts/web-1"})
			if err == nil && h.GetConnected() == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("host web-1 connected=%v never became %v (%v)", h.GetConnected(), want, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitConnected(true)
	if _, err := hc.DeleteHost(as("adam-secret"), &pb.DeleteHostRequest{Name: "hosts/web-1"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("deleting a connected host: %v, want FailedPrecondition", err)
	}
	cancel()
	waitConnected(false)
	if _, err := hc.DeleteHost(as("olga-secret"), &pb.DeleteHostRequest{Name: "hosts/web-1"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("an operator deleting a host: %v, want PermissionDenied", err)
	}
	if _, err := hc.DeleteHost(as("adam-secret"), &pb.DeleteHostRequest{Name: "hosts/web-1", Reason: "decommissioned"}); err != nil {
		t.Fatal(err)
	}
	if _, err := hc.GetHost(as("olga-secret"), &pb.GetHostRequest{Name: "hosts/web-1"}); status.Code(err) != codes.NotFound {
		t.Fatalf("after DeleteHost: %v, want NotFound", err)
	}
	evs, err := pb.NewAuditServiceClient(r.conn).ListAuditEvents(as("olga-secret"), &pb.ListAuditEventsRequest{Action: "hosts.delete"})
	if err != nil || len(evs.GetEvents()) == 0 || evs.GetEvents()[len(evs.GetEvents())-1].GetActor() != "adam" {
		t.Fatalf("audit of the delete: %v, %v", evs, err)
	}
}
