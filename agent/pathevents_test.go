package agent

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// eventSystem is a fakeSystem whose MPTCP events the test sends.
type eventSystem struct {
	*fakeSystem
	events chan mptcp.Event
}

func (s *eventSystem) PathEvents(ctx context.Context, notify func(mptcp.Event)) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e := <-s.events:
			notify(e)
		}
	}
}

// TestPathEventsCheckPaths: a subflow closed with an error over a managed
// path has that path, and only it, probed at once, long before its probe's
// interval; one established over it has it checked again (once the event
// check gap has passed). Events of the prober's own connections, of
// addresses that are no path and of subflows closed without an error ask
// for nothing.
func TestPathEventsCheckPaths(t *testing.T) {
	es := &eventSystem{events: make(chan mptcp.Event)}
	h := newHarness(t, func(h *harness) {
		es.fakeSystem = h.sys
		h.opts.System = es
	})
	eth0, eth1 := netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.18.1.2")
	target := netip.MustParseAddrPort("198.18.100.9:7401")
	var (
		mu     sync.Mutex
		probed []netip.Addr
		broken bool
	)
	h.sys.setProbe(func(src netip.Addr, link int, _ netip.AddrPort) ProbeResult {
		mu.Lock()
		defer mu.Unlock()
		probed = append(probed, src)
		if src == eth1 && broken {
			return ProbeResult{RouteLink: link, Dialed: true, DialErr: context.DeadlineExceeded}
		}
		return ProbeResult{RouteLink: link, Dialed: true, MPTCP: true, Latency: time.Millisecond}
	})
	since := func() []netip.Addr {
		mu.Lock()
		defer mu.Unlock()
		out := slices.Clone(probed)
		probed = nil
		return out
	}
	p := testPolicy()
	p.Probes = []*pb.Probe{{Address: target.String(), Interval: durationpb.New(time.Hour), Timeout: durationpb.New(time.Second)}}
	h.ctrl.setDesired(managed(1, p))
	h.start()
	h.ctrl.waitReport(t, 0, "IN_SYNC with both paths OK", reportWith(pb.SyncState_SYNC_STATE_IN_SYNC, 1, "eth0=OK", "eth1=OK"))
	h.reconcileNow()
	since()

	mu.Lock()
	broken = true
	mu.Unlock()
	_, n, _ := h.ctrl.counts()
	for _, e := range []mptcp.Event{
		// A probe connection and a join the path manager added to it.
		{Type: mptcp.EventCreated, Token: 9, Saddr: eth0, Sport: 40000, Daddr: target.Addr(), Dport: target.Port()},
		{Type: mptcp.EventSubEstablished, Token: 9, Saddr: eth0, Daddr: target.Addr()},
		// Not a path; closed without an error.
		{Type: mptcp.EventSubClosed, Token: 5, Saddr: netip.MustParseAddr("198.18.9.9"), Error: 110},
		{Type: mptcp.EventSubClosed, Token: 5, Saddr: eth0},
		// eth1's subflow timed out.
		{Type: mptcp.EventSubClosed, Token: 5, Saddr: eth1, Daddr: netip.MustParseAddr("198.18.50.1"), Error: 110},
	} {
		es.events <- e
	}
	h.ctrl.waitReport(t, n, "eth1 FAILED on the event", reportWith(pb.SyncState_SYNC_STATE_DEGRADED, 1, "eth0=OK", "eth1=FAILED"))
	if got := since(); !slices.Equal(got, []netip.Addr{eth1}) {
		t.Errorf("probes after the events: %v, want eth1's alone", got)
	}

	// Repaired; a subflow is established over eth1 again, within the gap.
	mu.Lock()
	broken = false
	mu.Unlock()
	_, n, _ = h.ctrl.counts()
	es.events <- mptcp.Event{Type: mptcp.EventSubEstablished, Token: 6, Saddr: eth1}
	h.ctrl.waitReport(t, n, "eth1 OK again on the event", reportWith(pb.SyncState_SYNC_STATE_IN_SYNC, 1, "eth0=OK", "eth1=OK"))
	if got := since(); !slices.Equal(got, []netip.Addr{eth1}) {
		t.Errorf("probes after the event: %v, want eth1's alone", got)
	}
}
