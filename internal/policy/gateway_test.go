package policy

import (
	"net/netip"
	"strings"
	"testing"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// TestUsableGateway: what cannot be a gateway of a route through an
// interface, on a host with the addresses of hostIfaces plus eth9's, and
// why; both families.
func TestUsableGateway(t *testing.T) {
	eth9 := Interface{Name: "eth9", Index: 9, Up: true, Addrs: []netip.Prefix{
		pfx("198.18.4.2/24"), pfx("198.18.5.0/31"), pfx("198.18.6.7/32"), pfx("2001:db8:4::2/64"), pfx("fe80::9/64"),
	}}
	local := localAddrs(append(hostIfaces(), eth9))
	tests := []struct {
		gw   string
		want string // "" usable, else a part of the reason
	}{
		{"198.18.4.1", ""},
		{"198.18.4.254", ""},
		{"198.18.4.0", "network address of 198.18.4.0/24"},
		{"198.18.4.255", "broadcast address of 198.18.4.0/24"},
		{"198.18.4.2", "own addresses"},
		{"198.18.1.2", "own addresses"}, // another interface's
		{"198.18.5.1", ""},              // a /31 has no network or broadcast address
		{"198.18.7.255", ""},            // not a prefix of this interface
		{"0.0.0.0", "unspecified"},
		{"255.255.255.255", "limited broadcast"},
		{"224.0.0.1", "multicast"},
		{"239.1.2.3", "multicast"},
		{"127.0.0.1", "loopback"},
		{"127.9.9.9", "loopback"},
		{"169.254.1.1", "IPv4 link-local"},
		{"::ffff:198.18.4.0", "network address"}, // compared unmapped
		{"2001:db8:4::1", ""},
		{"2001:db8:4:0:ffff:ffff:ffff:ffff", ""}, // IPv6 has no broadcast address
		{"fe80::1", ""},                          // link-local is how IPv6 routers are reached
		{"2001:db8:4::2", "own addresses"},
		{"2001:db8::2", "own addresses"},
		{"fe80::9", "own addresses"},
		{"::", "unspecified"},
		{"::1", "loopback"},
		{"ff02::1", "multicast"},
		{"ff05::2", "multicast"},
	}
	for _, tt := range tests {
		got := usableGateway(addr(tt.gw).Unmap(), &eth9, local)
		if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
			t.Errorf("usableGateway(%s) = %q, want %q", tt.gw, got, tt.want)
		}
	}
}

// TestRenderPassesOverUnusableGateways: a gateway derived from host_index,
// named in routing.gateways or taken from a route in the main table that
// cannot be a gateway on the host is not used: the next source is tried,
// and with none left the path has no gateway and CODE_GATEWAY_UNKNOWN says
// which candidate was passed over and why.
func TestRenderPassesOverUnusableGateways(t *testing.T) {
	tests := []struct {
		name     string
		ifc      Interface
		other    []netip.Prefix // addresses of another interface of the host
		gateways []*pb.GatewayOverride
		want     map[string]string // endpoint address -> gateway ("" none)
		why      string            // in the problem of each address without one
	}{
		{
			name: "v4 main-table gateway that is the broadcast address",
			ifc:  Interface{Addrs: []netip.Prefix{pfx("198.18.1.2/24")}, Gateways: []netip.Addr{addr("198.18.1.255")}},
			want: map[string]string{"198.18.1.2": ""},
			why:  "198.18.1.255 (a route in the main table) is the broadcast address of 198.18.1.0/24",
		},
		{
			name: "v4 main-table gateway that is the network address",
			ifc:  Interface{Addrs: []netip.Prefix{pfx("198.18.1.2/24")}, Gateways: []netip.Addr{addr("198.18.1.0")}},
			want: map[string]string{"198.18.1.2": ""},
			why:  "198.18.1.0 (a route in the main table) is the network address of 198.18.1.0/24",
		},
		{
			name: "v4 main-table gateway that is the host's own address, the next one is used",
			ifc: Interface{Addrs: []netip.Prefix{pfx("198.18.1.2/24")},
				Gateways: []netip.Addr{addr("198.18.1.9"), addr("198.18.1.1")}},
			other: []netip.Prefix{pfx("198.18.1.9/24")},
			want:  map[string]string{"198.18.1.2": "198.18.1.1"},
		},
		{
			name:     "v4 host_index landing on another of the host's addresses",
			ifc:      Interface{Addrs: []netip.Prefix{pfx("198.18.1.2/24")}},
			other:    []netip.Prefix{pfx("198.18.1.1/24")},
			gateways: []*pb.GatewayOverride{{Interface: "eth*", HostIndex: 1}},
			want:     map[string]string{"198.18.1.2": ""},
			why:      "198.18.1.1 (routing.gateways[0] host_index 1) is one of this host's own addresses",
		},
		{
			name: "v4 named gateway that is the subnet's broadcast address here, the main table's is used",
			ifc: Interface{Addrs: []netip.Prefix{pfx("198.18.1.2/24")},
				Gateways: []netip.Addr{addr("198.18.1.1")}},
			gateways: []*pb.GatewayOverride{{Interface: "eth*", Gateway: "198.18.1.255"}},
			want:     map[string]string{"198.18.1.2": "198.18.1.1"},
		},
		{
			name:     "v4 named gateway that is the subnet's network address here, nothing else",
			ifc:      Interface{Addrs: []netip.Prefix{pfx("198.18.1.2/24")}},
			gateways: []*pb.GatewayOverride{{Interface: "eth*", Gateway: "198.18.1.0"}},
			want:     map[string]string{"198.18.1.2": ""},
			why:      "198.18.1.0 (routing.gateways[0]) is the network address of 198.18.1.0/24",
		},
		{
			name: "v4 /31: both addresses are usable",
			ifc:  Interface{Addrs: []netip.Prefix{pfx("198.18.1.0/31")}, Gateways: []netip.Addr{addr("198.18.1.1")}},
			want: map[string]string{"198.18.1.0": "198.18.1.1"},
		},
		{
			name:  "v6 main-table gateway that is the host's own address",
			ifc:   Interface{Addrs: []netip.Prefix{pfx("2001:db8::2/64")}, Gateways: []netip.Addr{addr("2001:db8::3")}},
			other: []netip.Prefix{pfx("2001:db8::3/64")},
			want:  map[string]string{"2001:db8::2": ""},
			why:   "2001:db8::3 (a route in the main table) is one of this host's own addresses",
		},
		{
			name: "v6 link-local gateway that is the host's own, the next one is used",
			ifc: Interface{Addrs: []netip.Prefix{pfx("2001:db8::2/64"), pfx("fe80::2/64")},
				Gateways: []netip.Addr{addr("fe80::2"), addr("fe80::1")}},
			want: map[string]string{"2001:db8::2": "fe80::1"},
		},
		{
			name:     "v6 host_index -1 landing on the host's own address",
			ifc:      Interface{Addrs: []netip.Prefix{pfx("2001:db8::2/126")}},
			other:    []netip.Prefix{pfx("2001:db8::3/126")},
			gateways: []*pb.GatewayOverride{{Interface: "eth*", HostIndex: -1}},
			want:     map[string]string{"2001:db8::2": ""},
			why:      "2001:db8::3 (routing.gateways[0] host_index -1) is one of this host's own addresses",
		},
		{
			name:     "v6 host_index 1 is usable",
			ifc:      Interface{Addrs: []netip.Prefix{pfx("2001:db8::2/64")}},
			gateways: []*pb.GatewayOverride{{Interface: "eth*", HostIndex: 1}},
			want:     map[string]string{"2001:db8::2": "2001:db8::1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ifc := tt.ifc
			ifc.Name, ifc.Index, ifc.Up = "eth0", 2, true
			ifaces := []Interface{ifc, {Name: "dummy0", Index: 3, Up: true, Addrs: tt.other}}
			p := &pb.MultipathPolicy{
				Endpoints: []*pb.EndpointRule{{Interface: "eth0", Flags: sub}},
				Routing:   &pb.Routing{Enabled: true, Gateways: tt.gateways},
			}
			var vs Violations
			if ValidatePolicy(&vs, "policy", p); len(vs) != 0 {
				t.Fatalf("policy refused: %v", vs)
			}
			got, err := Render(p, ifaces)
			if err != nil {
				t.Fatal(err)
			}
			paths := map[string]string{}
			for _, pt := range got.Paths {
				gw := ""
				if pt.Gateway.IsValid() {
					gw = pt.Gateway.String()
				}
				paths[pt.Addr.Addr().String()] = gw
			}
			if len(paths) != len(tt.want) {
				t.Fatalf("paths %v, want %v", paths, tt.want)
			}
			for a, gw := range tt.want {
				if paths[a] != gw {
					t.Errorf("%s: gateway %q, want %q", a, paths[a], gw)
				}
				var problem *pb.HostProblem
				for _, pr := range got.Problems {
					if pr.GetAddress() == a {
						problem = pr
					}
				}
				switch {
				case gw != "" && problem != nil:
					t.Errorf("%s has gateway %s but a problem: %v", a, gw, problem)
				case gw == "" && problem.GetCode() != pb.HostProblem_CODE_GATEWAY_UNKNOWN:
					t.Errorf("%s has no gateway, problem %v; want CODE_GATEWAY_UNKNOWN", a, problem)
				case gw == "" && !strings.Contains(problem.GetMessage(), tt.why):
					t.Errorf("%s: problem %q does not say %q", a, problem.GetMessage(), tt.why)
				}
			}
			// No default route through what was passed over.
			for _, r := range got.Config.Routes {
				if r.Gateway.IsValid() && r.Dst.Bits() == 0 && !gatewayIn(r.Gateway, tt.want) {
					t.Errorf("route %v through a gateway no path has", r)
				}
			}
		})
	}
}

func gatewayIn(gw netip.Addr, want map[string]string) bool {
	for _, g := range want {
		if g == gw.String() {
			return true
		}
	}
	return false
}

// TestValidateGatewayLiteral: a named gateway that can be no host's gateway
// is refused, naming the field and why; both families.
func TestValidateGatewayLiteral(t *testing.T) {
	tests := []struct {
		gw   string
		want string // "" accepted, else a part of the description
	}{
		{"198.18.1.1", ""},
		{"2001:db8::1", ""},
		{"fe80::1", ""},
		{"0.0.0.0", "unspecified"},
		{"::", "unspecified"},
		{"224.0.0.1", "multicast"},
		{"ff02::1", "multicast"},
		{"127.0.0.1", "loopback"},
		{"::1", "loopback"},
		{"255.255.255.255", "limited broadcast"},
		{"169.254.0.1", "IPv4 link-local"},
		{"fe80::1%eth0", "not an IP address"},
		{"::ffff:198.18.1.1", "IPv4-mapped"},
	}
	for _, tt := range tests {
		var vs Violations
		ValidatePolicy(&vs, "policy", &pb.MultipathPolicy{Routing: &pb.Routing{Enabled: true,
			Gateways: []*pb.GatewayOverride{{Interface: "eth0", Gateway: tt.gw}}}})
		switch {
		case tt.want == "" && len(vs) != 0:
			t.Errorf("gateway %s refused: %v", tt.gw, vs)
		case tt.want != "" && (len(vs) != 1 || vs[0].Field != "policy.routing.gateways[0].gateway" ||
			!strings.Contains(vs[0].Description, tt.want)):
			t.Errorf("gateway %s: violations %v, want one of policy.routing.gateways[0].gateway saying %q", tt.gw, vs, tt.want)
		}
	}
}

// badGateway says why the gateway of path pt is no usable neighbour on a
// host with ifaces, or "" if it is one (or there is none): the oracle the
// property tests hold Render to, written apart from usableGateway.
func badGateway(pt Path, ifaces []Interface) string {
	gw := pt.Gateway
	if !gw.IsValid() {
		return ""
	}
	for _, i := range ifaces {
		for _, a := range i.Addrs {
			if a.Addr() == gw {
				return "is an address of the host itself"
			}
		}
	}
	if gw.Is4() && pt.Addr.Bits() <= 30 {
		switch gw {
		case pt.Addr.Masked().Addr():
			return "is the network address of " + pt.Addr.Masked().String()
		case lastAddr(pt.Addr):
			return "is the broadcast address of " + pt.Addr.Masked().String()
		}
	}
	switch {
	case gw.Is4In6() || gw.Zone() != "":
		return "is not a plain address"
	case gw.IsUnspecified(), gw.IsMulticast(), gw.IsLoopback():
		return "is unspecified, multicast or loopback"
	case gw == netip.MustParseAddr("255.255.255.255"):
		return "is the limited broadcast address"
	case netip.MustParsePrefix("169.254.0.0/16").Contains(gw):
		return "is IPv4 link-local"
	}
	return ""
}
