package lab_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/mpfleet/mpfleet/test/lab"
	"github.com/mpfleet/mpfleet/test/lab/traffic"
)

// attempts bounds the tries of a throughput measurement. Other work on the
// machine only ever slows a transfer down, so the best of a few tries is
// the measure of what the links carry.
const attempts = 4

// bestOf runs measure up to attempts times until ok accepts a report and
// returns the best (fastest) report; ok sees each in turn.
func bestOf(t testing.TB, measure func() traffic.Report, ok func(traffic.Report) bool) traffic.Report {
	t.Helper()
	var best traffic.Report
	for i := range attempts {
		r := measure()
		t.Logf("try %d: %s", i+1, r)
		if r.Mbps > best.Mbps {
			best = r
		}
		if ok(r) {
			break
		}
	}
	return best
}

// delta returns how many bytes the data links of h sent while fn ran.
func delta(t testing.TB, l *lab.Lab, h lab.Host, fn func()) (link1, link2 uint64) {
	t.Helper()
	var before [3]lab.Stats
	for _, k := range lab.DataLinks {
		s, err := l.LinkStats(h, k)
		if err != nil {
			t.Fatal(err)
		}
		before[k] = s
	}
	fn()
	var sent [3]uint64
	for _, k := range lab.DataLinks {
		s, err := l.LinkStats(h, k)
		if err != nil {
			t.Fatal(err)
		}
		sent[k] = s.TxBytes - before[k].TxBytes
	}
	return sent[lab.Link1], sent[lab.Link2]
}

// TestIntegrationRateLimit checks that one data link carries about its
// rate: tbf holds the limit, and its burst and queue let TCP reach it.
func TestIntegrationRateLimit(t *testing.T) {
	l := newLab(t, lab.Config{})
	_, port, _ := net.SplitHostPort(listen(t, l, lab.Server, ":5201"))
	to := hostPort(lab.Addr(lab.Server, lab.Link1), port)
	const n = 30_000_000
	rate := float64(l.Config().Rate) / 1e6
	r := bestOf(t, func() traffic.Report {
		var r traffic.Report
		eth1, eth2 := delta(t, l, lab.Client, func() { r = transfer(t, l, lab.Client, "", to, n) })
		if eth1 < n || eth2 > n/100 {
			t.Errorf("client sent %d bytes on eth1 and %d on eth2, want all %d on eth1", eth1, eth2, n)
		}
		if r.Mbps > 1.05*rate {
			t.Errorf("%.1f Mbit/s over a %.0f Mbit/s link: tbf does not hold", r.Mbps, rate)
		}
		return r
	}, func(r traffic.Report) bool { return r.Mbps >= 0.7*rate })
	if !r.MPTCP {
		t.Errorf("connection did not use MPTCP: %s", r)
	}
	if r.Mbps < 0.7*rate {
		t.Errorf("best of %d: %.1f Mbit/s over a %.0f Mbit/s link, want at least 70%%", attempts, r.Mbps, rate)
	}
	t.Logf("one link: %.1f Mbit/s (%.0f%% of %.0f Mbit/s)", r.Mbps, 100*r.Mbps/rate, rate)
}

// mptcp runs `ip mptcp ARGS` in the namespace of h.
//
// TODO(internal/mptcp): configure endpoints and limits through
// internal/mptcp instead of shelling out, once it lands. Shelling out is
// acceptable only in this lab self-test.
func mptcp(t testing.TB, l *lab.Lab, h lab.Host, args string) {
	t.Helper()
	if _, err := l.Exec(context.Background(), h, "ip", append([]string{"mptcp"}, strings.Fields(args)...)...); err != nil {
		t.Fatal(err)
	}
}

// TestIntegrationTwoLinks is the proof of physics for the data-path figure:
// one MPTCP connection over two equal links against one link. It sets the
// hosts up by hand, as the agent will (see useTwoLinks), and also shows
// that a subflow endpoint alone does not help.
func TestIntegrationTwoLinks(t *testing.T) {
	l := newLab(t, lab.Config{})
	_, port, _ := net.SplitHostPort(listen(t, l, lab.Server, ":5201")) // wildcard: joins to the announced address need a listener
	to := hostPort(lab.Addr(lab.Server, lab.Link1), port)
	rate := float64(l.Config().Rate) / 1e6

	one := oneLink(t, l, to)
	t.Logf("one link: %s", one)

	addSourceRoute(t, l, lab.Client, lab.Link2, false)
	addSourceRoute(t, l, lab.Server, lab.Link2, false)
	for _, h := range []lab.Host{lab.Client, lab.Server} {
		mptcp(t, l, h, "limits set subflow 2 add_addr_accepted 2")
	}

	// A subflow endpoint alone: the second subflow goes from the client's
	// link 2 to the server's link 1, which both subflows then share.
	mptcp(t, l, lab.Client, "endpoint add "+lab.Addr(lab.Client, lab.Link2).String()+" dev eth2 subflow")
	var shared traffic.Report
	_, eth2 := delta(t, l, lab.Client, func() { shared = transfer(t, l, lab.Client, "", to, 30_000_000) })
	t.Logf("subflow endpoint only: %s; ratio %.2f", shared, shared.Mbps/one.Mbps)
	if eth2 < 1_000_000 {
		t.Errorf("subflow endpoint only: client eth2 sent %d bytes, want a second subflow on it", eth2)
	}
	if shared.Mbps > 1.05*rate {
		t.Errorf("subflow endpoint only: %.1f Mbit/s, want at most one link's %.0f (the server's link 1 is shared)", shared.Mbps, rate)
	}
	mptcp(t, l, lab.Client, "endpoint flush")

	useTwoLinks(t, l)
	const n = 60_000_000
	two := bestOf(t, func() traffic.Report {
		var r traffic.Report
		c1, c2 := delta(t, l, lab.Client, func() { r = transfer(t, l, lab.Client, "", to, n) })
		t.Logf("client eth1 sent %d bytes, eth2 %d", c1, c2)
		if c1 < n/4 || c2 < n/4 {
			t.Errorf("client sent %d bytes on eth1 and %d on eth2, want both links used", c1, c2)
		}
		return r
	}, func(r traffic.Report) bool { return r.Mbps >= 1.8*one.Mbps })
	if !two.MPTCP {
		t.Errorf("connection did not use MPTCP: %s", two)
	}
	ratio := two.Mbps / one.Mbps
	t.Logf("two links: %.1f Mbit/s, one link: %.1f Mbit/s, ratio %.2f (limit 2)", two.Mbps, one.Mbps, ratio)
	if ratio < 1.8 {
		t.Errorf("two links give %.2f times one link, want at least 1.8", ratio)
	}
	if two.Mbps > 2.1*rate {
		t.Errorf("two links: %.1f Mbit/s over two %.0f Mbit/s links: tbf does not hold", two.Mbps, rate)
	}
	if ratio > 2.05 {
		t.Logf("ratio above the limit of 2: load on the machine slowed the one-link measurement (best %.1f of %.0f Mbit/s)", one.Mbps, rate)
	}
}

// oneLink measures one MPTCP connection over the client's and the server's
// link 1 (no endpoints: one subflow), the best of a few tries.
func oneLink(tb testing.TB, l *lab.Lab, to string) traffic.Report {
	tb.Helper()
	rate := float64(l.Config().Rate) / 1e6
	return bestOf(tb, func() traffic.Report { return transfer(tb, l, lab.Client, "", to, 30_000_000) },
		func(r traffic.Report) bool { return r.Mbps >= 0.9*rate })
}

// useTwoLinks sets client and server up by hand so that one MPTCP
// connection uses both links, on disjoint paths: source-based policy
// routing for the link-2 addresses (netlink), MPTCP limits and endpoints
// (ip mptcp). The server announces its link-2 address (signal); it must
// listen on the wildcard address, or joins to that address are refused.
// The client has a fullmesh endpoint without the subflow flag on its link-2
// address: the in-kernel path manager uses fullmesh endpoints for the
// addresses the peer announces (and subflow endpoints towards the address
// first connected to, which would put both subflows on the server's link
// 1), so the second subflow runs link 2 to link 2.
func useTwoLinks(tb testing.TB, l *lab.Lab) {
	tb.Helper()
	for _, h := range []lab.Host{lab.Client, lab.Server} {
		nh := l.Netlink(h)
		rules, err := nh.RuleList(netlink.FAMILY_V4)
		if err != nil {
			tb.Fatal(err)
		}
		routed := false
		for _, r := range rules {
			if r.Src != nil && r.Src.IP.Equal(lab.Addr(h, lab.Link2).AsSlice()) {
				routed = true
			}
		}
		if !routed {
			addSourceRoute(tb, l, h, lab.Link2, false)
		}
		mptcp(tb, l, h, "limits set subflow 2 add_addr_accepted 2")
	}
	mptcp(tb, l, lab.Server, "endpoint add "+lab.Addr(lab.Server, lab.Link2).String()+" dev eth2 signal")
	mptcp(tb, l, lab.Client, "endpoint add "+lab.Addr(lab.Client, lab.Link2).String()+" dev eth2 fullmesh")
}

// BenchmarkTwoLinks measures the data-path figure: the throughput of one
// MPTCP connection over one link and over two equal links, and the ratio
// (the limit is 2).
//
//	go test -run '^$' -bench TwoLinks ./test/lab/
func BenchmarkTwoLinks(b *testing.B) {
	l := newLab(b, lab.Config{})
	_, port, _ := net.SplitHostPort(listen(b, l, lab.Server, ":5201"))
	to := hostPort(lab.Addr(lab.Server, lab.Link1), port)
	one := oneLink(b, l, to)
	useTwoLinks(b, l)
	var sum float64
	var runs int
	for b.Loop() {
		r := transfer(b, l, lab.Client, "", to, 60_000_000)
		sum += r.Mbps
		runs++
	}
	two := sum / float64(runs)
	b.ReportMetric(one.Mbps, "Mbit/s-one")
	b.ReportMetric(two, "Mbit/s-two")
	b.ReportMetric(two/one.Mbps, "ratio")
}

// TestIntegrationShaping checks that a configured rate is what tbf gets,
// on both ends of every data link.
func TestIntegrationShaping(t *testing.T) {
	l := newLab(t, lab.Config{Rate: 40_000_000})
	for _, h := range []lab.Host{lab.Client, lab.Server} {
		for _, k := range lab.DataLinks {
			for _, end := range []struct {
				ns    lab.Host
				iface string
			}{{h, lab.Iface(h, k)}, {lab.Router, lab.RouterIface(h, k)}} {
				nh := l.Netlink(end.ns)
				link, err := nh.LinkByName(end.iface)
				if err != nil {
					t.Fatal(err)
				}
				qs, err := nh.QdiscList(link)
				if err != nil {
					t.Fatal(err)
				}
				if len(qs) != 1 {
					t.Fatalf("%s %s: qdiscs %v, want one tbf", end.ns, end.iface, qs)
				}
				tbf, ok := qs[0].(*netlink.Tbf)
				if !ok || tbf.Rate != 40_000_000/8 {
					t.Errorf("%s %s: qdisc %v, want tbf at 5000000 bytes/s", end.ns, end.iface, qs[0])
				}
			}
		}
	}
}

// TestIntegrationLinkPull pulls one of the client's links in the middle of
// a two-link transfer: no data is lost, and the transfer stalls well under
// a second while MPTCP moves the data to the other link. (The data-path
// figure's second half; in the end-to-end tests the agent also restores the
// link's routes when it comes back.)
func TestIntegrationLinkPull(t *testing.T) {
	l := newLab(t, lab.Config{})
	_, port, _ := net.SplitHostPort(listen(t, l, lab.Server, ":5201"))
	to := hostPort(lab.Addr(lab.Server, lab.Link1), port)
	useTwoLinks(t, l)
	const n = 40_000_000
	for _, k := range lab.DataLinks {
		t.Run(k.String(), func(t *testing.T) {
			r := bestOf(t, func() traffic.Report {
				pulled := make(chan error, 1)
				go func() {
					time.Sleep(500 * time.Millisecond)
					pulled <- l.LinkDown(lab.Client, k)
				}()
				r := transfer(t, l, lab.Client, "", to, n)
				if err := <-pulled; err != nil {
					t.Fatal(err)
				}
				// Put the link back, with its routes, which the kernel
				// deleted: LinkUp restores the main table's, this the
				// policy route of link 2.
				if err := l.LinkUp(lab.Client, k); err != nil {
					t.Fatal(err)
				}
				if k == lab.Link2 {
					nh := l.Netlink(lab.Client)
					link, err := nh.LinkByName(lab.Iface(lab.Client, k))
					if err != nil {
						t.Fatal(err)
					}
					err = nh.RouteReplace(&netlink.Route{
						LinkIndex: link.Attrs().Index,
						Dst:       &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)},
						Gw:        lab.Gateway(lab.Client, k).AsSlice(),
						Table:     100 + int(k),
					})
					if err != nil {
						t.Fatal(err)
					}
				}
				return r
			}, func(r traffic.Report) bool { return r.LongestStall < time.Second })
			t.Logf("%s pulled after 0.5 s: %s", lab.Iface(lab.Client, k), r)
			if !r.Verified {
				t.Errorf("data lost: %s", r)
			}
			if r.LongestStall >= time.Second {
				t.Errorf("longest stall %v, want well under 1 s", r.LongestStall)
			}
		})
	}
}
