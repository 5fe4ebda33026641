package store

import (
	"context"
	"fmt"
	"strings"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
)

// Rollouts live under rollouts/{id}; the revision each host of a group
// should run under targets/{group} (a HostTargets record, absent for a group
// whose every change goes to every host at once). A rollout's progress and
// the targets it changes are written together, in one transaction with their
// audit events, so that a controller that dies mid-rollout resumes it where
// it was: no host skipped, none moved twice.

func (s *Store) rolloutsPrefix() string         { return s.prefix + "rollouts/" }
func (s *Store) rolloutKey(id string) string    { return s.rolloutsPrefix() + id }
func (s *Store) targetsPrefix() string          { return s.prefix + "targets/" }
func (s *Store) targetsKey(group string) string { return s.targetsPrefix() + group }

// RolloutName returns "rollouts/{id}".
func RolloutName(id string) string { return "rollouts/" + id }

// NoCompare skips a mod-revision compare in a RolloutWrite.
const NoCompare = -1

// RolloutWrite is one transaction about a rollout: the rollout, the group's
// host targets, and audit events, under compares that make it safe against
// concurrent writers.
type RolloutWrite struct {
	// RolloutID and Rollout: the rollout to put (nil: none).
	RolloutID string
	Rollout   *pb.Rollout
	// RolloutRev is the mod revision the rollout key must have (0: must not
	// exist; NoCompare: any).
	RolloutRev int64
	// Group is the group id.
	Group string
	// GroupRev, if > 0, is the mod revision the group key must have.
	GroupRev int64
	// Targets is the group's new host targets; nil with DeleteTargets
	// removes them; nil without it leaves them.
	Targets       *pb.HostTargets
	DeleteTargets bool
	// TargetsRev is the mod revision the targets key must have (0: must not
	// exist; NoCompare: any).
	TargetsRev int64
	// Fence, if set, fences a leader-only write.
	Fence *clientv3.Cmp
	// Events are appended to the audit chain in order.
	Events []*pb.AuditEvent
}

func (w RolloutWrite) cmps(s *Store) []clientv3.Cmp {
	var cs []clientv3.Cmp
	if w.Rollout != nil && w.RolloutRev != NoCompare {
		cs = append(cs, clientv3.Compare(clientv3.ModRevision(s.rolloutKey(w.RolloutID)), "=", w.RolloutRev))
	}
	if w.GroupRev > 0 {
		cs = append(cs, clientv3.Compare(clientv3.ModRevision(s.groupKey(w.Group)), "=", w.GroupRev))
	}
	if (w.Targets != nil || w.DeleteTargets) && w.TargetsRev != NoCompare {
		cs = append(cs, clientv3.Compare(clientv3.ModRevision(s.targetsKey(w.Group)), "=", w.TargetsRev))
	}
	return cs
}

func (w RolloutWrite) ops(s *Store) []clientv3.Op {
	var ops []clientv3.Op
	if w.Rollout != nil {
		r := proto.CloneOf(w.Rollout)
		r.Etag = ""
		ops = append(ops, clientv3.OpPut(s.rolloutKey(w.RolloutID), encode(r)))
	}
	switch {
	case w.Targets != nil:
		ops = append(ops, clientv3.OpPut(s.targetsKey(w.Group), encode(w.Targets)))
	case w.DeleteTargets:
		ops = append(ops, clientv3.OpDelete(s.targetsKey(w.Group)))
	}
	return ops
}

// WriteRollout commits w. A compare on the rollout, group or targets that no
// longer holds is ErrConflict; a fence that no longer holds ErrNotLeader.
// It returns the etcd revision of the write.
func (s *Store) WriteRollout(ctx context.Context, w RolloutWrite) (int64, error) {
	resp, err := s.auditedTxn(ctx, fmt.Sprintf("write rollout %q", w.RolloutID), func(head) (*txnPlan, error) {
		p := &txnPlan{cmps: w.cmps(s), ops: w.ops(s), events: w.Events}
		if w.Fence != nil {
			p.cmps = append(p.cmps, *w.Fence)
		}
		return p, nil
	}, func(*clientv3.TxnResponse) error {
		// Which compare failed? Ours end the write; the audit head's is
		// contention, retried.
		if w.Fence != nil {
			if ok, err := s.holds(ctx, *w.Fence); err != nil {
				return err
			} else if !ok {
				return fmt.Errorf("rollout %q: %w", w.RolloutID, ErrNotLeader)
			}
		}
		for _, c := range w.cmps(s) {
			if ok, err := s.holds(ctx, c); err != nil {
				return err
			} else if !ok {
				return fmt.Errorf("rollout %q of group %q changed meanwhile: %w", w.RolloutID, w.Group, ErrConflict)
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if w.Rollout != nil {
		w.Rollout.Etag = Etag(resp.Header.Revision)
	}
	return resp.Header.Revision, nil
}

func (s *Store) holds(ctx context.Context, c clientv3.Cmp) (bool, error) {
	resp, err := s.c.Txn(ctx).If(c).Commit()
	if err != nil {
		return false, fmt.Errorf("check compare: %w", err)
	}
	return resp.Succeeded, nil
}

// auditOpsN seals evs after h, in order, and returns the compare and puts
// that append them (one head put: a transaction may put a key once).
func (s *Store) auditOpsN(evs []*pb.AuditEvent, h head) (clientv3.Cmp, []clientv3.Op, error) {
	cmp := clientv3.Compare(clientv3.ModRevision(s.auditHeadKey()), "=", h.modRev)
	var ops []clientv3.Op
	seq, hash, keyID := h.seq, h.hash, h.keyID
	for _, ev := range evs {
		if ev.Time == nil {
			ev.Time = nowProto(s)
		}
		c, o, err := s.auditOps(ev, head{seq: seq, hash: hash, keyID: keyID, modRev: h.modRev})
		if err != nil {
			return c, nil, err
		}
		ops = append(ops, o[0]) // the event; its head put is replaced below
		seq, hash, keyID = ev.GetSequence(), ev.GetHash(), ev.GetKeyId()
	}
	ops = append(ops, clientv3.OpPut(s.auditHeadKey(), encode(headRecord(evs[len(evs)-1]))))
	return cmp, ops, nil
}

// GetRollout reads a rollout and its mod revision from etcd.
func (s *Store) GetRollout(ctx context.Context, id string) (*pb.Rollout, int64, error) {
	return getRecord(ctx, s, s.rolloutKey(id), fmt.Sprintf("rollout %q", id), decodeRollout)
}

// GetTargets reads a group's host targets and their mod revision (nil, 0
// when the group has none: every host runs its policy_revision).
func (s *Store) GetTargets(ctx context.Context, group string) (*pb.HostTargets, int64, error) {
	resp, err := s.c.Get(ctx, s.targetsKey(group))
	if err != nil {
		return nil, 0, fmt.Errorf("get targets of %q: %w", group, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, nil
	}
	t, err := decodeTargets(resp.Kvs[0])
	return t, resp.Kvs[0].ModRevision, err
}

// TxnExtra is what a caller adds to a group update's transaction.
type TxnExtra struct {
	Cmps   []clientv3.Cmp
	Ops    []clientv3.Op
	Events []*pb.AuditEvent
}

// PolicyHook is called by UpdateGroupWith when an update changes the policy,
// with the group before and after (next.PolicyRevision set): what it returns
// commits with the update, or its error aborts the update.
type PolicyHook func(ctx context.Context, cur, next *pb.Group) (*TxnExtra, error)

// TargetsOps returns the ops that put (or, nil, delete) a group's targets,
// and the compare that they are unchanged since modRev was read.
func (s *Store) TargetsOps(group string, t *pb.HostTargets, modRev int64) (clientv3.Cmp, clientv3.Op) {
	cmp := clientv3.Compare(clientv3.ModRevision(s.targetsKey(group)), "=", modRev)
	if t == nil {
		return cmp, clientv3.OpDelete(s.targetsKey(group))
	}
	return cmp, clientv3.OpPut(s.targetsKey(group), encode(t))
}

// RolloutOps returns the op that creates a rollout, and the compare that it
// does not exist yet.
func (s *Store) RolloutOps(id string, r *pb.Rollout) (clientv3.Cmp, clientv3.Op) {
	r = proto.CloneOf(r)
	r.Etag = ""
	return clientv3.Compare(clientv3.CreateRevision(s.rolloutKey(id)), "=", 0), clientv3.OpPut(s.rolloutKey(id), encode(r))
}

// RolloutID returns the id of "rollouts/{id}", or "".
func RolloutID(name string) string {
	id, ok := strings.CutPrefix(name, "rollouts/")
	if !ok || id == "" || strings.Contains(id, "/") {
		return ""
	}
	return id
}
