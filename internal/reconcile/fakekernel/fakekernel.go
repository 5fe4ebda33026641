// Package fakekernel is an in-memory reconcile.Kernel for tests, held to the
// real kernel's rules by the same conformance suite (kerneltest) as
// nlkernel.
package fakekernel

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"sync"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/route"
)

// Kernel is an in-memory reconcile.Kernel for tests. It enforces the rules of the
// real one that matter to a plan: at most mptcp.MaxEndpoints endpoints,
// unique endpoint addresses and IDs, in-place flag changes for backup and
// fullmesh only, limits up to mptcp.MaxLimit, no duplicate rules or routes,
// nothing outside the owned range, and missing objects on delete. It holds
// foreign rules and routes too (Load them from State.Foreign and
// State.ForeignRoutes, as if made by hand): a route where a foreign one has
// the table and destination is refused as the kernel refuses it, deletes
// never touch them (the real kernel matches route.Protocol), and only a
// legacy one may change its protocol (route.CheckAdoption). Errors
// match the same classes as the real kernel's (os.ErrExist,
// os.ErrNotExist, mptcp.ErrTooManyEndpoints, route.ErrOutOfRange...). A
// failure can be injected at any op. It is safe for concurrent use.
type Kernel struct {
	mu        sync.Mutex
	rng       route.Range
	sysctls   map[string]string
	limits    mptcp.Limits
	endpoints map[uint8]mptcp.Endpoint
	rules     map[route.Rule]bool
	routes    map[route.Key]route.Route
	foreign   []route.ForeignRule
	foreignRt []route.ForeignRoute
	links     map[int]string
	calls     int
	fail      func(n int, op reconcile.Op) error
}

// DefaultSysctls are the net.mptcp sysctls of a fresh Linux 6.18
// namespace, which New starts with.
var DefaultSysctls = map[string]string{
	reconcile.SysctlEnabled:                     "1",
	"net.mptcp.add_addr_timeout":                "120",
	"net.mptcp.allow_join_initial_addr_port":    "1",
	"net.mptcp.blackhole_timeout":               "3600",
	"net.mptcp.checksum_enabled":                "0",
	"net.mptcp.close_timeout":                   "60",
	"net.mptcp.path_manager":                    "kernel",
	"net.mptcp.pm_type":                         "0",
	"net.mptcp.scheduler":                       "default",
	"net.mptcp.stale_loss_cnt":                  "4",
	"net.mptcp.syn_retrans_before_tcp_fallback": "2",
}

// New returns a fake namespace as a fresh one looks: MPTCP enabled
// with the default sysctls, limits subflows 2 add_addr_accepted 0, no
// endpoints, no owned rules or routes, and only "lo" (index 1). A zero rng
// means route.DefaultRange.
func New(rng route.Range) *Kernel {
	if rng == (route.Range{}) {
		rng = route.DefaultRange
	}
	return &Kernel{
		rng:       rng,
		sysctls:   maps.Clone(DefaultSysctls),
		limits:    mptcp.Limits{Subflows: 2},
		endpoints: map[uint8]mptcp.Endpoint{},
		rules:     map[route.Rule]bool{},
		routes:    map[route.Key]route.Route{},
		links:     map[int]string{1: "lo"},
	}
}

// DropSysctl makes the fake a kernel that lacks the sysctl (full name), as
// an older one does.
func (f *Kernel) DropSysctl(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.sysctls, name)
}

// SetLinks replaces the interface names the fake reports.
func (f *Kernel) SetLinks(links map[int]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.links = maps.Clone(links)
}

// Load puts s into the fake as if someone had configured it by hand: its
// endpoints, rules and routes are added, its limits, Enabled and sysctls set
// (sysctls it does not name keep their values). It does not count as ops and
// never fails by injection; it fails if s breaks the kernel's rules.
func (f *Kernel) Load(s reconcile.State) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s.Enabled != nil {
		f.sysctls[reconcile.SysctlEnabled] = boolValue(*s.Enabled)
	}
	for k, v := range s.Sysctls {
		f.sysctls[k] = v
	}
	if s.Limits != nil {
		if _, err := f.do(reconcile.Op{Kind: reconcile.SetLimits, Limits: s.Limits}); err != nil {
			return err
		}
	}
	for _, e := range s.Endpoints {
		if _, err := f.do(reconcile.Op{Kind: reconcile.AddEndpoint, Endpoint: ptr(e)}); err != nil {
			return err
		}
	}
	for _, r := range s.Rules {
		if _, err := f.do(reconcile.Op{Kind: reconcile.AddRule, Rule: ptr(r)}); err != nil {
			return err
		}
	}
	for _, r := range s.Routes {
		if _, err := f.do(reconcile.Op{Kind: reconcile.AddRoute, Route: ptr(r)}); err != nil {
			return err
		}
	}
	for _, x := range s.Foreign {
		if !f.rng.OverlapsRule(x.Rule) {
			return fmt.Errorf("foreign rule %v: %w", x, route.ErrOutOfRange)
		}
		x.Rule = x.Canonical()
		f.foreign = append(f.foreign, x)
	}
	for _, x := range s.ForeignRoutes {
		if !f.rng.HasTable(x.Table) {
			return fmt.Errorf("foreign route %v: %w", x, route.ErrOutOfRange)
		}
		x.Route = x.Canonical()
		if x.Metric == 0 && f.routeHeld(x.Key()) {
			return fmt.Errorf("foreign route %v: %w", x, os.ErrExist)
		}
		f.foreignRt = append(f.foreignRt, x)
	}
	if s.Links != nil {
		f.links = maps.Clone(s.Links)
	}
	return nil
}

// ClearForeign removes every foreign rule and route, as their owner would.
func (f *Kernel) ClearForeign() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.foreign, f.foreignRt = nil, nil
}

// FailOn makes Do call fn before each op, n counting Do calls from 1 (undo
// ops included) since FailOn; a non-nil result fails the op unapplied.
// FailOn(nil) stops the injection.
func (f *Kernel) FailOn(fn func(n int, op reconcile.Op) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = fn
	f.calls = 0
}

// FailAt makes the n-th Do call from now fail with err.
func (f *Kernel) FailAt(n int, err error) {
	f.FailOn(func(i int, _ reconcile.Op) error {
		if i == n {
			return err
		}
		return nil
	})
}

// Calls returns how many Do calls were made since New or FailOn.
func (f *Kernel) Calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// Snapshot returns the whole state, every sysctl included.
func (f *Kernel) Snapshot() reconcile.State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.read(slices.Collect(maps.Keys(f.sysctls)))
}

// Read implements reconcile.Kernel.
func (f *Kernel) Read(ctx context.Context, desired reconcile.HostConfig) (reconcile.State, error) {
	if err := ctx.Err(); err != nil {
		return reconcile.State{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.read(desired.SysctlNames()), nil
}

func (f *Kernel) read(sysctls []string) reconcile.State {
	s := reconcile.State{
		Enabled: ptr(f.sysctls[reconcile.SysctlEnabled] == "1"),
		Limits:  ptr(f.limits),
		Sysctls: map[string]string{},
		Links:   maps.Clone(f.links),
	}
	for _, id := range slices.Sorted(maps.Keys(f.endpoints)) {
		s.Endpoints = append(s.Endpoints, f.endpoints[id])
	}
	for _, n := range sysctls {
		if v, ok := f.sysctls[n]; ok {
			s.Sysctls[n] = v
		}
	}
	s.Rules = slices.Collect(maps.Keys(f.rules))
	route.SortRules(s.Rules)
	s.Routes = slices.Collect(maps.Values(f.routes))
	route.SortRoutes(s.Routes)
	if len(f.foreign) > 0 {
		s.Foreign = slices.Clone(f.foreign)
		route.SortForeignRules(s.Foreign)
	}
	if len(f.foreignRt) > 0 {
		s.ForeignRoutes = slices.Clone(f.foreignRt)
		route.SortForeignRoutes(s.ForeignRoutes)
	}
	return s
}

// routeHeld reports whether a route of mpfleet's, or a foreign one with
// metric 0, has key k: the kernel refuses another there.
func (f *Kernel) routeHeld(k route.Key) bool {
	if _, ok := f.routes[k]; ok {
		return true
	}
	for _, x := range f.foreignRt {
		if x.Key() == k && x.Metric == 0 {
			return true
		}
	}
	return false
}

// Do implements reconcile.Kernel.
func (f *Kernel) Do(ctx context.Context, op reconcile.Op) (reconcile.Op, error) {
	if err := ctx.Err(); err != nil {
		return reconcile.Op{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	var undo reconcile.Op
	err := f.injected(op)
	if err == nil {
		undo, err = f.do(op)
	}
	if err != nil {
		return reconcile.Op{}, fmt.Errorf("fake kernel: %s: %w", op, err)
	}
	return undo, nil
}

// injected is the failure injected into this call, if any.
func (f *Kernel) injected(op reconcile.Op) error {
	if f.fail == nil {
		return nil
	}
	return f.fail(f.calls, op)
}

func (f *Kernel) do(op reconcile.Op) (reconcile.Op, error) {
	if err := op.Check(); err != nil {
		return reconcile.Op{}, err
	}
	undo := op
	switch op.Kind {
	case reconcile.SetSysctl:
		old, ok := f.sysctls[op.Sysctl]
		if !ok {
			return reconcile.Op{}, mptcp.ErrSysctlUnsupported
		}
		if op.Sysctl == reconcile.SysctlEnabled && op.Value != "0" && op.Value != "1" {
			return reconcile.Op{}, mptcp.ErrInvalid
		}
		f.sysctls[op.Sysctl] = reconcile.NormValue(op.Value)
		undo.Value, undo.Old = old, op.Value
	case reconcile.SetLimits:
		if op.Limits.Subflows > mptcp.MaxLimit || op.Limits.AddAddrAccepted > mptcp.MaxLimit {
			return reconcile.Op{}, fmt.Errorf("limit greater than maximum: %w", mptcp.ErrInvalid)
		}
		undo.Limits, undo.OldLimits = ptr(f.limits), ptr(*op.Limits)
		f.limits = *op.Limits
	case reconcile.AddEndpoint:
		e := *op.Endpoint
		if err := e.Validate(); err != nil {
			return reconcile.Op{}, err
		}
		for _, x := range f.endpoints {
			if x.Addr == e.Addr {
				return reconcile.Op{}, mptcp.ErrEndpointExists
			}
		}
		if len(f.endpoints) >= mptcp.MaxEndpoints {
			return reconcile.Op{}, mptcp.ErrTooManyEndpoints
		}
		if e.ID == 0 {
			for e.ID = 1; f.endpoints[e.ID].Addr.IsValid(); e.ID++ {
			}
		} else if _, dup := f.endpoints[e.ID]; dup {
			return reconcile.Op{}, mptcp.ErrEndpointExists
		}
		f.endpoints[e.ID] = e
		undo.Kind, undo.Endpoint = reconcile.DelEndpoint, ptr(e)
	case reconcile.DelEndpoint:
		e, ok := f.endpoints[op.Endpoint.ID]
		if !ok {
			return reconcile.Op{}, mptcp.ErrEndpointNotFound
		}
		delete(f.endpoints, e.ID)
		undo.Kind, undo.Endpoint = reconcile.AddEndpoint, ptr(e)
	case reconcile.SetEndpointFlags:
		e, ok := f.endpoints[op.Endpoint.ID]
		if !ok {
			return reconcile.Op{}, mptcp.ErrEndpointNotFound
		}
		if (e.Flags^op.Flags)&^(mptcp.MutableFlags|mptcp.FlagImplicit) != 0 {
			return reconcile.Op{}, mptcp.ErrFlagsImmutable
		}
		if op.Flags&mptcp.FlagFullmesh != 0 && e.Flags&(mptcp.FlagSignal|mptcp.FlagImplicit) != 0 {
			return reconcile.Op{}, mptcp.ErrInvalid
		}
		n := e
		n.Flags = e.Flags&^mptcp.MutableFlags | op.Flags&mptcp.MutableFlags
		f.endpoints[e.ID] = n
		undo.Endpoint, undo.Flags = ptr(n), e.Flags
	case reconcile.AddRule, reconcile.DelRule:
		if err := f.rng.CheckRule(*op.Rule); err != nil {
			return reconcile.Op{}, err
		}
		r := op.Rule.Canonical()
		if op.Kind == reconcile.AddRule {
			if f.rules[r] {
				return reconcile.Op{}, os.ErrExist
			}
			f.rules[r] = true
			undo.Kind = reconcile.DelRule
		} else {
			if !f.rules[r] {
				return reconcile.Op{}, os.ErrNotExist
			}
			delete(f.rules, r)
			undo.Kind = reconcile.AddRule
		}
		undo.Rule = ptr(r)
	case reconcile.AddRoute, reconcile.DelRoute:
		if err := f.rng.CheckRoute(*op.Route); err != nil {
			return reconcile.Op{}, err
		}
		r := op.Route.Canonical()
		cur, ok := f.routes[r.Key()]
		if op.Kind == reconcile.AddRoute {
			if f.routeHeld(r.Key()) {
				return reconcile.Op{}, os.ErrExist
			}
			f.routes[r.Key()] = r
			undo.Kind = reconcile.DelRoute
		} else {
			if !ok || cur != r {
				return reconcile.Op{}, os.ErrNotExist
			}
			delete(f.routes, r.Key())
			undo.Kind = reconcile.AddRoute
		}
		undo.Route = ptr(r)
	case reconcile.SetRuleProtocol:
		r := op.Rule.Canonical()
		undo.Rule, undo.Protocol, undo.OldProtocol = &r, op.OldProtocol, op.Protocol
		return undo, f.setRuleProtocol(*op.Rule, op.OldProtocol, op.Protocol)
	case reconcile.SetRouteProtocol:
		r := op.Route.Canonical()
		undo.Route, undo.Protocol, undo.OldProtocol = &r, op.OldProtocol, op.Protocol
		return undo, f.setRouteProtocol(*op.Route, op.OldProtocol, op.Protocol)
	}
	return undo, nil
}

// setRuleProtocol moves rule x between mpfleet's and the foreign ones, as
// routenl.Manager.SetRuleProtocol does: the one with protocol from must be
// there and none with to; adopted from unspec, it must be alone among the
// foreign rules with its priority, source and table.
func (f *Kernel) setRuleProtocol(x route.Rule, from, to route.Proto) error {
	if err := cmp.Or(f.rng.CheckRule(x), route.CheckAdoption(from, to, route.LegacyRuleProtocol)); err != nil {
		return err
	}
	r := x.Canonical()
	idx, others := -1, 0
	for i, x := range f.foreign {
		switch {
		case x.Canonical() != r:
		case x.Plain() && x.Protocol == to:
			return os.ErrExist
		case x.Plain() && x.Protocol == from && idx < 0:
			idx = i
		default:
			others++
		}
	}
	if from == route.Protocol {
		if !f.rules[r] {
			return os.ErrNotExist
		}
		delete(f.rules, r)
		f.foreign = append(f.foreign, route.ForeignRule{Rule: r, Protocol: to})
		return nil
	}
	switch {
	case f.rules[r]:
		return os.ErrExist
	case idx < 0:
		return os.ErrNotExist
	case others > 0 && from == route.ProtoUnspec:
		return route.ErrConflict
	}
	f.foreign = slices.Delete(f.foreign, idx, idx+1)
	f.rules[r] = true
	return nil
}

// setRouteProtocol moves route x between mpfleet's and the foreign ones, as
// routenl.Manager.SetRouteProtocol does: the table's route to x.Dst must be
// exactly x with protocol from.
func (f *Kernel) setRouteProtocol(x route.Route, from, to route.Proto) error {
	if err := cmp.Or(f.rng.CheckRoute(x), route.CheckAdoption(from, to, route.LegacyRouteProtocol)); err != nil {
		return err
	}
	r := x.Canonical()
	if from == route.Protocol {
		if cur, ok := f.routes[r.Key()]; !ok || cur != r {
			return os.ErrNotExist
		}
		delete(f.routes, r.Key())
		f.foreignRt = append(f.foreignRt, route.ForeignRoute{Route: r, Protocol: to, Type: route.TypeUnicast})
		return nil
	}
	if _, ok := f.routes[r.Key()]; ok {
		return os.ErrNotExist
	}
	idx := -1
	for i, x := range f.foreignRt {
		if x.Key() != r.Key() || x.Type != route.TypeUnicast {
			continue
		}
		if x.Route != r || x.Protocol != from || !x.Plain() || idx >= 0 {
			return os.ErrNotExist
		}
		idx = i
	}
	if idx < 0 {
		return os.ErrNotExist
	}
	f.foreignRt = slices.Delete(f.foreignRt, idx, idx+1)
	f.routes[r.Key()] = r
	return nil
}

var _ reconcile.Kernel = (*Kernel)(nil)

func boolValue(v bool) string {
	if v {
		return "1"
	}
	return "0"
}

func ptr[T any](v T) *T { return &v }
