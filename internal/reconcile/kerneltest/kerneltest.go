// Package kerneltest is the conformance suite of reconcile.Kernel: one set of
// scenarios (convergence through a table of states, rollback at every step,
// the kernel's refusals, foreign and legacy entries) that Run plays against
// any implementation. nlkernel's tests run it against the real kernel in
// throwaway network namespaces, fakekernel's against the fake, so that the
// fake the other packages test with behaves as the kernel does.
package kerneltest

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/route"
)

// Link is one interface of a Namespace, with an IPv4 and an IPv6 address. The
// gateway of each subnet is its first address (Gateway); OtherGateway is a
// second router on it.
type Link struct {
	Name   string
	Index  int
	V4, V6 netip.Prefix
}

// Addrs are the addresses of a Namespace's i-th link (from 0):
// 198.18.(10+i).2/24 and 2001:db8:(10+i)::2/64.
func Addrs(i int) (v4, v6 netip.Prefix) {
	return netip.MustParsePrefix(fmt.Sprintf("198.18.%d.2/24", 10+i)),
		netip.MustParsePrefix(fmt.Sprintf("2001:db8:%d::2/64", 10+i))
}

// Source returns the policy routing of the link's address of one family, with
// its gateway, in table and priority 7100+n.
func (l Link) Source(v6 bool, n int) route.Source {
	p := l.V4
	if v6 {
		p = l.V6
	}
	return route.Source{Addr: p, LinkIndex: l.Index, Gateway: Gateway(p), Table: 7100 + n, Priority: 7100 + n}
}

// Gateway is the gateway of p's subnet: .1 or ::1.
func Gateway(p netip.Prefix) netip.Addr { return hostAddr(p, 1) }

// OtherGateway is a second router in p's subnet: .254 or ::fe.
func OtherGateway(p netip.Prefix) netip.Addr { return hostAddr(p, 0xfe) }

func hostAddr(p netip.Prefix, last byte) netip.Addr {
	if p.Addr().Is4() {
		a := p.Masked().Addr().As4()
		a[3] = last
		return netip.AddrFrom4(a)
	}
	a := p.Masked().Addr().As16()
	a[15] = last
	return netip.AddrFrom16(a)
}

// Namespace is a Kernel under test and the network namespace it manages, with
// ways to act and look behind the Kernel's back.
type Namespace interface {
	// Kernel is the Kernel under test, managing the default route.Range.
	Kernel() reconcile.Kernel
	// Links are the namespace's interfaces, as many as were asked for. The
	// subnets are on-link; nothing else is on them.
	Links() []Link
	// Load puts s into the namespace as someone configuring it by hand
	// would: its endpoints, with their IDs, and its foreign rules and routes
	// with their protocols and types. s holds nothing else.
	Load(t testing.TB, s reconcile.State)
	// Snapshot renders everything in the namespace that a reconcile could
	// change, owned or not (every net.mptcp sysctl, the limits, the
	// endpoints with their IDs, the rules and routes): two snapshots are
	// equal when nothing changed.
	Snapshot(t testing.TB) string
	// Outside renders what the namespace holds outside the default
	// route.Range, which no reconcile may change.
	Outside(t testing.TB) string
	// InRange lists the rules and routes in the default route.Range, read
	// behind the Kernel's back, one a line ending in " proto N" (its routing
	// protocol number).
	InRange(t testing.TB) []string
}

// Opener returns a new Namespace with n links (at most 4), removed when t
// ends.
type Opener func(t *testing.T, n int) Namespace

// scenario is one test of the suite.
type scenario struct {
	name string
	run  func(t *testing.T, open Opener)
}

// scenarios are the suite, in the order Run runs them.
var scenarios = []scenario{
	{"RouterStates", testRouterStates},
	{"DryRunNamesInterfaces", testDryRunNamesInterfaces},
	{"OutsideRangeRefused", testOutsideRangeRefused},
	{"KernelRules", testKernelRules},
	{"FailureAtEachStepRestores", testFailureAtEachStepRestores},
	{"NinthEndpointRollsBack", testNinthEndpointRollsBack},
	{"ForeignEntries", testForeignEntries},
	{"ForeignSurvives", testForeignSurvives},
	{"AdoptsLegacy", testAdoptsLegacy},
}

// Run runs every scenario as a subtest of t, each on a new Namespace from
// open.
func Run(t *testing.T, open Opener) {
	for _, s := range scenarios {
		t.Run(s.name, func(t *testing.T) { s.run(t, open) })
	}
}

// WithSources returns c with, for each source, an endpoint with flags f on
// its link and its rule and routes.
func WithSources(c reconcile.HostConfig, f mptcp.Flags, srcs ...route.Source) reconcile.HostConfig {
	for _, s := range srcs {
		c.Endpoints = append(c.Endpoints, mptcp.Endpoint{Addr: s.Addr.Addr(), Flags: f, IfIndex: s.LinkIndex})
		c.Rules = append(c.Rules, s.Rule())
		c.Routes = append(c.Routes, s.Routes()...)
	}
	return c
}

// WantState is what the kernel should hold after applying desired on top of
// base: desired's managed fields, base's for the unmanaged ones (foreign
// rules and routes included).
func WantState(desired reconcile.HostConfig, base reconcile.State) reconcile.State {
	s := reconcile.State{
		Enabled: base.Enabled, Limits: base.Limits,
		Endpoints: slices.Clone(desired.Endpoints),
		Sysctls:   map[string]string{},
		Rules:     desired.Rules, Routes: desired.Routes,
		Foreign: base.Foreign, ForeignRoutes: base.ForeignRoutes,
	}
	if desired.Enabled != nil {
		s.Enabled = desired.Enabled
	}
	if desired.Limits != nil {
		s.Limits = desired.Limits
	}
	for k, v := range desired.Sysctls {
		s.Sysctls[k] = v
	}
	return s
}

// Text renders s for comparison, endpoint IDs left out unless withIDs.
func Text(s reconcile.State, withIDs bool) string {
	if !withIDs {
		s.Endpoints = slices.Clone(s.Endpoints)
		for i := range s.Endpoints {
			s.Endpoints[i].ID = 0
		}
		slices.SortFunc(s.Endpoints, func(a, b mptcp.Endpoint) int { return a.Addr.Compare(b.Addr) })
	}
	return s.String()
}

// Reconcile reads, plans and applies desired through k; it returns the plan
// and Apply's error.
func Reconcile(t testing.TB, k reconcile.Kernel, desired reconcile.HostConfig) (reconcile.Ops, error) {
	t.Helper()
	_, ops := readPlan(t, k, desired)
	return ops, reconcile.Apply(context.Background(), k, ops)
}

// mustReconcile is Reconcile, failing the test on an error.
func mustReconcile(t testing.TB, k reconcile.Kernel, desired reconcile.HostConfig) {
	t.Helper()
	if ops, err := Reconcile(t, k, desired); err != nil {
		t.Fatalf("apply:\n%v\n%v", ops, err)
	}
}

// failingKernel fails the at-th Do with err.
type failingKernel struct {
	reconcile.Kernel
	n, at int
	err   error
}

func (f *failingKernel) Do(ctx context.Context, op reconcile.Op) (reconcile.Op, error) {
	f.n++
	if f.n == f.at {
		return reconcile.Op{}, f.err
	}
	return f.Kernel.Do(ctx, op)
}

// cmpOpts compare the netip types by value.
var cmpOpts = cmp.Options{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
}

func ptr[T any](v T) *T { return &v }
