package store

// Groups: groups/{id}, and their immutable policy revisions under
// revisions/{id}/{n}. A change of a group, its new revision and its audit
// event are one transaction (auditedTxn).

import (
	"context"
	"fmt"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func (s *Store) groupsPrefix() string      { return s.prefix + "groups/" }
func (s *Store) groupKey(id string) string { return s.groupsPrefix() + id }
func (s *Store) revisionsPrefix(id string) string {
	return s.prefix + "revisions/" + id + "/"
}
func (s *Store) revisionKey(id string, n int64) string {
	return fmt.Sprintf("%s%020d", s.revisionsPrefix(id), n)
}

// GroupName returns "groups/{id}".
func GroupName(id string) string { return "groups/" + id }

// RevisionName returns "groups/{id}/revisions/{n}".
func RevisionName(id string, n int64) string {
	return fmt.Sprintf("groups/%s/revisions/%d", id, n)
}

// CreateGroup stores a new group with policy revision 1 and its audit event.
// It returns the stored group and the etcd revision of the write.
func (s *Store) CreateGroup(ctx context.Context, id string, g *pb.Group, m Meta) (*pb.Group, int64, error) {
	g = proto.Clone(g).(*pb.Group)
	resp, err := s.auditedTxn(ctx, fmt.Sprintf("create group %q", id), func(head) (*txnPlan, error) {
		now := timestamppb.New(s.now())
		g.Name = GroupName(id)
		g.PolicyRevision = 1
		g.Etag = ""
		g.ActiveRollout, g.DeployedRevision = "", 0
		g.CreateTime, g.UpdateTime = now, now
		rev := &pb.PolicyRevision{
			Name: RevisionName(id, 1), Revision: 1, Policy: g.GetPolicy(),
			CreateTime: now, Actor: m.Actor, Reason: m.Reason,
		}
		return &txnPlan{
			cmps: []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(s.groupKey(id)), "=", 0)},
			ops: []clientv3.Op{
				clientv3.OpPut(s.groupKey(id), encode(g)),
				clientv3.OpPut(s.revisionKey(id, 1), encode(rev)),
				// A re-created group starts a fresh history.
			},
			events: []*pb.AuditEvent{s.newEvent(m, "groups.create", g.Name, nil, g)},
			orElse: []clientv3.Op{clientv3.OpGet(s.groupKey(id), clientv3.WithCountOnly())},
		}, nil
	}, failIfCounted(fmt.Errorf("group %q: %w", id, ErrAlreadyExists)))
	if err != nil {
		return nil, 0, err
	}
	g.Etag = Etag(resp.Header.Revision)
	return g, resp.Header.Revision, nil
}

// GetGroup returns a group with its etag.
func (s *Store) GetGroup(ctx context.Context, id string) (*pb.Group, error) {
	g, _, err := s.getGroup(ctx, id)
	return g, err
}

func (s *Store) getGroup(ctx context.Context, id string) (*pb.Group, int64, error) {
	return getRecord(ctx, s, s.groupKey(id), fmt.Sprintf("group %q", id), decodeGroup)
}

// ListGroups returns up to limit groups with ids after `after`, in id order,
// and whether more follow.
func (s *Store) ListGroups(ctx context.Context, after string, limit int) ([]*pb.Group, bool, error) {
	from := s.groupsPrefix()
	if after != "" {
		from = s.groupKey(after) + "\x00"
	}
	resp, err := s.c.Get(ctx, from,
		clientv3.WithRange(clientv3.GetPrefixRangeEnd(s.groupsPrefix())),
		clientv3.WithLimit(int64(limit)+1))
	if err != nil {
		return nil, false, fmt.Errorf("list groups: %w", err)
	}
	return decodePage(resp.Kvs, limit, decodeGroup)
}

// UpdateFunc computes a group's new state from its current one. It must not
// keep cur. Returning an error aborts the update and changes nothing.
type UpdateFunc func(cur *pb.Group) (*pb.Group, error)

// UpdateGroup changes a group. If etag is not empty it must match the stored
// group's. A change of policy makes a new policy revision. An update that
// changes nothing writes nothing and returns the stored group.
func (s *Store) UpdateGroup(ctx context.Context, id, etag string, fn UpdateFunc, m Meta) (*pb.Group, int64, error) {
	return s.UpdateGroupWith(ctx, id, etag, fn, m, nil)
}

// UpdateGroupWith is UpdateGroup with a hook that adds to the transaction
// of an update that changes the policy (a rollout it starts, say). The hook
// runs again on every retry.
func (s *Store) UpdateGroupWith(ctx context.Context, id, etag string, fn UpdateFunc, m Meta, hook PolicyHook) (*pb.Group, int64, error) {
	var (
		cur, next *pb.Group
		modRev    int64
		unchanged bool
	)
	resp, err := s.auditedTxn(ctx, fmt.Sprintf("update group %q", id), func(head) (*txnPlan, error) {
		var err error
		cur, modRev, err = s.getGroup(ctx, id)
		if err != nil {
			return nil, err
		}
		if etag != "" && etag != cur.Etag {
			return nil, fmt.Errorf("group %q (etag %s, stored %s): %w", id, etag, cur.Etag, ErrConflict)
		}
		next, err = fn(proto.Clone(cur).(*pb.Group))
		if err != nil {
			return nil, err
		}
		// Output-only fields are the store's (active_rollout and
		// deployed_revision are shown, never stored).
		next.Name, next.CreateTime, next.PolicyRevision, next.UpdateTime, next.Etag =
			cur.Name, cur.CreateTime, cur.PolicyRevision, cur.UpdateTime, cur.Etag
		next.ActiveRollout, next.DeployedRevision = "", 0
		if unchanged = proto.Equal(next, cur); unchanged {
			return nil, nil
		}
		now := timestamppb.New(s.now())
		next.UpdateTime = now
		next.Etag = ""
		ops := []clientv3.Op{clientv3.OpPut(s.groupKey(id), encode(next))}
		if !proto.Equal(next.GetPolicy(), cur.GetPolicy()) {
			next.PolicyRevision = cur.PolicyRevision + 1
			rev := &pb.PolicyRevision{
				Name: RevisionName(id, next.PolicyRevision), Revision: next.PolicyRevision,
				Policy: next.GetPolicy(), CreateTime: now, Actor: m.Actor, Reason: m.Reason,
			}
			ops = []clientv3.Op{
				clientv3.OpPut(s.groupKey(id), encode(next)),
				clientv3.OpPut(s.revisionKey(id, next.PolicyRevision), encode(rev)),
			}
		}
		before := proto.Clone(cur).(*pb.Group)
		before.Etag = ""
		p := &txnPlan{
			cmps:   []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.groupKey(id)), "=", modRev)},
			ops:    ops,
			events: []*pb.AuditEvent{s.newEvent(m, "groups.update", cur.Name, before, next)},
			orElse: []clientv3.Op{clientv3.OpGet(s.groupKey(id), clientv3.WithKeysOnly())},
		}
		if hook != nil && next.PolicyRevision != cur.PolicyRevision {
			extra, err := hook(ctx, cur, next)
			if err != nil {
				return nil, err
			}
			if extra != nil {
				p.cmps = append(p.cmps, extra.Cmps...)
				p.ops = append(p.ops, extra.Ops...)
				p.events = append(p.events, extra.Events...)
			}
		}
		return p, nil
	}, func(resp *clientv3.TxnResponse) error {
		return groupChanged(id, etag, modRev, resp)
	})
	switch {
	case err != nil:
		return nil, 0, err
	case unchanged:
		return cur, modRev, nil
	}
	next.Etag = Etag(resp.Header.Revision)
	return next, resp.Header.Revision, nil
}

// groupChanged tells from the response of a failed group write (whose else
// branch read the group's key) whether the group is gone or, with an etag,
// changed: nil means the write may retry.
func groupChanged(id, etag string, modRev int64, resp *clientv3.TxnResponse) error {
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return fmt.Errorf("group %q: %w", id, ErrNotFound)
	}
	if etag != "" && kvs[0].ModRevision != modRev {
		return fmt.Errorf("group %q (etag %s, stored %s): %w", id, etag, Etag(kvs[0].ModRevision), ErrConflict)
	}
	return nil
}

// DeleteGroup deletes a group and its policy revisions. If etag is not empty
// it must match. The audit event keeps the deleted group.
func (s *Store) DeleteGroup(ctx context.Context, id, etag string, m Meta) (int64, error) {
	var modRev int64
	resp, err := s.auditedTxn(ctx, fmt.Sprintf("delete group %q", id), func(head) (*txnPlan, error) {
		cur, rev, err := s.getGroup(ctx, id)
		if err != nil {
			return nil, err
		}
		if etag != "" && etag != cur.Etag {
			return nil, fmt.Errorf("group %q (etag %s, stored %s): %w", id, etag, cur.Etag, ErrConflict)
		}
		modRev = rev
		before := proto.Clone(cur).(*pb.Group)
		before.Etag = ""
		return &txnPlan{
			cmps: []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.groupKey(id)), "=", modRev)},
			ops: []clientv3.Op{
				clientv3.OpDelete(s.groupKey(id)),
				clientv3.OpDelete(s.revisionsPrefix(id), clientv3.WithPrefix()),
				clientv3.OpDelete(s.targetsKey(id)),
			},
			events: []*pb.AuditEvent{s.newEvent(m, "groups.delete", cur.Name, before, nil)},
			orElse: []clientv3.Op{clientv3.OpGet(s.groupKey(id), clientv3.WithKeysOnly())},
		}, nil
	}, func(resp *clientv3.TxnResponse) error {
		return groupChanged(id, etag, modRev, resp)
	})
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// ListRevisions returns up to limit policy revisions of a group, newest first,
// older than `before` (0: from the newest), and whether more follow.
func (s *Store) ListRevisions(ctx context.Context, id string, before int64, limit int) ([]*pb.PolicyRevision, bool, error) {
	if _, _, err := s.getGroup(ctx, id); err != nil {
		return nil, false, err
	}
	end := clientv3.GetPrefixRangeEnd(s.revisionsPrefix(id))
	if before > 0 {
		end = s.revisionKey(id, before)
	}
	resp, err := s.c.Get(ctx, s.revisionsPrefix(id), clientv3.WithRange(end),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(int64(limit)+1))
	if err != nil {
		return nil, false, fmt.Errorf("list revisions of group %q: %w", id, err)
	}
	return decodePage(resp.Kvs, limit, decodeRevision)
}

// GetRevision returns revision n of a group's policy.
func (s *Store) GetRevision(ctx context.Context, id string, n int64) (*pb.PolicyRevision, error) {
	r, _, err := getRecord(ctx, s, s.revisionKey(id, n), fmt.Sprintf("revision %d of group %q", n, id), decodeRevision)
	return r, err
}
