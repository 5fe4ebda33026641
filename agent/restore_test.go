package agent

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
)

// TestAgentRestoreUnconfirmedReverts: the last good configuration re-applied
// from the state dir at start is confirmed like a new revision; when the
// controller does not echo within the confirm timeout the kernel goes back
// to what the agent found, ROLLED_BACK is reported and nothing is
// maintained until the controller sends a configuration, which is then
// applied and confirmed anew.
func TestAgentRestoreUnconfirmedReverts(t *testing.T) {
	h := newHarness(t, func(h *harness) { h.opts.ConfirmTimeout = 300 * time.Millisecond })
	// What the host holds at boot: one endpoint by hand, limits of its own.
	mustLoad(t, h.k, reconcile.State{
		Limits:    &mptcp.Limits{Subflows: 1},
		Endpoints: []mptcp.Endpoint{{ID: 9, Addr: netip.MustParseAddr("198.18.0.2"), Flags: mptcp.FlagSignal, IfIndex: 2}},
	})
	found := h.k.Snapshot().String()
	p := testPolicy()
	if err := saveState(h.opts.StateDir, managed(3, p), time.Now()); err != nil {
		t.Fatal(err)
	}
	h.ctrl.setEcho(false)
	h.start()

	ev := h.ctrl.waitEvent(t, 0, pb.AgentEvent_KIND_ROLLED_BACK)
	if ev.GetRevision() != 3 || !strings.Contains(ev.GetMessage(), "restore from the state dir") || len(ev.GetOperations()) == 0 {
		t.Errorf("ROLLED_BACK event %v", ev)
	}
	r := h.ctrl.waitReport(t, 0, "FAILED with nothing applied", inState(pb.SyncState_SYNC_STATE_FAILED, 0))
	if !strings.Contains(r.GetLastError(), "did not confirm") {
		t.Errorf("last error %q", r.GetLastError())
	}
	if got := h.k.Snapshot().String(); got != found {
		t.Fatalf("kernel after the revert:\n%s\nwant what the agent found:\n%s", got, found)
	}
	if h.ctrl.confirmCount() == 0 {
		t.Error("the restore asked for no confirm")
	}
	for _, e := range h.ctrl.eventsSince(0) {
		if e.GetKind() == pb.AgentEvent_KIND_RESTORED {
			t.Errorf("RESTORED reported for a restore that was reverted: %v", e)
		}
	}

	// The controller answers again and sends the same revision: it is
	// applied as a new one, confirmed this time.
	h.ctrl.setEcho(true)
	_, nr, ne := h.ctrl.counts()
	h.ctrl.setDesired(managed(3, p))
	h.ctrl.waitEvent(t, ne, pb.AgentEvent_KIND_APPLIED)
	h.ctrl.waitReport(t, nr, "IN_SYNC at 3", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 3))
	h.waitConverged(p)
}

// TestAgentRestoreConfirmedKept: a restore the controller confirms is kept:
// RESTORED (sent only once the echo came), IN_SYNC, the kernel holding the
// configuration, and no rollback.
func TestAgentRestoreConfirmedKept(t *testing.T) {
	h := newHarness(t)
	p := testPolicy()
	p.Limits.Subflows = proto.Uint32(3)
	if err := saveState(h.opts.StateDir, managed(4, p), time.Now()); err != nil {
		t.Fatal(err)
	}
	h.ctrl.setDesired(managed(4, p))
	h.start()
	ev := h.ctrl.waitEvent(t, 0, pb.AgentEvent_KIND_RESTORED)
	if ev.GetRevision() != 4 || len(ev.GetOperations()) == 0 {
		t.Errorf("RESTORED event %v", ev)
	}
	if h.ctrl.confirmCount() == 0 {
		t.Error("RESTORED without a confirm")
	}
	h.ctrl.waitReport(t, 0, "IN_SYNC at 4", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 4))
	h.waitConverged(p)
	for _, e := range h.ctrl.eventsSince(0) {
		if e.GetKind() == pb.AgentEvent_KIND_ROLLED_BACK {
			t.Errorf("rolled back a confirmed restore: %v", e)
		}
	}
}
