package policy

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/reconcile/fakekernel"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
)

// fuzzHosts are the hosts FuzzValidatePolicyProto renders every accepted
// policy against: the table tests' host, one with more selectable
// addresses than a namespace holds endpoints (exclusion, table probing in a
// narrow range, IPv6 and link-local gateways), and one with nothing.
func fuzzHosts() [][]Interface {
	crowded := []Interface{
		{Name: "eth0", Index: 2, Up: true,
			Addrs:    []netip.Prefix{pfx("198.18.0.2/24"), pfx("198.18.0.3/24"), pfx("2001:db8::2/64"), pfx("2001:db8::3/64")},
			Gateways: []netip.Addr{addr("198.18.0.1"), addr("fe80::1")}},
		{Name: "eth1", Index: 3, Up: true,
			Addrs:    []netip.Prefix{pfx("198.18.1.2/30"), pfx("198.18.1.9/31"), pfx("2001:db8:1::2/127"), pfx("10.0.0.5/8")},
			Gateways: []netip.Addr{addr("198.18.1.1"), addr("2001:db8:1::1")}},
		{Name: "wlan0", Index: 4, Up: false,
			Addrs: []netip.Prefix{pfx("198.18.3.2/32"), pfx("2001:db8:3::9/128"), pfx("100.64.0.1/10")}},
		{Name: "eth[1]", Index: 5, Up: true, Addrs: []netip.Prefix{pfx("203.0.113.7/24")}},
	}
	return [][]Interface{hostIfaces(), crowded, nil}
}

// FuzzValidatePolicyProto drives ValidatePolicy and Render with policies
// decoded from arbitrary protobuf bytes: every field and value the wire can
// carry (any string, range, duration, enum number, unknown fields), where
// FuzzRender only combines values genPolicy picks. What ValidatePolicy
// accepts must render on every host and apply cleanly (one validation
// truth); what it refuses, Render refuses as an *InvalidError; violations
// name fields under the path given; and an accepted policy is still
// accepted, and renders the same, after a trip over the wire.
func FuzzValidatePolicyProto(f *testing.F) {
	seeds := []*pb.MultipathPolicy{
		{},
		{
			Enabled:   proto.Bool(true),
			Limits:    &pb.Limits{Subflows: proto.Uint32(2), AddAddrAccepted: proto.Uint32(2)},
			Endpoints: []*pb.EndpointRule{{Interface: "eth*", Flags: sub}},
			Routing:   &pb.Routing{Enabled: true},
		},
		{
			Endpoints: []*pb.EndpointRule{
				{Cidr: "198.18.0.0/15", Family: pb.AddressFamily_ADDRESS_FAMILY_IPV4, Flags: sig, Port: 8080},
				{Interface: "eth[0-1]", Family: pb.AddressFamily_ADDRESS_FAMILY_IPV6,
					Flags: []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW, pb.EndpointFlag_ENDPOINT_FLAG_BACKUP}},
				{Interface: "*", Flags: []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_FULLMESH, pb.EndpointFlag_ENDPOINT_FLAG_LAMINAR}},
			},
			Routing: &pb.Routing{Enabled: true, TableMin: 1000, TableMax: 1007, PriorityMin: 300, PriorityMax: 307,
				Gateways: []*pb.GatewayOverride{
					{Interface: "eth1", HostIndex: -1},
					{Interface: "eth*", Gateway: "::ffff:198.18.1.1"},
					{Interface: "wlan?", Gateway: "2001:db8::1"},
				}},
		},
		{
			Endpoints: []*pb.EndpointRule{{Interface: "eth*", Flags: sub}},
			Probes: []*pb.Probe{
				{Address: "198.18.11.2:7", Interval: durationpb.New(100e6), Timeout: durationpb.New(10e6)},
				{Address: "[2001:db8::9]:443"},
			},
			Sysctls: &pb.Sysctls{Scheduler: proto.String("default"), PathManager: proto.String("in_kernel"),
				AddAddrTimeout: proto.Uint32(120), ChecksumEnabled: proto.Bool(false), StaleLossCnt: proto.Uint32(4)},
		},
		// Refused: every rule broken once.
		{
			Limits:    &pb.Limits{Subflows: proto.Uint32(9)},
			Endpoints: []*pb.EndpointRule{{}, {Cidr: "198.18.0.1/15", Flags: []pb.EndpointFlag{0, 99, 1, 4}, Port: 70000}},
			Routing:   &pb.Routing{Enabled: true, TableMin: 250, TableMax: 260, PriorityMin: 32765, PriorityMax: 32767},
			Probes:    []*pb.Probe{{Address: "x:1", Interval: &durationpb.Duration{Seconds: -1, Nanos: 5}}},
		},
	}
	for _, p := range seeds {
		b, err := proto.Marshal(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		p := &pb.MultipathPolicy{}
		if err := proto.Unmarshal(raw, p); err != nil {
			return
		}
		var vs Violations
		ValidatePolicy(&vs, "policy", p)
		for _, v := range vs {
			if (v.Field != "policy" && !strings.HasPrefix(v.Field, "policy.")) || v.Description == "" {
				t.Fatalf("violation does not name a field of the policy: %+v", v)
			}
		}
		for i, ifaces := range fuzzHosts() {
			got, err := Render(p, ifaces)
			if len(vs) != 0 {
				var ie *InvalidError
				if !errors.As(err, &ie) {
					t.Fatalf("ValidatePolicy refuses %v (%v) but Render on host %d gives %v, not an *InvalidError", p, vs, i, err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("ValidatePolicy accepts %v but Render on host %d refuses it: %v", p, i, err)
			}
			checkRendered(t, p, ifaces, got)
		}
		if len(vs) != 0 {
			return
		}
		// What the controller stores is what every agent decodes.
		b, err := proto.Marshal(p)
		if err != nil {
			t.Fatalf("marshal accepted policy: %v", err)
		}
		q := &pb.MultipathPolicy{}
		if err := proto.Unmarshal(b, q); err != nil {
			t.Fatalf("accepted policy does not decode after marshalling: %v", err)
		}
		var again Violations
		ValidatePolicy(&again, "policy", q)
		if len(again) != 0 {
			t.Fatalf("accepted policy refused after a trip over the wire: %v", again)
		}
		a, errA := Render(p, hostIfaces())
		b2, errB := Render(q, hostIfaces())
		if errA != nil || errB != nil {
			t.Fatalf("render after a trip over the wire: %v, %v", errA, errB)
		}
		if diff := cmp.Diff(a, b2, cmpNetip, protocmp.Transform()); diff != "" {
			t.Fatalf("renders differently after a trip over the wire (-before +after):\n%s", diff)
		}
	})
}

// checkRendered asserts what every rendering of an accepted policy must
// hold: a valid configuration within the namespace's limits, endpoints only
// of the host's selectable addresses, rules and routes only of links that
// are up and inside the policy's range, the same result for the interfaces
// in another order, and a configuration the reconciler applies in one pass.
func checkRendered(t *testing.T, p *pb.MultipathPolicy, ifaces []Interface, got Rendered) {
	t.Helper()
	c := got.Config
	if err := c.Validate(); err != nil {
		t.Fatalf("rendered config invalid: %v", err)
	}
	if len(c.Endpoints) > mptcp.MaxEndpoints || len(got.Paths) != len(c.Endpoints) {
		t.Fatalf("%d endpoints, %d paths", len(c.Endpoints), len(got.Paths))
	}
	present, up := map[netip.Addr]bool{}, map[netip.Addr]bool{}
	for _, i := range ifaces {
		for _, a := range i.Addrs {
			present[a.Addr()] = true
			up[a.Addr()] = up[a.Addr()] || i.Up
		}
	}
	for _, e := range c.Endpoints {
		if !present[e.Addr] || !Selectable(e.Addr) || slices.Contains(got.Excluded, e.Addr) {
			t.Fatalf("endpoint %v: not a selectable address of the host, or also excluded", e.Addr)
		}
	}
	tmin, tmax, pmin, pmax := RoutingRange(p.GetRouting())
	for _, r := range c.Rules {
		if !up[r.Src.Addr()] {
			t.Fatalf("rule %v for an address of a link that is down", r)
		}
		if r.Table < int(tmin) || r.Table > int(tmax) || r.Priority < int(pmin) || r.Priority > int(pmax) {
			t.Fatalf("rule %v outside tables %d-%d, priorities %d-%d", r, tmin, tmax, pmin, pmax)
		}
	}
	for _, r := range c.Routes {
		if r.Table < int(tmin) || r.Table > int(tmax) {
			t.Fatalf("route %v outside tables %d-%d", r, tmin, tmax)
		}
	}
	for _, pt := range got.Paths {
		if pt.Table != 0 && pt.Gateway.IsValid() {
			if why := refusedGateway(pt.Gateway, pt.Addr, present); why != "" {
				t.Fatalf("path %v: default route via %v, which the kernel %s", pt.Addr, pt.Gateway, why)
			}
		}
		if why := badGateway(pt, ifaces); why != "" {
			t.Fatalf("path %v gets gateway %v, which %s", pt.Addr, pt.Gateway, why)
		}
	}
	reversed := slices.Clone(ifaces)
	slices.Reverse(reversed)
	again, err := Render(p, reversed)
	if err != nil {
		t.Fatalf("render with the interfaces reversed: %v", err)
	}
	if diff := cmp.Diff(got, again, cmpNetip, protocmp.Transform()); diff != "" {
		t.Fatalf("depends on the order of interfaces (-first +reversed):\n%s", diff)
	}
	k := fakekernel.New(c.Range)
	actual, _ := k.Read(t.Context(), c)
	ops, err := reconcile.Plan(c, actual)
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	if err := reconcile.Apply(t.Context(), k, ops); err != nil {
		t.Fatalf("apply: %v", err)
	}
	after, _ := k.Read(t.Context(), c)
	if more, err := reconcile.Plan(c, after); err != nil || len(more) != 0 {
		t.Fatalf("after applying, plan %v, %v; want nothing to do", more, err)
	}
}

// refusedGateway says why the kernel would not take gw as the nexthop of
// a default route for local address a (on a host holding the addresses of
// local), or "" if it would. Checked against Linux 6.x: `ip route add
// default via 255.255.255.255` (or the subnet's broadcast address) fails
// with "Nexthop has invalid gateway", an IPv6 gateway that is a local
// address with "Gateway can not be a local address", and "via 0.0.0.0" is
// taken as no gateway at all (the route reads back as "default dev X", a
// drift that never converges).
func refusedGateway(gw netip.Addr, a netip.Prefix, local map[netip.Addr]bool) string {
	gw = gw.Unmap()
	switch {
	case gw.IsUnspecified():
		return "takes as no gateway at all"
	case gw.IsMulticast():
		return "refuses: a multicast gateway"
	case gw.Is4() && gw == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "refuses: the limited broadcast address"
	case gw.Is4() && a.Bits() <= 30 && gw == lastAddr(a):
		return "refuses: the subnet's broadcast address"
	case !gw.Is4() && local[gw]:
		return "refuses: an IPv6 gateway that is a local address"
	}
	return ""
}

// lastAddr returns the last address of a's prefix (IPv4: its broadcast
// address).
func lastAddr(a netip.Prefix) netip.Addr {
	b := a.Masked().Addr().As4()
	host := uint32(1)<<(32-a.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
