package controller

import (
	"context"
	"sort"
	"strings"

	"github.com/mpfleet/mpfleet/internal/policy"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// PlanPolicy renders a group's policy (or a candidate) against each of its
// hosts' last reported facts and plans against what each last reported as
// applied — the same rendering and planning the agents run. Nothing is
// applied or written.
func (s *hostService) PlanPolicy(ctx context.Context, req *pb.PlanPolicyRequest) (*pb.PlanPolicyResponse, error) {
	id, err := groupID("group", req.GetGroup(), func(vs *policy.Violations) { policy.ValidatePolicy(vs, "policy", req.GetPolicy()) })
	if err != nil {
		return nil, err
	}
	g, err := s.c.store.GetGroup(ctx, id)
	if err != nil {
		return nil, toStatus(err)
	}
	p := req.GetPolicy()
	if p == nil {
		p = g.GetPolicy()
	}
	groups := s.c.cache.Groups()
	groups[id] = g
	hosts := s.c.cache.Hosts()
	ids := make([]string, 0, len(hosts))
	for hid, h := range hosts {
		if a := policy.Assign(groups, h.GetLabels()); len(a) == 1 && a[0] == id {
			ids = append(ids, hid)
		}
	}
	sort.Strings(ids)
	resp := &pb.PlanPolicyResponse{}
	for _, hid := range ids {
		resp.Hosts = append(resp.Hosts, planHost(hid, hosts[hid], p))
	}
	return resp, nil
}

func planHost(id string, h *pb.Host, p *pb.MultipathPolicy) *pb.HostPlan {
	hp := &pb.HostPlan{Host: store.HostName(id)}
	ifaces := policy.InterfacesFromFacts(h.GetFacts())
	r, err := policy.Render(p, ifaces)
	if err != nil {
		hp.Error = err.Error()
		return hp
	}
	for _, a := range r.Excluded {
		hp.ExcludedAddresses = append(hp.ExcludedAddresses, a.String())
	}
	actual := policy.StateFromApplied(h.GetApplied(), ifaces)
	assumeUnknownSysctls(r.Config, &actual, h.GetFacts())
	cfg, lacks := r.Config.WithoutUnsupported(actual)
	hp.Problems = policy.ProblemMessages(append(r.Problems, policy.SysctlProblems(lacks)...))
	ops, err := reconcile.Plan(cfg, actual)
	if err != nil {
		hp.Error = err.Error()
		return hp
	}
	hp.Operations = policy.OpsToProto(ops)
	return hp
}

// assumeUnknownSysctls fills in the sysctls a host has not reported (it
// reports only those its policy manages) so that the plan shows them being
// set: a sysctl the host's kernel has, per its facts, gets an unknown value;
// one it lacks stays absent, and planning says so.
func assumeUnknownSysctls(desired reconcile.HostConfig, actual *reconcile.State, facts *pb.HostFacts) {
	has := func(name string) bool {
		avail := facts.GetAvailableSysctls()
		if len(avail) == 0 {
			return true // an older agent: assume present
		}
		short := strings.TrimPrefix(name, "net.mptcp.")
		for _, a := range avail {
			if a == short || a == name {
				return true
			}
		}
		return false
	}
	if desired.Enabled != nil && actual.Enabled == nil && has(reconcile.SysctlEnabled) {
		v := !*desired.Enabled
		actual.Enabled = &v
	}
	for name := range desired.Sysctls {
		if _, ok := actual.Sysctls[name]; !ok && has(name) {
			if actual.Sysctls == nil {
				actual.Sysctls = map[string]string{}
			}
			actual.Sysctls[name] = "(unknown)"
		}
	}
}
