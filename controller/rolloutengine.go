package controller

// The rollout engine: while this replica leads (leader.go), it advances
// every active rollout with internal/rollout's state machine and writes its
// progress, the host targets it changes and its audit events in one
// transaction fenced by the leader key.

import (
	"context"
	"errors"
	"maps"
	"strconv"
	"strings"
	"time"

	"github.com/mpfleet/mpfleet/internal/rollout"
	"github.com/mpfleet/mpfleet/internal/store"
	"github.com/mpfleet/mpfleet/internal/wait"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
)

// applyTargets returns t changed as res says.
func applyTargets(t *pb.HostTargets, res rollout.Result) *pb.HostTargets {
	nt := proto.CloneOf(t)
	if nt == nil {
		nt = &pb.HostTargets{}
	}
	if nt.HostRevisions == nil {
		nt.HostRevisions = map[string]int64{}
	}
	for h, rev := range res.Targets {
		if rev == nt.GetDefaultRevision() {
			delete(nt.HostRevisions, h)
		} else {
			nt.HostRevisions[h] = rev
		}
	}
	if res.Done {
		r := res.Rollout
		nt.DefaultRevision = res.DefaultRevision
		nt.HostRevisions = map[string]int64{}
		if r.GetTargetRevision() != nt.GetDefaultRevision() {
			for _, name := range r.GetMovedHosts() {
				nt.HostRevisions[strings.TrimPrefix(name, "hosts/")] = r.GetTargetRevision()
			}
		}
		nt.Rollout = ""
		keep := map[int64]bool{nt.GetDefaultRevision(): true}
		for _, rev := range nt.GetHostRevisions() {
			keep[rev] = true
		}
		maps.DeleteFunc(nt.Policies, func(rev int64, _ *pb.MultipathPolicy) bool { return !keep[rev] })
	}
	return nt
}

// rolloutEvents turns the state machine's events into audit events.
func (c *Controller) rolloutEvents(r *pb.Rollout, evs []rollout.Event) []*pb.AuditEvent {
	var out []*pb.AuditEvent
	for _, e := range evs {
		a := c.store.Event(store.Meta{Actor: actorRollouts, Reason: e.Message}, e.Action, r.GetName(), nil, nil)
		a.Host = e.Host
		if e.Failure {
			a.Result, a.StatusCode, a.Error = pb.AuditResult_AUDIT_RESULT_FAILURE, "FAILED", e.Message
		}
		out = append(out, a)
	}
	return out
}

// runRollouts advances every active rollout while this replica leads, on
// every change the cache sees (at most every 100 ms) and every 250 ms (bake
// times and step timeouts pass without a change).
func (c *Controller) runRollouts(ctx context.Context, fence clientv3.Cmp) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		changed := c.cache.Changed()
		for _, r := range c.cache.Rollouts() {
			if !rollout.Active(r.GetState()) {
				continue
			}
			if err := c.advanceRollout(ctx, fence, r); err != nil && ctx.Err() == nil {
				if errors.Is(err, store.ErrNotLeader) {
					c.log.Warn("rollouts: no longer the leader", "err", err)
					return
				}
				if !errors.Is(err, store.ErrConflict) {
					c.log.Warn("rollouts: advance", "rollout", r.GetName(), "err", err)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-changed:
			if !wait.Sleep(ctx, 100*time.Millisecond) {
				return
			}
		}
	}
}

func (c *Controller) advanceRollout(ctx context.Context, fence clientv3.Cmp, r *pb.Rollout) error {
	gid := strings.TrimPrefix(r.GetGroup(), "groups/")
	rid := store.RolloutID(r.GetName())
	rRev, _ := strconv.ParseInt(r.GetEtag(), 10, 64)
	now := time.Now()
	var res rollout.Result
	if _, ok := c.cache.Groups()[gid]; !ok {
		res = rollout.Cancel(r, nil, actorRollouts, now)
		res.Rollout.State, res.Rollout.Message = pb.Rollout_STATE_CANCELLED, "the group was deleted"
		res.Targets, res.Done = nil, false
		return c.writeAdvance(ctx, fence, gid, rid, rRev, r, res, false)
	}
	res = rollout.Advance(r, c.groupHosts(gid), now)
	if !res.Changed(r) {
		return nil
	}
	return c.writeAdvance(ctx, fence, gid, rid, rRev, r, res, true)
}

func (c *Controller) writeAdvance(ctx context.Context, fence clientv3.Cmp, gid, rid string, rRev int64, r *pb.Rollout, res rollout.Result, targets bool) error {
	w := store.RolloutWrite{RolloutID: rid, Rollout: res.Rollout, RolloutRev: rRev, Group: gid, TargetsRev: store.NoCompare,
		Fence: &fence, Events: c.rolloutEvents(res.Rollout, res.Events)}
	if targets && (len(res.Targets) > 0 || res.Done) {
		w.Targets = applyTargets(c.cache.Targets()[gid], res)
	}
	_, err := c.store.WriteRollout(ctx, w)
	if err == nil && res.Rollout.GetState() != r.GetState() {
		c.log.Info("rollout", "rollout", r.GetName(), "state", res.Rollout.GetState().String(), "message", res.Rollout.GetMessage())
	}
	return err
}
