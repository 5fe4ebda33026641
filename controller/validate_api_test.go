package controller_test

import (
	"fmt"
	"testing"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

// TestRefusesWhatNoAgentApplies (issue #11, #10): a rule with a port and
// SIGNAL+SUBFLOW, which every agent would refuse to add (the kernel takes a
// port only on a signal endpoint without subflow), and a named gateway that
// no host can route through are refused by every call that takes a policy,
// naming the fields, and nothing is written.
func TestRefusesWhatNoAgentApplies(t *testing.T) {
	e := start(t)
	ctx := ctxT(t)
	if _, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "web", Group: webGroup()}); err != nil {
		t.Fatal(err)
	}
	before := etcdKeys(t, e)
	bad := webGroup()
	bad.Policy.Endpoints[0].Flags = []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SIGNAL, pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW}
	bad.Policy.Endpoints[0].Port = 8080
	bad.Policy.Routing.Gateways = []*pb.GatewayOverride{{Interface: "eth*", Gateway: "224.0.0.1"}}
	fields := []string{"policy.endpoints[0].port", "policy.routing.gateways[0].gateway"}
	for name, tc := range map[string]struct {
		call   func() error
		prefix string
	}{
		"create": {func() error {
			_, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "api", Group: bad})
			return err
		}, "group."},
		"create validate_only": {func() error {
			_, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "api", Group: bad, ValidateOnly: true})
			return err
		}, "group."},
		"update": {func() error {
			b := proto.Clone(bad).(*pb.Group)
			b.Name = "groups/web"
			_, err := e.groups.UpdateGroup(ctx, &pb.UpdateGroupRequest{Group: b})
			return err
		}, "group."},
		"plan": {func() error {
			_, err := e.hosts.PlanPolicy(ctx, &pb.PlanPolicyRequest{Group: "groups/web", Policy: bad.Policy})
			return err
		}, ""},
	} {
		st := wantCode(t, tc.call(), codes.InvalidArgument)
		want := []string{tc.prefix + fields[0], tc.prefix + fields[1]}
		if got := violatedFields(st); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: violated fields %v, want %v", name, got, want)
		}
	}
	if after := etcdKeys(t, e); after != before {
		t.Fatalf("refused requests changed etcd: %d keys before, %d after", before, after)
	}
	g, err := e.groups.GetGroup(ctx, &pb.GetGroupRequest{Name: "groups/web"})
	if err != nil || g.GetPolicyRevision() != 1 || g.GetPolicy().GetEndpoints()[0].GetPort() != 0 {
		t.Fatalf("group changed: %v, %v", g, err)
	}
}
