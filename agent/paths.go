package agent

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/mpfleet/mpfleet/internal/policy"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Paths: every endpoint address the policy manages, on its interface, is a
// path. The loop checks what it can at once on every reconcile (the link is
// up, a gateway is known); the prober checks the rest on each probe's
// interval and right after every apply (the kernel's route lookup from the
// address to each probe target leaves by the path's interface, and an MPTCP
// connection from the address reaches the target). Results flow back to the
// loop, which turns them into MptcpHealth.paths and HostProblems, and reports
// at once when a path's state changes.

// pathKey names one path.
type pathKey struct {
	addr  netip.Addr
	index int
}

// probeTarget is one probe of the policy, its defaults filled in.
type probeTarget struct {
	addr     netip.AddrPort
	interval time.Duration
	timeout  time.Duration
}

// probeTargets returns the policy's probes; ones that do not parse are left
// out (the policy was validated).
func probeTargets(ps []*pb.Probe) []probeTarget {
	var out []probeTarget
	for _, p := range ps {
		ap, err := policy.ParseProbeAddress(p.GetAddress())
		if err != nil {
			continue
		}
		iv, to := policy.ProbeTimes(p)
		out = append(out, probeTarget{addr: ap, interval: iv, timeout: to})
	}
	return out
}

// probePath is a path as the prober needs it.
type probePath struct {
	key pathKey
	up  bool
}

// probeSpec is what the prober probes: the paths that are up, and the
// targets. Gen is the loop's probe generation when it was handed over: the
// loop bumps it before every apply, so that a round begun against the kernel
// as it was before is told apart and dropped.
type probeSpec struct {
	paths   []probePath
	targets []probeTarget
	gen     uint64
}

func (s probeSpec) equal(o probeSpec) bool {
	return slices.Equal(s.paths, o.paths) && slices.Equal(s.targets, o.targets) && s.gen == o.gen
}

// probeOutcome is one probe of one path against one target.
type probeOutcome struct {
	path   pathKey
	target netip.AddrPort
	res    ProbeResult
	at     time.Time
	gen    uint64 // of the spec the round began with
}

// prober runs the probes of the current spec, each target on its interval,
// all of them at once when the spec changes or the loop asks, and hands the
// outcomes of each round to the loop.
type prober struct {
	sys System

	mu    sync.Mutex
	spec  probeSpec
	specC chan struct{} // cap 1: spec changed
	nowC  chan struct{} // cap 1: probe everything now

	out chan []probeOutcome

	ev eventChecks // paths MPTCP events ask to check (pathevents.go)
}

func newProber(sys System) *prober {
	return &prober{sys: sys, specC: make(chan struct{}, 1), nowC: make(chan struct{}, 1), out: make(chan []probeOutcome, 1), ev: newEventChecks()}
}

// set replaces the spec; a changed one is probed at once.
func (p *prober) set(s probeSpec) {
	p.mu.Lock()
	same := p.spec.equal(s)
	p.spec = s
	p.mu.Unlock()
	if !same {
		signal(p.specC)
	}
}

// now asks for every target to be probed at once.
func (p *prober) now() { signal(p.nowC) }

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func (p *prober) run(ctx context.Context) {
	var (
		spec   probeSpec
		events eventRounds
	)
	next := map[netip.AddrPort]time.Time{} // when each target is due
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		all := false
		var asked map[netip.Addr]bool
		select {
		case <-ctx.Done():
			return
		case <-p.specC:
			p.mu.Lock()
			spec = p.spec
			p.mu.Unlock()
			all = true
		case <-p.nowC:
			all = true
		case <-p.ev.c:
			asked = p.takeEventChecks()
		case <-timer.C:
		}
		now := time.Now()
		var due []probeTarget
		for _, t := range spec.targets {
			if all || !now.Before(next[t.addr]) {
				due = append(due, t)
				next[t.addr] = now.Add(t.interval)
			}
		}
		var outs []probeOutcome
		if len(due) > 0 && len(spec.paths) > 0 {
			outs = p.round(ctx, spec.paths, due, spec.gen)
		}
		// Paths that MPTCP events asked to check, against every target.
		if checks := events.due(spec, asked, now); len(checks) > 0 && len(spec.targets) > 0 {
			outs = append(outs, p.round(ctx, checks, spec.targets, spec.gen)...)
		}
		if len(outs) > 0 {
			select {
			case p.out <- outs:
			case <-ctx.Done():
				return
			}
		}
		// Sleep until the next target, or deferred event check, is due.
		wait := events.next(time.Now())
		for _, t := range spec.targets {
			wait = min(wait, time.Until(next[t.addr]))
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(max(wait, 0))
	}
}

// round probes every path that is up against every due target of its
// family, all at once, and returns when each probe has ended.
func (p *prober) round(ctx context.Context, paths []probePath, due []probeTarget, gen uint64) []probeOutcome {
	var (
		mu   sync.Mutex
		outs []probeOutcome
		wg   sync.WaitGroup
	)
	for _, pp := range paths {
		if !pp.up {
			continue
		}
		for _, t := range due {
			if pp.key.addr.Is4() != t.addr.Addr().Is4() {
				continue
			}
			wg.Go(func() {
				res := p.sys.Probe(ctx, pp.key.addr, pp.key.index, t.addr, t.timeout)
				mu.Lock()
				outs = append(outs, probeOutcome{path: pp.key, target: t.addr, res: res, at: time.Now(), gen: gen})
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	return outs
}

// pathResults are the latest probe outcomes of each path, by target.
type pathResults map[pathKey]map[netip.AddrPort]probeOutcome

// merge takes a round's outcomes, for the paths that still exist, unless
// the round began before the kernel last changed (gen is not the current
// one).
func (r pathResults) merge(outs []probeOutcome, paths []policy.Path, gen uint64) {
	live := map[pathKey]bool{}
	for _, p := range paths {
		live[pathKey{p.Addr.Addr(), p.IfIndex}] = p.Up
	}
	for _, o := range outs {
		if !live[o.path] || o.gen != gen {
			continue // gone or down since the round began, or a stale round
		}
		if r[o.path] == nil {
			r[o.path] = map[netip.AddrPort]probeOutcome{}
		}
		r[o.path][o.target] = o
	}
}

// forget drops the outcomes of paths that are gone or down (a link that
// comes back is probed anew, not judged by what it did before), and of
// targets no longer probed.
func (r pathResults) forget(paths []policy.Path, targets []probeTarget) {
	keep := map[pathKey]bool{}
	for _, p := range paths {
		if p.Up {
			keep[pathKey{p.Addr.Addr(), p.IfIndex}] = true
		}
	}
	tset := map[netip.AddrPort]bool{}
	for _, t := range targets {
		tset[t.addr] = true
	}
	for k, m := range r {
		if !keep[k] {
			delete(r, k)
			continue
		}
		for a := range m {
			if !tset[a] {
				delete(m, a)
			}
		}
	}
}

// pathStatuses judges each path from the render, the probes and their
// latest outcomes: LINK_DOWN, NO_GATEWAY, then (with probes of its family)
// FAILED on the first target whose route lookup leaves by another interface
// (CODE_ROUTING_CONFLICT), whose connection failed (CODE_PATH_FAILED) or fell
// back to TCP (CODE_MPTCP_FALLBACK), OK when every target answered over
// MPTCP, UNPROBED without probes of its family or before the first. It
// returns the statuses and the problems of the paths that are not OK
// (NO_GATEWAY's problem comes from the render).
func pathStatuses(paths []policy.Path, targets []probeTarget, results pathResults, names map[int]string, now time.Time) ([]*pb.PathStatus, []*pb.HostProblem) {
	var (
		out      []*pb.PathStatus
		problems []*pb.HostProblem
	)
	for _, p := range paths {
		addr := p.Addr.Addr()
		ps := &pb.PathStatus{Interface: p.IfName, Address: addr.String(), Table: uint32(p.Table)}
		if p.Gateway.IsValid() {
			ps.Gateway = p.Gateway.String()
		}
		problem := func(code pb.HostProblem_Code, msg string) {
			problems = append(problems, &pb.HostProblem{Code: code, Interface: p.IfName, Address: addr.String(), Message: msg})
		}
		out = append(out, ps)
		var fam []probeTarget
		for _, t := range targets {
			if t.addr.Addr().Is4() == addr.Is4() {
				fam = append(fam, t)
			}
		}
		switch {
		case !p.Up:
			ps.State = pb.PathState_PATH_STATE_LINK_DOWN
			ps.Message = p.IfName + " is down"
			ps.LastCheckTime = timestamppb.New(now)
			problem(pb.HostProblem_CODE_LINK_DOWN, fmt.Sprintf("%s is down, so %s carries no subflows until it is up again (check the cable, the switch port and `ip link show %s`)", p.IfName, addr, p.IfName))
			continue
		case p.Routed && !p.Gateway.IsValid():
			ps.State = pb.PathState_PATH_STATE_NO_GATEWAY
			ps.Message = "no gateway known: its table has no default route"
			ps.LastCheckTime = timestamppb.New(now)
			continue
		case len(fam) == 0:
			ps.State = pb.PathState_PATH_STATE_UNPROBED
			ps.LastCheckTime = timestamppb.New(now)
			if len(targets) == 0 {
				ps.Message = "link up and routed; the policy configures no probes"
			} else {
				ps.Message = "link up and routed; no probe target of its family"
			}
			continue
		}
		var (
			seen    int
			latency time.Duration
			last    time.Time
			failed  bool
		)
		for _, t := range fam {
			o, ok := results[pathKey{addr, p.IfIndex}][t.addr]
			if !ok {
				continue
			}
			seen++
			if o.at.After(last) {
				last = o.at
			}
			r := o.res
			var code pb.HostProblem_Code
			var msg, fix string
			switch {
			case r.RouteErr != nil:
				code, msg = pb.HostProblem_CODE_ROUTING_CONFLICT, fmt.Sprintf("no route from %s to probe %s: %v", addr, t.addr, r.RouteErr)
				fix = "check the routing of " + p.IfName
			case r.RouteLink != p.IfIndex:
				via := names[r.RouteLink]
				if via == "" {
					via = fmt.Sprintf("interface %d", r.RouteLink)
				}
				code, msg = pb.HostProblem_CODE_ROUTING_CONFLICT, fmt.Sprintf("the route from %s to probe %s leaves by %s, not %s", addr, t.addr, via, p.IfName)
				fix = "enable the policy's routing, or find the rule or route outside mpfleet's range that takes precedence (`ip rule`, `ip route get " + t.addr.Addr().String() + " from " + addr.String() + "`)"
			case r.DialErr != nil:
				code, msg = pb.HostProblem_CODE_PATH_FAILED, fmt.Sprintf("no MPTCP connection from %s to probe %s: %v", addr, t.addr, r.DialErr)
				fix = "check " + p.IfName + "'s gateway and the network beyond it, and that the probe target listens"
			case !r.MPTCP:
				code, msg = pb.HostProblem_CODE_MPTCP_FALLBACK, fmt.Sprintf("the connection from %s to probe %s fell back to plain TCP", addr, t.addr)
				fix = "a middlebox on the path strips MPTCP options, or the target does not speak MPTCP"
			default:
				latency = max(latency, r.Latency)
				continue
			}
			if !failed {
				failed = true
				ps.State = pb.PathState_PATH_STATE_FAILED
				ps.Message = truncate(msg, maxProblemMessage)
				problem(code, msg+" ("+fix+")")
			}
		}
		if seen > 0 {
			ps.LastCheckTime = timestamppb.New(last)
		}
		switch {
		case failed:
		case seen == 0:
			ps.State = pb.PathState_PATH_STATE_UNPROBED
			ps.Message = "not probed yet"
		default:
			ps.State = pb.PathState_PATH_STATE_OK
			ps.ProbeLatency = durationpb.New(latency)
			if seen < len(fam) {
				ps.Message = fmt.Sprintf("%d of %d probe targets checked so far", seen, len(fam))
			}
		}
	}
	return out, problems
}

// samePaths reports whether two path lists say the same, ignoring when they
// were checked and how long the probes took: a change is reported at once.
func samePaths(a, b []*pb.PathStatus) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := proto.Clone(a[i]).(*pb.PathStatus), proto.Clone(b[i]).(*pb.PathStatus)
		x.LastCheckTime, y.LastCheckTime, x.ProbeLatency, y.ProbeLatency = nil, nil, nil, nil
		if !proto.Equal(x, y) {
			return false
		}
	}
	return true
}
