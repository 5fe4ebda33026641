package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/test/lab"
	"github.com/mpfleet/mpfleet/test/lab/traffic"
)

// Transfer sizes: each takes 2.5-3.5 s on the lab's 100 Mbit/s links, long
// enough that the first round trips and the slow start weigh little.
const (
	oneLinkBytes  = 30_000_000
	twoLinksBytes = 60_000_000
)

// rateMbps is the lab's link rate in Mbit/s.
func (f *fleet) rateMbps() float64 { return float64(f.Lab.Config().Rate) / 1e6 }

// useFile applies a manifest of deploy/examples and waits until both hosts
// are IN_SYNC with it and their kernels hold what it declares.
func (f *fleet) useFile(t testing.TB, file string) map[string]int64 {
	t.Helper()
	revs := f.apply(t, file, "e2e: "+file)
	f.waitSynced(t, revs)
	for _, h := range []lab.Host{lab.Client, lab.Server} {
		f.waitKernel(t, h, declared[file][h])
	}
	return revs
}

// policySet is the data-path policies of deploy/examples for one address
// family: two links, one link (the baseline) and two links without policy
// routing (the control).
type policySet struct {
	twoLinks, oneLink, noRouting string
	// family names the set in FIGURE lines ("" for IPv4, whose lines came
	// first).
	family string
	// control, if set, applies noRouting and waits until the fleet holds
	// it, in place of useFile (IPv6: the control's probes make the client
	// DEGRADED, never IN_SYNC).
	control func(f *fleet, t testing.TB, file string)
}

// ipv4Policies are the lab's IPv4 policies.
var ipv4Policies = policySet{twoLinks: twoLinksFile, oneLink: oneLinkFile, noRouting: noRoutingFile}

// figure is the FIGURE line's name of a measure of the set.
func (ps policySet) figure(name string) string {
	if ps.family == "" {
		return name
	}
	return name + " " + ps.family
}

// testAggregation is aggregation over IPv4, to the server's eth1 address
// addr.
func testAggregation(t *testing.T, f *fleet, addr string) { aggregation(t, f, ipv4Policies, addr) }

// aggregation: one MPTCP connection over the two links moves at least 1.8
// times the bytes per second of the same transfer over one link, both
// measured here, one after the other. One link is lab-one-link.yaml: the
// same hosts, MPTCP on, no endpoints, so the connection keeps its single
// subflow over eth1 — the same protocol and path, minus the second link.
// Then the control: lab-no-routing.yaml keeps the endpoints but drops the
// policy routing, and the second link carries (almost) nothing, because
// the join from the client's eth2 address leaves by eth1 and the router
// drops it. The files are those of ps; addr is the server's eth1 address
// of their family.
func aggregation(t *testing.T, f *fleet, ps policySet, addr string) {
	rate := f.rateMbps()
	f.useFile(t, ps.oneLink)
	t.Logf("one link (%s):", ps.oneLink)
	one := bestOf(t, 3, func() measured { return f.measure(t, addr, oneLinkBytes) },
		func(m measured) bool { return m.Mbps >= 0.9*rate })
	if one.link2 > oneLinkBytes/100 {
		t.Errorf("one link: client eth2 sent %d bytes of a %d-byte transfer, want none", one.link2, oneLinkBytes)
	}
	if one.Mbps < 0.7*rate {
		t.Errorf("one link: best %.1f Mbit/s over a %.0f Mbit/s link, want at least 70%%", one.Mbps, rate)
	}

	f.useFile(t, ps.twoLinks)
	t.Logf("two links (%s):", ps.twoLinks)
	two := bestOf(t, 3, func() measured { return f.measure(t, addr, twoLinksBytes) },
		func(m measured) bool { return m.Mbps >= 1.8*one.Mbps })
	if two.link1 < twoLinksBytes/4 || two.link2 < twoLinksBytes/4 {
		t.Errorf("two links: client eth1 sent %d bytes and eth2 %d, want both at least a quarter of %d", two.link1, two.link2, twoLinksBytes)
	}
	if !two.MPTCP {
		t.Errorf("two links: the connection did not use MPTCP: %s", two.Report)
	}
	ratio := two.Mbps / one.Mbps
	t.Logf("FIGURE %s: two links %.1f Mbit/s, one link %.1f Mbit/s, ratio %.2f (limit 2.0)", ps.figure("aggregation"), two.Mbps, one.Mbps, ratio)
	if ratio < 1.8 {
		t.Errorf("two links give %.2f times one link, want at least 1.8", ratio)
	}
	if two.Mbps > 2.1*rate {
		t.Errorf("two links: %.1f Mbit/s over two %.0f Mbit/s links: the shaping does not hold", two.Mbps, rate)
	}

	if ps.control != nil {
		ps.control(f, t, ps.noRouting)
	} else {
		f.useFile(t, ps.noRouting)
	}
	t.Logf("control, no policy routing (%s):", ps.noRouting)
	ctrl := f.measure(t, addr, oneLinkBytes)
	t.Logf("  %s; client eth1 sent %d B, eth2 %d B", ctrl.Report, ctrl.link1, ctrl.link2)
	if ctrl.link2 > oneLinkBytes/100 {
		t.Errorf("without policy routing client eth2 sent %d bytes of a %d-byte transfer, want (almost) none", ctrl.link2, oneLinkBytes)
	}
	if ctrl.Mbps > 1.1*rate {
		t.Errorf("without policy routing: %.1f Mbit/s, want at most one link's %.0f", ctrl.Mbps, rate)
	}

	f.useFile(t, ps.twoLinks)
}

// transferInBackground starts a transfer of n bytes and returns a channel
// that gets its report and error.
func (f *fleet) transferInBackground(addr string, n int64) <-chan result {
	c := make(chan result, 1)
	go func() {
		r, err := f.send(addr, n)
		c <- result{r, err}
	}()
	return c
}

type result struct {
	traffic.Report
	err error
}

// linkDown takes a link down, and puts it back (with the main table's
// default route for link 1) when the test ends if it is still down.
func (f *fleet) linkDown(t testing.TB, h lab.Host, k lab.Link) func() {
	t.Helper()
	if err := f.Lab.LinkDown(h, k); err != nil {
		t.Fatal(err)
	}
	up := false
	restore := func() {
		if up {
			return
		}
		up = true
		if err := f.Lab.LinkUp(h, k); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(restore)
	return restore
}

// testFailover is failover over IPv4, to the server's eth1 address addr.
func testFailover(t *testing.T, f *fleet, addr string) { failover(t, f, ipv4Policies, addr) }

// failover: the client's primary link (eth1, the first subflow's) goes
// down in the middle of a two-link transfer (ps.twoLinks applied, addr the
// server's eth1 address of its family); the transfer completes over eth2
// with every byte verified, and the receiver never waits a second for
// data.
func failover(t *testing.T, f *fleet, ps policySet, addr string) {
	const n = 80_000_000
	done := f.transferInBackground(addr, n)
	time.Sleep(time.Second)
	up := f.linkDown(t, lab.Client, lab.Link1)
	pulled := time.Now()
	r := <-done
	t.Logf("client eth1 pulled 1 s into the transfer: %s", r.Report)
	if r.err != nil {
		t.Fatalf("transfer failed: %v", r.err)
	}
	if time.Since(pulled) < 500*time.Millisecond {
		t.Errorf("the transfer ended %v after the pull: too short to show failover", time.Since(pulled))
	}
	if !r.Verified || r.Bytes != n {
		t.Errorf("got %d of %d bytes, verified %v", r.Bytes, n, r.Verified)
	}
	t.Logf("FIGURE %s: longest stall %v at %v into the transfer", ps.figure("failover"), r.LongestStall.Round(time.Millisecond), r.LongestStallAt.Round(time.Millisecond))
	if r.LongestStall >= time.Second {
		t.Errorf("longest stall %v, want under 1 s", r.LongestStall)
	}
	up()
	f.waitSynced(t, f.revisions(t))
	f.waitKernel(t, lab.Client, declared[ps.twoLinks][lab.Client])
}

// testRecovery: the second link goes down for 2 s and comes back during a
// long transfer. Within 5 s of its return it carries data again (the
// client's eth2 sends over a megabyte), with no action but the agents':
// the kernel deleted the link's policy routes, and the agent puts them back
// and makes the path manager open a subflow over the link again. The
// transfer completes verified. Run for the client's eth2 and the server's.
func testRecovery(t *testing.T, f *fleet, addr string) {
	for _, h := range []lab.Host{lab.Client, lab.Server} {
		t.Run(string(h)+"-eth2", func(t *testing.T) { recovery(t, f, addr, h) })
	}
}

func recovery(t *testing.T, f *fleet, addr string, h lab.Host) {
	const n = 250_000_000 // about 11 s at two links' rate
	done := f.transferInBackground(addr, n)
	time.Sleep(1500 * time.Millisecond)
	_, a2 := f.txBytes(t)
	time.Sleep(500 * time.Millisecond)
	if _, b2 := f.txBytes(t); b2-a2 < 1_000_000 {
		t.Fatalf("before the pull client eth2 sent %d bytes in 0.5 s: the second subflow does not carry data", b2-a2)
	}
	up := f.linkDown(t, h, lab.Link2)
	time.Sleep(2 * time.Second)
	up()
	back := time.Now()
	_, base := f.txBytes(t)
	var routes, carries time.Duration
	deadline := back.Add(5 * time.Second)
	for time.Now().Before(deadline) && (routes == 0 || carries == 0) {
		select {
		case r := <-done:
			t.Fatalf("the transfer ended %v after the link came back, before it was seen carrying data again (routes back after %v): %s %v",
				time.Since(back), routes, r.Report, r.err)
		default:
		}
		if routes == 0 {
			if s, err := readKernel(f.Lab, h); err == nil && declared[twoLinksFile][h].check(s, h) == nil {
				routes = time.Since(back)
			}
		}
		if _, tx := f.txBytes(t); carries == 0 && tx-base > 1_000_000 {
			carries = time.Since(back)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if routes == 0 {
		s, _ := readKernel(f.Lab, h)
		t.Errorf("5 s after %s eth2 came back, its kernel state is not restored: %v", h, declared[twoLinksFile][h].check(s, h))
	}
	if carries == 0 {
		_, tx := f.txBytes(t)
		t.Errorf("5 s after %s eth2 came back, client eth2 sent only %d bytes: no subflow over it", h, tx-base)
	}
	if routes > 0 && carries > 0 {
		t.Logf("FIGURE recovery %s eth2: kernel state restored %v and link carrying data again %v after it came back",
			h, routes.Round(time.Millisecond), carries.Round(time.Millisecond))
	}
	r := <-done
	t.Logf("transfer: %s", r.Report)
	if r.err != nil {
		t.Fatalf("transfer failed: %v", r.err)
	}
	if !r.Verified || r.Bytes != n {
		t.Errorf("got %d of %d bytes, verified %v", r.Bytes, n, r.Verified)
	}
	f.waitSynced(t, f.revisions(t))
}

// testControllerRestart: the controller is killed in the middle of a
// transfer and started again on the same data dir. The transfer (kernel
// state only) is unaffected; the agents reconnect and both hosts are
// IN_SYNC again at the same revisions.
func testControllerRestart(t *testing.T, f *fleet, addr string) {
	const n = 100_000_000
	revs := f.revisions(t)
	a1, a2 := f.txBytes(t)
	done := f.transferInBackground(addr, n)
	time.Sleep(700 * time.Millisecond)
	f.stopController(true)
	killed := time.Now()
	f.startController()
	t.Logf("controller killed and serving again after %v", time.Since(killed).Round(time.Millisecond))
	r := <-done
	b1, b2 := f.txBytes(t)
	t.Logf("transfer across the restart: %s; client eth1 sent %d B, eth2 %d B", r.Report, b1-a1, b2-a2)
	if r.err != nil {
		t.Fatalf("transfer failed: %v", r.err)
	}
	if !r.Verified || r.Bytes != n {
		t.Errorf("got %d of %d bytes, verified %v", r.Bytes, n, r.Verified)
	}
	if r.LongestStall >= 500*time.Millisecond {
		t.Errorf("longest stall %v across the controller restart, want under 0.5 s", r.LongestStall)
	}
	if b1-a1 < n/4 || b2-a2 < n/4 {
		t.Errorf("client eth1 sent %d bytes and eth2 %d: the transfer did not keep both links", b1-a1, b2-a2)
	}
	took := f.waitSynced(t, revs)
	t.Logf("both hosts reconnected and IN_SYNC %v after the controller came back", took.Round(time.Millisecond))
	if got := f.revisions(t); fmt.Sprint(got) != fmt.Sprint(revs) {
		t.Errorf("revisions after the restart %v, before %v", got, revs)
	}
}
