package policy

// Gateways: which one an address's routing table leads to.

import (
	"encoding/binary"
	"fmt"
	"math/big"
	"net/netip"
	"path"
	"strings"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// gateway picks the gateway of address a on ifc, on a host whose own
// addresses are local; without one it returns a problem. A candidate that
// cannot be a gateway there (usableGateway) is passed over like one that
// yields nothing, and the problem says why.
func gateway(r *pb.Routing, ifc *Interface, a netip.Prefix, local map[netip.Addr]bool) (netip.Addr, *pb.HostProblem) {
	v4 := a.Addr().Is4()
	var passed []string // candidates passed over, and why
	usable := func(gw netip.Addr, from string) bool {
		why := usableGateway(gw, ifc, local)
		if why != "" {
			passed = append(passed, fmt.Sprintf("%s (%s) %s", gw, from, why))
		}
		return why == ""
	}
	for i, o := range r.GetGateways() {
		if ok, err := path.Match(o.GetInterface(), ifc.Name); err != nil || !ok {
			continue
		}
		if o.GetHostIndex() != 0 {
			gw, ok := HostIndexAddr(a, o.GetHostIndex())
			if ok && usable(gw, fmt.Sprintf("routing.gateways[%d] host_index %d", i, o.GetHostIndex())) {
				return gw, nil
			}
			continue
		}
		gw, err := netip.ParseAddr(o.GetGateway())
		if err != nil || gw.Unmap().Is4() != v4 {
			continue
		}
		if gw = gw.Unmap(); usable(gw, fmt.Sprintf("routing.gateways[%d]", i)) {
			return gw, nil
		}
	}
	var linkLocal netip.Addr
	for _, gw := range ifc.Gateways {
		gw = gw.Unmap()
		if !gw.IsValid() || gw.Is4() != v4 || gw.Zone() != "" {
			continue
		}
		inSubnet := a.Masked().Contains(gw)
		if !inSubnet && (v4 || !gw.IsLinkLocalUnicast()) {
			continue
		}
		if !usable(gw, "a route in the main table") {
			continue
		}
		if inSubnet {
			return gw, nil
		}
		if !linkLocal.IsValid() {
			linkLocal = gw
		}
	}
	if linkLocal.IsValid() {
		return linkLocal, nil
	}
	fam := "IPv4"
	if !v4 {
		fam = "IPv6"
	}
	why := ""
	if len(passed) > 0 {
		why = " (passed over: " + strings.Join(passed, "; ") + ")"
	}
	return netip.Addr{}, &pb.HostProblem{
		Code: pb.HostProblem_CODE_GATEWAY_UNKNOWN, Interface: ifc.Name, Address: a.Addr().String(),
		Message: fmt.Sprintf("%s on %s: no usable %s gateway known in %s%s, so its table gets no default route and subflows from it cannot leave by %s (name one in routing.gateways: gateway, or host_index 1 for the prefix's first address; or give %s a route in the main table)",
			a.Addr(), ifc.Name, fam, a.Masked(), why, ifc.Name, ifc.Name),
	}
}

// notAGateway says why a can be no host's gateway (it is unspecified,
// multicast, loopback, the IPv4 limited broadcast address or IPv4
// link-local), or "" if some host may route through it. ValidatePolicy
// refuses such a gateway, and Render never uses one.
func notAGateway(a netip.Addr) string {
	a = a.Unmap()
	switch {
	case !a.IsValid():
		return "it is not an address"
	case a.IsUnspecified():
		return "it is the unspecified address"
	case a.IsMulticast():
		return "it is a multicast address"
	case a.IsLoopback():
		return "it is a loopback address"
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "it is the limited broadcast address"
	case a.Is4() && a.IsLinkLocalUnicast():
		return "it is an IPv4 link-local address"
	}
	return ""
}

// usableGateway says why gw cannot be the gateway of a route through ifc on
// a host whose own addresses are local, or "" if it can: notAGateway, one
// of the host's own addresses, or the network or broadcast address of one of
// ifc's IPv4 prefixes (/30 and wider; /31 and /32 have neither).
func usableGateway(gw netip.Addr, ifc *Interface, local map[netip.Addr]bool) string {
	if why := notAGateway(gw); why != "" {
		return why
	}
	if local[gw] {
		return "is one of this host's own addresses"
	}
	if !gw.Is4() {
		return ""
	}
	for _, p := range ifc.Addrs {
		if !p.IsValid() || !p.Addr().Is4() || p.Bits() > 30 || !p.Masked().Contains(gw) {
			continue
		}
		switch gw {
		case p.Masked().Addr():
			return "is the network address of " + p.Masked().String()
		case lastOf(p):
			return "is the broadcast address of " + p.Masked().String()
		}
	}
	return ""
}

// lastOf returns the last address of IPv4 prefix p: its broadcast address.
func lastOf(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := binary.BigEndian.Uint32(b[:]) | host
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// localAddrs returns the host's own addresses: those of all its interfaces.
func localAddrs(ifaces []Interface) map[netip.Addr]bool {
	m := map[netip.Addr]bool{}
	for _, i := range ifaces {
		for _, p := range i.Addrs {
			if p.IsValid() {
				m[p.Addr().Unmap()] = true
			}
		}
	}
	return m
}

// HostIndexAddr returns the address at host index idx of a's prefix: 1 is
// the first host address (network + 1), -1 the last usable one (IPv4: the
// broadcast address - 1; IPv6, which has no broadcast address: the prefix's
// last address). It is false when the index falls outside the prefix's host
// addresses (IPv4 prefixes longer than /30 and IPv6 ones longer than /126
// have too few) or lands on a itself.
func HostIndexAddr(a netip.Prefix, idx int32) (netip.Addr, bool) {
	if idx == 0 || !a.IsValid() {
		return netip.Addr{}, false
	}
	addr := a.Addr().Unmap()
	bits := addr.BitLen()
	hostBits := bits - a.Bits()
	if (addr.Is4() && hostBits < 2) || (!addr.Is4() && hostBits < 2) {
		return netip.Addr{}, false
	}
	net16 := netip.PrefixFrom(addr, a.Bits()).Masked().Addr().As16()
	base := new(big.Int).SetBytes(net16[:])
	size := new(big.Int).Lsh(big.NewInt(1), uint(hostBits))
	// The offset into the prefix, and the range of offsets allowed.
	off := big.NewInt(int64(idx))
	last := new(big.Int).Sub(size, big.NewInt(1)) // IPv6: the last address
	if addr.Is4() {
		last.Sub(last, big.NewInt(1)) // IPv4: not the broadcast address
	}
	if idx < 0 {
		off.Add(off, last).Add(off, big.NewInt(1))
	}
	if off.Sign() <= 0 || off.Cmp(last) > 0 {
		return netip.Addr{}, false
	}
	var b [16]byte
	new(big.Int).Add(base, off).FillBytes(b[:])
	gw := netip.AddrFrom16(b)
	if addr.Is4() {
		gw = gw.Unmap()
	}
	if gw == addr {
		return netip.Addr{}, false
	}
	return gw, true
}
