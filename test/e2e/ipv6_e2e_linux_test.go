package e2e

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/mpfleet/mpfleet/test/lab"
)

// ipv6ProbePort is the port of the server agent's probe target
// (--probe-listen) in TestE2EFleetIPv6, the one deploy/examples/lab-*-v6.yaml
// probe.
const ipv6ProbePort = "7402"

// ipv6Policies are the lab's IPv6 policies. Their control comes with the
// clients' probe, which finds the second path misrouted.
var ipv6Policies = policySet{
	twoLinks: twoLinks6File, oneLink: oneLink6File, noRouting: noRouting6File,
	family: "IPv6", control: (*fleet).useMisrouted,
}

// TestE2EFleetIPv6 runs the data path over IPv6 in a dual-stack lab of its
// own: lab-two-links-v6.yaml applied, both hosts IN_SYNC and the client's
// path (2001:db8:2::2 on eth2) probed OK against the server agent's probe
// target, as the controller shows them; then the aggregation and failover
// scenarios of TestE2EFleet, to the server's 2001:db8:11::2. Like every test
// of this package it runs alone (no t.Parallel here or elsewhere), so that
// the throughput it measures is the links', not a share of them.
func TestE2EFleetIPv6(t *testing.T) {
	f := newFleet(t, dualStack(), agentFlags(lab.Server, "--probe-listen", net.JoinHostPort("::", ipv6ProbePort)))
	revs := f.apply(t, twoLinks6File, "e2e: two links over IPv6")
	took := f.waitPathsOK(t, revs)
	t.Logf("both hosts IN_SYNC and the client's paths probed OK %v after the apply", took.Round(time.Millisecond))
	_, port, err := net.SplitHostPort(f.serve(t)) // the server listens on the wildcard address, both families
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort(lab.Addr6(lab.Server, lab.Link1).String(), port)

	scenarios := []struct {
		name string
		fn   func(t *testing.T, f *fleet, addr string)
	}{
		{"PolicyApplied", testPolicyAppliedIPv6},
		{"Aggregation", func(t *testing.T, f *fleet, addr string) { aggregation(t, f, ipv6Policies, addr) }},
		{"Failover", func(t *testing.T, f *fleet, addr string) { failover(t, f, ipv6Policies, addr) }},
	}
	for _, s := range scenarios {
		if !t.Run(s.name, func(t *testing.T) { s.fn(t, f, addr) }) {
			t.Logf("%s failed; the fleet may not be as the next scenarios expect", s.name)
		}
	}
}

// testPolicyAppliedIPv6: lab-two-links-v6.yaml is in each host's kernel as
// declared (IPv6 endpoints only, an IPv6 rule and table each with a default
// route via the eth2 prefix's first address), and the controller shows the
// client's one path — eth2, 2001:db8:2::2, gateway 2001:db8:2::1 — OK and
// the server's, which probes nothing, UNPROBED.
func testPolicyAppliedIPv6(t *testing.T, f *fleet, _ string) {
	for _, h := range []lab.Host{lab.Client, lab.Server} {
		s, err := readKernel(f.Lab, h)
		if err != nil {
			t.Fatal(err)
		}
		if err := declared[twoLinks6File][h].check(s, h); err != nil {
			t.Error(err)
		}
		t.Logf("%s kernel:\n%s", h, s)
	}
	hs, err := f.hosts()
	if err != nil {
		t.Fatal(err)
	}
	want := map[lab.Host]pb.PathState{lab.Client: pb.PathState_PATH_STATE_OK, lab.Server: pb.PathState_PATH_STATE_UNPROBED}
	for _, h := range []lab.Host{lab.Client, lab.Server} {
		ps := hs[h].GetHealth().GetPaths()
		if len(ps) != 1 {
			t.Errorf("%s: paths %v, want eth2's only", h, ps)
			continue
		}
		p := ps[0]
		if p.GetInterface() != "eth2" || p.GetAddress() != lab.Addr6(h, lab.Link2).String() ||
			p.GetGateway() != lab.Gateway6(h, lab.Link2).String() || p.GetTable() == 0 || p.GetState() != want[h] {
			t.Errorf("%s: path %s %s gateway %q table %d %s (%s), want eth2 %s gateway %s (hostIndex 1), a table, %s",
				h, p.GetInterface(), p.GetAddress(), p.GetGateway(), p.GetTable(), p.GetState(), p.GetMessage(),
				lab.Addr6(h, lab.Link2), lab.Gateway6(h, lab.Link2), want[h])
		}
	}
	desc := f.mustCtl("describe", "host", f.HostID(lab.Client))
	t.Logf("mpfleetctl describe host %s:\n%s", f.HostID(lab.Client), desc)
	for _, w := range []string{lab.Addr6(lab.Client, lab.Link2).String(), lab.Gateway6(lab.Client, lab.Link2).String()} {
		if !strings.Contains(desc, w) {
			t.Errorf("describe host %s does not show %s", f.HostID(lab.Client), w)
		}
	}
}

// pathsOK checks that both hosts are IN_SYNC at revs (synced) and that the
// client has paths, every one PATH_STATE_OK, as the controller shows them.
func (f *fleet) pathsOK(revs map[string]int64) error {
	if err := f.synced(revs); err != nil {
		return err
	}
	hs, err := f.hosts()
	if err != nil {
		return err
	}
	ps := hs[lab.Client].GetHealth().GetPaths()
	if len(ps) == 0 {
		return fmt.Errorf("%s: no paths", f.HostName(lab.Client))
	}
	for _, p := range ps {
		if p.GetState() != pb.PathState_PATH_STATE_OK {
			return fmt.Errorf("%s: path %s %s %s (%s)", f.HostName(lab.Client), p.GetInterface(), p.GetAddress(), p.GetState(), p.GetMessage())
		}
	}
	return nil
}

// waitPathsOK waits until pathsOK and returns how long that took.
func (f *fleet) waitPathsOK(t testing.TB, revs map[string]int64) time.Duration {
	t.Helper()
	start := time.Now()
	eventually(t, 30*time.Second, func() error { return f.pathsOK(revs) })
	return time.Since(start)
}

// useMisrouted applies the IPv6 control, file (the endpoints without policy
// routing, the client's probe kept), and waits until the kernels hold it, the
// server is IN_SYNC and the client DEGRADED at its revision: its eth2 path
// FAILED with one problem, CODE_ROUTING_CONFLICT on eth2, because the route
// lookup from 2001:db8:2::2 to the probe target leaves by eth1.
func (f *fleet) useMisrouted(t testing.TB, file string) {
	t.Helper()
	revs := f.apply(t, file, "e2e: "+file)
	var client *pb.Host
	eventually(t, 30*time.Second, func() error {
		if err := f.Exited(); err != nil {
			return stop(err)
		}
		hs, err := f.hosts()
		if err != nil {
			return err
		}
		for _, h := range []lab.Host{lab.Client, lab.Server} {
			x := hs[h]
			st, rev := pb.SyncState_SYNC_STATE_IN_SYNC, revs[groupOf[h]]
			if h == lab.Client {
				st = pb.SyncState_SYNC_STATE_DEGRADED
			}
			if !x.GetConnected() || x.GetSyncState() != st || x.GetAppliedRevision() != rev {
				return fmt.Errorf("%s: connected %v, %s at revision %d (%s); want %s at %d",
					f.HostName(h), x.GetConnected(), x.GetSyncState(), x.GetAppliedRevision(), x.GetLastError(), st, rev)
			}
		}
		client = hs[lab.Client]
		ps, probs := client.GetHealth().GetPaths(), client.GetProblems()
		if len(ps) != 1 || ps[0].GetInterface() != "eth2" || ps[0].GetState() != pb.PathState_PATH_STATE_FAILED {
			return fmt.Errorf("client paths %v, want eth2 FAILED", ps)
		}
		if len(probs) != 1 || probs[0].GetCode() != pb.HostProblem_CODE_ROUTING_CONFLICT || probs[0].GetInterface() != "eth2" {
			return fmt.Errorf("client problems %v, want CODE_ROUTING_CONFLICT on eth2", probs)
		}
		return nil
	})
	t.Logf("without policy routing the controller shows the client %s: %s", client.GetSyncState(), client.GetProblems()[0].GetMessage())
	for _, h := range []lab.Host{lab.Client, lab.Server} {
		f.waitKernel(t, h, declared[file][h])
	}
}
