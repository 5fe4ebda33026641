package agent

import (
	"fmt"
	"net/netip"

	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/route"
)

// protect drops from ops what could cut the agent off from its controller:
// deleting a rule whose source holds local (the address the controller
// connection leaves from) or a route in a table such a rule looks up, and
// adding a route that would need a dropped deletion first. It returns the
// ops to apply and one problem per op held back. An invalid local protects
// nothing.
func protect(ops reconcile.Ops, actual reconcile.State, local netip.Addr) (reconcile.Ops, []string) {
	if !local.IsValid() {
		return ops, nil
	}
	local = local.Unmap()
	tables := map[int]bool{}
	for _, r := range actual.Rules {
		if r.Src.Contains(local) {
			tables[r.Table] = true
		}
	}
	heldKeys := map[route.Key]bool{}
	held := make([]bool, len(ops))
	var problems []string
	for i, op := range ops {
		switch {
		case op.Kind == reconcile.DelRule && op.Rule != nil && op.Rule.Src.Contains(local):
			held[i] = true
		case op.Kind == reconcile.DelRoute && op.Route != nil && tables[op.Route.Table]:
			held[i] = true
			heldKeys[op.Route.Key()] = true
		}
	}
	for i, op := range ops {
		if op.Kind == reconcile.AddRoute && op.Route != nil && heldKeys[op.Route.Key()] {
			held[i] = true
		}
	}
	keep := make(reconcile.Ops, 0, len(ops))
	for i, op := range ops {
		if held[i] {
			problems = append(problems, fmt.Sprintf("held back %q: the connection to the controller leaves from %s", op.String(), local))
			continue
		}
		keep = append(keep, op)
	}
	return keep, problems
}
