package agent

// What the agent writes down in the state dir so that `mpfleet-agent
// --cleanup` can undo it later, with no controller: the value each sysctl
// and the limits had before mpfleet first changed them (originals.json,
// never replaced once a value is recorded, so that a restart does not take
// mpfleet's own values for the originals), and the addresses of the MPTCP
// endpoints mpfleet holds (endpoints.json). Rules and routes need no record:
// mpfleet's carry route.Protocol.

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/reconcile"
)

// Files of the state dir besides stateFile.
const (
	// originalsFile holds the values from before mpfleet's first change.
	originalsFile = "originals.json"
	// endpointsFile holds the addresses of mpfleet's endpoints.
	endpointsFile = "endpoints.json"
	// recordVersion is the format of both.
	recordVersion = 1
)

// limitsRecord is mptcp.Limits as the records write them.
type limitsRecord struct {
	Subflows        uint32 `json:"subflows"`
	AddAddrAccepted uint32 `json:"add_addr_accepted"`
}

// originals is originalsFile: what the kernel held before mpfleet first
// changed it.
type originals struct {
	Version int `json:"version"`
	// Sysctls maps full sysctl names (net.mptcp.enabled included) to the
	// value before mpfleet's first change of each.
	Sysctls map[string]string `json:"sysctls,omitempty"`
	// Limits are the limits before mpfleet's first change of them.
	Limits *limitsRecord `json:"limits,omitempty"`
}

// ownedEndpoints is endpointsFile: the addresses of the endpoints mpfleet
// holds (made, or kept as its policy wanted them, while it managed the
// host).
type ownedEndpoints struct {
	Version   int          `json:"version"`
	Endpoints []netip.Addr `json:"endpoints"`
}

// records are the state dir's records, as read.
type records struct {
	orig  originals
	owned map[netip.Addr]bool
}

// loadRecords reads dir's records; missing files are empty records.
func loadRecords(dir string) (records, error) {
	rec := records{orig: originals{Version: recordVersion}, owned: map[netip.Addr]bool{}}
	if err := readRecord(dir, originalsFile, &rec.orig.Version, &rec.orig); err != nil {
		return records{}, err
	}
	var eps ownedEndpoints
	if err := readRecord(dir, endpointsFile, &eps.Version, &eps); err != nil {
		return records{}, err
	}
	for _, a := range eps.Endpoints {
		rec.owned[a] = true
	}
	return rec, nil
}

// readRecord reads dir/name into v, checking its version; a missing file
// leaves v as it is.
func readRecord(dir, name string, version *int, v any) error {
	path := filepath.Join(dir, name)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("state: %w", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("state %s: %w", path, err)
	}
	if *version != recordVersion {
		return fmt.Errorf("state %s: version %d, want %d", path, *version, recordVersion)
	}
	return nil
}

// noteOriginals adds to rec the values that ops replace and rec does not
// hold yet, and reports whether it added any.
func (rec *records) noteOriginals(ops reconcile.Ops) bool {
	changed := false
	for _, op := range ops {
		switch op.Kind {
		case reconcile.SetSysctl:
			if _, ok := rec.orig.Sysctls[op.Sysctl]; ok || op.Old == "" {
				continue
			}
			if rec.orig.Sysctls == nil {
				rec.orig.Sysctls = map[string]string{}
			}
			rec.orig.Sysctls[op.Sysctl] = op.Old
			changed = true
		case reconcile.SetLimits:
			if rec.orig.Limits != nil || op.OldLimits == nil {
				continue
			}
			rec.orig.Limits = &limitsRecord{Subflows: op.OldLimits.Subflows, AddAddrAccepted: op.OldLimits.AddAddrAccepted}
			changed = true
		}
	}
	return changed
}

// noteAdded adds to rec the addresses of the endpoints ops add, and reports
// whether any was new.
func (rec *records) noteAdded(ops reconcile.Ops) bool {
	changed := false
	for _, op := range ops {
		if op.Kind == reconcile.AddEndpoint && op.Endpoint != nil && !rec.owned[op.Endpoint.Addr] {
			rec.owned[op.Endpoint.Addr] = true
			changed = true
		}
	}
	return changed
}

// setOwned makes the explicit endpoints of eps rec's owned ones, and
// reports whether that changed anything.
func (rec *records) setOwned(eps []mptcp.Endpoint) bool {
	owned := map[netip.Addr]bool{}
	for _, e := range explicitEndpoints(eps) {
		owned[e.Addr] = true
	}
	if maps.Equal(owned, rec.owned) {
		return false
	}
	rec.owned = owned
	return true
}

func (rec *records) saveOriginals(dir string) error {
	b, err := json.MarshalIndent(rec.orig, "", "  ")
	if err != nil {
		return fmt.Errorf("state: %w", err)
	}
	return writeAtomic(dir, originalsFile, b)
}

func (rec *records) saveOwned(dir string) error {
	eps := ownedEndpoints{Version: recordVersion, Endpoints: slices.SortedFunc(maps.Keys(rec.owned), netip.Addr.Compare)}
	if eps.Endpoints == nil {
		eps.Endpoints = []netip.Addr{}
	}
	b, err := json.MarshalIndent(eps, "", "  ")
	if err != nil {
		return fmt.Errorf("state: %w", err)
	}
	return writeAtomic(dir, endpointsFile, b)
}

// writeAtomic writes b (and a newline) as dir/name atomically: a temporary
// file in the same directory, synced, then renamed over the old one, and the
// directory synced, so that a crash leaves the old or the new file, never a
// torn one.
func writeAtomic(dir, name string, b []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	f, err := os.CreateTemp(dir, ".state-*.tmp")
	if err != nil {
		return fmt.Errorf("state: %w", err)
	}
	tmp := f.Name()
	defer func() { _ = os.Remove(tmp) }() // fails harmlessly after the rename
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		return fmt.Errorf("state: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // best effort: the rename is durable once the directory is
		_ = d.Close()
	}
	return nil
}

// recording reports whether the loop keeps records: it has a state dir and
// changes the kernel.
func (l *loop) recording() bool { return l.a.opts.StateDir != "" && !l.a.opts.DryRun }

// loadRecords reads the state dir's records into the loop once.
func (l *loop) loadRecords() error {
	if l.rec != nil {
		return nil
	}
	rec, err := loadRecords(l.a.opts.StateDir)
	if err != nil {
		return err
	}
	l.rec = &rec
	return nil
}

// recordBefore writes down, before ops change the kernel, what --cleanup
// needs to undo them: the value each sysctl and the limits had before
// mpfleet first changed them, and the addresses of the endpoints ops add.
// An error means nothing of ops may be applied: the originals would be
// lost.
func (l *loop) recordBefore(ops reconcile.Ops) error {
	if !l.recording() {
		return nil
	}
	if err := l.loadRecords(); err != nil {
		return fmt.Errorf("record the kernel's original values: %w", err)
	}
	if l.rec.noteOriginals(ops) {
		if err := l.rec.saveOriginals(l.a.opts.StateDir); err != nil {
			l.rec = nil // read again next time
			return fmt.Errorf("record the kernel's original values: %w", err)
		}
	}
	if l.rec.noteAdded(ops) {
		if err := l.rec.saveOwned(l.a.opts.StateDir); err != nil {
			l.rec = nil
			return fmt.Errorf("record mpfleet's endpoints: %w", err)
		}
	}
	return nil
}

// recordEndpoints records the explicit endpoints of st, the kernel as a
// reconcile left it as desired, as mpfleet's: while a policy applies,
// mpfleet owns every endpoint.
func (l *loop) recordEndpoints(st reconcile.State) {
	if !l.recording() {
		return
	}
	if err := l.loadRecords(); err != nil {
		l.log.Error("cannot read the state dir's records", "err", err)
		return
	}
	if l.rec.setOwned(st.Endpoints) {
		if err := l.rec.saveOwned(l.a.opts.StateDir); err != nil {
			l.rec = nil
			l.log.Error("cannot record mpfleet's endpoints", "err", err)
		}
	}
}
