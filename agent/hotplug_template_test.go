package agent

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mpfleet/mpfleet/internal/policy"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/reconcile/fakekernel"
	"github.com/mpfleet/mpfleet/internal/route"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// genHotPolicy returns a random valid policy without routing: a few
// endpoint rules over interface globs, ranges and families the hosts of
// genHotIfaces have addresses in.
func genHotPolicy(r *rand.Rand) *pb.MultipathPolicy {
	for {
		p := genHotPolicyOnce(r)
		var vs policy.Violations
		policy.ValidatePolicy(&vs, "policy", p)
		if vs.Err() == nil {
			return p
		}
	}
}

func genHotPolicyOnce(r *rand.Rand) *pb.MultipathPolicy {
	globs := []string{"", "eth*", "eth0", "wl*", "eth[0-1]", "*"}
	cidrs := []string{"", "198.18.0.0/15", "198.18.1.0/24", "198.18.2.0/25", "2001:db8::/32", "2001:db8:1::/48", "203.0.113.0/24"}
	flagSets := [][]pb.EndpointFlag{
		{pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW},
		{pb.EndpointFlag_ENDPOINT_FLAG_SIGNAL},
		{pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW, pb.EndpointFlag_ENDPOINT_FLAG_BACKUP},
		{pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW, pb.EndpointFlag_ENDPOINT_FLAG_FULLMESH},
	}
	p := &pb.MultipathPolicy{}
	if r.IntN(4) == 0 {
		p.Routing = &pb.Routing{Enabled: false}
	}
	for range 1 + r.IntN(3) {
		er := &pb.EndpointRule{
			Interface: globs[r.IntN(len(globs))],
			Cidr:      cidrs[r.IntN(len(cidrs))],
			Family:    pb.AddressFamily(r.IntN(3)),
			Flags:     flagSets[r.IntN(len(flagSets))],
		}
		if c, err := netip.ParsePrefix(er.Cidr); err == nil && er.Family != pb.AddressFamily_ADDRESS_FAMILY_UNSPECIFIED {
			// A family the range is of, as validation wants.
			er.Family = pb.AddressFamily_ADDRESS_FAMILY_IPV6
			if c.Addr().Is4() {
				er.Family = pb.AddressFamily_ADDRESS_FAMILY_IPV4
			}
		}
		if er.Flags[0] == pb.EndpointFlag_ENDPOINT_FLAG_SIGNAL && len(er.Flags) == 1 && r.IntN(3) == 0 {
			er.Port = uint32(1000 + r.IntN(1000))
		}
		p.Endpoints = append(p.Endpoints, er)
	}
	return p
}

// genHotAddr returns a random address of the ranges the policies select
// from, and some they do not.
func genHotAddr(r *rand.Rand) netip.Prefix {
	switch r.IntN(5) {
	case 0, 1:
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(r.IntN(3)), byte(1 + r.IntN(20))}), 24)
	case 2:
		return netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, byte(r.IntN(2)), 15: byte(1 + r.IntN(20))}), 64)
	case 3:
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(1 + r.IntN(20))}), 24)
	}
	return netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfe, 0x80, 15: byte(1 + r.IntN(20))}), 64)
}

// genHotIfaces returns a random host: loopback and a few interfaces, some
// down, with random addresses.
func genHotIfaces(r *rand.Rand) []policy.Interface {
	ifs := []policy.Interface{{Name: "lo", Index: 1, Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/8")}}}
	for i, name := range []string{"eth0", "eth1", "wlan0"}[:1+r.IntN(3)] {
		ifc := policy.Interface{Name: name, Index: i + 2, Up: r.IntN(5) != 0}
		for range r.IntN(4) {
			a := genHotAddr(r)
			if !slices.ContainsFunc(ifc.Addrs, func(p netip.Prefix) bool { return p.Addr() == a.Addr() }) {
				ifc.Addrs = append(ifc.Addrs, a)
			}
		}
		ifs = append(ifs, ifc)
	}
	return ifs
}

// hotHost is a kernel holding what a policy renders on a host, and what
// the fast path builds on there.
type hotHost struct {
	p       *pb.MultipathPolicy
	ifaces  []policy.Interface
	state   reconcile.State
	flapped map[int]bool
	pending map[opID]int
}

// newHotHost applies p on ifaces to a fresh fake kernel and reads it back,
// as a reconcile would; nil when the kernel would not take it.
func newHotHost(t *testing.T, p *pb.MultipathPolicy, ifaces []policy.Interface, flapped map[int]bool) *hotHost {
	t.Helper()
	ctx := context.Background()
	k := fakekernel.New(route.Range{})
	k.SetLinks(map[int]string{1: "lo", 2: "eth0", 3: "eth1", 4: "wlan0"})
	r, err := policy.Render(p, ifaces)
	if err != nil {
		t.Fatalf("render %v: %v", p, err)
	}
	st, err := k.Read(ctx, r.Config)
	if err != nil {
		t.Fatal(err)
	}
	ops, err := planOn(p, ifaces, st)
	if err != nil {
		t.Fatal(err)
	}
	if err := reconcile.Apply(ctx, k, ops); err != nil {
		return nil
	}
	if st, err = k.Read(ctx, r.Config); err != nil {
		t.Fatal(err)
	}
	was, err := planOn(p, ifaces, st)
	if err != nil {
		t.Fatal(err)
	}
	return &hotHost{p: p, ifaces: ifaces, state: st, flapped: flapped, pending: opCounts(was)}
}

// TestHotTemplateAgrees: wherever the template answers for a new address,
// its answer is what rendering and planning give (hotplugOps), on random
// policies, hosts and addresses, address after address as the fast path
// takes them; and it does answer for most.
func TestHotTemplateAgrees(t *testing.T) {
	verdicts := map[hotVerdict]int{}
	for seed := range uint64(3000) {
		r := rand.New(rand.NewPCG(seed, 12))
		p := genHotPolicy(r)
		ifaces := genHotIfaces(r)
		var flapped map[int]bool
		if r.IntN(4) == 0 {
			flapped = map[int]bool{2 + r.IntN(3): true}
		}
		h := newHotHost(t, p, ifaces, flapped)
		if h == nil {
			continue
		}
		tmpl := newHotTemplate(p, h.ifaces, h.state, flapped)
		if tmpl == nil {
			t.Fatalf("seed %d: no template for a policy without routing", seed)
		}
		for step := range 6 {
			ad := addedAddr{link: 1 + r.IntN(4), addr: genHotAddr(r)}
			if step == 5 && len(h.ifaces[len(h.ifaces)-1].Addrs) > 0 {
				ifc := h.ifaces[len(h.ifaces)-1]
				ad = addedAddr{ifc.Index, ifc.Addrs[0]} // one that is known
			}
			what := fmt.Sprintf("seed %d step %d: %v on link %d", seed, step, ad.addr, ad.link)
			ep, v := tmpl.lookup(ad.link, ad.addr)
			verdicts[v]++
			after, news := withAddresses(h.ifaces, []addedAddr{ad}, flapped)
			var ops reconcile.Ops
			var err error
			if after != nil && len(news) > 0 {
				ops, err = hotplugOps(p, h.pending, after, h.state, news)
			}
			switch v {
			case hotUnsure: // no claim
			case hotKnown:
				if after == nil || len(news) != 0 {
					t.Fatalf("%s: the template knows it; rendering says new %v (interfaces %v)", what, news, after != nil)
				}
			case hotNotSelected:
				if after == nil || err != nil || len(ops) != 0 {
					t.Fatalf("%s: the template selects nothing; rendering and planning give %v, %v", what, ops, err)
				}
			case hotEndpoint:
				want := reconcile.Ops{{Kind: reconcile.AddEndpoint, Endpoint: &ep, Dev: h.state.Links[ad.link]}}
				if after == nil || err != nil || !slices.Equal(opStrings(ops), opStrings(want)) || ops[0].Endpoint.IfIndex != ep.IfIndex {
					t.Fatalf("%s: the template gives %v; rendering and planning give %v, %v", what, want, ops, err)
				}
			}
			if v == hotUnsure {
				if after == nil || err != nil {
					break // the fast path would stop here
				}
				// Taken the render-and-plan way: the template is made anew.
				h.ifaces, h.state = after, withOps(h.state, ops)
				tmpl = newHotTemplate(p, h.ifaces, h.state, flapped)
				continue
			}
			h.ifaces, h.state = after, withOps(h.state, ops)
			tmpl.note(ad, ep.ID)
		}
	}
	t.Logf("verdicts: %v", verdicts)
	if verdicts[hotEndpoint] < 1000 || verdicts[hotNotSelected] < 1000 || verdicts[hotKnown] < 300 {
		t.Errorf("the template answered too rarely to tell: %v", verdicts)
	}
}

func opStrings(ops reconcile.Ops) []string {
	var out []string
	for _, op := range ops {
		out = append(out, op.String())
	}
	return out
}

// TestHotTemplateLookup: what the template answers, case by case.
func TestHotTemplateLookup(t *testing.T) {
	p := &pb.MultipathPolicy{Endpoints: []*pb.EndpointRule{
		{Interface: "eth1", Cidr: "198.18.1.0/24", Flags: []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SIGNAL}, Port: 8080},
		{Interface: "eth*", Family: pb.AddressFamily_ADDRESS_FAMILY_IPV4, Flags: []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW}},
	}}
	ifaces := policy.InterfacesFromFacts(&pb.HostFacts{Interfaces: hostIfaces()})
	h := newHotHost(t, p, ifaces, nil)
	if h == nil || len(h.state.Endpoints) != 2 {
		t.Fatalf("host: %+v", h)
	}
	tmpl := newHotTemplate(p, h.ifaces, h.state, map[int]bool{})
	pfx := netip.MustParsePrefix
	for _, tc := range []struct {
		link int
		addr string
		want hotVerdict
		ep   string // the endpoint, as an op prints it
	}{
		{3, "198.18.1.9/24", hotEndpoint, "+ endpoint 198.18.1.9 port 8080 id 3 signal dev eth1"},
		{2, "198.18.1.9/24", hotEndpoint, "+ endpoint 198.18.1.9 id 3 subflow dev eth0"},
		{2, "198.18.0.2/24", hotKnown, ""},
		{2, "198.18.0.2/25", hotUnsure, ""}, // its prefix changed
		{3, "198.18.0.2/24", hotUnsure, ""}, // on another interface already
		{2, "2001:db8::9/64", hotNotSelected, ""},
		{2, "fe80::9/64", hotNotSelected, ""},
		{1, "198.18.7.7/32", hotNotSelected, ""},
		{9, "198.18.7.7/24", hotUnsure, ""}, // a link the base does not know
	} {
		ep, v := tmpl.lookup(tc.link, pfx(tc.addr))
		got := ""
		if v == hotEndpoint {
			got = (reconcile.Op{Kind: reconcile.AddEndpoint, Endpoint: &ep, Dev: h.state.Links[tc.link]}).String()
		}
		if v != tc.want || got != tc.ep {
			t.Errorf("%s on link %d: %d %q, want %d %q", tc.addr, tc.link, v, got, tc.want, tc.ep)
		}
	}

	// A link down, or down since its endpoints were made: unsure.
	down := newHotTemplate(p, h.ifaces, h.state, map[int]bool{3: true})
	if _, v := down.lookup(3, pfx("198.18.1.9/24")); v != hotUnsure {
		t.Errorf("on a link that flapped: %d, want unsure", v)
	}
	// Routing: no template at all.
	routed := testPolicy()
	if newHotTemplate(routed, h.ifaces, h.state, nil) != nil {
		t.Error("a template for a policy with routing")
	}
	// The endpoint maximum: past it, unsure.
	for i := range 6 {
		tmpl.note(addedAddr{2, netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(100 + i)}), 24)}, uint8(3+i))
	}
	if _, v := tmpl.lookup(2, pfx("198.18.0.50/24")); v != hotUnsure {
		t.Errorf("with %d endpoints: %d, want unsure", tmpl.picks, v)
	}
	if diff := cmp.Diff(8, tmpl.picks); diff != "" {
		t.Errorf("picks (-want +got):\n%s", diff)
	}
}

// TestHotTemplateLookupAllocs: the event's lookup allocates nothing.
func TestHotTemplateLookupAllocs(t *testing.T) {
	p := &pb.MultipathPolicy{Endpoints: []*pb.EndpointRule{{Interface: "eth*", Flags: []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW}}}}
	ifaces := policy.InterfacesFromFacts(&pb.HostFacts{Interfaces: hostIfaces()})
	h := newHotHost(t, p, ifaces, nil)
	tmpl := newHotTemplate(p, h.ifaces, h.state, nil)
	a := netip.MustParsePrefix("198.18.1.9/24")
	if n := testing.AllocsPerRun(100, func() {
		if _, v := tmpl.lookup(3, a); v != hotEndpoint {
			t.Fatalf("verdict %d", v)
		}
	}); n != 0 {
		t.Errorf("%v allocations per lookup", n)
	}
}
