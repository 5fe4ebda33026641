package agent

// mpfleet-agent --cleanup: remove what mpfleet put in the kernel and restore
// what it changed, from the state dir's records, with no controller.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/route"
)

// lockFile is the state dir's lock (lockStateDir).
const lockFile = "lock"

// ErrStateDirInUse is wrapped when a running agent holds the state dir's
// lock: Cleanup refuses to run, and a second agent to start.
var ErrStateDirInUse = errors.New("the state dir is in use")

// EveryRange is every table and rule priority a policy's routing range can
// hold (policy.ValidatePolicy and route.Range.Validate keep out tables 0 and
// 253–255 and priorities 0 and from 32766 on), as two ranges: Cleanup
// removes mpfleet's rules and routes in all of them, wherever a policy put
// its range.
var EveryRange = []route.Range{
	{TableMin: 1, TableMax: route.TableDefault - 1, PriorityMin: 1, PriorityMax: route.PriorityMain - 1},
	{TableMin: route.TableLocal + 1, TableMax: math.MaxUint32, PriorityMin: 1, PriorityMax: route.PriorityMain - 1},
}

// CleanupOptions configure Cleanup. Kernel is required.
type CleanupOptions struct {
	// StateDir is the agent's --state-dir: its records say which
	// endpoints are mpfleet's and what the sysctls and limits were before
	// mpfleet changed them. "" cleans the routing only.
	StateDir string
	// Kernel opens the kernel for a routing range.
	Kernel KernelOpener
	// Ranges are where mpfleet's rules and routes are removed; nil means
	// EveryRange.
	Ranges []route.Range
	// Out gets one line for each thing removed or restored, and notes;
	// nil discards them.
	Out io.Writer
}

// Cleanup removes from the kernel everything mpfleet put there and
// restores what it changed, without a controller: every rule and route
// carrying route.Protocol in opts.Ranges (foreign ones stay), the endpoints
// the state dir records as mpfleet's (those the kernel made itself or that
// others added stay), and the sysctls and limits the state dir records
// the original values of. Then it removes the state dir's files, so that an
// agent started later restores nothing. It is best effort: a step that
// fails does not stop the others; the error names every failed step, and
// the state dir is then kept so that Cleanup can be run again. It refuses
// to run, wrapping ErrStateDirInUse, while an agent holds the state dir.
func Cleanup(ctx context.Context, opts CleanupOptions) error {
	if opts.Kernel == nil {
		return errors.New("cleanup: no kernel")
	}
	out := opts.Out
	if out == nil {
		out = io.Discard
	}
	c := &cleaner{out: out}
	dir := opts.StateDir
	rec := records{owned: map[netip.Addr]bool{}}
	haveDir := false
	if dir != "" {
		release, err := lockStateDir(dir, false)
		switch {
		case errors.Is(err, os.ErrNotExist):
			c.note("state dir %s does not exist: no endpoints known as mpfleet's, no original values to restore", dir)
		case err != nil:
			return fmt.Errorf("cleanup: %w", err)
		default:
			defer release()
			haveDir = true
			if rec, err = loadRecords(dir); err != nil {
				c.fail(err)
				rec = records{owned: map[netip.Addr]bool{}}
			}
		}
	}
	if haveDir {
		if _, err := os.Stat(filepath.Join(dir, originalsFile)); errors.Is(err, os.ErrNotExist) {
			c.note("no original sysctl or limit values recorded in %s: none restored", dir)
		}
		if _, err := os.Stat(filepath.Join(dir, endpointsFile)); errors.Is(err, os.ErrNotExist) {
			c.note("no endpoints recorded as mpfleet's in %s: endpoints left as they are", dir)
		}
	}
	ranges := opts.Ranges
	if ranges == nil {
		ranges = EveryRange
	}
	for i, rng := range ranges {
		k, err := opts.Kernel(rng)
		if err != nil {
			c.fail(fmt.Errorf("open the kernel for %v: %w", rng, err))
			continue
		}
		want := reconcile.HostConfig{Range: rng}
		if i == 0 {
			want.Sysctls = rec.sysctlsToRead()
		}
		st, err := k.Read(ctx, want)
		if err != nil {
			c.fail(fmt.Errorf("read the kernel (%v): %w", rng, err))
			closeKernel(k)
			continue
		}
		c.do(ctx, k, planRouting(st))
		if i == 0 {
			ops, notes := planRestore(st, rec)
			for _, n := range notes {
				c.note("%s", n)
			}
			c.do(ctx, k, ops)
		}
		closeKernel(k)
	}
	if haveDir && len(c.failed) == 0 {
		for _, name := range []string{stateFile, originalsFile, endpointsFile} {
			path := filepath.Join(dir, name)
			switch err := os.Remove(path); {
			case err == nil:
				c.done("removed " + path)
			case !errors.Is(err, os.ErrNotExist):
				c.fail(fmt.Errorf("remove %s: %w", path, err))
			}
		}
		// The lock goes last, still held: an agent that opened it meanwhile
		// found it locked.
		_ = os.Remove(filepath.Join(dir, lockFile))
	}
	if len(c.failed) > 0 {
		msg := fmt.Sprintf("cleanup: %d step(s) failed", len(c.failed))
		if haveDir {
			msg += "; the state dir " + dir + " is kept: run --cleanup again once fixed"
		}
		return fmt.Errorf("%s: %w", msg, errors.Join(c.failed...))
	}
	if c.changes == 0 {
		c.note("nothing of mpfleet's found in the kernel or the state dir")
	}
	return nil
}

// cleaner carries out a cleanup, best effort.
type cleaner struct {
	out     io.Writer
	failed  []error
	changes int
}

func (c *cleaner) note(format string, args ...any) {
	_, _ = fmt.Fprintf(c.out, "note: "+format+"\n", args...)
}

func (c *cleaner) done(line string) {
	c.changes++
	_, _ = fmt.Fprintln(c.out, line)
}

func (c *cleaner) fail(err error) {
	_, _ = fmt.Fprintf(c.out, "FAILED: %v\n", err)
	c.failed = append(c.failed, err)
}

// do applies ops one by one, each on its own (no journal: what is undone
// stays undone), and reports each.
func (c *cleaner) do(ctx context.Context, k reconcile.Kernel, ops reconcile.Ops) {
	for _, op := range ops {
		if _, err := k.Do(ctx, op); err != nil {
			c.fail(fmt.Errorf("%s: %w", describeCleanup(op), err))
			continue
		}
		c.done(describeCleanup(op))
	}
}

// describeCleanup says what a cleanup op does: "removed rule 7100: from
// 198.18.0.2 lookup 7100", "restored sysctl net.mptcp.scheduler = default
// (was redundant)".
func describeCleanup(op reconcile.Op) string {
	s := op.String()
	switch op.Kind {
	case reconcile.SetSysctl, reconcile.SetLimits:
		return "restored " + strings.TrimPrefix(s, "~ ")
	}
	return "removed " + strings.TrimPrefix(s, "- ")
}

// planRouting returns the ops that delete mpfleet's rules (first) and
// routes of st: those of its range that carry route.Protocol. Foreign ones
// are not in st.Rules and st.Routes, and so stay.
func planRouting(st reconcile.State) reconcile.Ops {
	var ops reconcile.Ops
	rules := slices.Clone(st.Rules)
	route.SortRules(rules)
	for _, r := range rules {
		ops = append(ops, reconcile.Op{Kind: reconcile.DelRule, Rule: &r})
	}
	routes := slices.Clone(st.Routes)
	route.SortRoutes(routes)
	for _, r := range routes {
		ops = append(ops, reconcile.Op{Kind: reconcile.DelRoute, Route: &r, Dev: st.Links[r.LinkIndex]})
	}
	return ops
}

// planRestore returns the ops that delete the endpoints of st that rec
// records as mpfleet's (but not those the kernel made itself), and set the
// limits and sysctls that rec holds the original values of back to them;
// and notes on what cannot be restored.
func planRestore(st reconcile.State, rec records) (reconcile.Ops, []string) {
	var ops reconcile.Ops
	var notes []string
	eps := explicitEndpoints(st.Endpoints)
	slices.SortFunc(eps, func(a, b mptcp.Endpoint) int { return a.Addr.Compare(b.Addr) })
	for _, e := range eps {
		if rec.owned[e.Addr] {
			ops = append(ops, reconcile.Op{Kind: reconcile.DelEndpoint, Endpoint: &e, Dev: st.Links[e.IfIndex]})
		}
	}
	if l := rec.orig.Limits; l != nil {
		want := mptcp.Limits{Subflows: l.Subflows, AddAddrAccepted: l.AddAddrAccepted}
		switch {
		case st.Limits == nil:
			notes = append(notes, "the kernel reports no limits: limits not restored")
		case *st.Limits != want:
			ops = append(ops, reconcile.Op{Kind: reconcile.SetLimits, Limits: &want, OldLimits: st.Limits})
		}
	}
	for _, name := range slices.Sorted(maps.Keys(rec.orig.Sysctls)) {
		want := reconcile.NormValue(rec.orig.Sysctls[name])
		var cur string
		var ok bool
		if name == reconcile.SysctlEnabled {
			if ok = st.Enabled != nil; ok {
				cur = "0"
				if *st.Enabled {
					cur = "1"
				}
			}
		} else {
			cur, ok = st.Sysctls[name]
		}
		switch {
		case !ok:
			notes = append(notes, fmt.Sprintf("sysctl %s: not in this kernel: not restored", name))
		case reconcile.NormValue(cur) != want:
			ops = append(ops, reconcile.Op{Kind: reconcile.SetSysctl, Sysctl: name, Value: want, Old: reconcile.NormValue(cur)})
		}
	}
	return ops, notes
}

// sysctlsToRead is the sysctls Kernel.Read must read for planRestore, as
// HostConfig.Sysctls names them (net.mptcp.enabled is always read).
func (rec records) sysctlsToRead() map[string]string {
	var m map[string]string
	for name := range rec.orig.Sysctls {
		if name == reconcile.SysctlEnabled {
			continue
		}
		if m == nil {
			m = map[string]string{}
		}
		m[name] = ""
	}
	return m
}
