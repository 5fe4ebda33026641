package controller_test

import (
	"context"
	"testing"
	"time"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// TestFloodFromOneHost: one host that floods events and reconnects over and
// over gets its audit events rate-limited per host (a reconnect does not
// reset the limit) and its reconnects refused, while another host's new
// configuration still arrives.
func TestFloodFromOneHost(t *testing.T) {
	e := start(t)
	ctx := ctxT(t)
	g, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "web", Group: webGroup()})
	if err != nil {
		t.Fatal(err)
	}
	good := connectAgent(t, e.agents, "good-1", map[string]string{"role": "web"}, true)
	good.waitFor(t, "revision 1", managedAt("groups/web", 1))

	start := time.Now()
	refused, sent := 0, 0
	for range 30 {
		sctx, cancel := context.WithCancel(ctx)
		st, err := e.agents.Connect(sctx)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		_ = st.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Hello{Hello: &pb.AgentHello{HostId: "noisy-1", AgentVersion: "test"}}})
		if _, err := st.Recv(); err != nil {
			switch status.Code(err) {
			case codes.ResourceExhausted:
				refused++
			case codes.AlreadyExists:
				// Without authentication, the previous stream of the host
				// may still be registered: also refused.
			default:
				t.Fatalf("reconnect: %v, want ResourceExhausted once over the limit", err)
			}
			cancel()
			continue
		}
		for range 50 {
			sent++
			_ = st.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Event{Event: &pb.AgentEvent{Kind: pb.AgentEvent_KIND_APPLIED, Message: "flood"}}})
		}
		cancel()
	}
	if refused == 0 {
		t.Error("none of 30 reconnects in a row was refused for the rate")
	}
	// The other host still gets its new configuration.
	g.Policy.Limits.Subflows = proto.Uint32(4)
	if _, err := e.groups.UpdateGroup(ctx, &pb.UpdateGroupRequest{Group: g}); err != nil {
		t.Fatal(err)
	}
	good.waitFor(t, "revision 2", managedAt("groups/web", 2))
	// Wait until the controller has taken in what it will take in: the
	// flood's events are at most the burst plus the rate for the time spent.
	deadline := time.Now().Add(5 * time.Second)
	var n int
	for {
		evs, err := e.audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{Host: "hosts/noisy-1", PageSize: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if len(evs.GetEvents()) == n && n > 0 || time.Now().After(deadline) {
			break
		}
		n = len(evs.GetEvents())
		time.Sleep(200 * time.Millisecond)
	}
	if limit := 20 + int(5*time.Since(start).Seconds()) + 5; n > limit {
		t.Errorf("%d audit events from one flooding host, want at most about %d (burst 20 + 5/s)", n, limit)
	}
	t.Logf("flood: %d reconnects refused, %d audit events kept of %d sent", refused, n, sent)
}
