package lab

import (
	"fmt"
	"net/netip"
)

// Host names a namespace of the lab.
type Host string

// The namespaces of a lab. The namespace of host h is named
// "<prefix>-<h>", for example "mpfl-client".
const (
	Client     Host = "client"
	Server     Host = "server"
	Router     Host = "router"
	Controller Host = "ctl"
)

// Hosts lists every namespace of a lab, in the order Up creates them.
var Hosts = []Host{Client, Server, Router, Controller}

// Link names a link of the client or the server: one of its two data links
// or its management link. The controller has only Mgmt.
type Link int

// The links of a host.
const (
	Mgmt  Link = 0
	Link1 Link = 1
	Link2 Link = 2
)

// DataLinks are the links that carry MPTCP data.
var DataLinks = []Link{Link1, Link2}

func (k Link) String() string {
	switch k {
	case Mgmt:
		return "mgmt"
	case Link1, Link2:
		return fmt.Sprintf("link%d", int(k))
	}
	return fmt.Sprintf("Link(%d)", int(k))
}

// mgmtBridge is the router's bridge that joins the management links.
const mgmtBridge = "mgmt"

// Iface returns the name of the interface of link inside the namespace of
// h: "eth1" and "eth2" for the data links, "mgmt0" for the management link.
// It returns "" for a link h does not have.
func Iface(h Host, link Link) string {
	if !hasLink(h, link) {
		return ""
	}
	if link == Mgmt {
		return "mgmt0"
	}
	return fmt.Sprintf("eth%d", int(link))
}

// RouterIface returns the name of the router's end of the link of h, for
// example "client1" for the client's link 1 or "mgmt-client" for its
// management link (a port of the router's bridge "mgmt").
func RouterIface(h Host, link Link) string {
	if !hasLink(h, link) {
		return ""
	}
	if link == Mgmt {
		return "mgmt-" + string(h)
	}
	return fmt.Sprintf("%s%d", h, int(link))
}

func hasLink(h Host, link Link) bool {
	switch h {
	case Client, Server:
		return link == Mgmt || link == Link1 || link == Link2
	case Controller:
		return link == Mgmt
	}
	return false
}

// subnetOctet is the third octet of the IPv4 subnet (and the third group of
// the IPv6 prefix) of a link.
func subnetOctet(h Host, link Link) int {
	switch {
	case link == Mgmt:
		return 100
	case h == Client:
		return int(link)
	case h == Server:
		return 10 + int(link)
	}
	return 0
}

// hostOctet is the last octet of h's address on link.
func hostOctet(h Host, link Link) byte {
	if link != Mgmt {
		return 2
	}
	switch h {
	case Controller:
		return 1
	case Client:
		return 2
	case Server:
		return 3
	}
	return 0
}

// Subnet returns the IPv4 subnet of the link of h (198.18.0.0/15), or the
// zero Prefix for a link h does not have.
func Subnet(h Host, link Link) netip.Prefix {
	if !hasLink(h, link) {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(subnetOctet(h, link)), 0}), 24)
}

// Subnet6 returns the IPv6 subnet of the link of h (2001:db8::/32), or the
// zero Prefix for a link h does not have.
func Subnet6(h Host, link Link) netip.Prefix {
	if !hasLink(h, link) {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(addr6(subnetOctet(h, link), 0), 64)
}

func addr6(group int, last byte) netip.Addr {
	// 2001:db8:<group as decimal digits read as hex>::<last>, so that
	// 198.18.12.0/24 pairs with 2001:db8:12::/64.
	var g uint16
	for _, c := range fmt.Sprint(group) {
		g = g<<4 | uint16(c-'0')
	}
	return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(g >> 8), byte(g), 15: last})
}

// Addr returns the IPv4 address of h on link, or the zero Addr for a link h
// does not have. The router's addresses are the gateways; see [Gateway].
func Addr(h Host, link Link) netip.Addr {
	if !hasLink(h, link) {
		return netip.Addr{}
	}
	return netip.AddrFrom4([4]byte{198, 18, byte(subnetOctet(h, link)), hostOctet(h, link)})
}

// Addr6 returns the IPv6 address of h on link, or the zero Addr for a link
// h does not have. It exists in the kernel only in a lab with IPv6 on.
func Addr6(h Host, link Link) netip.Addr {
	if !hasLink(h, link) {
		return netip.Addr{}
	}
	return addr6(subnetOctet(h, link), hostOctet(h, link))
}

// Gateway returns the router's IPv4 address on the data link of h, or the
// zero Addr for the management link, which has no gateway.
func Gateway(h Host, link Link) netip.Addr {
	if !hasLink(h, link) || link == Mgmt {
		return netip.Addr{}
	}
	return netip.AddrFrom4([4]byte{198, 18, byte(subnetOctet(h, link)), 1})
}

// Gateway6 returns the router's IPv6 address on the data link of h, or the
// zero Addr for the management link.
func Gateway6(h Host, link Link) netip.Addr {
	if !hasLink(h, link) || link == Mgmt {
		return netip.Addr{}
	}
	return addr6(subnetOctet(h, link), 1)
}
