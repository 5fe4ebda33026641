package controller

import (
	"context"
	"errors"
	"time"

	"github.com/mpfleet/mpfleet/internal/store"
	"github.com/mpfleet/mpfleet/internal/wait"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Retention bounds the audit log so that etcd stays within its quota. The
// leader prunes the oldest events. Each prune first appends an
// "audit.checkpoint" event that records what it removes (store.PruneAudit),
// so the chain head stays anchored and VerifyAuditLog, which starts at the
// oldest retained event, can tell the prune from events deleted by hand.
type Retention struct {
	// MaxEvents keeps at most this many events (0: no limit).
	MaxEvents uint64
	// MaxAge drops events older than this (0: no limit).
	MaxAge time.Duration
	// MaxBytes keeps the events' stored values within this many bytes (0:
	// no limit), estimated for a large log (store.AuditSize).
	MaxBytes uint64
	// Interval between pruning passes (default 1m).
	Interval time.Duration
}

// runLeader campaigns for leadership among the controller replicas sharing
// the etcd prefix, on the replica's session (replica.go), and, while
// leading, does the work that must happen once: rollouts and audit
// retention. It returns when the session ends (its lease was lost, or the
// controller stops), which ends the leader work too; every leader-only write
// is fenced by a compare on the leader key's create revision, so a replica
// that lost its lease cannot act as a second leader.
func (c *Controller) runLeader(sess *concurrency.Session) {
	ctx := sess.Ctx()
	e := concurrency.NewElection(sess, c.store.ElectionPrefix())
	for ctx.Err() == nil {
		if err := e.Campaign(ctx, c.hub.opts.Replica); err != nil {
			if ctx.Err() == nil {
				c.log.Warn("leader campaign", "err", err)
				wait.Sleep(ctx, time.Second)
			}
			continue
		}
		c.log.Info("leading", "replica", c.hub.opts.Replica)
		c.leading.Store(true)
		c.leaderWork(ctx, store.LeaderFence(e.Key(), e.Rev()))
		c.leading.Store(false)
		// Step down (a fenced write found this replica no longer leads, or
		// the session ended); while the session lives, campaign again.
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = e.Resign(rctx)
		rcancel()
	}
}

func (c *Controller) leaderWork(ctx context.Context, fence clientv3.Cmp) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.runRollouts(ctx, fence)
		cancel() // a fenced write found this replica no longer leads
	}()
	defer func() { <-done }()
	r := c.retention
	if r.MaxEvents == 0 && r.MaxAge == 0 && r.MaxBytes == 0 {
		<-ctx.Done()
		return
	}
	if r.Interval == 0 {
		r.Interval = time.Minute
	}
	t := time.NewTicker(r.Interval)
	defer t.Stop()
	for {
		if err := c.pruneAudit(ctx, fence, r); err != nil && ctx.Err() == nil {
			c.log.Warn("audit retention", "err", err)
			if errors.Is(err, store.ErrNotLeader) {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.pruneNow: // etcd just recovered from NOSPACE
		}
	}
}

// checkpointBytes is room for a checkpoint event's value (about 250 bytes).
const checkpointBytes = 512

func (c *Controller) pruneAudit(ctx context.Context, fence clientv3.Cmp, r Retention) error {
	first, last, err := c.store.AuditRange(ctx)
	if err != nil || first == 0 {
		return err
	}
	var upTo uint64
	// The prune adds its checkpoint event: count it, so that a pass leaves
	// exactly MaxEvents and the next one has nothing to do.
	if r.MaxEvents > 0 && last-first+1 > r.MaxEvents {
		upTo = last + 1 - r.MaxEvents
	}
	if r.MaxAge > 0 {
		old, err := c.store.AuditSeqBefore(ctx, time.Now().Add(-r.MaxAge))
		if err != nil {
			return err
		}
		upTo = max(upTo, old)
	}
	if r.MaxBytes > 0 {
		size, err := c.store.AuditSize(ctx)
		if err != nil {
			return err
		}
		// The prune adds its checkpoint event: make room for it too, so
		// that the next pass has nothing to do.
		if size.Bytes > r.MaxBytes {
			seq, err := c.store.AuditSeqFreeing(ctx, size.Bytes+checkpointBytes-r.MaxBytes)
			if err != nil {
				return err
			}
			upTo = max(upTo, seq)
		}
	}
	if upTo < first {
		return nil
	}
	n, err := c.store.PruneAudit(ctx, fence, upTo)
	if n > 0 {
		c.log.Info("audit retention pruned events", "deleted", n, "from", first, "up_to", upTo)
	}
	return err
}
