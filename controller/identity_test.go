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
		// A stream the server refused at once fails Send with io.EOF; its
		// status comes with Recv.
		_ = st.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Hello{Hello: &pb.AgentHello{HostId: host, AgentVersion: "test"}}})
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

// TestHostLabels: with authentication on, an agent's own labels are facts;
// the labels bound in its credential choose its group until an operator
// labels the host (UpdateHost, audited), which moves it at once.
func TestHostLabels(t *testing.T) {
	dir := t.TempDir()
	sum := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
	tokens := filepath.Join(dir, "tokens.yaml")
	if err := os.WriteFile(tokens, []byte(fmt.Sprintf(
		"- {name: olga, role: operator, tokenSHA256: %s}\n- {name: web-1, role: agent, host: web-1, labels: {role: web}, tokenSHA256: %s}\n- {name: web-2, role: agent, host: web-2, tokenSHA256: %s}\n",
		sum("olga-secret"), sum("web-1-secret"), sum("web-2-secret"))), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runController(t, append(embeddedArgs(t, filepath.Join(dir, "data")), "--tokens-file", tokens)...)
	ctx := ctxT(t)
	as := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	gc := pb.NewGroupServiceClient(r.conn)
	for _, g := range []struct{ id, role string }{{"web", "web"}, {"db", "db"}} {
		grp := webGroup()
		grp.Selector.MatchLabels = map[string]string{"role": g.role}
		if _, err := gc.CreateGroup(as("olga-secret"), &pb.CreateGroupRequest{GroupId: g.id, Group: grp}); err != nil {
			t.Fatal(err)
		}
	}
	// Each agent claims role=db.
	desired := func(tok, host string) <-chan *pb.DesiredConfig {
		t.Helper()
		st, err := pb.NewAgentServiceClient(r.conn).Connect(as(tok))
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Hello{Hello: &pb.AgentHello{
			HostId: host, AgentVersion: "test", Labels: map[string]string{"role": "db"}}}}); err != nil {
			t.Fatal(err)
		}
		c := make(chan *pb.DesiredConfig, 16)
		go func() {
			for {
				m, err := st.Recv()
				if err != nil {
					close(c)
					return
				}
				if d := m.GetDesired(); d != nil {
					c <- d
				}
			}
		}()
		return c
	}
	next := func(c <-chan *pb.DesiredConfig) *pb.DesiredConfig {
		t.Helper()
		select {
		case d := <-c:
			return d
		case <-time.After(15 * time.Second):
			t.Fatal("no desired configuration")
			return nil
		}
	}
	web1, web2 := desired("web-1-secret", "web-1"), desired("web-2-secret", "web-2")
	if d := next(web1); d.GetGroup() != "groups/web" {
		t.Fatalf("web-1 (certified role=web, claims role=db) got %v, want groups/web", d)
	}
	if d := next(web2); d.GetAssignment() != pb.DesiredConfig_ASSIGNMENT_UNMANAGED {
		t.Fatalf("web-2 (no bound labels, claims role=db) got %v, want UNMANAGED", d)
	}
	hc := pb.NewHostServiceClient(r.conn)
	h, err := hc.UpdateHost(as("olga-secret"), &pb.UpdateHostRequest{Host: &pb.Host{Name: "hosts/web-2", Labels: map[string]string{"role": "db"}}, Reason: "a database host"})
	if err != nil {
		t.Fatal(err)
	}
	if d := next(web2); d.GetGroup() != "groups/db" {
		t.Fatalf("web-2 after the operator labelled it role=db got %v", d)
	}
	if h.GetLabels()["role"] != "db" {
		t.Errorf("UpdateHost returned %v", h)
	}
	got, err := hc.GetHost(as("olga-secret"), &pb.GetHostRequest{Name: "hosts/web-1"})
	if err != nil || got.GetLabels()["role"] != "web" || got.GetReportedLabels()["role"] != "db" || got.GetGroup() != "groups/web" {
		t.Fatalf("web-1: labels %v, reported %v, group %q (%v)", got.GetLabels(), got.GetReportedLabels(), got.GetGroup(), err)
	}
	if _, err := hc.UpdateHost(as("web-1-secret"), &pb.UpdateHostRequest{Host: &pb.Host{Name: "hosts/web-1", Labels: map[string]string{"role": "db"}}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("an agent labelling itself: %v, want PermissionDenied", err)
	}
	if _, err := hc.UpdateHost(as("olga-secret"), &pb.UpdateHostRequest{Host: &pb.Host{Name: "hosts/web-1", Labels: map[string]string{"bad key!": "x"}}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad label: %v, want InvalidArgument", err)
	}
	evs, err := pb.NewAuditServiceClient(r.conn).ListAuditEvents(as("olga-secret"), &pb.ListAuditEventsRequest{Action: "hosts.label"})
	if err != nil || len(evs.GetEvents()) != 1 || evs.GetEvents()[0].GetActor() != "olga" {
		t.Fatalf("audit of the label: %v, %v", evs, err)
	}
}
