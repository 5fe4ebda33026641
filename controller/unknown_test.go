package controller_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/policy"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
)

// unknownMarker is the value of a field no message of mpfleet.v1 has.
var unknownMarker = []byte("unknown-field-marker-6c1f")

// withUnknown returns m with an unknown field appended to its encoding, as a
// newer client would send it.
func withUnknown[T proto.Message](t *testing.T, m T) T {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	b = protowire.AppendTag(b, 4242, protowire.BytesType)
	b = protowire.AppendBytes(b, unknownMarker)
	out := m.ProtoReflect().New().Interface()
	if err := proto.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
	return out.(T)
}

// TestUnknownFieldsNotStored: unknown fields in what clients (groups, host
// labels, rollouts) and agents (hello, reports, events) send, at any depth,
// are dropped before anything is stored: no value in etcd holds them.
func TestUnknownFieldsNotStored(t *testing.T) {
	e := start(t)
	ctx := ctxT(t)
	sent := 0 // unknown fields sent
	count := func(m proto.Message) {
		b, _ := proto.Marshal(m)
		sent += bytes.Count(b, unknownMarker)
	}

	g := webGroup()
	g.Policy.Endpoints[0] = withUnknown(t, g.Policy.Endpoints[0])
	g.Policy.Limits = withUnknown(t, g.Policy.Limits)
	g.Policy = withUnknown(t, g.Policy)
	g.Selector = withUnknown(t, g.Selector)
	create := withUnknown(t, &pb.CreateGroupRequest{GroupId: "web", Group: withUnknown(t, g)})
	count(create)
	created, err := e.groups.CreateGroup(ctx, create)
	if err != nil {
		t.Fatal(err)
	}
	up := proto.Clone(created).(*pb.Group)
	up.Policy.Limits.Subflows = proto.Uint32(3)
	up.Policy.Routing = withUnknown(t, up.Policy.Routing)
	update := withUnknown(t, &pb.UpdateGroupRequest{Group: withUnknown(t, up), UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"policy"}}})
	count(update)
	if _, err := e.groups.UpdateGroup(ctx, update); err != nil {
		t.Fatal(err)
	}
	label := withUnknown(t, &pb.UpdateHostRequest{Host: withUnknown(t, &pb.Host{Name: "hosts/h1", Labels: map[string]string{"role": "web"}})})
	count(label)
	if _, err := e.hosts.UpdateHost(ctx, label); err != nil {
		t.Fatal(err)
	}
	strategy := withUnknown(t, &pb.RolloutStrategy{CanaryCount: 1, BakeTime: withUnknown(t, durationpb.New(time.Second))})
	rollout := withUnknown(t, &pb.CreateRolloutRequest{Rollout: &pb.Rollout{Group: "groups/web", TargetRevision: 1, Strategy: strategy}})
	count(rollout)
	if _, err := pb.NewRolloutServiceClient(e.conn).CreateRollout(ctx, rollout); err != nil {
		t.Fatal(err)
	}

	// An agent: hello, report and event, each with unknown fields inside.
	stream, err := e.agents.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	facts := &pb.HostFacts{Hostname: "h1", Interfaces: []*pb.Interface{withUnknown(t, &pb.Interface{Name: "eth1", Addresses: []string{"198.18.1.2/24"}})}}
	hello := withUnknown(t, &pb.ConnectRequest{Kind: &pb.ConnectRequest_Hello{Hello: withUnknown(t, &pb.AgentHello{HostId: "h1", AgentVersion: "test", Facts: withUnknown(t, facts)})}})
	report := withUnknown(t, &pb.ConnectRequest{Kind: &pb.ConnectRequest_Report{Report: withUnknown(t, &pb.AgentReport{
		SyncState: pb.SyncState_SYNC_STATE_DEGRADED, AppliedRevision: 1,
		Problems: []*pb.HostProblem{withUnknown(t, &pb.HostProblem{Code: pb.HostProblem_CODE_PATH_FAILED, Message: "reported"})},
		Health:   withUnknown(t, &pb.MptcpHealth{Paths: []*pb.PathStatus{withUnknown(t, &pb.PathStatus{Interface: "eth1", State: pb.PathState_PATH_STATE_FAILED})}}),
		LastPlan: []*pb.PlanOperation{withUnknown(t, &pb.PlanOperation{Kind: "endpoint.add"})},
	})}})
	event := withUnknown(t, &pb.ConnectRequest{Kind: &pb.ConnectRequest_Event{Event: withUnknown(t, &pb.AgentEvent{
		Kind: pb.AgentEvent_KIND_APPLIED, Group: "groups/web", Revision: 1, Message: "applied",
		Operations: []*pb.PlanOperation{withUnknown(t, &pb.PlanOperation{Kind: "endpoint.add"})},
	})}})
	for _, m := range []*pb.ConnectRequest{hello, report, event} {
		count(m)
		if err := stream.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	if sent < 20 {
		t.Fatalf("only %d unknown fields sent", sent)
	}
	waitHost(t, e, "hosts/h1", func(h *pb.Host) bool {
		return len(h.GetProblems()) == 1 && h.GetProblems()[0].GetMessage() == "reported"
	})
	waitUntil(t, 15*time.Second, "the agent's event audited", func() bool {
		resp, err := e.audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{Host: "hosts/h1", Action: "agent.applied"})
		return err == nil && len(resp.GetEvents()) == 1
	})

	resp, err := e.etcd.Get(ctx, "/mpfleet/v1/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if bytes.Contains(kv.Value, unknownMarker) {
			t.Errorf("%s holds an unknown field a caller sent", kv.Key)
		}
	}
	t.Logf("%d unknown fields sent; none of %d stored values holds one", sent, len(resp.Kvs))
}

// TestDesiredConfigSizeLimit: a group whose hosts would receive a desired
// configuration over the agents' limit is refused at create and at update
// (INVALID_ARGUMENT naming group.policy, before any other check of so large
// a policy) and nothing is written.
func TestDesiredConfigSizeLimit(t *testing.T) {
	e := start(t)
	ctx := ctxT(t)
	// Rules of the longest interface glob there may be: validation alone
	// would only count them.
	rules := func(n int) []*pb.EndpointRule {
		rs := make([]*pb.EndpointRule, n)
		for i := range rs {
			rs[i] = &pb.EndpointRule{Interface: strings.Repeat("e", 63) + "*", Flags: []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW}}
		}
		return rs
	}
	big := webGroup()
	big.Policy.Endpoints = rules(4000)
	if n := proto.Size(big.Policy); n <= policy.MaxDesiredSize {
		t.Fatalf("test policy is %d bytes; want more than %d", n, policy.MaxDesiredSize)
	}
	wantRefused := func(what string, err error) {
		t.Helper()
		st := wantCode(t, err, codes.InvalidArgument)
		var fields []string
		for _, d := range st.Details() {
			if br, ok := d.(*errdetails.BadRequest); ok {
				for _, v := range br.GetFieldViolations() {
					fields = append(fields, v.GetField())
				}
			}
		}
		if len(fields) != 1 || fields[0] != "group.policy" || !strings.Contains(st.Message(), "262144") {
			t.Errorf("%s: refusal %q (fields %v), want one naming group.policy and the limit", what, st.Message(), fields)
		}
	}
	keys := dataKeys(t, e)
	_, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "big", Group: big})
	wantRefused("create", err)
	if n := dataKeys(t, e); n != keys {
		t.Fatalf("a refused create wrote %d keys", n-keys)
	}

	g, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "web", Group: webGroup()})
	if err != nil {
		t.Fatal(err)
	}
	keys = dataKeys(t, e)
	g.Policy.Endpoints = rules(4000)
	_, err = e.groups.UpdateGroup(ctx, &pb.UpdateGroupRequest{Group: g, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"policy.endpoints"}}})
	wantRefused("update", err)
	if n := dataKeys(t, e); n != keys {
		t.Fatalf("a refused update wrote %d keys", n-keys)
	}
	cur, err := e.groups.GetGroup(ctx, &pb.GetGroupRequest{Name: "groups/web"})
	if err != nil || cur.GetPolicyRevision() != 1 || len(cur.GetPolicy().GetEndpoints()) != 1 {
		t.Fatalf("after the refused update: %v, %v", cur, err)
	}
}

// dataKeys counts the keys of mpfleet's data (not the leader election's,
// which a replica writes when it will), to prove a refusal wrote nothing.
func dataKeys(t *testing.T, e *env) int {
	t.Helper()
	resp, err := e.etcd.Get(context.Background(), "/mpfleet/v1/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, kv := range resp.Kvs {
		if !strings.HasPrefix(string(kv.Key), "/mpfleet/v1/leader") {
			n++
		}
	}
	return n
}
