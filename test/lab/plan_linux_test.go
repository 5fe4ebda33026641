package lab

import (
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
	for _, h := range Hosts {
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
