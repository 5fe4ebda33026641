package policy_test

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/mpfleet/mpfleet/internal/policy"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/reconcile/fakekernel"
	"github.com/mpfleet/mpfleet/internal/route"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
)

// A policy rendered against a host with two uplinks, and the plan that
// takes a fresh namespace there.
func ExampleRender() {
	p := &pb.MultipathPolicy{
		Limits:    &pb.Limits{Subflows: proto.Uint32(2), AddAddrAccepted: proto.Uint32(2)},
		Endpoints: []*pb.EndpointRule{{Interface: "eth*", Flags: []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW}}},
		Routing:   &pb.Routing{Enabled: true},
	}
	ifaces := []policy.Interface{
		{Name: "eth0", Index: 2, Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("198.18.0.2/24")},
			Gateways: []netip.Addr{netip.MustParseAddr("198.18.0.1")}},
		{Name: "eth1", Index: 3, Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("198.18.1.2/24")},
			Gateways: []netip.Addr{netip.MustParseAddr("198.18.1.1")}},
	}
	r, err := policy.Render(p, ifaces)
	if err != nil {
		panic(err)
	}
	k := fakekernel.New(route.Range{})
	k.SetLinks(map[int]string{1: "lo", 2: "eth0", 3: "eth1"})
	actual, _ := k.Read(context.Background(), r.Config)
	ops, _ := reconcile.Plan(r.Config, actual)
	fmt.Print(ops)
	// Output:
	// ~ limits subflows 2 add_addr_accepted 2 (was subflows 2 add_addr_accepted 0)
	// + route 198.18.0.0/24 dev eth0 table 7109 src 198.18.0.2 scope link
	// + route default via 198.18.0.1 dev eth0 table 7109
	// + route 198.18.1.0/24 dev eth1 table 7116 src 198.18.1.2 scope link
	// + route default via 198.18.1.1 dev eth1 table 7116
	// + rule 7109: from 198.18.0.2 lookup 7109
	// + rule 7116: from 198.18.1.2 lookup 7116
	// + endpoint 198.18.0.2 id 1 subflow dev eth0
	// + endpoint 198.18.1.2 id 2 subflow dev eth1
}
