package fakekernel_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/reconcile/fakekernel"
	"github.com/mpfleet/mpfleet/internal/reconcile/kerneltest"
	"github.com/mpfleet/mpfleet/internal/route"
)

// fakeNS is a kerneltest.Namespace that is only a fake kernel: its links
// are names, and it holds nothing outside its range.
type fakeNS struct {
	k     *fakekernel.Kernel
	links []kerneltest.Link
}

// open makes a fake namespace with n links named as the real lab's
// (veth1...) at indexes 2..n+1.
func open(_ *testing.T, n int) kerneltest.Namespace {
	ns := &fakeNS{k: fakekernel.New(route.Range{})}
	names := map[int]string{1: "lo"}
	for i := range n {
		l := kerneltest.Link{Name: fmt.Sprintf("veth%d", i+1), Index: i + 2}
		l.V4, l.V6 = kerneltest.Addrs(i)
		ns.links = append(ns.links, l)
		names[l.Index] = l.Name
	}
	ns.k.SetLinks(names)
	return ns
}

func (ns *fakeNS) Kernel() reconcile.Kernel   { return ns.k }
func (ns *fakeNS) Links() []kerneltest.Link   { return ns.links }
func (ns *fakeNS) Outside(testing.TB) string  { return "" }
func (ns *fakeNS) Snapshot(testing.TB) string { return ns.k.Snapshot().String() }
func (ns *fakeNS) Load(t testing.TB, s reconcile.State) {
	t.Helper()
	if err := ns.k.Load(s); err != nil {
		t.Fatalf("load fake: %v", err)
	}
}

// InRange renders the fake's rules and routes with their protocols: its own
// carry route.Protocol.
func (ns *fakeNS) InRange(testing.TB) []string {
	s := ns.k.Snapshot()
	var out []string
	for _, r := range s.Rules {
		out = append(out, fmt.Sprintf("rule %v proto %d", r, route.Protocol))
	}
	for _, r := range s.Foreign {
		out = append(out, fmt.Sprintf("rule %v proto %d", r.Rule, r.Protocol))
	}
	for _, r := range s.Routes {
		out = append(out, fmt.Sprintf("route %v proto %d", r, route.Protocol))
	}
	for _, r := range s.ForeignRoutes {
		out = append(out, fmt.Sprintf("route %v type %d proto %d", r.Route, r.Type, r.Protocol))
	}
	slices.Sort(out)
	return out
}

// TestConformance holds the fake to the suite the real kernel passes
// (nlkernel's TestIntegrationConformance).
func TestConformance(t *testing.T) {
	kerneltest.Run(t, open)
}
