package agent

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/mpfleet/mpfleet/internal/policy"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/route"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// Foreign rules and routes: a rule or route inside the policy's routing range
// that mpfleet did not make (it lacks route.Protocol) is left alone, kept
// apart from (reconcile.AvoidForeign moves an address's table and priority
// away from it) and reported as a CODE_ROUTING_CONFLICT problem, which makes
// the host DEGRADED until it is removed or the range moved.

// rangeFix is the fix every routing-conflict problem names.
const rangeFix = "remove it, or move mpfleet's range with routing.table_min/max and priority_min/max"

// movePaths returns paths with the tables reconcile.AvoidForeign moved them
// to (0 for a path whose routing found no room).
func movePaths(paths []policy.Path, moves []reconcile.Move) []policy.Path {
	if len(moves) == 0 {
		return paths
	}
	to := map[netip.Addr]int{}
	for _, m := range moves {
		for _, src := range m.Sources {
			to[src.Addr()] = m.NewTable
		}
	}
	out := slices.Clone(paths)
	for i, p := range out {
		if t, ok := to[p.Addr.Addr()]; ok && p.Table != 0 {
			out[i].Table = t
		}
	}
	return out
}

// conflictProblems returns a CODE_ROUTING_CONFLICT problem for each foreign
// rule and route of actual (those cfg adopts aside), saying what it is, what
// of rng it holds, which addresses moved away from it, and the fix; and one
// for each address whose routing found no free table and priority.
func conflictProblems(cfg reconcile.HostConfig, actual reconcile.State, rng route.Range, moves []reconcile.Move, paths []policy.Path) []*pb.HostProblem {
	conflicts := reconcile.Conflicts(cfg, actual)
	if len(conflicts) == 0 {
		return nil
	}
	ifName := map[netip.Addr]string{}
	for _, p := range paths {
		ifName[p.Addr.Addr()] = p.IfName
	}
	var out []*pb.HostProblem
	for _, c := range conflicts {
		where := c.Where(rng)
		msg := fmt.Sprintf("%s holds %s of mpfleet's routing range (%v) but was not made by mpfleet (it lacks proto %d, mpfleet's): it is left alone, and mpfleet keeps its own rules and routes out of %s",
			c, where, rng, route.Protocol, where)
		for _, m := range moves {
			if m.Dropped() || m.Because.By.String() != c.String() {
				continue
			}
			for _, src := range m.Sources {
				msg += fmt.Sprintf("; %s uses table %d and priority %d instead of %d and %d", src.Addr(), m.NewTable, m.NewPriority, m.Table, m.Priority)
			}
		}
		out = append(out, &pb.HostProblem{Code: pb.HostProblem_CODE_ROUTING_CONFLICT, Message: msg + " (" + rangeFix + ")"})
	}
	for _, m := range moves {
		if !m.Dropped() {
			continue
		}
		for _, src := range m.Sources {
			a := src.Addr()
			out = append(out, &pb.HostProblem{
				Code: pb.HostProblem_CODE_ROUTING_CONFLICT, Interface: ifName[a], Address: a.String(),
				Message: fmt.Sprintf("%s on %s gets no policy routing: %v, and no other table and priority of mpfleet's routing range (%v) is free (%s)",
					a, ifName[a], m.Because, rng, rangeFix),
			})
		}
	}
	return out
}
