package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/reconcile/fakekernel"
	"github.com/mpfleet/mpfleet/internal/route"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
)

// TestAgentAppliesDesired: hello → desired → apply → IN_SYNC report and
// APPLIED event; the kernel holds exactly the rendered policy; the state
// dir keeps it.
func TestAgentAppliesDesired(t *testing.T) {
	h := newHarness(t)
	p := testPolicy()
	h.ctrl.setDesired(managed(1, p))
	h.start()

	r := h.ctrl.waitReport(t, 0, "IN_SYNC at revision 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	ev := h.ctrl.waitEvent(t, 0, pb.AgentEvent_KIND_APPLIED)
	if !h.converged(h.rendered(p)) {
		t.Fatal("fake kernel does not hold the policy")
	}
	hello := h.ctrl.hello(0)
	want := &pb.AgentHello{HostId: "web-1", Labels: map[string]string{"role": "web"}, AgentVersion: Version, EventEpoch: h.agent.evlog.epochOf()}
	if diff := cmp.Diff(want, hello, protocmp.Transform(), protocmp.IgnoreFields(&pb.AgentHello{}, "facts")); diff != "" || want.EventEpoch == 0 {
		t.Errorf("hello (-want +got):\n%s", diff)
	}
	if len(hello.GetFacts().GetInterfaces()) != 3 || hello.GetFacts().GetKernelVersion() == "" {
		t.Errorf("hello facts: %v", hello.GetFacts())
	}
	if ev.GetGroup() != "groups/web" || ev.GetRevision() != 1 || len(ev.GetOperations()) == 0 || ev.GetSequence() == 0 {
		t.Errorf("APPLIED event: %v", ev)
	}
	// 2 endpoints, 2 rules, 4 routes, enabled is already 1, a sysctl, limits.
	if n := len(ev.GetOperations()); n != 10 {
		t.Errorf("APPLIED event has %d operations, want 10: %v", n, ev.GetOperations())
	}
	if r.GetGroup() != "groups/web" || len(r.GetApplied().GetEndpoints()) != 2 || len(r.GetApplied().GetRules()) != 2 ||
		r.GetHealth().GetConnections() != 1 || r.GetLastError() != "" {
		t.Errorf("report: %v", r)
	}
	if got := r.GetApplied().GetEndpoints()[0]; got.GetInterface() != "eth0" || got.GetAddress() != "198.18.0.2" {
		t.Errorf("first endpoint %v", got)
	}
	// APPLYING came before IN_SYNC.
	if rs := h.ctrl.reportsSince(0); !slices.ContainsFunc(rs, func(r *pb.AgentReport) bool {
		return r.GetSyncState() == pb.SyncState_SYNC_STATE_APPLYING && len(r.GetLastPlan()) == 10
	}) {
		t.Error("no APPLYING report with the plan")
	}
	saved, err := loadState(h.opts.StateDir)
	if err != nil || !proto.Equal(saved, managed(1, p)) {
		t.Errorf("state dir holds %v, %v", saved, err)
	}
	if h.ctrl.confirmCount() != 1 {
		t.Errorf("%d confirms, want 1", h.ctrl.confirmCount())
	}
	// No endpoint before its route: routes, then rules, then endpoints.
	var kinds []string
	for _, op := range ev.GetOperations() {
		kinds = append(kinds, op.GetKind())
	}
	firstEP := slices.Index(kinds, "add-endpoint")
	for i, k := range kinds {
		if (k == "add-route" || k == "add-rule") && i > firstEP {
			t.Errorf("%s after an endpoint was added: %v", k, kinds)
		}
	}
}

// TestAgentNewRevision: a changed desired configuration is applied as a new
// revision.
func TestAgentNewRevision(t *testing.T) {
	h := newHarness(t)
	h.ctrl.setDesired(managed(1, testPolicy()))
	h.start()
	h.ctrl.waitReport(t, 0, "IN_SYNC at revision 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	_, nr, ne := h.ctrl.counts()

	p2 := testPolicy(pb.EndpointFlag_ENDPOINT_FLAG_BACKUP)
	p2.Limits.Subflows = proto.Uint32(8)
	h.ctrl.setDesired(managed(2, p2))
	h.ctrl.waitReport(t, nr, "IN_SYNC at revision 2", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 2))
	ev := h.ctrl.waitEvent(t, ne, pb.AgentEvent_KIND_APPLIED)
	if ev.GetRevision() != 2 {
		t.Errorf("APPLIED event for revision %d", ev.GetRevision())
	}
	// Backup changes in place; limits change: 3 ops.
	var kinds []string
	for _, op := range ev.GetOperations() {
		kinds = append(kinds, op.GetKind())
	}
	if diff := cmp.Diff([]string{"set-limits", "set-endpoint-flags", "set-endpoint-flags"}, kinds); diff != "" {
		t.Errorf("operations (-want +got):\n%s", diff)
	}
	if !h.converged(h.rendered(p2)) {
		t.Fatal("fake kernel does not hold revision 2")
	}
}

// TestAgentUnmanagedAndConflict: the kernel is left exactly as it is.
func TestAgentUnmanagedAndConflict(t *testing.T) {
	h := newHarness(t, func(h *harness) { h.opts.ResyncInterval = 20 * time.Millisecond })
	mustLoad(t, h.k, reconcile.State{
		Limits:    &mptcp.Limits{Subflows: 3, AddAddrAccepted: 1},
		Endpoints: []mptcp.Endpoint{{ID: 7, Addr: netip.MustParseAddr("198.18.0.2"), Flags: mptcp.FlagSignal}},
	})
	before := h.k.Snapshot()
	h.ctrl.setDesired(&pb.DesiredConfig{Assignment: pb.DesiredConfig_ASSIGNMENT_UNMANAGED})
	h.start()
	r := h.ctrl.waitReport(t, 0, "UNMANAGED", inState(pb.SyncState_SYNC_STATE_UNMANAGED, 0))
	if len(r.GetApplied().GetEndpoints()) != 1 {
		t.Errorf("an unmanaged host reports what its kernel holds; got %v", r.GetApplied())
	}
	_, nr, _ := h.ctrl.counts()
	h.ctrl.setDesired(&pb.DesiredConfig{Assignment: pb.DesiredConfig_ASSIGNMENT_CONFLICT, ConflictingGroups: []string{"groups/a", "groups/b"}})
	r = h.ctrl.waitReport(t, nr, "CONFLICT", inState(pb.SyncState_SYNC_STATE_CONFLICT, 0))
	if !strings.Contains(r.GetLastError(), "groups/a, groups/b") {
		t.Errorf("conflict report error %q", r.GetLastError())
	}
	// Address changes and resyncs do not touch an unmanaged kernel either.
	seq := h.lastPass()
	h.sys.setInterfaces(append(hostIfaces(), eth(2, true, "198.18.2.2/24")), Change{Link: 4, Addr: true})
	h.reconcileNow()
	noEvents(t, h.waitPasses(seq, "resync", 2), "", pb.SyncState_SYNC_STATE_CONFLICT)
	if h.k.Calls() != 0 || h.k.Snapshot().String() != before.String() {
		t.Fatalf("kernel touched: %d calls\n%s", h.k.Calls(), h.k.Snapshot())
	}
	if _, _, ne := h.ctrl.counts(); ne != 0 {
		t.Errorf("%d events, want none", ne)
	}
	if d, _ := loadState(h.opts.StateDir); d.GetAssignment() != pb.DesiredConfig_ASSIGNMENT_CONFLICT {
		t.Errorf("state dir holds %v; want the conflict, so nothing is restored at start", d)
	}
}

// TestAgentApplyFailureRollsBack: a failing op leaves the kernel as it was,
// state FAILED, an APPLY_FAILED event with the reason.
func TestAgentApplyFailureRollsBack(t *testing.T) {
	h := newHarness(t)
	before := h.k.Snapshot()
	h.k.FailOn(func(_ int, op reconcile.Op) error {
		if op.Kind == reconcile.AddEndpoint && op.Endpoint.Addr == netip.MustParseAddr("198.18.1.2") {
			return errInjected
		}
		return nil
	})
	h.ctrl.setDesired(managed(1, testPolicy()))
	h.start()
	r := h.ctrl.waitReport(t, 0, "FAILED", func(r *pb.AgentReport) bool { return r.GetSyncState() == pb.SyncState_SYNC_STATE_FAILED })
	ev := h.ctrl.waitEvent(t, 0, pb.AgentEvent_KIND_APPLY_FAILED)
	for _, s := range []string{r.GetLastError(), ev.GetMessage()} {
		if !strings.Contains(s, "injected failure") || !strings.Contains(s, "rolled back 9") {
			t.Errorf("error %q does not give the cause and the rollback", s)
		}
	}
	if r.GetAppliedRevision() != 0 || len(ev.GetOperations()) != 10 {
		t.Errorf("report revision %d, event ops %d", r.GetAppliedRevision(), len(ev.GetOperations()))
	}
	if got := h.k.Snapshot().String(); got != before.String() {
		t.Fatalf("kernel after a failed apply:\n%s\nwant\n%s", got, before)
	}
	if stateFileExists(h.opts.StateDir) {
		t.Error("a failed revision was saved as last good")
	}
	// The failed revision is not tried again on changes or resyncs (the
	// kernel keeps its last good state, here the fresh one)...
	h.k.FailOn(nil)
	noEvents(t, h.reconcileNow(), "event", pb.SyncState_SYNC_STATE_FAILED)
	if h.k.Calls() != 0 {
		t.Fatalf("the failed revision was tried again: %d calls", h.k.Calls())
	}
	// ...but the next revision is applied.
	h.ctrl.setDesired(managed(2, testPolicy()))
	h.ctrl.waitEvent(t, 0, pb.AgentEvent_KIND_APPLIED)
	h.ctrl.waitReport(t, 0, "IN_SYNC at 2", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 2))
	h.waitConverged(testPolicy())
}

// TestAgentConfirmTimeoutReverts: a revision the controller does not
// confirm is reverted, reported ROLLED_BACK and not re-applied; the next
// revision is.
func TestAgentConfirmTimeoutReverts(t *testing.T) {
	h := newHarness(t, func(h *harness) {
		h.opts.ConfirmTimeout = 200 * time.Millisecond
		h.opts.ResyncInterval = 50 * time.Millisecond
	})
	h.ctrl.setDesired(managed(1, testPolicy()))
	h.start()
	h.ctrl.waitReport(t, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	at1 := h.k.Snapshot()
	_, nr, ne := h.ctrl.counts()

	h.ctrl.setEcho(false)
	p2 := testPolicy()
	p2.Limits.Subflows = proto.Uint32(1)
	p2.Endpoints[0].Interface = "eth1"
	h.ctrl.setDesired(managed(2, p2))
	ev := h.ctrl.waitEvent(t, ne, pb.AgentEvent_KIND_ROLLED_BACK)
	r := h.ctrl.waitReport(t, nr, "FAILED at 1", inState(pb.SyncState_SYNC_STATE_FAILED, 1))
	seq := h.lastPass() // resyncs after it begin after the rollback
	if ev.GetRevision() != 2 || !strings.Contains(ev.GetMessage(), "did not confirm") || len(ev.GetOperations()) == 0 {
		t.Errorf("ROLLED_BACK event %v", ev)
	}
	if !strings.Contains(r.GetLastError(), "reverted") {
		t.Errorf("last error %q", r.GetLastError())
	}
	if got := h.k.Snapshot().String(); got != at1.String() {
		t.Fatalf("kernel after the revert:\n%s\nwant revision 1's:\n%s", got, at1)
	}
	// Resyncs keep revision 1; revision 2 is not tried again, and the host
	// stays FAILED (it does not run what the controller wants).
	noEvents(t, h.waitPasses(seq, "resync", 3), "resync", pb.SyncState_SYNC_STATE_FAILED)
	if got := h.k.Snapshot().String(); got != at1.String() {
		t.Fatalf("revision 2 re-applied after its rollback:\n%s", got)
	}
	for _, r := range h.ctrl.reportsSince(nr) {
		if r.GetSyncState() == pb.SyncState_SYNC_STATE_IN_SYNC {
			t.Fatalf("reported IN_SYNC after the rollback: %v", r)
		}
	}
	if d, _ := loadState(h.opts.StateDir); d.GetRevision() != 1 {
		t.Errorf("state dir holds revision %d, want 1", d.GetRevision())
	}
	// Revision 3, confirmed, is applied.
	h.ctrl.setEcho(true)
	_, nr, ne = h.ctrl.counts()
	h.ctrl.setDesired(managed(3, p2))
	h.ctrl.waitReport(t, nr, "IN_SYNC at 3", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 3))
	h.ctrl.waitEvent(t, ne, pb.AgentEvent_KIND_APPLIED)
	h.waitConverged(p2)
}

// TestAgentRepairsDrift: an endpoint flush behind the agent's back is found
// by the resync, reported DRIFTED, repaired and reported DRIFT_REPAIRED.
func TestAgentRepairsDrift(t *testing.T) {
	h := newHarness(t, func(h *harness) { h.opts.ResyncInterval = 30 * time.Millisecond })
	p := testPolicy()
	h.ctrl.setDesired(managed(1, p))
	h.start()
	h.ctrl.waitReport(t, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	// Resyncs that find nothing say nothing.
	noEvents(t, h.waitPasses(h.lastPass(), "resync", 2), "resync", pb.SyncState_SYNC_STATE_IN_SYNC)
	_, nr, ne := h.ctrl.counts()
	if ne != 1 {
		t.Fatalf("%d events after the first apply, want 1 (APPLIED)", ne)
	}
	// `ip mptcp endpoint flush`.
	for _, e := range h.k.Snapshot().Endpoints {
		if _, err := h.k.Do(context.Background(), reconcile.Op{Kind: reconcile.DelEndpoint, Endpoint: &e}); err != nil {
			t.Fatal(err)
		}
	}
	ev := h.ctrl.waitEvent(t, ne, pb.AgentEvent_KIND_DRIFT_REPAIRED)
	if len(ev.GetOperations()) != 2 || ev.GetOperations()[0].GetKind() != "add-endpoint" {
		t.Errorf("DRIFT_REPAIRED operations %v", ev.GetOperations())
	}
	h.ctrl.waitReport(t, nr, "DRIFTED", inState(pb.SyncState_SYNC_STATE_DRIFTED, 1))
	h.ctrl.waitReport(t, nr, "IN_SYNC again", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	h.waitConverged(p)
	if h.ctrl.confirmCount() != 1 {
		t.Errorf("%d confirms: a drift repair of a confirmed revision needs none", h.ctrl.confirmCount())
	}
}

// TestAgentRejectsBadDesired: invalid and oversized configurations are
// rejected with a report and an event; nothing is applied.
func TestAgentRejectsBadDesired(t *testing.T) {
	huge := testPolicy()
	for range 5000 {
		huge.Endpoints = append(huge.Endpoints, &pb.EndpointRule{Interface: "eth*", Cidr: "198.18.0.0/15", Flags: huge.Endpoints[0].Flags})
	}
	tests := []struct {
		name    string
		desired *pb.DesiredConfig
		want    string
	}{
		{"subflows above the kernel maximum", managed(1, &pb.MultipathPolicy{Limits: &pb.Limits{Subflows: proto.Uint32(99)}}), "desired.policy.limits.subflows"},
		{"too many rules", managed(1, huge), "desired.policy.endpoints"},
		{"bad group name", &pb.DesiredConfig{Assignment: pb.DesiredConfig_ASSIGNMENT_MANAGED, Group: "../etc", Revision: 1}, "desired.group"},
		{"no revision", managed(0, testPolicy()), "desired.revision"},
		{"unknown assignment", &pb.DesiredConfig{Assignment: 42}, "desired.assignment"},
		{"oversized", managed(1, &pb.MultipathPolicy{Sysctls: &pb.Sysctls{Scheduler: proto.String(strings.Repeat("a", 300<<10))}}), "bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			h.ctrl.setDesired(tt.desired)
			h.start()
			r := h.ctrl.waitReport(t, 0, "FAILED", inState(pb.SyncState_SYNC_STATE_FAILED, 0))
			ev := h.ctrl.waitEvent(t, 0, pb.AgentEvent_KIND_APPLY_FAILED)
			if !strings.Contains(r.GetLastError(), tt.want) || !strings.Contains(ev.GetMessage(), "rejected") {
				t.Errorf("report error %q / event %q; want it to name %s", r.GetLastError(), ev.GetMessage(), tt.want)
			}
			if len(r.GetLastError()) > maxReportError {
				t.Errorf("last error of %d bytes", len(r.GetLastError()))
			}
			if h.k.Calls() != 0 {
				t.Errorf("kernel touched: %d calls", h.k.Calls())
			}
		})
	}
	t.Run("over the message size limit", func(t *testing.T) {
		h := newHarness(t)
		h.ctrl.mu.Lock()
		h.ctrl.hugeOnce = true
		h.ctrl.mu.Unlock()
		h.ctrl.setDesired(&pb.DesiredConfig{Assignment: pb.DesiredConfig_ASSIGNMENT_UNMANAGED})
		h.start()
		ev := h.ctrl.waitEvent(t, 0, pb.AgentEvent_KIND_APPLY_FAILED)
		if !strings.Contains(ev.GetMessage(), "byte limit") {
			t.Errorf("event %q", ev.GetMessage())
		}
		if hellos, _, _ := h.ctrl.counts(); hellos != 2 {
			t.Errorf("%d hellos: the agent must reconnect once", hellos)
		}
		h.ctrl.waitReport(t, 0, "UNMANAGED", inState(pb.SyncState_SYNC_STATE_UNMANAGED, 0))
		if h.k.Calls() != 0 {
			t.Errorf("kernel touched: %d calls", h.k.Calls())
		}
	})
}

// TestAgentRejectionSticks: after a rejected configuration the host keeps
// its last good one, and reports FAILED until a good one comes, resyncs or
// not.
func TestAgentRejectionSticks(t *testing.T) {
	h := newHarness(t, func(h *harness) { h.opts.ResyncInterval = 20 * time.Millisecond })
	h.ctrl.setDesired(managed(1, testPolicy()))
	h.start()
	h.ctrl.waitReport(t, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	_, nr, _ := h.ctrl.counts()
	h.ctrl.setDesired(managed(2, &pb.MultipathPolicy{Limits: &pb.Limits{Subflows: proto.Uint32(99)}}))
	h.ctrl.waitReport(t, nr, "FAILED at 1", inState(pb.SyncState_SYNC_STATE_FAILED, 1))
	seq := h.lastPass() // passes after it begin after the rejection
	h.sys.change(Change{Link: 2, Addr: true})
	h.reconcileNow()
	noEvents(t, h.waitPasses(seq, "resync", 2), "", pb.SyncState_SYNC_STATE_FAILED)
	for _, r := range h.ctrl.reportsSince(nr) {
		if r.GetSyncState() != pb.SyncState_SYNC_STATE_FAILED || !strings.Contains(r.GetLastError(), "limits.subflows") {
			t.Fatalf("report after the rejection: %s %q", r.GetSyncState(), r.GetLastError())
		}
	}
	h.waitConverged(testPolicy())
	_, nr, _ = h.ctrl.counts()
	h.ctrl.setDesired(managed(3, testPolicy()))
	r := h.ctrl.waitReport(t, nr, "IN_SYNC at 3", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 3))
	if r.GetLastError() != "" {
		t.Errorf("last error %q after a good configuration", r.GetLastError())
	}
}

// TestAgentKeepsLastGoodAfterFailure: while a new revision that failed
// waits for the next, the last good one is still kept: drift is repaired to
// it.
func TestAgentKeepsLastGoodAfterFailure(t *testing.T) {
	h := newHarness(t, func(h *harness) { h.opts.ResyncInterval = 20 * time.Millisecond })
	p1 := testPolicy()
	h.ctrl.setDesired(managed(1, p1))
	h.start()
	h.ctrl.waitReport(t, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	_, nr, ne := h.ctrl.counts()
	h.k.FailOn(func(_ int, op reconcile.Op) error {
		if op.Kind == reconcile.SetLimits && op.Limits.Subflows == 8 {
			return errInjected
		}
		return nil
	})
	p2 := testPolicy()
	p2.Limits.Subflows = proto.Uint32(8)
	h.ctrl.setDesired(managed(2, p2))
	h.ctrl.waitEvent(t, ne, pb.AgentEvent_KIND_APPLY_FAILED)
	h.ctrl.waitReport(t, nr, "FAILED at 1", inState(pb.SyncState_SYNC_STATE_FAILED, 1))
	for _, e := range h.k.Snapshot().Endpoints {
		if _, err := h.k.Do(context.Background(), reconcile.Op{Kind: reconcile.DelEndpoint, Endpoint: &e}); err != nil {
			t.Fatal(err)
		}
	}
	ev := h.ctrl.waitEvent(t, ne, pb.AgentEvent_KIND_DRIFT_REPAIRED)
	if ev.GetRevision() != 1 {
		t.Errorf("drift repaired to revision %d, want 1", ev.GetRevision())
	}
	h.waitConverged(p1)
	// The report after the repair says FAILED again (revision 2 is still
	// refused), and no report since the failure said IN_SYNC.
	_, nrRepair, _ := h.ctrl.counts()
	h.ctrl.waitReport(t, nrRepair-1, "FAILED at 1 after the repair", inState(pb.SyncState_SYNC_STATE_FAILED, 1))
	for _, r := range h.ctrl.reportsSince(nr) {
		if r.GetSyncState() == pb.SyncState_SYNC_STATE_IN_SYNC {
			t.Errorf("report %v; want no IN_SYNC while revision 2 is not applied", r)
		}
	}
}

// TestAgentRestoresAtStart: with the controller unreachable, the last good
// configuration from the state dir is applied; RESTORED is reported once
// the controller answers, and the same revision is not applied again.
func TestAgentRestoresAtStart(t *testing.T) {
	h := newHarness(t)
	p := testPolicy()
	if err := saveState(h.opts.StateDir, managed(3, p), time.Now()); err != nil {
		t.Fatal(err)
	}
	h.ctrl.stop()
	h.ctrl = newController(t, true) // listening, not answering
	h.opts.Controller = h.ctrl.addr
	h.ctrl.setDesired(managed(3, p))
	h.start()
	h.waitConverged(p)
	if hellos, _, _ := h.ctrl.counts(); hellos != 0 {
		t.Fatal("the controller was not supposed to answer yet")
	}
	h.ctrl.serve()
	ev := h.ctrl.waitEvent(t, 0, pb.AgentEvent_KIND_RESTORED)
	if ev.GetRevision() != 3 || len(ev.GetOperations()) != 10 {
		t.Errorf("RESTORED event %v", ev)
	}
	if hello := h.ctrl.hello(0); hello.GetAppliedGroup() != "groups/web" || hello.GetAppliedRevision() != 3 {
		t.Errorf("hello says applied %s revision %d", hello.GetAppliedGroup(), hello.GetAppliedRevision())
	}
	h.ctrl.waitReport(t, 0, "IN_SYNC at 3", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 3))
	// The controller's desired configuration, the revision restored, is
	// not applied again.
	noEvents(t, h.waitPasses(0, "desired", 1), "desired", pb.SyncState_SYNC_STATE_IN_SYNC)
	for _, e := range h.ctrl.eventsSince(0) {
		if e.GetKind() != pb.AgentEvent_KIND_RESTORED {
			t.Errorf("unexpected event %v", e)
		}
	}
}

// TestAgentReconnects: a controller restart changes nothing on the host;
// the agent reconnects and says what it applied.
func TestAgentReconnects(t *testing.T) {
	h := newHarness(t)
	p := testPolicy()
	h.ctrl.setDesired(managed(1, p))
	h.start()
	h.ctrl.waitReport(t, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	calls := h.k.Calls()
	_, nr, _ := h.ctrl.counts()
	h.ctrl.restart(t)
	waitUntil(t, "a second hello", func() bool { n, _, _ := h.ctrl.counts(); return n == 2 })
	if hello := h.ctrl.hello(1); hello.GetAppliedRevision() != 1 || hello.GetAppliedGroup() != "groups/web" {
		t.Errorf("hello after reconnect: %v", hello)
	}
	h.ctrl.waitReport(t, nr, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	if h.k.Calls() != calls {
		t.Errorf("kernel touched across the controller restart: %d calls, had %d", h.k.Calls(), calls)
	}
	if evs := h.ctrl.eventsSince(1); len(evs) != 0 {
		t.Errorf("events after the reconnect: %v", evs)
	}
}

// TestAgentAddressEvent: a new address on a matching interface becomes an
// endpoint with its routing at once; a removed one stops being one. These
// are interface changes, not drift.
func TestAgentAddressEvent(t *testing.T) {
	h := newHarness(t)
	p := testPolicy()
	h.ctrl.setDesired(managed(1, p))
	h.start()
	h.ctrl.waitReport(t, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	_, _, ne := h.ctrl.counts()
	seq := h.lastPass()

	ifs := hostIfaces()
	ifs[2].Addresses = append(ifs[2].Addresses, "198.18.1.3/24", "2001:db8:1::3/64")
	h.sys.setInterfaces(ifs, Change{Link: 3, Addr: true})
	h.waitConverged(p)
	if n := len(h.k.Snapshot().Endpoints); n != 4 {
		t.Fatalf("%d endpoints, want 4", n)
	}
	h.sys.setInterfaces(hostIfaces(), Change{Link: 3, Addr: true})
	h.waitConverged(p)
	if n := len(h.k.Snapshot().Endpoints); n != 2 {
		t.Fatalf("%d endpoints, want 2", n)
	}
	h.reconcileNow()
	noEvents(t, h.passesSince(seq), "event", pb.SyncState_SYNC_STATE_UNSPECIFIED)
	if evs := h.ctrl.eventsSince(ne); len(evs) != 0 {
		t.Errorf("events for interface changes: %v", evs)
	}
}

// TestAgentLinkFlap: a link that goes down loses its routing (the kernel
// drops its routes) but keeps its endpoints; back up, its routing returns at
// once, through its remembered gateway, and its subflow endpoint is
// re-created so that the path manager opens subflows over it again. A flap
// too quick to be seen as down is handled the same. A fullmesh-only endpoint
// is left alone: re-adding it would open nothing.
func TestAgentLinkFlap(t *testing.T) {
	h := newHarness(t)
	p := testPolicy()
	h.ctrl.setDesired(managed(1, p))
	h.start()
	h.ctrl.waitReport(t, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	rec := recordOps(h.k)

	// Down, the kernel drops the link's routes, the main table's too, so
	// its gateway is no longer known.
	down := hostIfaces()
	down[2].Up, down[2].Gateways = false, nil
	h.sys.setInterfaces(down, Change{Link: 3, Down: true})
	// (Rule and routes are withdrawn by one apply, op by op: wait for both.)
	waitUntil(t, "eth1's routing withdrawn", func() bool { st := h.k.Snapshot(); return len(st.Rules) == 1 && len(st.Routes) == 2 })
	if st := h.k.Snapshot(); len(st.Endpoints) != 2 || len(st.Routes) != 2 {
		t.Fatalf("with eth1 down: %d endpoints, %d routes; want 2 and 2", len(st.Endpoints), len(st.Routes))
	}
	rec.reset()
	back := hostIfaces()
	back[2].Gateways = nil
	h.sys.setInterfaces(back, Change{Link: 3})
	waitUntil(t, "eth1's routing back and its endpoint re-created", func() bool { return len(rec.get()) == 5 })
	want := []string{
		"+ route 198.18.1.0/24 dev eth1 table 7116 src 198.18.1.2 scope link",
		"+ route default via 198.18.1.1 dev eth1 table 7116", // remembered
		"+ rule 7116: from 198.18.1.2 lookup 7116",
		"- endpoint 198.18.1.2 id 2 subflow dev eth1",
		"+ endpoint 198.18.1.2 id 2 subflow dev eth1",
	}
	if diff := cmp.Diff(want, rec.get()); diff != "" {
		t.Errorf("ops when eth1 came back (-want +got):\n%s", diff)
	}
	h.sys.setInterfaces(hostIfaces())

	// A quick flap: down and up announced, the link up when the agent looks.
	rec.reset()
	h.sys.change(Change{Link: 3, Down: true})
	h.sys.change(Change{Link: 3})
	waitUntil(t, "the endpoint re-created", func() bool { return len(rec.get()) == 2 })
	if diff := cmp.Diff(want[3:], rec.get()); diff != "" {
		t.Errorf("ops for a quick flap (-want +got):\n%s", diff)
	}
	h.waitConverged(p)

	// Fullmesh only: nothing to re-create.
	fm := testPolicy()
	fm.Endpoints[0].Flags = []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_FULLMESH}
	_, nr, _ := h.ctrl.counts()
	h.ctrl.setDesired(managed(2, fm))
	h.ctrl.waitReport(t, nr, "IN_SYNC at 2", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 2))
	rec.reset()
	h.sys.change(Change{Link: 3, Down: true})
	h.sys.change(Change{Link: 3})
	h.reconcileNow()
	if ops := rec.get(); len(ops) != 0 {
		t.Errorf("a fullmesh-only endpoint was touched after a flap: %v", ops)
	}
}

// opRecorder records the ops a fake kernel is asked to do.
type opRecorder struct {
	mu  sync.Mutex
	ops []string
}

func recordOps(k *fakekernel.Kernel) *opRecorder {
	r := &opRecorder{}
	k.FailOn(func(_ int, op reconcile.Op) error {
		r.mu.Lock()
		r.ops = append(r.ops, op.String())
		r.mu.Unlock()
		return nil
	})
	return r
}

func (r *opRecorder) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ops)
}

func (r *opRecorder) reset() {
	r.mu.Lock()
	r.ops = nil
	r.mu.Unlock()
}

// TestAgentDryRun: plans are reported, nothing is touched.
func TestAgentDryRun(t *testing.T) {
	h := newHarness(t, func(h *harness) { h.opts.DryRun = true })
	before := h.k.Snapshot()
	h.ctrl.setDesired(managed(1, testPolicy()))
	h.start()
	r := h.ctrl.waitReport(t, 0, "DRIFTED with a plan", func(r *pb.AgentReport) bool {
		return r.GetSyncState() == pb.SyncState_SYNC_STATE_DRIFTED && len(r.GetLastPlan()) == 10
	})
	if !h.ctrl.hello(0).GetDryRun() || r.GetAppliedRevision() != 0 {
		t.Errorf("hello dry_run %v, report revision %d", h.ctrl.hello(0).GetDryRun(), r.GetAppliedRevision())
	}
	noEvents(t, h.reconcileNow(), "", pb.SyncState_SYNC_STATE_DRIFTED)
	if h.k.Calls() != 0 || h.k.Snapshot().String() != before.String() {
		t.Fatalf("dry run touched the kernel (%d calls)", h.k.Calls())
	}
	if _, _, ne := h.ctrl.counts(); ne != 0 || stateFileExists(h.opts.StateDir) || h.ctrl.confirmCount() != 0 {
		t.Errorf("dry run sent %d events, %d confirms, or saved state", ne, h.ctrl.confirmCount())
	}
	for _, st := range h.ctrl.reportsSince(0) {
		if st.GetSyncState() == pb.SyncState_SYNC_STATE_APPLYING {
			t.Error("dry run reported APPLYING")
		}
	}
}

// TestAgentProtectsControllerPath: a plan that would delete the rule and
// routes the controller connection uses holds those ops back and reports
// the problem; the rest is applied.
func TestAgentProtectsControllerPath(t *testing.T) {
	var local atomic.Pointer[netip.Addr]
	h := newHarness(t, func(h *harness) {
		h.opts.ConfirmTimeout = time.Second
	})
	h.localAddr = func() netip.Addr {
		if a := local.Load(); a != nil {
			return *a
		}
		return netip.Addr{}
	}
	h.ctrl.setDesired(managed(1, testPolicy()))
	h.start()
	h.ctrl.waitReport(t, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	a := netip.MustParseAddr("198.18.1.2")
	local.Store(&a)
	_, nr, _ := h.ctrl.counts()
	p2 := testPolicy()
	p2.Routing = nil
	h.ctrl.setDesired(managed(2, p2))
	r := h.ctrl.waitReport(t, nr, "FAILED at 2", inState(pb.SyncState_SYNC_STATE_FAILED, 2))
	if !strings.Contains(r.GetLastError(), "held back") || !strings.Contains(r.GetLastError(), "198.18.1.2") {
		t.Errorf("last error %q", r.GetLastError())
	}
	st := h.k.Snapshot()
	if len(st.Rules) != 1 || st.Rules[0].Src.Addr() != netip.MustParseAddr("198.18.1.2") || len(st.Routes) != 2 {
		t.Fatalf("kernel keeps %v %v; want only 198.18.1.2's rule and routes", st.Rules, st.Routes)
	}
}

func TestProtect(t *testing.T) {
	local := netip.MustParseAddr("198.18.1.2")
	mine := route.Source{Addr: netip.MustParsePrefix("198.18.1.2/24"), LinkIndex: 3, Gateway: netip.MustParseAddr("198.18.1.1"), Table: 7116, Priority: 7116}
	other := route.Source{Addr: netip.MustParsePrefix("198.18.0.2/24"), LinkIndex: 2, Gateway: netip.MustParseAddr("198.18.0.1"), Table: 7109, Priority: 7109}
	actual := reconcile.State{Rules: []route.Rule{mine.Rule(), other.Rule()}, Routes: slices.Concat(mine.Routes(), other.Routes())}
	moved := mine
	moved.Gateway = netip.MustParseAddr("198.18.1.254")
	desired := reconcile.HostConfig{Rules: []route.Rule{mine.Rule()}, Routes: moved.Routes()}
	ops, err := reconcile.Plan(desired, actual)
	if err != nil {
		t.Fatal(err)
	}
	keep, problems := protect(ops, actual, local)
	var got []string
	for _, op := range keep {
		got = append(got, op.String())
	}
	want := []string{
		"- rule 7109: from 198.18.0.2 lookup 7109",
		"- route default via 198.18.0.1 dev if2 table 7109",
		"- route 198.18.0.0/24 dev if2 table 7109 src 198.18.0.2 scope link",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("kept (-want +got):\n%s", diff)
	}
	if len(problems) != 2 { // the default route's delete and its replacement
		t.Errorf("problems %v", problems)
	}
	if keep, problems := protect(ops, actual, netip.Addr{}); len(keep) != len(ops) || problems != nil {
		t.Error("no local address protects nothing")
	}
}

func TestBackoff(t *testing.T) {
	lo, hi := 200*time.Millisecond, 30*time.Second
	seen := map[time.Duration]bool{}
	for n := range 100 {
		ceil := hi
		if n < 8 {
			ceil = min(hi, lo<<n)
		}
		for range 20 {
			d := backoff(n, lo, hi)
			if d < 0 || d > ceil {
				t.Fatalf("backoff(%d) = %v, want within [0, %v]", n, d, ceil)
			}
			seen[d] = true
		}
	}
	if len(seen) < 1000 {
		t.Errorf("only %d distinct waits: not jittered", len(seen))
	}
}

func TestHealthFrom(t *testing.T) {
	conns := []mptcp.Connection{
		{Local: netip.MustParseAddrPort("198.18.0.2:40000"), Remote: netip.MustParseAddrPort("198.18.9.9:443"), Info: mptcp.Info{Subflows: 1, SubflowsTotal: 2, Token: 7}},
		{Local: netip.MustParseAddrPort("198.18.0.2:40001"), Remote: netip.MustParseAddrPort("198.18.9.9:443"), Info: mptcp.Info{Fallback: true}},
	}
	for range 100 {
		conns = append(conns, mptcp.Connection{Info: mptcp.Info{Subflows: 2}}) // a kernel before 6.10
	}
	h := HealthFrom(conns, mptcp.Counters{"MPCapableSYNTX": 5, "MPJoinSynAckRx": 2, "Unrelated": 9}, time.Unix(1, 0))
	if h.GetConnections() != 102 || h.GetSubflows() != 2+1+300 || h.GetFallbacks() != 1 || len(h.GetConnectionsList()) != 64 {
		t.Errorf("health %d conns %d subflows %d fallbacks %d listed", h.GetConnections(), h.GetSubflows(), h.GetFallbacks(), len(h.GetConnectionsList()))
	}
	if diff := cmp.Diff(map[string]uint64{"MPCapableSYNTX": 5, "MPJoinSynAckRx": 2}, h.GetCounters()); diff != "" {
		t.Errorf("counters (-want +got):\n%s", diff)
	}
	want := &pb.MptcpConnection{Local: "198.18.0.2:40000", Remote: "198.18.9.9:443", Subflows: 1, Token: 7}
	if diff := cmp.Diff(want, h.GetConnectionsList()[0], protocmp.Transform()); diff != "" {
		t.Errorf("first connection (-want +got):\n%s", diff)
	}
}

func TestStateFile(t *testing.T) {
	dir := t.TempDir() + "/nested"
	if d, err := loadState(dir); d != nil || err != nil {
		t.Fatalf("no state: %v, %v", d, err)
	}
	d := managed(4, testPolicy())
	if err := saveState(dir, d, time.Now()); err != nil {
		t.Fatal(err)
	}
	got, err := loadState(dir)
	if err != nil || !proto.Equal(got, d) {
		t.Fatalf("loaded %v, %v", got, err)
	}
	if err := saveState(dir, managed(5, testPolicy()), time.Now()); err != nil {
		t.Fatal(err)
	}
	if got, _ := loadState(dir); got.GetRevision() != 5 {
		t.Errorf("revision %d after overwrite", got.GetRevision())
	}
	if matches, _ := filepathGlob(dir + "/.state-*"); len(matches) != 0 {
		t.Errorf("temporary files left: %v", matches)
	}
	for _, bad := range []string{`{`, `{"version":2,"desired":{}}`, `{"version":1,"desired":{"assignment":"ASSIGNMENT_MANAGED","group":"groups/x","revision":"1","policy":{"limits":{"subflows":99}}}}`} {
		if err := writeFile(dir+"/"+stateFile, bad); err != nil {
			t.Fatal(err)
		}
		if _, err := loadState(dir); err == nil {
			t.Errorf("state %s loaded", bad)
		}
	}
}

func TestNewChecksOptions(t *testing.T) {
	ok := Options{HostID: "web-1", Controller: "127.0.0.1:7400", Kernel: func(route.Range) (reconcile.Kernel, error) { return nil, nil }, System: newFakeSystem()}
	for _, tt := range []struct {
		name   string
		mutate func(*Options)
	}{
		{"host id with upper case", func(o *Options) { o.HostID = "Web_1" }},
		{"empty host id", func(o *Options) { o.HostID = "" }},
		{"bad label", func(o *Options) { o.Labels = map[string]string{"a b": "c"} }},
		{"no controller", func(o *Options) { o.Controller = "" }},
		{"token in plaintext to another host", func(o *Options) { o.Controller = "198.18.0.1:7400"; o.Token = "secret" }},
	} {
		o := ok
		tt.mutate(&o)
		if _, err := New(o); err == nil {
			t.Errorf("%s: New accepted it", tt.name)
		}
	}
	o := ok
	o.Token = "secret" // to loopback: fine
	if _, err := New(o); err != nil {
		t.Errorf("token to loopback: %v", err)
	}
}

// TestManyAgents runs many agents in-process against one controller, as
// end-to-end tests of the fleet do; each applies the group's revisions.
func TestManyAgents(t *testing.T) {
	const n = 30
	ctrl := newController(t, false)
	ctrl.setDesired(managed(1, testPolicy()))
	var hs []*harness
	for i := range n {
		h := newHarness(t, func(h *harness) {
			h.ctrl.stop()
			h.ctrl = ctrl
			h.opts.Controller = ctrl.addr
			h.opts.HostID = fmt.Sprintf("web-%d", i)
		})
		h.start()
		hs = append(hs, h)
	}
	for _, rev := range []int64{1, 2} {
		p := testPolicy()
		if rev == 2 {
			p = testPolicy(pb.EndpointFlag_ENDPOINT_FLAG_BACKUP)
			ctrl.setDesired(managed(2, p))
		}
		waitUntil(t, fmt.Sprintf("%d APPLIED events for revision %d", n, rev), func() bool {
			c := 0
			for _, e := range ctrl.eventsSince(0) {
				if e.GetKind() == pb.AgentEvent_KIND_APPLIED && e.GetRevision() == rev {
					c++
				}
			}
			return c == n
		})
		for _, h := range hs {
			if !h.converged(h.rendered(p)) {
				t.Fatalf("%s does not hold revision %d", h.opts.HostID, rev)
			}
		}
	}
	if hellos, _, _ := ctrl.counts(); hellos != n {
		t.Errorf("%d hellos, want %d", hellos, n)
	}
}

// TestAgentReconnectsFast: while the controller is down, refused connection
// attempts end at once and the backoff (not a connect timeout) paces the
// next, so the agent is back soon after the controller is.
func TestAgentReconnectsFast(t *testing.T) {
	h := newHarness(t, func(h *harness) { h.opts.ConnectTimeout = 10 * time.Second })
	dials := h.countDials()
	h.ctrl.setDesired(managed(1, testPolicy()))
	h.start()
	h.ctrl.waitReport(t, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	h.ctrl.stop()
	// Refused, attempt after attempt, until the backoff is at its ceiling.
	n := dials.Load()
	waitUntil(t, "ten refused connection attempts", func() bool { return dials.Load() >= n+10 })
	lis, err := net.Listen("tcp", h.ctrl.addr)
	if err != nil {
		t.Fatal(err)
	}
	h.ctrl.mu.Lock()
	h.ctrl.lis = lis
	h.ctrl.mu.Unlock()
	back := time.Now()
	h.ctrl.serve()
	waitUntil(t, "a second hello", func() bool { n, _, _ := h.ctrl.counts(); return n == 2 })
	if d := time.Since(back); d > time.Second {
		t.Errorf("reconnected %v after the controller came back; want about the backoff (50 ms)", d)
	}
}
