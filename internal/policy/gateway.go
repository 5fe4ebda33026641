package policy

// Gateways: which one an address's routing table leads to.

import (
	"fmt"
	"math/big"
	"net/netip"
	"path"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// gateway picks the gateway of address a on ifc; without one it returns a
// problem.
func gateway(r *pb.Routing, ifc *Interface, a netip.Prefix) (netip.Addr, *pb.HostProblem) {
	v4 := a.Addr().Is4()
	for _, o := range r.GetGateways() {
		if ok, err := path.Match(o.GetInterface(), ifc.Name); err != nil || !ok {
			continue
		}
		if o.GetHostIndex() != 0 {
			if gw, ok := HostIndexAddr(a, o.GetHostIndex()); ok {
				return gw, nil
			}
			continue
		}
		gw, err := netip.ParseAddr(o.GetGateway())
		if err != nil || gw.Unmap().Is4() != v4 {
			continue
		}
		return gw.Unmap(), nil
	}
	var linkLocal netip.Addr
	for _, gw := range ifc.Gateways {
		gw = gw.Unmap()
		if !gw.IsValid() || gw.Is4() != v4 || gw.Zone() != "" {
			continue
		}
		if a.Masked().Contains(gw) && gw != a.Addr() {
			return gw, nil
		}
		if !v4 && gw.IsLinkLocalUnicast() && !linkLocal.IsValid() {
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
	return netip.Addr{}, &pb.HostProblem{
		Code: pb.HostProblem_CODE_GATEWAY_UNKNOWN, Interface: ifc.Name, Address: a.Addr().String(),
		Message: fmt.Sprintf("%s on %s: no %s gateway known in %s, so its table gets no default route and subflows from it cannot leave by %s (name one in routing.gateways: gateway, or host_index 1 for the prefix's first address; or give %s a route in the main table)",
			a.Addr(), ifc.Name, fam, a.Masked(), ifc.Name, ifc.Name),
	}
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
