package agent

// The loop's kernel: opened per owned routing range, read for reports, and
// the old range cleaned when a policy moves it.

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/policy"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/route"
)

// readApplied reads what the kernel holds now, for a report.
func (l *loop) readApplied(ctx context.Context) {
	rng := l.krange
	if l.kernel == nil {
		rng = route.DefaultRange
	}
	k, err := l.kernelFor(ctx, rng)
	if err != nil {
		return
	}
	facts, err := l.a.opts.System.Facts(ctx)
	if err == nil {
		l.facts = facts
	}
	if st, err := k.Read(ctx, reconcile.HostConfig{Range: rng}); err == nil {
		l.applied = policy.AppliedFromState(st, policy.InterfacesFromFacts(l.facts))
		l.sawKernel(st)
	}
}

// sawKernel takes what a read of the kernel found for the metrics.
func (l *loop) sawKernel(st reconcile.State) {
	l.a.metrics.endpoints.Set(float64(len(st.Endpoints)))
}

// kernelFor returns the kernel for the owned range rng, opening it if the
// range changed; the old range's rules and routes are then removed.
func (l *loop) kernelFor(ctx context.Context, rng route.Range) (reconcile.Kernel, error) {
	if l.kernel != nil && l.krange == rng {
		return l.kernel, nil
	}
	k, err := l.a.opts.Kernel(rng)
	if err != nil {
		return nil, fmt.Errorf("open the kernel: %w", err)
	}
	if old := l.kernel; old != nil {
		// The range of a configuration this agent brought about is
		// cleaned; one it left alone (unmanaged) stays as it is.
		if !l.a.opts.DryRun && l.lastRendered != nil {
			l.cleanRange(ctx, old, l.krange)
		}
		closeKernel(old)
	}
	l.kernel, l.krange = k, rng
	return k, nil
}

// cleanRange removes the rules and routes of a range the policy left.
func (l *loop) cleanRange(ctx context.Context, k reconcile.Kernel, rng route.Range) {
	st, err := k.Read(ctx, reconcile.HostConfig{Range: rng})
	if err != nil {
		l.log.Warn("clean the old routing range", "range", rng, "err", err)
		return
	}
	st.Endpoints = explicitEndpoints(st.Endpoints)
	ops, err := reconcile.Plan(reconcile.HostConfig{Range: rng, Endpoints: st.Endpoints}, st)
	if err == nil {
		ops, _ = protect(ops, st, l.localAddr())
		err = reconcile.Apply(ctx, k, ops)
	}
	if err != nil {
		l.log.Warn("clean the old routing range", "range", rng, "err", err)
		return
	}
	l.log.Info("removed the old routing range's rules and routes", "range", rng, "ops", len(ops))
}

func explicitEndpoints(eps []mptcp.Endpoint) []mptcp.Endpoint {
	return slices.DeleteFunc(slices.Clone(eps), func(e mptcp.Endpoint) bool { return e.Flags&mptcp.FlagImplicit != 0 })
}

func closeKernel(k reconcile.Kernel) {
	if c, ok := k.(io.Closer); ok {
		_ = c.Close()
	}
}

func (l *loop) closeKernel() {
	if l.kernel != nil {
		closeKernel(l.kernel)
		l.kernel = nil
	}
}

func (l *loop) localAddr() netip.Addr {
	if l.a.localAddr != nil {
		return l.a.localAddr()
	}
	return l.local
}
