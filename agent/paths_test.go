package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/policy"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// withProbes is testPolicy probing one IPv4 target every 100ms.
func withProbes(p *pb.MultipathPolicy) *pb.MultipathPolicy {
	p.Probes = []*pb.Probe{{Address: "198.18.100.9:7401", Interval: durationpb.New(100 * time.Millisecond), Timeout: durationpb.New(50 * time.Millisecond)}}
	return p
}

// pathStates returns "iface=STATE" for each path of a report.
func pathStates(r *pb.AgentReport) []string {
	var out []string
	for _, p := range r.GetHealth().GetPaths() {
		out = append(out, p.GetInterface()+"="+strings.TrimPrefix(p.GetState().String(), "PATH_STATE_"))
	}
	return out
}

func problemCodes(r *pb.AgentReport) []string {
	var out []string
	for _, p := range r.GetProblems() {
		out = append(out, strings.TrimPrefix(p.GetCode().String(), "CODE_")+" "+p.GetInterface())
	}
	return out
}

func reportWith(state pb.SyncState, rev int64, paths ...string) func(*pb.AgentReport) bool {
	return func(r *pb.AgentReport) bool {
		return inState(state, rev)(r) && slices.Equal(pathStates(r), paths)
	}
}

// TestHealthNoGateway: routing asked, no gateway known for eth1: the
// revision is applied, but the host is DEGRADED with a problem that names
// eth1, not IN_SYNC; host_index gives it one and the host is IN_SYNC.
func TestHealthNoGateway(t *testing.T) {
	h := newHarness(t)
	ifs := hostIfaces()
	ifs[2].Gateways = nil
	h.sys.setInterfaces(ifs)
	p := testPolicy()
	h.ctrl.setDesired(managed(1, p))
	h.start()
	r := h.ctrl.waitReport(t, 0, "DEGRADED at 1", reportWith(pb.SyncState_SYNC_STATE_DEGRADED, 1, "eth0=UNPROBED", "eth1=NO_GATEWAY"))
	if diff := cmp.Diff([]string{"GATEWAY_UNKNOWN eth1"}, problemCodes(r)); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
	if msg := r.GetProblems()[0].GetMessage(); !strings.Contains(msg, "198.18.1.2") || !strings.Contains(msg, "host_index") {
		t.Errorf("problem message %q does not name the address and the fix", msg)
	}
	if !strings.Contains(r.GetLastError(), "IPv4 gateway") {
		t.Errorf("last error %q: the old field keeps working", r.GetLastError())
	}
	h.waitConverged(p)

	_, reports, _ := h.ctrl.counts()
	p2 := proto.Clone(p).(*pb.MultipathPolicy)
	p2.Routing.Gateways = []*pb.GatewayOverride{{Interface: "eth*", HostIndex: 1}}
	h.ctrl.setDesired(managed(2, p2))
	r = h.ctrl.waitReport(t, reports, "IN_SYNC at 2", reportWith(pb.SyncState_SYNC_STATE_IN_SYNC, 2, "eth0=UNPROBED", "eth1=UNPROBED"))
	if len(r.GetProblems()) != 0 || r.GetLastError() != "" {
		t.Errorf("problems %v, last error %q", r.GetProblems(), r.GetLastError())
	}
	if gw := r.GetHealth().GetPaths()[1].GetGateway(); gw != "198.18.1.1" {
		t.Errorf("eth1's gateway %q, want 198.18.1.1 (host_index 1)", gw)
	}
	if n := h.sys.probeCount(); n != 0 {
		t.Errorf("%d probes without a probe in the policy", n)
	}
}

// TestHealthProbes: probes judge each path; a failing one makes the host
// DEGRADED at once and OK again by itself, without a reconcile.
func TestHealthProbes(t *testing.T) {
	h := newHarness(t)
	p := withProbes(testPolicy())
	h.ctrl.setDesired(managed(1, p))
	h.start()
	r := h.ctrl.waitReport(t, 0, "IN_SYNC with both paths OK", reportWith(pb.SyncState_SYNC_STATE_IN_SYNC, 1, "eth0=OK", "eth1=OK"))
	if ps := r.GetHealth().GetPaths()[0]; ps.GetTable() == 0 || ps.GetGateway() != "198.18.0.1" || ps.GetLastCheckTime() == nil || ps.GetProbeLatency() == nil {
		t.Errorf("eth0 path %v", ps)
	}

	eth1 := netip.MustParseAddr("198.18.1.2")
	cases := []struct {
		name string
		res  ProbeResult
		code string
	}{
		{"black hole", ProbeResult{Dialed: true, DialErr: errors.New("i/o timeout")}, "PATH_FAILED eth1"},
		{"wrong way out", ProbeResult{RouteLink: 2}, "ROUTING_CONFLICT eth1"},
		{"fallback", ProbeResult{Dialed: true, MPTCP: false}, "MPTCP_FALLBACK eth1"},
	}
	for _, c := range cases {
		_, n, _ := h.ctrl.counts()
		h.sys.setProbe(func(src netip.Addr, link int, _ netip.AddrPort) ProbeResult {
			if src == eth1 {
				if c.res.RouteLink == 0 {
					c.res.RouteLink = link
				}
				return c.res
			}
			return ProbeResult{RouteLink: link, Dialed: true, MPTCP: true}
		})
		r := h.ctrl.waitReport(t, n, c.name+": eth1 FAILED", reportWith(pb.SyncState_SYNC_STATE_DEGRADED, 1, "eth0=OK", "eth1=FAILED"))
		if diff := cmp.Diff([]string{c.code}, problemCodes(r)); diff != "" {
			t.Errorf("%s: problems (-want +got):\n%s", c.name, diff)
		}
		if m := r.GetHealth().GetPaths()[1].GetMessage(); m == "" {
			t.Errorf("%s: FAILED path without a message", c.name)
		}
		_, n, _ = h.ctrl.counts()
		h.sys.setProbe(nil)
		h.ctrl.waitReport(t, n, c.name+": OK again", reportWith(pb.SyncState_SYNC_STATE_IN_SYNC, 1, "eth0=OK", "eth1=OK"))
	}
}

// TestHealthLinkDown: a link that goes down is LINK_DOWN within the
// reconcile its event triggers, and is probed anew when it comes back.
func TestHealthLinkDown(t *testing.T) {
	h := newHarness(t)
	h.ctrl.setDesired(managed(1, withProbes(testPolicy())))
	h.start()
	h.ctrl.waitReport(t, 0, "both OK", reportWith(pb.SyncState_SYNC_STATE_IN_SYNC, 1, "eth0=OK", "eth1=OK"))
	_, n, _ := h.ctrl.counts()
	down := hostIfaces()
	down[2].Up = false
	h.sys.setInterfaces(down, Change{Link: 3, Down: true})
	r := h.ctrl.waitReport(t, n, "eth1 LINK_DOWN", reportWith(pb.SyncState_SYNC_STATE_DEGRADED, 1, "eth0=OK", "eth1=LINK_DOWN"))
	if diff := cmp.Diff([]string{"LINK_DOWN eth1"}, problemCodes(r)); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
	_, n, _ = h.ctrl.counts()
	h.sys.setInterfaces(hostIfaces(), Change{Link: 3})
	h.ctrl.waitReport(t, n, "both OK again", reportWith(pb.SyncState_SYNC_STATE_IN_SYNC, 1, "eth0=OK", "eth1=OK"))
}

// TestHealthSysctlUnsupported: a sysctl the kernel lacks is reported, not
// a failure: the rest of the policy is applied and the host is DEGRADED.
func TestHealthSysctlUnsupported(t *testing.T) {
	h := newHarness(t)
	h.k.DropSysctl("net.mptcp.close_timeout")
	p := testPolicy()
	p.Sysctls.CloseTimeout = proto.Uint32(30)
	h.ctrl.setDesired(managed(1, p))
	h.start()
	r := h.ctrl.waitReport(t, 0, "DEGRADED at 1", inState(pb.SyncState_SYNC_STATE_DEGRADED, 1))
	if diff := cmp.Diff([]string{"SYSCTL_UNSUPPORTED "}, problemCodes(r)); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
	if !strings.Contains(r.GetProblems()[0].GetMessage(), "net.mptcp.close_timeout") {
		t.Errorf("problem %q does not name the sysctl", r.GetProblems()[0].GetMessage())
	}
	if got := h.k.Snapshot().Sysctls["net.mptcp.add_addr_timeout"]; got != "60" {
		t.Errorf("add_addr_timeout %q: the rest of the policy is not applied", got)
	}
	h.ctrl.waitEvent(t, 0, pb.AgentEvent_KIND_APPLIED)
}

// TestPathStatuses judges paths from outcomes, as a table.
func TestPathStatuses(t *testing.T) {
	a4, a6 := netip.MustParsePrefix("198.18.1.2/24"), netip.MustParsePrefix("2001:db8:1::2/64")
	t4 := probeTarget{addr: netip.MustParseAddrPort("198.18.11.2:7"), interval: time.Second, timeout: time.Second}
	t4b := probeTarget{addr: netip.MustParseAddrPort("198.18.12.2:7"), interval: time.Second, timeout: time.Second}
	path := func(a netip.Prefix, up, routed bool, gw string) policy.Path {
		p := policy.Path{Addr: a, IfIndex: 3, IfName: "eth1", Up: up, Routed: routed, Table: 7116}
		if gw != "" {
			p.Gateway = netip.MustParseAddr(gw)
		}
		return p
	}
	ok := ProbeResult{RouteLink: 3, Dialed: true, MPTCP: true, Latency: 3 * time.Millisecond}
	out := func(p policy.Path, t probeTarget, r ProbeResult) probeOutcome {
		return probeOutcome{path: pathKey{p.Addr.Addr(), p.IfIndex}, target: t.addr, res: r, at: time.Now()}
	}
	p4 := path(a4, true, true, "198.18.1.1")
	tests := []struct {
		name    string
		paths   []policy.Path
		targets []probeTarget
		outs    []probeOutcome
		want    string // state
		code    string // problem, "" for none
	}{
		{"down", []policy.Path{path(a4, false, true, "198.18.1.1")}, []probeTarget{t4}, nil, "LINK_DOWN", "CODE_LINK_DOWN"},
		{"no gateway", []policy.Path{path(a4, true, true, "")}, []probeTarget{t4}, nil, "NO_GATEWAY", ""},
		{"no gateway needed without routing", []policy.Path{path(a4, true, false, "")}, nil, nil, "UNPROBED", ""},
		{"no probes", []policy.Path{p4}, nil, nil, "UNPROBED", ""},
		{"no probe of its family", []policy.Path{path(a6, true, true, "2001:db8:1::1")}, []probeTarget{t4}, nil, "UNPROBED", ""},
		{"not probed yet", []policy.Path{p4}, []probeTarget{t4}, nil, "UNPROBED", ""},
		{"ok", []policy.Path{p4}, []probeTarget{t4}, []probeOutcome{out(p4, t4, ok)}, "OK", ""},
		{"one target of two failed", []policy.Path{p4}, []probeTarget{t4, t4b},
			[]probeOutcome{out(p4, t4, ok), out(p4, t4b, ProbeResult{RouteLink: 3, Dialed: true, DialErr: errors.New("connection refused")})},
			"FAILED", "CODE_PATH_FAILED"},
		{"route lookup failed", []policy.Path{p4}, []probeTarget{t4}, []probeOutcome{out(p4, t4, ProbeResult{RouteErr: errors.New("network is unreachable")})},
			"FAILED", "CODE_ROUTING_CONFLICT"},
		{"wrong interface", []policy.Path{p4}, []probeTarget{t4}, []probeOutcome{out(p4, t4, ProbeResult{RouteLink: 2})},
			"FAILED", "CODE_ROUTING_CONFLICT"},
		{"fallback", []policy.Path{p4}, []probeTarget{t4}, []probeOutcome{out(p4, t4, ProbeResult{RouteLink: 3, Dialed: true})},
			"FAILED", "CODE_MPTCP_FALLBACK"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := pathResults{}
			res.merge(tt.outs, tt.paths, 0)
			st, probs := pathStatuses(tt.paths, tt.targets, res, map[int]string{2: "eth0", 3: "eth1"}, time.Now())
			if len(st) != 1 || st[0].GetState().String() != "PATH_STATE_"+tt.want {
				t.Fatalf("statuses %v, want one %s", st, tt.want)
			}
			var codes []string
			for _, p := range probs {
				codes = append(codes, p.GetCode().String())
				if p.GetInterface() != "eth1" || p.GetAddress() == "" || p.GetMessage() == "" {
					t.Errorf("problem %v does not name its path", p)
				}
			}
			want := []string{tt.code}
			if tt.code == "" {
				want = nil
			}
			if diff := cmp.Diff(want, codes); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
			if tt.want == "FAILED" && st[0].GetMessage() == "" {
				t.Error("FAILED without a message")
			}
			if tt.name == "wrong interface" && !strings.Contains(st[0].GetMessage(), "leaves by eth0") {
				t.Errorf("message %q does not name the interface the route takes", st[0].GetMessage())
			}
		})
	}
	// A path that went down forgets its outcomes.
	res := pathResults{}
	res.merge([]probeOutcome{out(p4, t4, ok)}, []policy.Path{p4}, 0)
	// A round begun before the last apply is dropped.
	stale := out(p4, t4, ProbeResult{RouteLink: 2})
	stale.gen = 1
	res.merge([]probeOutcome{stale}, []policy.Path{p4}, 2)
	if o := res[pathKey{p4.Addr.Addr(), 3}][t4.addr]; o.res.RouteLink != 3 {
		t.Errorf("a stale round's outcome was taken: %+v", o)
	}
	res.forget([]policy.Path{path(a4, false, true, "198.18.1.1")}, []probeTarget{t4})
	if len(res) != 0 {
		t.Errorf("outcomes kept for a path that is down: %v", res)
	}
}

// TestAgentRetriesAKernelRace: an endpoint the kernel made itself between
// the read and the apply (an ID taken) makes the agent read, plan and apply
// again, not refuse the revision.
func TestAgentRetriesAKernelRace(t *testing.T) {
	h := newHarness(t)
	raced := 0
	h.k.FailOn(func(_ int, op reconcile.Op) error {
		if op.Kind == reconcile.AddEndpoint && raced == 0 {
			raced++
			return fmt.Errorf("mptcp add endpoint: %w", errors.Join(syscall.EBUSY, mptcp.ErrEndpointExists))
		}
		return nil
	})
	p := testPolicy()
	h.ctrl.setDesired(managed(1, p))
	h.start()
	h.ctrl.waitReport(t, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	h.waitConverged(p)
	for _, r := range h.ctrl.reportsSince(0) {
		if r.GetSyncState() == pb.SyncState_SYNC_STATE_FAILED {
			t.Errorf("reported FAILED for a race the agent retried: %q", r.GetLastError())
		}
	}
	if raced != 1 {
		t.Errorf("the race was injected %d times", raced)
	}
}
