package agent

// Commit confirmed: a new revision the controller does not echo in time is
// reverted, and so is the last good configuration re-applied from the state
// dir at start, so that a saved state that cuts the host off from the
// controller cannot lock it out after a reboot.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/mpfleet/mpfleet/internal/policy"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// confirm asks the controller to echo a nonce and waits ConfirmTimeout for
// it, on this session or, if the stream broke, on the next one.
func (l *loop) confirm(ctx context.Context) bool {
	nonce := rand.Uint64() | 1
	ask := func() {
		l.send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Confirm{Confirm: &pb.Confirm{Nonce: nonce}}})
	}
	ask()
	t := time.NewTimer(l.a.opts.ConfirmTimeout)
	defer t.Stop()
	for {
		select {
		case n := <-l.a.confirmC:
			if n == nonce {
				return true
			}
		case s := <-l.a.sessionC:
			l.connected(ctx, s)
			ask()
		case <-l.sessDone():
			l.sess = nil
		case <-t.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// rollBack reverts an unconfirmed apply to the state read before it and
// reports ROLLED_BACK. A new revision is held back (not applied again until
// another comes); after the restore at start (why is reasonRestore) the
// agent keeps its hands off until the controller sends a configuration,
// which it then applies as a new revision, confirmed in turn.
func (l *loop) rollBack(ctx context.Context, d *pb.DesiredConfig, why reason, k reconcile.Kernel, cfg reconcile.HostConfig, before reconcile.State, ifaces []policy.Interface) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	msg := fmt.Sprintf("the controller did not confirm %s revision %d within %v of its apply; reverted to the previous state",
		d.GetGroup(), d.GetRevision(), l.a.opts.ConfirmTimeout)
	if why == reasonRestore {
		msg = fmt.Sprintf("the controller did not confirm %s revision %d within %v of its restore from the state dir at start; reverted to the state the agent found",
			d.GetGroup(), d.GetRevision(), l.a.opts.ConfirmTimeout)
	}
	prev := configFromState(before, cfg)
	var ops reconcile.Ops
	now, err := k.Read(rctx, prev)
	if err == nil {
		// What the apply adopted gets its old protocol back.
		ops, err = reconcile.PlanRevert(prev, before, now)
	}
	if err == nil {
		err = reconcile.Apply(rctx, k, ops)
	}
	if err != nil {
		msg += "; the revert failed: " + err.Error()
	}
	if st, err := k.Read(rctx, cfg); err == nil {
		l.applied = policy.AppliedFromState(st, ifaces)
	}
	l.event(pb.AgentEvent_KIND_ROLLED_BACK, d, msg, ops)
	l.held = d
	if why == reasonRestore {
		// Not confirmed may only mean the controller is not back yet: what
		// it sends, this revision included, is applied and confirmed anew.
		l.held, l.lastGood = nil, nil
		l.publishApplied()
	}
	l.effective = l.lastGood
	l.lastRendered = nil
	l.lastPlan = ops
	l.lastFailMsg, l.refused = msg, msg
	l.setState(pb.SyncState_SYNC_STATE_FAILED, msg)
	l.sendReport(ctx)
}

// configFromState is the desired config that restores s: what cfg manages,
// at the values s had (endpoints the kernel made itself left out).
func configFromState(s reconcile.State, cfg reconcile.HostConfig) reconcile.HostConfig {
	prev := reconcile.HostConfig{
		Range: cfg.Range, Limits: s.Limits, Endpoints: explicitEndpoints(s.Endpoints),
		Rules: slices.Clone(s.Rules), Routes: slices.Clone(s.Routes),
	}
	if cfg.Enabled != nil {
		prev.Enabled = s.Enabled
	}
	for name := range cfg.Sysctls {
		if v, ok := s.Sysctls[name]; ok {
			if prev.Sysctls == nil {
				prev.Sysctls = map[string]string{}
			}
			prev.Sysctls[name] = v
		}
	}
	return prev
}
