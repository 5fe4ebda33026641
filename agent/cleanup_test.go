package agent

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/reconcile/fakekernel"
	"github.com/mpfleet/mpfleet/internal/route"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// foreignBits is what others put in the kernel: a rule and a route inside
// mpfleet's range without its protocol, and an endpoint.
func foreignBits() reconcile.State {
	return reconcile.State{
		Endpoints: []mptcp.Endpoint{{ID: 9, Addr: netip.MustParseAddr("198.18.1.9"), Flags: mptcp.FlagSignal, IfIndex: 3}},
		Foreign: []route.ForeignRule{{
			Rule:     route.Rule{Priority: 7150, Src: netip.MustParsePrefix("198.18.1.9/32"), Table: 7150},
			Protocol: route.ProtoBoot,
		}},
		ForeignRoutes: []route.ForeignRoute{{
			Route:    route.Route{Table: 7150, Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("198.18.1.1"), LinkIndex: 3},
			Protocol: route.ProtoBoot, Type: route.TypeUnicast,
		}},
	}
}

// fakeOpener opens k for every range.
func fakeOpener(k *fakekernel.Kernel) KernelOpener {
	return func(route.Range) (reconcile.Kernel, error) { return k, nil }
}

func mustApply(t *testing.T, k reconcile.Kernel, cfg reconcile.HostConfig, rec *records) {
	t.Helper()
	st, err := k.Read(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ops, err := reconcile.Plan(cfg, st)
	if err != nil {
		t.Fatal(err)
	}
	rec.noteOriginals(ops)
	rec.noteAdded(ops)
	if err := reconcile.Apply(context.Background(), k, ops); err != nil {
		t.Fatal(err)
	}
}

// TestCleanupFakeKernel: what mpfleet applied, in two revisions (the second
// must not take the first's values for the originals), is removed and
// restored; what others made stays.
func TestCleanupFakeKernel(t *testing.T) {
	k := fakekernel.New(route.Range{})
	k.SetLinks(fakeLinks)
	want := fakekernel.New(route.Range{})
	want.SetLinks(fakeLinks)
	mustLoad(t, want, foreignBits())

	a, b := netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.18.1.2")
	cfg := reconcile.HostConfig{
		Enabled: new(false),
		Limits:  &mptcp.Limits{Subflows: 4, AddAddrAccepted: 2},
		Endpoints: []mptcp.Endpoint{
			{Addr: a, Flags: mptcp.FlagSubflow, IfIndex: 2},
			{Addr: b, Flags: mptcp.FlagSubflow, IfIndex: 3},
		},
		Sysctls: map[string]string{"net.mptcp.add_addr_timeout": "60", "net.mptcp.scheduler": "redundant"},
		Rules:   []route.Rule{{Priority: 7100, Src: netip.PrefixFrom(a, 32), Table: 7100}},
		Routes: []route.Route{
			{Table: 7100, Dst: netip.MustParsePrefix("198.18.0.0/24"), LinkIndex: 2, Src: a, Scope: route.ScopeLink},
			{Table: 7100, Dst: netip.MustParsePrefix("0.0.0.0/0"), LinkIndex: 2, Gateway: netip.MustParseAddr("198.18.0.1")},
		},
	}
	dir := t.TempDir()
	rec, err := loadRecords(dir)
	if err != nil {
		t.Fatal(err)
	}
	mustApply(t, k, cfg, &rec)
	cfg.Sysctls["net.mptcp.add_addr_timeout"] = "90"
	cfg.Limits = &mptcp.Limits{Subflows: 8, AddAddrAccepted: 8}
	mustApply(t, k, cfg, &rec)
	if got := rec.orig.Sysctls["net.mptcp.add_addr_timeout"]; got != "120" {
		t.Errorf("original add_addr_timeout recorded as %q after a second change, want 120", got)
	}
	if *rec.orig.Limits != (limitsRecord{Subflows: 2}) {
		t.Errorf("original limits recorded as %+v", *rec.orig.Limits)
	}
	if err := rec.saveOriginals(dir); err != nil {
		t.Fatal(err)
	}
	if err := rec.saveOwned(dir); err != nil {
		t.Fatal(err)
	}
	if err := saveState(dir, &pb.DesiredConfig{Assignment: pb.DesiredConfig_ASSIGNMENT_UNMANAGED}, time.Now()); err != nil {
		t.Fatal(err)
	}
	// Made by others once mpfleet was done.
	mustLoad(t, k, foreignBits())

	var out bytes.Buffer
	if err := Cleanup(context.Background(), CleanupOptions{StateDir: dir, Kernel: fakeOpener(k), Out: &out}); err != nil {
		t.Fatalf("Cleanup: %v\n%s", err, out.String())
	}
	if diff := cmp.Diff(want.Snapshot().String(), k.Snapshot().String()); diff != "" {
		t.Errorf("kernel after the cleanup (-want +got):\n%s", diff)
	}
	for _, line := range []string{
		"removed rule 7100: from 198.18.0.2 lookup 7100",
		"removed route default via 198.18.0.1 dev eth0 table 7100",
		"removed endpoint 198.18.0.2 id 1 subflow dev eth0",
		"restored limits subflows 2 add_addr_accepted 0 (was subflows 8 add_addr_accepted 8)",
		"restored sysctl net.mptcp.add_addr_timeout = 120 (was 90)",
		"restored sysctl net.mptcp.enabled = 1 (was 0)",
		"restored sysctl net.mptcp.scheduler = default (was redundant)",
		"removed " + filepath.Join(dir, originalsFile),
	} {
		if !strings.Contains(out.String(), line+"\n") {
			t.Errorf("output lacks %q:\n%s", line, out.String())
		}
	}
	if strings.Contains(out.String(), "198.18.1.9") {
		t.Errorf("the output names a foreign entry:\n%s", out.String())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("state dir holds %v after the cleanup", ents)
	}

	// Again: nothing left to do, and the state dir is gone.
	out.Reset()
	if err := Cleanup(context.Background(), CleanupOptions{StateDir: dir, Kernel: fakeOpener(k), Out: &out}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "nothing of mpfleet's found") {
		t.Errorf("second cleanup said:\n%s", out.String())
	}
}

// TestCleanupFailureKeepsStateDir: a step that fails does not stop the
// others; the error names it and the state dir stays for another run.
func TestCleanupFailureKeepsStateDir(t *testing.T) {
	k := fakekernel.New(route.Range{})
	dir := t.TempDir()
	rec, _ := loadRecords(dir)
	mustApply(t, k, reconcile.HostConfig{
		Sysctls:   map[string]string{"net.mptcp.add_addr_timeout": "60"},
		Endpoints: []mptcp.Endpoint{{Addr: netip.MustParseAddr("198.18.0.2"), Flags: mptcp.FlagSubflow}},
	}, &rec)
	if err := rec.saveOriginals(dir); err != nil {
		t.Fatal(err)
	}
	if err := rec.saveOwned(dir); err != nil {
		t.Fatal(err)
	}
	k.FailOn(func(_ int, op reconcile.Op) error {
		if op.Kind == reconcile.DelEndpoint {
			return errInjected
		}
		return nil
	})
	var out bytes.Buffer
	err := Cleanup(context.Background(), CleanupOptions{StateDir: dir, Kernel: fakeOpener(k), Out: &out})
	if err == nil || !strings.Contains(err.Error(), "removed endpoint 198.18.0.2") || !errors.Is(err, errInjected) ||
		!strings.Contains(err.Error(), "is kept") {
		t.Fatalf("Cleanup = %v, want the failed step named", err)
	}
	if v := k.Snapshot().Sysctls["net.mptcp.add_addr_timeout"]; v != "120" {
		t.Errorf("the sysctl after a failed endpoint step: %q, want 120 restored", v)
	}
	for _, name := range []string{originalsFile, endpointsFile} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("%s after a failed cleanup: %v", name, err)
		}
	}
	k.FailOn(nil)
	if err := Cleanup(context.Background(), CleanupOptions{StateDir: dir, Kernel: fakeOpener(k), Out: &out}); err != nil {
		t.Fatal(err)
	}
	if eps := k.Snapshot().Endpoints; len(eps) != 0 {
		t.Errorf("endpoints after the second run: %v", eps)
	}
}

// TestPlanRestore: only recorded, explicit endpoints go; sysctls and limits
// already at their originals are left; a sysctl the kernel lacks is noted.
func TestPlanRestore(t *testing.T) {
	a, b, c := netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.18.0.3"), netip.MustParseAddr("2001:db8::2")
	st := reconcile.State{
		Enabled: new(true),
		Limits:  &mptcp.Limits{Subflows: 2},
		Endpoints: []mptcp.Endpoint{
			{ID: 1, Addr: a, Flags: mptcp.FlagSubflow},
			{ID: 2, Addr: b, Flags: mptcp.FlagSignal},                       // not recorded: someone else's
			{ID: 3, Addr: c, Flags: mptcp.FlagImplicit | mptcp.FlagSubflow}, // the kernel's, at a recorded address
		},
		Sysctls: map[string]string{"net.mptcp.scheduler": "default"},
	}
	rec := records{
		orig: originals{
			Sysctls: map[string]string{"net.mptcp.enabled": "1", "net.mptcp.scheduler": "default", "net.mptcp.gone": "3"},
			Limits:  &limitsRecord{Subflows: 2},
		},
		owned: map[netip.Addr]bool{a: true, c: true},
	}
	ops, notes := planRestore(st, rec)
	if got := strings.TrimSpace(ops.String()); got != "- endpoint 198.18.0.2 id 1 subflow" {
		t.Errorf("ops %q", got)
	}
	if diff := cmp.Diff([]string{"sysctl net.mptcp.gone: not in this kernel: not restored"}, notes); diff != "" {
		t.Errorf("notes (-want +got):\n%s", diff)
	}
}

// TestCleanupRefusedWhileAgentRuns: the running agent holds the state dir;
// a cleanup, or a second agent, on it is refused and touches nothing.
func TestCleanupRefusedWhileAgentRuns(t *testing.T) {
	h := newHarness(t)
	h.ctrl.setDesired(managed(1, testPolicy()))
	h.start()
	h.ctrl.waitReport(t, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	before, calls := h.k.Snapshot().String(), h.k.Calls()
	var out bytes.Buffer
	err := Cleanup(context.Background(), CleanupOptions{StateDir: h.opts.StateDir, Kernel: fakeOpener(h.k), Out: &out})
	if !errors.Is(err, ErrStateDirInUse) || !strings.Contains(err.Error(), h.opts.StateDir) {
		t.Fatalf("Cleanup while the agent runs = %v, want ErrStateDirInUse naming the state dir", err)
	}
	if h.k.Calls() != calls || h.k.Snapshot().String() != before || !stateFileExists(h.opts.StateDir) {
		t.Error("a refused cleanup changed something")
	}
	second, err := New(h.opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := second.Run(context.Background()); !errors.Is(err, ErrStateDirInUse) {
		t.Errorf("a second agent on the same state dir: Run = %v, want ErrStateDirInUse", err)
	}
}

// TestAgentGroupDeletedThenCleanup: a host whose group is deleted (the
// controller sends UNMANAGED) keeps what it was last given and reports
// UNMANAGED; --cleanup then brings the kernel back to what it was before
// mpfleet, sysctls and limits included, and leaves what others added.
func TestAgentGroupDeletedThenCleanup(t *testing.T) {
	h := newHarness(t)
	want := fakekernel.New(route.Range{})
	want.SetLinks(fakeLinks)
	mustLoad(t, want, foreignBits())

	h.ctrl.setDesired(managed(1, testPolicy()))
	h.start()
	h.ctrl.waitReport(t, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	h.waitConverged(testPolicy())
	applied := h.k.Snapshot().String()

	// The group is deleted.
	_, nr, ne := h.ctrl.counts()
	calls := h.k.Calls()
	h.ctrl.setDesired(&pb.DesiredConfig{Assignment: pb.DesiredConfig_ASSIGNMENT_UNMANAGED})
	h.ctrl.waitReport(t, nr, "UNMANAGED", inState(pb.SyncState_SYNC_STATE_UNMANAGED, 0))
	noEvents(t, h.reconcileNow(), "", pb.SyncState_SYNC_STATE_UNMANAGED)
	if got := h.k.Snapshot().String(); got != applied || h.k.Calls() != calls {
		t.Fatalf("the kernel changed when the group was deleted (%d calls):\n%s\nwant\n%s", h.k.Calls()-calls, got, applied)
	}
	if _, _, n := h.ctrl.counts(); n != ne {
		t.Errorf("%d events when the group was deleted", n-ne)
	}
	h.stop()

	mustLoad(t, h.k, foreignBits())
	var out bytes.Buffer
	if err := Cleanup(context.Background(), CleanupOptions{StateDir: h.opts.StateDir, Kernel: h.opts.Kernel, Out: &out}); err != nil {
		t.Fatalf("Cleanup: %v\n%s", err, out.String())
	}
	t.Logf("cleanup:\n%s", out.String())
	if diff := cmp.Diff(want.Snapshot().String(), h.k.Snapshot().String()); diff != "" {
		t.Errorf("kernel after the cleanup (-want +got):\n%s", diff)
	}
	if ents, _ := os.ReadDir(h.opts.StateDir); len(ents) != 0 {
		t.Errorf("state dir holds %v after the cleanup", ents)
	}
}

// TestAgentRecordsBeforeApplying: the agent writes down the original values
// before its first change of each, keeps them across a restart and later
// revisions, tracks its endpoints, and applies nothing it cannot record.
func TestAgentRecordsBeforeApplying(t *testing.T) {
	h := newHarness(t)
	dir := h.opts.StateDir
	if err := writeFile(filepath.Join(dir, originalsFile), "{"); err != nil {
		t.Fatal(err)
	}
	h.ctrl.setDesired(managed(1, testPolicy()))
	h.start()
	r := h.ctrl.waitReport(t, 0, "FAILED", func(r *pb.AgentReport) bool { return r.GetSyncState() == pb.SyncState_SYNC_STATE_FAILED })
	if !strings.Contains(r.GetLastError(), originalsFile) {
		t.Errorf("last error %q does not name %s", r.GetLastError(), originalsFile)
	}
	if h.k.Calls() != 0 {
		t.Fatalf("%d kernel calls with unreadable records", h.k.Calls())
	}
	if err := os.Remove(filepath.Join(dir, originalsFile)); err != nil {
		t.Fatal(err)
	}
	h.ctrl.setDesired(managed(2, testPolicy()))
	h.ctrl.waitReport(t, 0, "IN_SYNC at 2", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 2))
	h.stop()

	// A restart and a revision that changes the same sysctl and limits again.
	p := testPolicy()
	p.Sysctls.AddAddrTimeout = new(uint32(90))
	p.Limits.Subflows = new(uint32(8))
	p.Endpoints[0].Interface = "eth0"
	h.ctrl.setDesired(managed(3, p))
	_, nr, _ := h.ctrl.counts()
	h.start()
	h.ctrl.waitReport(t, nr, "IN_SYNC at 3", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 3))
	h.stop()
	rec, err := loadRecords(dir)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"net.mptcp.add_addr_timeout": "120"}, rec.orig.Sysctls); diff != "" {
		t.Errorf("original sysctls (-want +got):\n%s", diff)
	}
	if rec.orig.Limits == nil || *rec.orig.Limits != (limitsRecord{Subflows: 2}) {
		t.Errorf("original limits %+v, want those of the fresh kernel", rec.orig.Limits)
	}
	// Revision 3 dropped eth1's endpoint: only eth0's is mpfleet's now.
	if diff := cmp.Diff(map[netip.Addr]bool{netip.MustParseAddr("198.18.0.2"): true}, rec.owned); diff != "" {
		t.Errorf("endpoints recorded as mpfleet's (-want +got):\n%s", diff)
	}
}
