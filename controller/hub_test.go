package controller_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/controller"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// fakeAgent is an in-memory agent over a real gRPC stream: it says hello,
// records every desired configuration and, like a real agent, reports the
// revision as applied.
type fakeAgent struct {
	id     string
	stream pb.AgentService_ConnectClient
	cancel context.CancelFunc

	mu       sync.Mutex
	desired  []*pb.DesiredConfig
	confirms []uint64
	changed  chan struct{}
	done     chan struct{}
	err      error
}

func connectAgent(t testing.TB, client pb.AgentServiceClient, id string, labels map[string]string, autoReport bool) *fakeAgent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := client.Connect(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	a := &fakeAgent{id: id, stream: stream, cancel: cancel, changed: make(chan struct{}, 1), done: make(chan struct{})}
	if err := stream.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Hello{Hello: &pb.AgentHello{
		HostId: id, Labels: labels, AgentVersion: "test",
		Facts: &pb.HostFacts{Hostname: id, KernelVersion: "6.18", MptcpSupported: true},
	}}}); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(a.done)
		for {
			m, err := stream.Recv()
			if err != nil {
				a.mu.Lock()
				a.err = err
				a.mu.Unlock()
				return
			}
			a.mu.Lock()
			if d := m.GetDesired(); d != nil {
				a.desired = append(a.desired, d)
			}
			if c := m.GetConfirmed(); c != nil {
				a.confirms = append(a.confirms, c.Nonce)
			}
			a.mu.Unlock()
			if d := m.GetDesired(); d != nil && autoReport {
				st := pb.SyncState_SYNC_STATE_IN_SYNC
				switch d.Assignment {
				case pb.DesiredConfig_ASSIGNMENT_UNMANAGED:
					st = pb.SyncState_SYNC_STATE_UNMANAGED
				case pb.DesiredConfig_ASSIGNMENT_CONFLICT:
					st = pb.SyncState_SYNC_STATE_CONFLICT
				}
				_ = stream.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Report{Report: &pb.AgentReport{
					SyncState: st, Group: d.Group, AppliedRevision: d.Revision,
					Health: &pb.MptcpHealth{Connections: 1, Subflows: 2},
				}}})
			}
			select {
			case a.changed <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(a.close)
	return a
}

func (a *fakeAgent) close() {
	a.cancel()
	<-a.done
}

func (a *fakeAgent) last() *pb.DesiredConfig {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.desired) == 0 {
		return nil
	}
	return a.desired[len(a.desired)-1]
}

// waitFor waits until cond holds for the agent's last desired configuration.
func (a *fakeAgent) waitFor(t testing.TB, what string, cond func(d *pb.DesiredConfig) bool) {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		if d := a.last(); d != nil && cond(d) {
			return
		}
		select {
		case <-a.changed:
		case <-a.done:
			t.Fatalf("agent %s: stream ended (%v) waiting for %s", a.id, a.err, what)
		case <-deadline:
			t.Fatalf("agent %s: no %s; last desired %v", a.id, what, a.last())
		}
	}
}

func managedAt(group string, rev int64) func(*pb.DesiredConfig) bool {
	return func(d *pb.DesiredConfig) bool {
		return d.Assignment == pb.DesiredConfig_ASSIGNMENT_MANAGED && d.Group == group && d.Revision == rev
	}
}

func waitHost(t *testing.T, e *env, name string, cond func(h *pb.Host) bool) *pb.Host {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		h, err := e.hosts.GetHost(context.Background(), &pb.GetHostRequest{Name: name})
		if err == nil && cond(h) {
			return h
		}
		if time.Now().After(deadline) {
			t.Fatalf("host %s: condition not met: %v (err %v)", name, h, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestHubAssignsAndPropagates(t *testing.T) {
	e := start(t)
	ctx := ctxT(t)
	web := make([]*fakeAgent, 5)
	for i := range web {
		web[i] = connectAgent(t, e.agents, fmt.Sprintf("web-%d", i), map[string]string{"role": "web"}, true)
	}
	db := connectAgent(t, e.agents, "db-0", map[string]string{"role": "db", "site": "fra"}, true)
	for _, a := range append(web, db) {
		a.waitFor(t, "UNMANAGED", func(d *pb.DesiredConfig) bool { return d.Assignment == pb.DesiredConfig_ASSIGNMENT_UNMANAGED })
	}
	before := e.ctl.DesiredEncodes()
	g, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "web", Group: webGroup()})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range web {
		a.waitFor(t, "revision 1", managedAt("groups/web", 1))
		if !proto.Equal(a.last().Policy, webGroup().Policy) {
			t.Fatalf("agent %s got policy %v", a.id, a.last().Policy)
		}
	}
	if got := e.ctl.DesiredEncodes() - before; got != 1 {
		t.Fatalf("desired config encoded %d times for 5 hosts of one group, want once", got)
	}
	// A policy change reaches every host of the group; the other host is untouched.
	g.Policy.Limits.Subflows = proto.Uint32(4)
	if _, err := e.groups.UpdateGroup(ctx, &pb.UpdateGroupRequest{Group: g}); err != nil {
		t.Fatal(err)
	}
	for _, a := range web {
		a.waitFor(t, "revision 2", managedAt("groups/web", 2))
	}
	db.mu.Lock()
	n := len(db.desired)
	db.mu.Unlock()
	if n != 1 {
		t.Fatalf("db host got %d desired messages, want 1 (unmanaged only)", n)
	}
	// Host status: reported, connected, in sync.
	h := waitHost(t, e, "hosts/web-0", func(h *pb.Host) bool {
		return h.SyncState == pb.SyncState_SYNC_STATE_IN_SYNC && h.AppliedRevision == 2
	})
	if !h.Connected || h.Group != "groups/web" || h.DesiredRevision != 2 || h.GetFacts().GetKernelVersion() != "6.18" {
		t.Fatalf("host view = %v", h)
	}

	// A second group selecting db-0 (site=fra) and one selecting web-0 too:
	// db-0 is managed; web hosts match two groups once "all-web" exists.
	all := webGroup()
	all.Selector.MatchLabels = map[string]string{"role": "web"}
	if _, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "all-web", Group: all}); err != nil {
		t.Fatal(err)
	}
	web[0].waitFor(t, "CONFLICT", func(d *pb.DesiredConfig) bool {
		return d.Assignment == pb.DesiredConfig_ASSIGNMENT_CONFLICT && len(d.ConflictingGroups) == 2
	})
	h = waitHost(t, e, "hosts/web-0", func(h *pb.Host) bool { return h.SyncState == pb.SyncState_SYNC_STATE_CONFLICT })
	if fmt.Sprint(h.ConflictingGroups) != "[groups/all-web groups/web]" {
		t.Fatalf("conflicting groups = %v", h.ConflictingGroups)
	}

	// ListHosts filters.
	list := func(req *pb.ListHostsRequest) []string {
		resp, err := e.hosts.ListHosts(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, h := range resp.Hosts {
			out = append(out, h.Name)
		}
		return out
	}
	if got := fmt.Sprint(list(&pb.ListHostsRequest{LabelSelector: "role=db"})); got != "[hosts/db-0]" {
		t.Fatalf("label filter = %s", got)
	}
	if got := len(list(&pb.ListHostsRequest{SyncState: pb.SyncState_SYNC_STATE_CONFLICT})); got != 5 {
		t.Fatalf("%d hosts in CONFLICT, want 5", got)
	}
	if got := len(list(&pb.ListHostsRequest{PageSize: 2})); got != 2 {
		t.Fatalf("page size 2 gave %d", got)
	}

	// Disconnect: the host shows DISCONNECTED with its last state.
	db.close()
	waitHost(t, e, "hosts/db-0", func(h *pb.Host) bool {
		return !h.Connected && h.SyncState == pb.SyncState_SYNC_STATE_DISCONNECTED
	})
}

func TestHubAgentEventsAudited(t *testing.T) {
	e := start(t)
	ctx := ctxT(t)
	if _, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "web", Group: webGroup()}); err != nil {
		t.Fatal(err)
	}
	a := connectAgent(t, e.agents, "h1", map[string]string{"role": "web"}, false)
	a.waitFor(t, "revision 1", managedAt("groups/web", 1))
	for _, ev := range []*pb.AgentEvent{
		{Kind: pb.AgentEvent_KIND_APPLIED, Group: "groups/web", Revision: 1, Message: "applied revision 1: 6 operations"},
		{Kind: pb.AgentEvent_KIND_DRIFT_REPAIRED, Group: "groups/web", Revision: 1, Message: "2 endpoints missing; re-added"},
	} {
		if err := a.stream.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Event{Event: ev}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.stream.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Confirm{Confirm: &pb.Confirm{Nonce: 77}}}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := e.audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{Host: "hosts/h1"})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Events) == 2 {
			if resp.Events[0].Action != "agent.applied" || resp.Events[1].Action != "agent.drift_repaired" ||
				resp.Events[1].Actor != "agent:h1" || resp.Events[1].Resource != "groups/web" || resp.Events[1].Reason == "" {
				t.Fatalf("agent audit events = %v", resp.Events)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent events not audited: %v", resp.Events)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for {
		a.mu.Lock()
		n := len(a.confirms)
		a.mu.Unlock()
		if n == 1 && a.confirms[0] == 77 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("confirm not echoed")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestHubRejectsBadHello(t *testing.T) {
	e := start(t)
	for name, first := range map[string]*pb.ConnectRequest{
		"bad host id": {Kind: &pb.ConnectRequest_Hello{Hello: &pb.AgentHello{HostId: "Bad Host!"}}},
		"bad label":   {Kind: &pb.ConnectRequest_Hello{Hello: &pb.AgentHello{HostId: "h", Labels: map[string]string{"k": "bad value!"}}}},
		"no hello":    {Kind: &pb.ConnectRequest_Report{Report: &pb.AgentReport{}}},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		stream, err := e.agents.Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(first); err != nil {
			t.Fatal(err)
		}
		_, err = stream.Recv()
		cancel()
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	resp, err := e.hosts.ListHosts(context.Background(), &pb.ListHostsRequest{})
	if err != nil || len(resp.Hosts) != 0 {
		t.Fatalf("rejected agents were registered: %v %v", resp, err)
	}
}

func TestWatchHosts(t *testing.T) {
	e := start(t)
	ctx := ctxT(t)
	connectAgent(t, e.agents, "h1", map[string]string{"role": "web"}, true)
	waitHost(t, e, "hosts/h1", func(h *pb.Host) bool { return h.SyncState == pb.SyncState_SYNC_STATE_UNMANAGED })
	w, err := e.hosts.WatchHosts(ctx, &pb.WatchHostsRequest{LabelSelector: "role=web"})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := w.Recv()
	if err != nil || ev.Type != pb.HostEvent_TYPE_UPSERT || ev.Host.Name != "hosts/h1" {
		t.Fatalf("first event = %v, %v", ev, err)
	}
	if ev, err = w.Recv(); err != nil || ev.Type != pb.HostEvent_TYPE_SYNCED {
		t.Fatalf("second event = %v, %v", ev, err)
	}
	if _, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "web", Group: webGroup()}); err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := w.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if ev.Host.GetSyncState() == pb.SyncState_SYNC_STATE_IN_SYNC && ev.Host.GetAppliedRevision() == 1 {
			break
		}
	}
}

func TestPlanPolicy(t *testing.T) {
	e := start(t)
	ctx := ctxT(t)
	if _, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "web", Group: webGroup()}); err != nil {
		t.Fatal(err)
	}
	stream, err := e.agents.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	facts := &pb.HostFacts{KernelVersion: "6.18", MptcpSupported: true, Interfaces: []*pb.Interface{
		{Name: "lo", Index: 1, Up: true, Addresses: []string{"127.0.0.1/8"}},
		{Name: "eth1", Index: 2, Up: true, Addresses: []string{"198.18.1.2/24"}, Gateways: []string{"198.18.1.1"}},
		{Name: "eth2", Index: 3, Up: true, Addresses: []string{"198.18.2.2/24"}, Gateways: []string{"198.18.2.1"}},
		{Name: "mgmt0", Index: 4, Up: true, Addresses: []string{"198.18.100.2/24"}},
	}}
	if err := stream.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Hello{Hello: &pb.AgentHello{
		HostId: "h1", Labels: map[string]string{"role": "web"}, Facts: facts}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	waitHost(t, e, "hosts/h1", func(h *pb.Host) bool { return h.Connected })

	resp, err := e.hosts.PlanPolicy(ctx, &pb.PlanPolicyRequest{Group: "groups/web"})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Hosts) != 1 || resp.Hosts[0].Host != "hosts/h1" || resp.Hosts[0].Error != "" {
		t.Fatalf("plan = %v", resp)
	}
	var endpoints, rules int
	for _, op := range resp.Hosts[0].Operations {
		switch op.Kind {
		case "add-endpoint":
			endpoints++
		case "add-rule":
			rules++
		}
		if op.Description == "" {
			t.Fatalf("op without description: %v", op)
		}
	}
	if endpoints != 2 || rules != 2 {
		t.Fatalf("plan for eth* with routing on 2 links: %d endpoints, %d rules; ops %v", endpoints, rules, resp.Hosts[0].Operations)
	}
	// A candidate selecting only eth2.
	cand := proto.Clone(webGroup().Policy).(*pb.MultipathPolicy)
	cand.Endpoints[0].Interface = "eth2"
	resp, err = e.hosts.PlanPolicy(ctx, &pb.PlanPolicyRequest{Group: "groups/web", Policy: cand})
	if err != nil {
		t.Fatal(err)
	}
	endpoints = 0
	for _, op := range resp.Hosts[0].Operations {
		if op.Kind == "add-endpoint" {
			endpoints++
		}
	}
	if endpoints != 1 {
		t.Fatalf("candidate plan: %d endpoints, want 1: %v", endpoints, resp.Hosts[0].Operations)
	}
	// An invalid candidate names the field; an unknown group is NOT_FOUND.
	cand.Limits.Subflows = proto.Uint32(9)
	_, err = e.hosts.PlanPolicy(ctx, &pb.PlanPolicyRequest{Group: "groups/web", Policy: cand})
	if st := wantCode(t, err, codes.InvalidArgument); fmt.Sprint(violatedFields(st)) != "[policy.limits.subflows]" {
		t.Fatalf("violations = %v", violatedFields(st))
	}
	_, err = e.hosts.PlanPolicy(ctx, &pb.PlanPolicyRequest{Group: "groups/nope"})
	wantCode(t, err, codes.NotFound)
}

// TestHubWritesPathChangesAtOnce: a report whose only change is a path's
// state (health, but not a counter) is stored at once, not after the health
// write interval (15s by default, as here), and the host's problems with it.
func TestHubWritesPathChangesAtOnce(t *testing.T) {
	e := start(t)
	a := connectAgent(t, e.agents, "web-0", map[string]string{"role": "web"}, false)
	a.waitFor(t, "UNMANAGED", func(d *pb.DesiredConfig) bool { return d.Assignment == pb.DesiredConfig_ASSIGNMENT_UNMANAGED })
	report := func(state pb.PathState, problems ...*pb.HostProblem) {
		t.Helper()
		if err := a.stream.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Report{Report: &pb.AgentReport{
			SyncState: pb.SyncState_SYNC_STATE_UNMANAGED, Problems: problems,
			Health: &pb.MptcpHealth{Connections: 1, Paths: []*pb.PathStatus{{Interface: "eth1", Address: "198.18.1.2", State: state}}},
		}}}); err != nil {
			t.Fatal(err)
		}
	}
	pathIs := func(st pb.PathState) func(h *pb.Host) bool {
		return func(h *pb.Host) bool {
			ps := h.GetHealth().GetPaths()
			return len(ps) == 1 && ps[0].GetState() == st
		}
	}
	report(pb.PathState_PATH_STATE_UNPROBED)
	waitHostWithin(t, e, "hosts/web-0", 5*time.Second, pathIs(pb.PathState_PATH_STATE_UNPROBED))
	// Only the path's state changes.
	report(pb.PathState_PATH_STATE_OK)
	waitHostWithin(t, e, "hosts/web-0", 5*time.Second, pathIs(pb.PathState_PATH_STATE_OK))
	report(pb.PathState_PATH_STATE_FAILED, &pb.HostProblem{Code: pb.HostProblem_CODE_PATH_FAILED, Interface: "eth1", Message: "no MPTCP connection"})
	h := waitHostWithin(t, e, "hosts/web-0", 5*time.Second, pathIs(pb.PathState_PATH_STATE_FAILED))
	if len(h.GetProblems()) != 1 || h.GetProblems()[0].GetCode() != pb.HostProblem_CODE_PATH_FAILED {
		t.Errorf("problems %v", h.GetProblems())
	}
	report(pb.PathState_PATH_STATE_OK)
	h = waitHostWithin(t, e, "hosts/web-0", 5*time.Second, pathIs(pb.PathState_PATH_STATE_OK))
	if len(h.GetProblems()) != 0 {
		t.Errorf("problems %v after the path is OK again", h.GetProblems())
	}
}

// waitHostWithin is waitHost with a deadline shorter than the health write
// interval, so that a write that waited for it fails the test.
func waitHostWithin(t *testing.T, e *env, name string, d time.Duration, cond func(h *pb.Host) bool) *pb.Host {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		h, err := e.hosts.GetHost(context.Background(), &pb.GetHostRequest{Name: name})
		if err == nil && cond(h) {
			return h
		}
		if time.Now().After(deadline) {
			t.Fatalf("host %s: condition not met within %v: %v (err %v)", name, d, h, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAgentStreamEndsWithItsStatus: a stream the hub ends from outside its
// handler — here, no hello in time — ends with the status the hub gave,
// not the CANCELED grpc-go sends when a context ends a receive (the hub
// writes the status through the transport stream first: hubsend.go).
func TestAgentStreamEndsWithItsStatus(t *testing.T) {
	e := startWith(t, controller.Options{Hub: controller.HubOptions{HelloTimeout: time.Second}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := e.agents.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	st := wantCode(t, err, codes.DeadlineExceeded)
	if !strings.Contains(st.Message(), "no hello within 1s") {
		t.Errorf("stream ended with %q, want it to say no hello came within 1s", st.Message())
	}
}
