package lab_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/mpfleet/mpfleet/test/lab"
)

// fleetSize is the number of extra hosts of the fleet tests: enough for a
// staged rollout (a canary, then batches of two).
const fleetSize = 6

// TestIntegrationFleet builds a lab with extra hosts, with and without
// IPv6, and checks that each is wired like the client: it reaches the
// controller over the management network and the server's link-1 address
// over either of its data links, the latter only with source-based policy
// routing, because the router drops what arrives on the wrong link.
func TestIntegrationFleet(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("ipv6=%v", v6), func(t *testing.T) {
			l := newLab(t, lab.Config{Hosts: fleetSize, IPv6: v6})
			hosts := l.FleetHosts()
			if len(hosts) != fleetSize || hosts[0] != "h1" || hosts[fleetSize-1] != lab.Host(fmt.Sprintf("h%d", fleetSize)) {
				t.Fatalf("FleetHosts() = %q, want h1..h%d", hosts, fleetSize)
			}
			if l.Config().Hosts != fleetSize {
				t.Errorf("Config().Hosts = %d, want %d", l.Config().Hosts, fleetSize)
			}
			// In the order Up creates them: data links, then the
			// management bridge and its ports.
			wantRouter := "lo client1 client2 server1 server2"
			for _, h := range hosts {
				wantRouter += fmt.Sprintf(" %s %s", lab.RouterIface(h, lab.Link1), lab.RouterIface(h, lab.Link2))
			}
			wantRouter += " mgmt mgmt-ctl mgmt-client mgmt-server"
			for _, h := range hosts {
				wantRouter += " " + lab.RouterIface(h, lab.Mgmt)
			}
			if got := strings.Join(nsLinks(t, l.NSPath(lab.Router)), " "); got != wantRouter {
				t.Errorf("links of the router: %q, want %q", got, wantRouter)
			}

			_, port, _ := net.SplitHostPort(listen(t, l, lab.Server, ":5201"))
			listen(t, l, lab.Controller, ":5202")
			families := []bool{false}
			if v6 {
				families = append(families, true)
			}
			// Parallel subtests: a dropped SYN costs a dial timeout, which
			// would add up over the hosts.
			t.Run("hosts", func(t *testing.T) {
				for _, h := range hosts {
					t.Run(string(h), func(t *testing.T) {
						t.Parallel()
						checkFleetHost(t, l, h, port, families)
					})
				}
			})
		})
	}
}

// checkFleetHost checks one extra host of a lab whose server listens on
// port and whose controller listens on 5202.
func checkFleetHost(t *testing.T, l *lab.Lab, h lab.Host, port string, families []bool) {
	if got := strings.Join(nsLinks(t, l.NSPath(h)), " "); got != "lo eth1 eth2 mgmt0" {
		t.Errorf("links of %s: %q, want \"lo eth1 eth2 mgmt0\"", h, got)
	}
	for _, v6 := range families {
		addr, srv, ctl := lab.Addr, lab.Addr(lab.Server, lab.Link1), lab.Addr(lab.Controller, lab.Mgmt)
		gateway, family := lab.Gateway, netlink.FAMILY_V4
		if v6 {
			addr, srv, ctl = lab.Addr6, lab.Addr6(lab.Server, lab.Link1), lab.Addr6(lab.Controller, lab.Mgmt)
			gateway, family = lab.Gateway6, netlink.FAMILY_V6
		}
		to := hostPort(srv, port)

		// One default route in the main table, through eth1.
		routes, err := l.Netlink(h).RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			t.Fatal(err)
		}
		var defaults []string
		for _, r := range routes {
			if r.Dst == nil || r.Dst.IP.IsUnspecified() {
				defaults = append(defaults, fmt.Sprintf("via %s dev %d", r.Gw, r.LinkIndex))
			}
		}
		eth1, err := l.Netlink(h).LinkByName(lab.Iface(h, lab.Link1))
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("via %s dev %d", gateway(h, lab.Link1), eth1.Attrs().Index); len(defaults) != 1 || defaults[0] != want {
			t.Errorf("%s default routes %v, want one %s (eth1)", h, defaults, want)
		}

		if r := transfer(t, l, h, addr(h, lab.Mgmt).String(), hostPort(ctl, "5202"), 100_000); !r.Verified {
			t.Errorf("%s to the controller %s: %s", h, ctl, r)
		}

		// The main table's default route serves the eth1 address. (This
		// also resolves the gateway's MAC address on eth1: were it
		// unknown below, the ARP request would carry the eth2 address as
		// its sender, which the router's rp_filter leaves unanswered, and
		// the SYN would never leave the host.)
		if r := transfer(t, l, h, addr(h, lab.Link1).String(), to, 100_000); !r.Verified {
			t.Errorf("%s from %s to %s: %s", h, addr(h, lab.Link1), to, r)
		}

		// Without policy routing the eth2 address's SYN leaves by eth1,
		// the main table's default route, and the router drops it.
		src := addr(h, lab.Link2)
		eth1Before, err := l.LinkStats(h, lab.Link1)
		if err != nil {
			t.Fatal(err)
		}
		var rpBefore uint64
		if !v6 {
			rpBefore = netstat(t, l, lab.Router, "IPReversePathFilter")
		}
		if c, err := dial(l, h, src.String(), to, time.Second); err == nil {
			c.Close()
			t.Errorf("%s from %s to %s got through without policy routing", h, src, to)
		} else if ne := net.Error(nil); !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("%s from %s to %s: %v, want a timeout (dropped by the router)", h, src, to, err)
		}
		if eth1After, _ := l.LinkStats(h, lab.Link1); eth1After.TxPackets == eth1Before.TxPackets {
			t.Errorf("%s from %s: nothing left through eth1, the main table's default route", h, src)
		}
		if !v6 {
			// The counter is the router's, shared with the other
			// hosts' subtests, but only ever grows.
			if rp := netstat(t, l, lab.Router, "IPReversePathFilter"); rp <= rpBefore {
				t.Errorf("%s from %s: router's IPReversePathFilter %d -> %d, want a drop", h, src, rpBefore, rp)
			}
		}

		// With source-based policy routing each address leaves by its own
		// link, and the router forwards it.
		for _, k := range lab.DataLinks {
			addSourceRoute(t, l, h, k, v6)
			src := addr(h, k)
			before, _ := l.LinkStats(h, k)
			if r := transfer(t, l, h, src.String(), to, 100_000); !r.Verified {
				t.Errorf("%s from %s (%s) to %s with policy routing: %s", h, src, lab.Iface(h, k), to, r)
			}
			if after, _ := l.LinkStats(h, k); after.TxBytes < before.TxBytes+100_000 {
				t.Errorf("%s from %s to %s with policy routing: %s sent %d bytes, want at least 100000", h, src, to, lab.Iface(h, k), after.TxBytes-before.TxBytes)
			}
		}
	}
}

// TestIntegrationFleetLinkDownUpAndDown pulls an extra host's link 1 and
// puts it back, runs commands on extra hosts, and checks that Down removes
// every namespace, extra hosts' included, and stops their processes.
func TestIntegrationFleetLinkDownUpAndDown(t *testing.T) {
	l := newLab(t, lab.Config{Hosts: fleetSize})
	_, port, _ := net.SplitHostPort(listen(t, l, lab.Server, ":5201"))
	to := hostPort(lab.Addr(lab.Server, lab.Link1), port)
	h := l.FleetHosts()[fleetSize-1]

	if err := l.LinkDown(h, lab.Link1); err != nil {
		t.Fatal(err)
	}
	if c, err := dial(l, h, "", to, time.Second); err == nil {
		c.Close()
		t.Fatalf("%s reached the server with link 1 down", h)
	}
	if err := l.LinkUp(h, lab.Link1); err != nil {
		t.Fatal(err)
	}
	before, err := l.LinkStats(h, lab.Link1)
	if err != nil {
		t.Fatal(err)
	}
	if r := transfer(t, l, h, "", to, 100_000); !r.Verified {
		t.Errorf("%s after LinkUp: %s", h, r)
	}
	if after, _ := l.LinkStats(h, lab.Link1); after.TxBytes < before.TxBytes+100_000 {
		t.Errorf("%s after LinkUp: eth1 sent %d bytes, want at least 100000", h, after.TxBytes-before.TxBytes)
	}

	out, err := l.Exec(context.Background(), h, "cat", "/proc/sys/net/ipv4/conf/all/rp_filter", "/proc/sys/net/ipv4/tcp_congestion_control")
	if got := strings.Fields(string(out)); err != nil || len(got) != 2 || got[0] != "2" || got[1] != "reno" {
		t.Errorf("%s: rp_filter and congestion control %q, %v; want 2 and reno", h, out, err)
	}
	var procs []*lab.Process
	for _, h := range l.FleetHosts() {
		p, err := l.Start(l.Command(context.Background(), h, "sleep", "300"))
		if err != nil {
			t.Fatal(err)
		}
		waitInNamespace(t, p.Cmd.Process.Pid, l.NSPath(h))
		procs = append(procs, p)
	}

	if got := leftovers(t, l.Prefix()); len(got) != len(lab.Hosts)+fleetSize {
		t.Errorf("running lab: found %v, want its %d namespaces", got, len(lab.Hosts)+fleetSize)
	}
	if err := l.Down(); err != nil {
		t.Fatalf("Down: %v", err)
	}
	if got := leftovers(t, l.Prefix()); len(got) != 0 {
		t.Errorf("after Down: %v left", got)
	}
	for _, p := range procs {
		select {
		case <-p.Done():
		default:
			t.Errorf("Down returned with %v still running", p.Cmd.Args)
		}
	}
}

// TestIntegrationFleetTooMany checks that Up refuses more extra hosts than
// the plan has room for, and builds nothing. It checks before it needs
// root.
func TestFleetTooMany(t *testing.T) {
	for _, n := range []int{-1, lab.MaxFleetHosts + 1} {
		l, err := lab.Up(context.Background(), lab.Config{Prefix: "mpfx", Hosts: n})
		if err == nil {
			_ = l.Down()
			t.Errorf("Up with Hosts %d succeeded", n)
			continue
		}
		if !strings.Contains(err.Error(), "Hosts") {
			t.Errorf("Up with Hosts %d: %v, want an error naming Hosts", n, err)
		}
		if got := leftovers(t, "mpfx"); len(got) != 0 {
			t.Errorf("Up with Hosts %d left %v", n, got)
		}
	}
}

// BenchmarkUp measures how long Up takes to build a lab (ns/op) and, apart,
// how long Down takes to remove it (ms-down/op).
//
//	go test -run '^$' -bench Up -benchtime 10x ./test/lab/
func BenchmarkUp(b *testing.B) {
	integration(b)
	for _, cfg := range []lab.Config{{}, {Hosts: fleetSize}, {Hosts: fleetSize, IPv6: true}, {Hosts: lab.MaxFleetHosts, IPv6: true}} {
		b.Run(fmt.Sprintf("hosts=%d/ipv6=%v", cfg.Hosts, cfg.IPv6), func(b *testing.B) {
			var down time.Duration
			for b.Loop() {
				l, err := lab.Up(context.Background(), cfg)
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				start := time.Now()
				if err := l.Down(); err != nil {
					b.Fatal(err)
				}
				down += time.Since(start)
				b.StartTimer()
			}
			b.ReportMetric(float64(down.Milliseconds())/float64(b.N), "ms-down/op")
		})
	}
}
