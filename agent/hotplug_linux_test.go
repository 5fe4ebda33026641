package agent

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// TestIntegrationHotplugTemplate: on a real kernel, with a policy without
// routing, a new address becomes its endpoint through the fast path (the
// template, and the kernel's own socket for it) while the full reconcile
// still waits out its debounce; that reconcile then leaves the endpoint as
// it is and records it as mpfleet's. A second address gets the next ID.
func TestIntegrationHotplugTemplate(t *testing.T) {
	l := newLab(t, 1)
	ctrl := newController(t, false)
	p := &pb.MultipathPolicy{
		Endpoints: []*pb.EndpointRule{{Interface: "veth0", Cidr: "198.18.0.0/15", Flags: []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW}}},
	}
	ctrl.setDesired(managed(1, p))
	var passes atomic.Int64
	var stateDir string
	// A debounce long enough that an endpoint seen before a pass ends can
	// only have come from the fast path.
	a := startAgent(t, l.ns, ctrl, func(o *Options) {
		o.Debounce = 2 * time.Second
		o.OnReconcile = func(Pass) { passes.Add(1) }
		stateDir = o.StateDir
	})
	ctrl.waitReport(t, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	first, ok := l.endpoint(t, l.links[0].v4.Addr())
	if !ok {
		t.Fatal("no endpoint for veth0's address")
	}

	link := l.links[0].index
	for i, addr := range []string{"198.18.10.30/24", "198.18.10.31/24"} {
		added := netip.MustParsePrefix(addr)
		// The watch's first dump and the link-local addresses' DAD end
		// the fast path's base until the reconcile they trigger (a
		// debounce away) leaves another.
		waitUntilTB(t, "a base for the fast path", func() bool {
			a.hot.mu.Lock()
			defer a.hot.mu.Unlock()
			return a.hot.base != nil
		})
		before := passes.Load()
		start := time.Now()
		l.addAddr(t, link, added)
		var got mptcp.Endpoint
		waitUntilTB(t, "an endpoint for "+addr, func() bool { got, ok = l.endpoint(t, added.Addr()); return ok })
		t.Logf("address added → endpoint in the kernel: %v", time.Since(start))
		if n := passes.Load(); n != before {
			t.Fatalf("%s: %d reconcile passes ended before the endpoint was seen: not the fast path's", addr, n-before)
		}
		want := mptcp.Endpoint{ID: first.ID + 1 + uint8(i), Addr: added.Addr(), Flags: mptcp.FlagSubflow, IfIndex: link}
		if got != want {
			t.Errorf("endpoint %+v, want %+v", got, want)
		}
		waitUntilTB(t, "the reconcile after "+addr, func() bool { return passes.Load() > before })
		if again, _ := l.endpoint(t, added.Addr()); again != want {
			t.Errorf("after the reconcile: endpoint %+v, want it left as %+v", again, want)
		}
	}
	rec, err := loadRecords(stateDir)
	if err != nil || !rec.owned[netip.MustParseAddr("198.18.10.31")] {
		t.Errorf("the endpoint is not recorded as mpfleet's: %v, %v", rec.owned, err)
	}
}
