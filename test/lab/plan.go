package lab

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
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

// Hosts lists the namespaces every lab has, in the order Up creates them.
// A lab with [Config.Hosts] set has [FleetHosts] too, created after these.
var Hosts = []Host{Client, Server, Router, Controller}

// MaxFleetHosts is the largest [Config.Hosts]: the number of extra hosts
// the addressing plan has room for.
const MaxFleetHosts = 16

// FleetHost returns the name of the i-th extra host, "h1" to "h16", for i
// from 1 to MaxFleetHosts, or "" for another i.
func FleetHost(i int) Host {
	if i < 1 || i > MaxFleetHosts {
		return ""
	}
	return Host("h" + strconv.Itoa(i))
}

// FleetHosts returns the names of the first n extra hosts, h1 to hn (n
// capped at MaxFleetHosts): the hosts of a lab with Config.Hosts n.
// Each is built like the client: data links eth1 and eth2 through the
// router, a default route through eth1 only, and a management link mgmt0.
func FleetHosts(n int) []Host {
	n = min(max(n, 0), MaxFleetHosts)
	hs := make([]Host, n)
	for i := range hs {
		hs[i] = FleetHost(i + 1)
	}
	return hs
}

// fleetIndex returns i for the extra host "h<i>", or 0 for any other host.
func fleetIndex(h Host) int {
	s, ok := strings.CutPrefix(string(h), "h")
	if !ok || s == "" || s[0] == '0' {
		return 0
	}
	i, err := strconv.Atoi(s)
	if err != nil || i < 1 || i > MaxFleetHosts {
		return 0
	}
	return i
}

// endHost reports whether h is a host with data links: the client, the
// server or an extra host.
func endHost(h Host) bool { return h == Client || h == Server || fleetIndex(h) != 0 }

// Link names a link of the client, the server or an extra host: one of its
// two data links or its management link. The controller has only Mgmt.
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
// example "client1" for the client's link 1, "h3-eth2" for link 2 of the
// extra host h3, or "mgmt-client" for the client's management link (a port
// of the router's bridge "mgmt"). Every name fits IFNAMSIZ (15 characters).
func RouterIface(h Host, link Link) string {
	if !hasLink(h, link) {
		return ""
	}
	switch {
	case link == Mgmt:
		return "mgmt-" + string(h)
	case fleetIndex(h) != 0:
		// "h1" + "1" would read as host h11.
		return fmt.Sprintf("%s-eth%d", h, int(link))
	}
	return fmt.Sprintf("%s%d", h, int(link))
}

func hasLink(h Host, link Link) bool {
	switch {
	case endHost(h):
		return link == Mgmt || link == Link1 || link == Link2
	case h == Controller:
		return link == Mgmt
	}
	return false
}

// subnetOctet is the third octet of the IPv4 subnet (and the third group of
// the IPv6 prefix) of a link: 100 for the management network; 1 and 2 for
// the client, 11 and 12 for the server, 19+2i and 20+2i for extra host
// h<i> (21 and 22 for h1, up to 51 and 52 for h16).
func subnetOctet(h Host, link Link) int {
	switch {
	case link == Mgmt:
		return 100
	case h == Client:
		return int(link)
	case h == Server:
		return 10 + int(link)
	case fleetIndex(h) != 0:
		return 18 + 2*fleetIndex(h) + int(link)
	}
	return 0
}

// hostOctet is the last octet of h's address on link: 2 on a data link (the
// router is 1); on the management network 1 for the controller, 2 for the
// client, 3 for the server and 10+i for extra host h<i>.
func hostOctet(h Host, link Link) int {
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
	if i := fleetIndex(h); i != 0 {
		return 10 + i
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

func addr6(group, last int) netip.Addr {
	// 2001:db8:<group>::<last>, each written with the decimal digits of the
	// IPv4 octet read as hex, so that 198.18.12.0/24 pairs with
	// 2001:db8:12::/64 and 198.18.100.11 with 2001:db8:100::11.
	g, a := decimalHex(group), decimalHex(last)
	return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(g >> 8), byte(g), 14: byte(a >> 8), 15: byte(a)})
}

// decimalHex returns the number whose hex digits are n's decimal digits.
func decimalHex(n int) uint16 {
	var x uint16
	for _, c := range strconv.Itoa(n) {
		x = x<<4 | uint16(c-'0')
	}
	return x
}

// Addr returns the IPv4 address of h on link, or the zero Addr for a link h
// does not have. The router's addresses are the gateways; see [Gateway].
func Addr(h Host, link Link) netip.Addr {
	if !hasLink(h, link) {
		return netip.Addr{}
	}
	return netip.AddrFrom4([4]byte{198, 18, byte(subnetOctet(h, link)), byte(hostOctet(h, link))})
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
