// Package lab builds the mpfleet network lab: network namespaces for a
// client, a server, a router and a controller, joined by rate-limited veth
// pairs, in which tests and the demo run the real mpfleet binaries.
//
// The client and the server each have two data links to the router, in
// different subnets, and a default route through link 1 only. The router
// drops packets that arrive on a link whose subnet their source address is
// not in (strict reverse-path filtering for IPv4, ingress filter rules for
// IPv6), so a subflow from a host's link-2 address gets through only if
// source-based policy routing sends it out of link 2. A management network,
// a bridge in the router namespace with no address and no route to the data
// links, joins the controller to the client and the server.
//
// [Config.Hosts] adds up to [MaxFleetHosts] extra hosts, h1 to hN (see
// [FleetHosts]), for tests that need a fleet: each is built like the
// client, with two data links through the router and a management link.
//
// Every name the lab creates starts with a prefix unique to the lab
// (see [Config]), veth pairs are created directly inside the namespaces, and
// nothing is left in the root namespace. [Lab.Down] removes a lab;
// [Cleanup] removes leftovers of crashed runs by prefix.
//
// The addressing plan (all addresses from 198.18.0.0/15 and 2001:db8::/32):
//
//	link             subnet                router (gateway)   host
//	client eth1      198.18.1.0/24         198.18.1.1         198.18.1.2
//	client eth2      198.18.2.0/24         198.18.2.1         198.18.2.2
//	server eth1      198.18.11.0/24        198.18.11.1        198.18.11.2
//	server eth2      198.18.12.0/24        198.18.12.1        198.18.12.2
//	h<i> eth1        198.18.(19+2i).0/24   198.18.(19+2i).1   198.18.(19+2i).2
//	h<i> eth2        198.18.(20+2i).0/24   198.18.(20+2i).1   198.18.(20+2i).2
//	mgmt0 (bridge)   198.18.100.0/24       none               ctl .1, client .2, server .3, h<i> .(10+i)
//
// so h1 has 198.18.21.0/24 and 198.18.22.0/24, h16 198.18.51.0/24 and
// 198.18.52.0/24. With IPv6 the same links carry 2001:db8:N::/64, where N
// is the third octet of the IPv4 subnet with its decimal digits used as hex
// digits (198.18.12.0/24 goes with 2001:db8:12::/64), and an address ends
// in the last octet of its IPv4 counterpart, likewise (2001:db8:1::2 is the
// client's link-1 address, 2001:db8:100::11 h1's management address).
// See README.md beside this file for a drawing.
package lab
