package lab

import (
	"fmt"
	"net/netip"
	"testing"
)

func TestPlan(t *testing.T) {
	for _, tc := range []struct {
		h          Host
		k          Link
		iface      string
		router     string
		addr, gw   string
		addr6, gw6 string
	}{
		{Client, Link1, "eth1", "client1", "198.18.1.2", "198.18.1.1", "2001:db8:1::2", "2001:db8:1::1"},
		{Client, Link2, "eth2", "client2", "198.18.2.2", "198.18.2.1", "2001:db8:2::2", "2001:db8:2::1"},
		{Server, Link1, "eth1", "server1", "198.18.11.2", "198.18.11.1", "2001:db8:11::2", "2001:db8:11::1"},
		{Server, Link2, "eth2", "server2", "198.18.12.2", "198.18.12.1", "2001:db8:12::2", "2001:db8:12::1"},
		{Client, Mgmt, "mgmt0", "mgmt-client", "198.18.100.2", "invalid IP", "2001:db8:100::2", "invalid IP"},
		{Server, Mgmt, "mgmt0", "mgmt-server", "198.18.100.3", "invalid IP", "2001:db8:100::3", "invalid IP"},
		{Controller, Mgmt, "mgmt0", "mgmt-ctl", "198.18.100.1", "invalid IP", "2001:db8:100::1", "invalid IP"},
		{"h1", Link1, "eth1", "h1-eth1", "198.18.21.2", "198.18.21.1", "2001:db8:21::2", "2001:db8:21::1"},
		{"h1", Link2, "eth2", "h1-eth2", "198.18.22.2", "198.18.22.1", "2001:db8:22::2", "2001:db8:22::1"},
		{"h1", Mgmt, "mgmt0", "mgmt-h1", "198.18.100.11", "invalid IP", "2001:db8:100::11", "invalid IP"},
		{"h6", Link1, "eth1", "h6-eth1", "198.18.31.2", "198.18.31.1", "2001:db8:31::2", "2001:db8:31::1"},
		{"h6", Link2, "eth2", "h6-eth2", "198.18.32.2", "198.18.32.1", "2001:db8:32::2", "2001:db8:32::1"},
		{"h6", Mgmt, "mgmt0", "mgmt-h6", "198.18.100.16", "invalid IP", "2001:db8:100::16", "invalid IP"},
		{"h16", Link2, "eth2", "h16-eth2", "198.18.52.2", "198.18.52.1", "2001:db8:52::2", "2001:db8:52::1"},
		{"h16", Mgmt, "mgmt0", "mgmt-h16", "198.18.100.26", "invalid IP", "2001:db8:100::26", "invalid IP"},
		{"h17", Link1, "", "", "invalid IP", "invalid IP", "invalid IP", "invalid IP"},
		{"h0", Link1, "", "", "invalid IP", "invalid IP", "invalid IP", "invalid IP"},
		{"h01", Link1, "", "", "invalid IP", "invalid IP", "invalid IP", "invalid IP"},
		{Controller, Link1, "", "", "invalid IP", "invalid IP", "invalid IP", "invalid IP"},
		{Router, Link1, "", "", "invalid IP", "invalid IP", "invalid IP", "invalid IP"},
	} {
		got := []string{Iface(tc.h, tc.k), RouterIface(tc.h, tc.k), Addr(tc.h, tc.k).String(), Gateway(tc.h, tc.k).String(), Addr6(tc.h, tc.k).String(), Gateway6(tc.h, tc.k).String()}
		want := []string{tc.iface, tc.router, tc.addr, tc.gw, tc.addr6, tc.gw6}
		for i := range got {
			if got[i] != want[i] {
				t.Errorf("%s %s: got %q, want %q", tc.h, tc.k, got, want)
				break
			}
		}
		if a := Addr(tc.h, tc.k); a.IsValid() && !Subnet(tc.h, tc.k).Contains(a) {
			t.Errorf("%s %s: %s not in %s", tc.h, tc.k, a, Subnet(tc.h, tc.k))
		}
		if a := Addr6(tc.h, tc.k); a.IsValid() && !Subnet6(tc.h, tc.k).Contains(a) {
			t.Errorf("%s %s: %s not in %s", tc.h, tc.k, a, Subnet6(tc.h, tc.k))
		}
	}
	// Every lab address is in the benchmarking and documentation ranges.
	bench, doc := netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("2001:db8::/32")
	for _, h := range append(Hosts, FleetHosts(MaxFleetHosts)...) {
		for _, k := range []Link{Mgmt, Link1, Link2} {
			for _, a := range []netip.Addr{Addr(h, k), Gateway(h, k)} {
				if a.IsValid() && !bench.Contains(a) {
					t.Errorf("%s %s: %s outside %s", h, k, a, bench)
				}
			}
			for _, a := range []netip.Addr{Addr6(h, k), Gateway6(h, k)} {
				if a.IsValid() && !doc.Contains(a) {
					t.Errorf("%s %s: %s outside %s", h, k, a, doc)
				}
			}
		}
	}
}

// TestFleetPlan checks the plan of the largest lab: every data link has a
// subnet of its own, every address is unique, and the router's interface
// names are unique and fit IFNAMSIZ.
func TestFleetPlan(t *testing.T) {
	if got := FleetHosts(3); len(got) != 3 || got[0] != "h1" || got[2] != "h3" {
		t.Errorf("FleetHosts(3) = %q, want [h1 h2 h3]", got)
	}
	if got := len(FleetHosts(MaxFleetHosts + 1)); got != MaxFleetHosts {
		t.Errorf("FleetHosts(%d) has %d hosts, want %d", MaxFleetHosts+1, got, MaxFleetHosts)
	}
	if FleetHost(0) != "" || FleetHost(MaxFleetHosts+1) != "" {
		t.Errorf("FleetHost out of range: %q, %q", FleetHost(0), FleetHost(MaxFleetHosts+1))
	}
	seen := make(map[string]string)
	unique := func(kind, v, who string) {
		t.Helper()
		if other, ok := seen[kind+" "+v]; ok {
			t.Errorf("%s %s: %s and %s", kind, v, other, who)
		}
		seen[kind+" "+v] = who
	}
	for _, h := range append([]Host{Client, Server, Controller}, FleetHosts(MaxFleetHosts)...) {
		for _, k := range []Link{Link1, Link2, Mgmt} {
			if Iface(h, k) == "" {
				if h != Controller || k == Mgmt {
					t.Errorf("%s has no %s", h, k)
				}
				continue
			}
			who := fmt.Sprintf("%s %s", h, k)
			r := RouterIface(h, k)
			if len(r) > 15 {
				t.Errorf("%s: router interface %q longer than IFNAMSIZ-1 (15)", who, r)
			}
			unique("router interface", r, who)
			unique("address", Addr(h, k).String(), who)
			unique("address", Addr6(h, k).String(), who)
			if k != Mgmt {
				unique("subnet", Subnet(h, k).String(), who)
				unique("subnet", Subnet6(h, k).String(), who)
				if g := Gateway(h, k); !Subnet(h, k).Contains(g) || g == Addr(h, k) {
					t.Errorf("%s: gateway %s, address %s, subnet %s", who, g, Addr(h, k), Subnet(h, k))
				}
			} else if Subnet(h, k) != Subnet(Controller, Mgmt) {
				t.Errorf("%s: management subnet %s, want the controller's %s", who, Subnet(h, k), Subnet(Controller, Mgmt))
			}
		}
	}
	if _, ok := seen["router interface "+mgmtBridge]; ok {
		t.Errorf("an interface is named like the bridge %q", mgmtBridge)
	}
}

func TestLabNames(t *testing.T) {
	for _, tc := range []struct {
		name, prefix string
		want         bool
	}{
		{"mpfl-client", "mpf", true},
		{"mpfl-client", "mpfl", true},
		{"mpfa3-router", "mpf", true},
		{"mpfa3-router", "mpfl", false},
		{"mpfa3-ctl", "mpfa3", true},
		{"mpfl-client", "mpfl3", false},
		{"mpft0a1b2c3d", "mpf", false},    // nstest's namespaces
		{"mpfl-h1", "mpf", true},          // an extra host
		{"mpfq7-h16", "mpfq", true},       // the last extra host
		{"mpfl-h17", "mpf", false},        // beyond MaxFleetHosts
		{"mpfl-h0", "mpf", false},         // no such host
		{"mpfl-h01", "mpf", false},        // not how hosts are named
		{"mpfl-h", "mpf", false},          // no number
		{"mpfl-other", "mpf", false},      // not a host of the lab
		{"mpfl-client-x", "mpf", false},   // not a host of the lab
		{"toolongpfx-client", "t", false}, // prefix longer than 5
		{"Mpfl-client", "M", false},       // upper case
		{"-client", "", false},
	} {
		p, host, ok := splitLabName(tc.name)
		got := ok && isHost(host) && tc.prefix != "" && len(p) >= len(tc.prefix) && p[:len(tc.prefix)] == tc.prefix
		if got != tc.want {
			t.Errorf("%q with prefix %q: matched %v, want %v", tc.name, tc.prefix, got, tc.want)
		}
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]uint64{"100M": 100e6, "100Mbit": 100e6, "100Mbit/s": 100e6, "1.5G": 1.5e9, "64k": 64e3, "1000": 1000} {
		if got, err := ParseRate(in); err != nil || got != want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
		if in == "100M" && FormatRate(want) != "100 Mbit/s" {
			t.Errorf("FormatRate(%d) = %q", want, FormatRate(want))
		}
	}
	for _, in := range []string{"", "fast", "-1M", "0"} {
		if _, err := ParseRate(in); err == nil {
			t.Errorf("ParseRate(%q) succeeded", in)
		}
	}
}
