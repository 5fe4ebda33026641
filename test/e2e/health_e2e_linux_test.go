package e2e

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/mpfleet/mpfleet/test/lab"
)

// Health scenario files and the server agent's probe listener.
const (
	healthNoGatewayFile = "test/e2e/testdata/health-no-gateway.yaml"
	healthProbesFile    = "test/e2e/testdata/health-probes.yaml"
	probePort           = "7402"
	// probeInterval is the probes' interval in the health files.
	probeInterval = time.Second
)

// apiConn opens a gRPC connection to the controller as the operator (TLS and
// the bearer token), from inside the client namespace (which reaches the
// management network).
func (f *fleet) apiConn(t *testing.T) *grpc.ClientConn {
	t.Helper()
	conn, err := f.OperatorConn(lab.Client)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// hostWatch follows one host through HostService.WatchHosts.
type hostWatch struct {
	c      chan *pb.Host
	cancel context.CancelFunc
}

// watchHost follows the lab host h as the controller shows it.
func (f *fleet) watchHost(t *testing.T, h lab.Host) *hostWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := pb.NewHostServiceClient(f.apiConn(t)).WatchHosts(ctx, &pb.WatchHostsRequest{LabelSelector: "role=" + roles[h]})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	w := &hostWatch{c: make(chan *pb.Host, 256), cancel: cancel}
	go func() {
		defer close(w.c)
		for {
			ev, err := stream.Recv()
			if err != nil {
				return
			}
			if ev.GetHost().GetName() == f.HostName(h) {
				w.c <- ev.GetHost()
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		for range w.c {
		}
	})
	return w
}

// until returns the first host state that ok accepts, and when it came.
func (w *hostWatch) until(t *testing.T, timeout time.Duration, what string, ok func(*pb.Host) error) (*pb.Host, time.Time) {
	t.Helper()
	deadline := time.After(timeout)
	last := errors.New("no update")
	for {
		select {
		case h, open := <-w.c:
			if !open {
				t.Fatalf("watch ended waiting for %s (%v)", what, last)
			}
			if last = ok(h); last == nil {
				return h, time.Now()
			}
		case <-deadline:
			t.Fatalf("no %s within %v: %v", what, timeout, last)
		}
	}
}

// paths returns "iface=state" for each path of h.
func paths(h *pb.Host) []string {
	var out []string
	for _, p := range h.GetHealth().GetPaths() {
		out = append(out, p.GetInterface()+"="+strings.TrimPrefix(p.GetState().String(), "PATH_STATE_"))
	}
	return out
}

func problems(h *pb.Host) []string {
	var out []string
	for _, p := range h.GetProblems() {
		out = append(out, strings.TrimPrefix(p.GetCode().String(), "CODE_")+" "+p.GetInterface())
	}
	return out
}

// hostIs accepts a host in state st at revision rev with exactly the given
// paths' states and problem codes.
func hostIs(st pb.SyncState, rev int64, wantPaths, wantProblems []string) func(*pb.Host) error {
	return func(h *pb.Host) error {
		if h.GetSyncState() != st || h.GetAppliedRevision() != rev || !slices.Equal(paths(h), wantPaths) || !slices.Equal(problems(h), wantProblems) {
			return fmt.Errorf("%s at revision %d, paths %v, problems %v; want %s at %d, paths %v, problems %v",
				h.GetSyncState(), h.GetAppliedRevision(), paths(h), problems(h), st, rev, wantPaths, wantProblems)
		}
		return nil
	}
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// testHealth: what the controller shows is what works.
//
//   - A client whose eth2 has no gateway in the main table, under a policy
//     with routing and no gateway named: DEGRADED with CODE_GATEWAY_UNKNOWN
//     naming eth2, eth2's path NO_GATEWAY, eth1's probed OK.
//   - The same policy with `hostIndex: 1` gateways: IN_SYNC, both tables
//     default via .1, both paths probed OK.
//   - A black hole beyond eth2 (the router drops what goes to the client's
//     eth2 address): eth2 FAILED within two probe intervals, eth1 still OK;
//     lifted: OK again by itself. Five times, for the figures.
//   - eth2 down: LINK_DOWN; up: OK.
//
// It leaves lab-two-links.yaml applied.
func testHealth(t *testing.T, f *fleet, _ string) {
	// The server serves as the probe target.
	f.stopAgent(lab.Server)
	f.startAgent(lab.Server, "--probe-listen", "0.0.0.0:"+probePort)
	t.Cleanup(func() {
		revs := f.apply(t, twoLinksFile, "e2e: back to two links")
		f.waitSynced(t, revs)
	})
	w := f.watchHost(t, lab.Client)

	revs := f.apply(t, healthNoGatewayFile, "e2e: routing without gateways")
	rev := revs[groupOf[lab.Client]]
	h, _ := w.until(t, 30*time.Second, "DEGRADED for want of eth2's gateway", hostIs(pb.SyncState_SYNC_STATE_DEGRADED, rev,
		[]string{"eth1=OK", "eth2=NO_GATEWAY"}, []string{"GATEWAY_UNKNOWN eth2"}))
	msg := h.GetProblems()[0].GetMessage()
	if !strings.Contains(msg, lab.Addr(lab.Client, lab.Link2).String()) || !strings.Contains(msg, "host_index") {
		t.Errorf("the problem does not name eth2's address and the fix: %q", msg)
	}
	out := f.mustCtl("get", "hosts")
	t.Logf("mpfleetctl get hosts:\n%s", out)
	if !strings.Contains(out, "degraded: 1 problem") {
		t.Errorf("get hosts does not show the client degraded with 1 problem")
	}

	revs = f.apply(t, healthProbesFile, "e2e: gateways by host index")
	rev = revs[groupOf[lab.Client]]
	h, _ = w.until(t, 30*time.Second, "IN_SYNC with both paths OK", hostIs(pb.SyncState_SYNC_STATE_IN_SYNC, rev,
		[]string{"eth1=OK", "eth2=OK"}, nil))
	for _, p := range h.GetHealth().GetPaths() {
		link := lab.Link1
		if p.GetInterface() == "eth2" {
			link = lab.Link2
		}
		if gw := lab.Gateway(lab.Client, link).String(); p.GetGateway() != gw {
			t.Errorf("%s: gateway %q, want %s (host_index 1)", p.GetInterface(), p.GetGateway(), gw)
		}
		found := false
		for _, r := range h.GetApplied().GetRoutes() {
			found = found || (r.GetTable() == p.GetTable() && r.GetDestination() == "0.0.0.0/0" && r.GetGateway() == p.GetGateway())
		}
		if !found {
			t.Errorf("%s: no default route via %s in table %d: %v", p.GetInterface(), p.GetGateway(), p.GetTable(), h.GetApplied().GetRoutes())
		}
	}
	desc := f.mustCtl("describe", "host", f.HostID(lab.Client))
	t.Logf("mpfleetctl describe host:\n%s", desc)

	f.probeCost(t, h)

	eth2 := lab.Addr(lab.Client, lab.Link2).String() + "/32"
	var broke, fixed []time.Duration
	for i := range 5 {
		f.ip(t, lab.Router, "route", "add", "blackhole", eth2)
		start := time.Now()
		h, at := w.until(t, 10*time.Second, "eth2 FAILED", hostIs(pb.SyncState_SYNC_STATE_DEGRADED, rev,
			[]string{"eth1=OK", "eth2=FAILED"}, []string{"PATH_FAILED eth2"}))
		broke = append(broke, at.Sub(start))
		if i == 0 {
			t.Logf("eth2 black-holed: %s", h.GetHealth().GetPaths()[1].GetMessage())
		}
		f.ip(t, lab.Router, "route", "del", "blackhole", eth2)
		start = time.Now()
		_, at = w.until(t, 10*time.Second, "eth2 OK again", hostIs(pb.SyncState_SYNC_STATE_IN_SYNC, rev,
			[]string{"eth1=OK", "eth2=OK"}, nil))
		fixed = append(fixed, at.Sub(start))
	}
	t.Logf("FIGURE path broken → controller shows FAILED: median %v (%v); repaired → OK: median %v (%v); probe interval %v",
		median(broke).Round(time.Millisecond), broke, median(fixed).Round(time.Millisecond), fixed, probeInterval)
	if m := slices.Max(broke); m > 2*probeInterval {
		t.Errorf("a black hole took %v to show, want within two probe intervals (%v)", m, 2*probeInterval)
	}

	up := f.linkDown(t, lab.Client, lab.Link2)
	start := time.Now()
	_, at := w.until(t, 10*time.Second, "eth2 LINK_DOWN", hostIs(pb.SyncState_SYNC_STATE_DEGRADED, rev,
		[]string{"eth1=OK", "eth2=LINK_DOWN"}, []string{"LINK_DOWN eth2"}))
	t.Logf("FIGURE link down → controller shows LINK_DOWN: %v", at.Sub(start).Round(time.Millisecond))
	if d := at.Sub(start); d > 2*time.Second {
		t.Errorf("LINK_DOWN took %v to reach the controller, want within 2s", d)
	}
	up()
	w.until(t, 10*time.Second, "eth2 OK after the link returns", hostIs(pb.SyncState_SYNC_STATE_IN_SYNC, rev,
		[]string{"eth1=OK", "eth2=OK"}, nil))
}

// probeCost measures what the client's probes cost on the wire: packets on
// its data links per probe (an MPTCP connection from one path's address,
// counted by MPCapableSYNTX), with no other traffic in the lab, over five
// probe intervals; and what that makes at the default interval.
func (f *fleet) probeCost(t *testing.T, h *pb.Host) {
	t.Helper()
	read := func() (pkts, syns uint64) {
		for _, k := range lab.DataLinks {
			s, err := f.Lab.LinkStats(lab.Client, k)
			if err != nil {
				t.Fatal(err)
			}
			pkts += s.TxPackets + s.RxPackets
		}
		var c mptcp.Counters
		if err := f.Lab.Do(lab.Client, func() (err error) { c, err = mptcp.ReadCounters(); return err }); err != nil {
			t.Fatal(err)
		}
		return pkts, c["MPCapableSYNTX"]
	}
	p0, s0 := read()
	// Wait for events: five more probes per path.
	paths := uint64(len(h.GetHealth().GetPaths()))
	eventually(t, 10*probeInterval, func() error {
		if _, s := read(); s < s0+5*paths {
			return fmt.Errorf("%d probes so far", s-s0)
		}
		return nil
	})
	p1, s1 := read()
	per := float64(p1-p0) / float64(s1-s0)
	t.Logf("FIGURE probe cost: %.1f packets per probe (%d packets, %d probes, both directions, all subflows); at the default 5s interval with %d paths and one target: %.1f packets/s",
		per, p1-p0, s1-s0, paths, per*float64(paths)/5)
}
