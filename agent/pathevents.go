package agent

// MPTCP path-manager events serve the path checks: a subflow that closes
// with an error over a managed path, or one that is established over it,
// has the path probed at once rather than at the next probe interval, so a
// path that breaks (or comes back) under live traffic is reported within a
// probe's timeout.
//
// The prober's own probe connections make events too (their subflows, and
// the joins the path manager adds to them from the other endpoints): those
// are told apart by their connection's token, learnt from its CREATED or
// ESTABLISHED event, whose remote (or, accepted, local) address and port
// are a probe target. A path is checked at most once per eventCheckGap on
// events, so that a busy host's subflows do not turn into a probe storm;
// events within the gap make one check when it ends.

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/wait"
)

// PathEventer is a System that can follow the MPTCP path manager's events
// (NetlinkSystem does). With a System that cannot, paths are probed on
// each probe's interval and after every apply only.
type PathEventer interface {
	// PathEvents calls notify with every MPTCP path-manager event until ctx
	// ends, then returns ctx.Err(). mptcp.ErrUnsupported means the kernel
	// has no MPTCP events; any other error means the subscription broke,
	// and the caller subscribes again.
	PathEvents(ctx context.Context, notify func(mptcp.Event)) error
}

// eventCheckGap is the least time between two checks of one path that
// events ask for.
const eventCheckGap = time.Second

// maxProbeTokens bounds the probe connections remembered; past it (CLOSED
// events lost), they are forgotten.
const maxProbeTokens = 4096

// eventChecks is the prober's mailbox of path checks that events ask for.
type eventChecks struct {
	mu     sync.Mutex
	addrs  map[netip.Addr]bool // paths to check, by their address
	tokens map[uint32]bool     // connections of the prober's own probes
	c      chan struct{}       // cap 1: addrs has an address
}

func newEventChecks() eventChecks {
	return eventChecks{addrs: map[netip.Addr]bool{}, tokens: map[uint32]bool{}, c: make(chan struct{}, 1)}
}

// pathEventLoop follows the MPTCP events of the System, if it can, until
// ctx ends, subscribing again (after a pause growing to 30 s) when the
// subscription breaks.
func (a *Agent) pathEventLoop(ctx context.Context) {
	pe, ok := a.opts.System.(PathEventer)
	if !ok {
		return
	}
	pause := time.Second
	for {
		err := pe.PathEvents(ctx, a.prober.onEvent)
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, mptcp.ErrUnsupported):
			a.log.Debug("no MPTCP events: paths are checked on the probes' intervals only", "err", err)
			return
		}
		a.log.Warn("MPTCP event subscription broke; subscribing again", "err", err, "in", pause)
		if !wait.Sleep(ctx, pause) {
			return
		}
		pause = min(2*pause, 30*time.Second)
	}
}

// onEvent takes one MPTCP event: it remembers the prober's own connections
// and asks for a check of the managed path that a subflow closed with an
// error over, or was established over.
func (p *prober) onEvent(e mptcp.Event) {
	p.mu.Lock()
	spec := p.spec
	p.mu.Unlock()
	ev := &p.ev
	ev.mu.Lock()
	defer ev.mu.Unlock()
	switch e.Type {
	case mptcp.EventCreated, mptcp.EventEstablished:
		for _, t := range spec.targets {
			if t.addr == netip.AddrPortFrom(e.Daddr, e.Dport) || t.addr == netip.AddrPortFrom(e.Saddr, e.Sport) {
				if len(ev.tokens) >= maxProbeTokens {
					clear(ev.tokens)
				}
				ev.tokens[e.Token] = true
				return
			}
		}
	case mptcp.EventClosed:
		delete(ev.tokens, e.Token)
	case mptcp.EventSubEstablished, mptcp.EventSubClosed:
		if (e.Type == mptcp.EventSubClosed && e.Error == 0) || ev.tokens[e.Token] {
			return
		}
		for _, pp := range spec.paths {
			if pp.up && pp.key.addr == e.Saddr {
				ev.addrs[e.Saddr] = true
				signal(ev.c)
				return
			}
		}
	}
}

// takeEventChecks returns the addresses events asked to check since the
// last take.
func (p *prober) takeEventChecks() map[netip.Addr]bool {
	p.ev.mu.Lock()
	defer p.ev.mu.Unlock()
	a := p.ev.addrs
	p.ev.addrs = map[netip.Addr]bool{}
	return a
}

// eventRounds is the prober's side of event checks, kept on its goroutine:
// when each path was last checked on an event, and the checks waiting for
// their gap to end.
type eventRounds struct {
	last     map[netip.Addr]time.Time
	deferred map[netip.Addr]bool
}

// due returns the paths of spec to check now on events, those asked for
// (asked) and those deferred whose gap has ended; the others are deferred.
func (r *eventRounds) due(spec probeSpec, asked map[netip.Addr]bool, now time.Time) []probePath {
	if r.last == nil {
		r.last, r.deferred = map[netip.Addr]time.Time{}, map[netip.Addr]bool{}
	}
	for a := range asked {
		r.deferred[a] = true
	}
	var out []probePath
	for _, pp := range spec.paths {
		a := pp.key.addr
		if !r.deferred[a] || !pp.up {
			continue
		}
		if last, ok := r.last[a]; ok && now.Sub(last) < eventCheckGap {
			continue
		}
		delete(r.deferred, a)
		r.last[a] = now
		out = append(out, pp)
	}
	// Forget what is no longer a path that is up.
	live := map[netip.Addr]bool{}
	for _, pp := range spec.paths {
		live[pp.key.addr] = pp.up
	}
	for a := range r.deferred {
		if !live[a] {
			delete(r.deferred, a)
		}
	}
	for a, t := range r.last {
		if now.Sub(t) >= eventCheckGap {
			delete(r.last, a)
		}
	}
	return out
}

// next returns how long until the first deferred check is due (an hour
// when none is).
func (r *eventRounds) next(now time.Time) time.Duration {
	d := time.Hour
	for a := range r.deferred {
		d = min(d, r.last[a].Add(eventCheckGap).Sub(now))
	}
	return d
}
