// Package store keeps mpfleet's state in etcd under one key prefix: groups,
// their immutable policy revisions, host status and the hash-chained audit log.
//
// Values are binary protobuf: compact, fast to decode on every watch event,
// forward compatible when fields are added, and deterministic to encode, which
// the audit hash chain relies on. (protojson would be readable with etcdctl,
// but is several times larger and slower and not canonical.)
//
// A change, its policy revision and its audit event are written in one etcd
// transaction. The audit chain head (its last sequence and hash) is one key
// that every audited write compares, so events get gap-free sequences in
// commit order. With an audit key (WithAuditKey) every event's hash is keyed
// (see package audit), and retention checkpoints what it prunes.
package store

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/mpfleet/mpfleet/internal/audit"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// DefaultPrefix is the etcd key prefix of everything mpfleet stores.
const DefaultPrefix = "/mpfleet/v1/"

// maxAttempts bounds retries of a transaction that lost a race for the audit
// chain head.
const maxAttempts = 64

// Store reads and writes mpfleet state in etcd.
type Store struct {
	c      *clientv3.Client
	prefix string
	now    func() time.Time
	key    *audit.Key
}

// Option configures a Store.
type Option func(*Store)

// WithAuditKey keys the hash of every audit event the store writes with k,
// and verifies the chain with it. Without it events are unkeyed (plain
// SHA-256), and a keyed chain does not verify.
func WithAuditKey(k *audit.Key) Option { return func(s *Store) { s.key = k } }

// New returns a Store using prefix (DefaultPrefix if empty; a trailing "/" is
// added if missing).
func New(c *clientv3.Client, prefix string, opts ...Option) *Store {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	s := &Store{c: c, prefix: prefix, now: time.Now}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Client returns the etcd client.
func (s *Store) Client() *clientv3.Client { return s.c }

// Prefix returns the key prefix.
func (s *Store) Prefix() string { return s.prefix }

// Meta describes who makes a change, for the audit log.
type Meta struct {
	Actor     string
	Reason    string
	RequestID string
	Peer      string
}

// Key layout under the prefix.
func (s *Store) groupsPrefix() string      { return s.prefix + "groups/" }
func (s *Store) groupKey(id string) string { return s.groupsPrefix() + id }
func (s *Store) revisionsPrefix(id string) string {
	return s.prefix + "revisions/" + id + "/"
}
func (s *Store) revisionKey(id string, n int64) string {
	return fmt.Sprintf("%s%020d", s.revisionsPrefix(id), n)
}
func (s *Store) auditPrefix() string { return s.prefix + "audit/events/" }
func (s *Store) auditKey(seq uint64) string {
	return fmt.Sprintf("%s%020d", s.auditPrefix(), seq)
}
func (s *Store) auditHeadKey() string { return s.prefix + "audit/head" }

// GroupsPrefix is the prefix of group keys.
func (s *Store) GroupsPrefix() string { return s.groupsPrefix() }

// AuditPrefix is the prefix of audit event keys.
func (s *Store) AuditPrefix() string { return s.auditPrefix() }

// Etag renders an etcd mod revision as an etag.
func Etag(modRev int64) string { return strconv.FormatInt(modRev, 10) }

func decode[T proto.Message](key string, b []byte, m T) (T, error) {
	if err := proto.Unmarshal(b, m); err != nil {
		return m, fmt.Errorf("%s: %w: %w", key, ErrCorrupt, err)
	}
	return m, nil
}

func encode(m proto.Message) string {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		// Only invalid UTF-8 in a string field can fail; validation keeps it out.
		panic(fmt.Sprintf("store: encode %T: %v", m, err))
	}
	return string(b)
}

func backoff(ctx context.Context, attempt int) error {
	d := time.Duration(1+rand.IntN(1<<min(attempt, 6))) * time.Millisecond
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func mustAny(m proto.Message) *anypb.Any {
	if m == nil {
		return nil
	}
	a, err := anypb.New(m)
	if err != nil {
		panic(fmt.Sprintf("store: any %T: %v", m, err))
	}
	return a
}

func (s *Store) newEvent(m Meta, action, resource string, before, after proto.Message) *pb.AuditEvent {
	ev := &pb.AuditEvent{
		Time:        timestamppb.New(s.now()),
		Actor:       m.Actor,
		Action:      action,
		Resource:    resource,
		Result:      pb.AuditResult_AUDIT_RESULT_SUCCESS,
		StatusCode:  "OK",
		RequestId:   m.RequestID,
		PeerAddress: m.Peer,
		Reason:      m.Reason,
	}
	if before != nil {
		ev.Before = mustAny(before)
	}
	if after != nil {
		ev.After = mustAny(after)
	}
	return ev
}

// Event returns an audit event of a call by m (not yet sealed).
func (s *Store) Event(m Meta, action, resource string, before, after proto.Message) *pb.AuditEvent {
	return s.newEvent(m, action, resource, before, after)
}

func nowProto(s *Store) *timestamppb.Timestamp { return timestamppb.New(s.now()) }

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
	for attempt := 0; attempt < maxAttempts; attempt++ {
		h, err := s.readHead(ctx)
		if err != nil {
			return nil, 0, err
		}
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
		ev := s.newEvent(m, "groups.create", g.Name, nil, g)
		hcmp, hops, err := s.auditOps(ev, h)
		if err != nil {
			return nil, 0, err
		}
		resp, err := s.c.Txn(ctx).If(
			clientv3.Compare(clientv3.CreateRevision(s.groupKey(id)), "=", 0),
			hcmp,
		).Then(append([]clientv3.Op{
			clientv3.OpPut(s.groupKey(id), encode(g)),
			clientv3.OpPut(s.revisionKey(id, 1), encode(rev)),
			// A re-created group starts a fresh history.
		}, hops...)...).Else(
			clientv3.OpGet(s.groupKey(id), clientv3.WithCountOnly()),
		).Commit()
		if err != nil {
			return nil, 0, fmt.Errorf("create group %q: %w", id, err)
		}
		if resp.Succeeded {
			g.Etag = Etag(resp.Header.Revision)
			return g, resp.Header.Revision, nil
		}
		if resp.Responses[0].GetResponseRange().Count > 0 {
			return nil, 0, fmt.Errorf("group %q: %w", id, ErrAlreadyExists)
		}
		if err := backoff(ctx, attempt); err != nil {
			return nil, 0, err
		}
	}
	return nil, 0, fmt.Errorf("create group %q: %w", id, ErrContention)
}

// GetGroup returns a group with its etag.
func (s *Store) GetGroup(ctx context.Context, id string) (*pb.Group, error) {
	g, _, err := s.getGroup(ctx, id)
	return g, err
}

func (s *Store) getGroup(ctx context.Context, id string) (*pb.Group, int64, error) {
	resp, err := s.c.Get(ctx, s.groupKey(id))
	if err != nil {
		return nil, 0, fmt.Errorf("get group %q: %w", id, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, fmt.Errorf("group %q: %w", id, ErrNotFound)
	}
	kv := resp.Kvs[0]
	g, err := decode(string(kv.Key), kv.Value, &pb.Group{})
	if err != nil {
		return nil, 0, err
	}
	g.Etag = Etag(kv.ModRevision)
	return g, kv.ModRevision, nil
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
	var out []*pb.Group
	for i, kv := range resp.Kvs {
		if i == limit {
			return out, true, nil
		}
		g, err := decode(string(kv.Key), kv.Value, &pb.Group{})
		if err != nil {
			return nil, false, err
		}
		g.Etag = Etag(kv.ModRevision)
		out = append(out, g)
	}
	return out, false, nil
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
	for attempt := 0; attempt < maxAttempts; attempt++ {
		cur, modRev, err := s.getGroup(ctx, id)
		if err != nil {
			return nil, 0, err
		}
		if etag != "" && etag != cur.Etag {
			return nil, 0, fmt.Errorf("group %q (etag %s, stored %s): %w", id, etag, cur.Etag, ErrConflict)
		}
		next, err := fn(proto.Clone(cur).(*pb.Group))
		if err != nil {
			return nil, 0, err
		}
		// Output-only fields are the store's (active_rollout and
		// deployed_revision are shown, never stored).
		next.Name, next.CreateTime, next.PolicyRevision, next.UpdateTime, next.Etag =
			cur.Name, cur.CreateTime, cur.PolicyRevision, cur.UpdateTime, cur.Etag
		next.ActiveRollout, next.DeployedRevision = "", 0
		if proto.Equal(next, cur) {
			return cur, modRev, nil
		}
		h, err := s.readHead(ctx)
		if err != nil {
			return nil, 0, err
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
		ev := s.newEvent(m, "groups.update", cur.Name, before, next)
		evs := []*pb.AuditEvent{ev}
		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.groupKey(id)), "=", modRev)}
		if hook != nil && next.PolicyRevision != cur.PolicyRevision {
			extra, err := hook(ctx, cur, next)
			if err != nil {
				return nil, 0, err
			}
			if extra != nil {
				cmps = append(cmps, extra.Cmps...)
				ops = append(ops, extra.Ops...)
				evs = append(evs, extra.Events...)
			}
		}
		hcmp, hops, err := s.auditOpsN(evs, h)
		if err != nil {
			return nil, 0, err
		}
		resp, err := s.c.Txn(ctx).If(append(cmps, hcmp)...).Then(append(ops, hops...)...).Else(
			clientv3.OpGet(s.groupKey(id), clientv3.WithKeysOnly()),
		).Commit()
		if err != nil {
			return nil, 0, fmt.Errorf("update group %q: %w", id, err)
		}
		if resp.Succeeded {
			next.Etag = Etag(resp.Header.Revision)
			return next, resp.Header.Revision, nil
		}
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			return nil, 0, fmt.Errorf("group %q: %w", id, ErrNotFound)
		}
		if etag != "" && kvs[0].ModRevision != modRev {
			return nil, 0, fmt.Errorf("group %q (etag %s, stored %s): %w", id, etag, Etag(kvs[0].ModRevision), ErrConflict)
		}
		if err := backoff(ctx, attempt); err != nil {
			return nil, 0, err
		}
	}
	return nil, 0, fmt.Errorf("update group %q: %w", id, ErrContention)
}

// DeleteGroup deletes a group and its policy revisions. If etag is not empty
// it must match. The audit event keeps the deleted group.
func (s *Store) DeleteGroup(ctx context.Context, id, etag string, m Meta) (int64, error) {
	for attempt := 0; attempt < maxAttempts; attempt++ {
		cur, modRev, err := s.getGroup(ctx, id)
		if err != nil {
			return 0, err
		}
		if etag != "" && etag != cur.Etag {
			return 0, fmt.Errorf("group %q (etag %s, stored %s): %w", id, etag, cur.Etag, ErrConflict)
		}
		h, err := s.readHead(ctx)
		if err != nil {
			return 0, err
		}
		before := proto.Clone(cur).(*pb.Group)
		before.Etag = ""
		ev := s.newEvent(m, "groups.delete", cur.Name, before, nil)
		hcmp, hops, err := s.auditOps(ev, h)
		if err != nil {
			return 0, err
		}
		resp, err := s.c.Txn(ctx).If(
			clientv3.Compare(clientv3.ModRevision(s.groupKey(id)), "=", modRev),
			hcmp,
		).Then(append([]clientv3.Op{
			clientv3.OpDelete(s.groupKey(id)),
			clientv3.OpDelete(s.revisionsPrefix(id), clientv3.WithPrefix()),
			clientv3.OpDelete(s.targetsKey(id)),
		}, hops...)...).Else(
			clientv3.OpGet(s.groupKey(id), clientv3.WithKeysOnly()),
		).Commit()
		if err != nil {
			return 0, fmt.Errorf("delete group %q: %w", id, err)
		}
		if resp.Succeeded {
			return resp.Header.Revision, nil
		}
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			return 0, fmt.Errorf("group %q: %w", id, ErrNotFound)
		}
		if etag != "" && kvs[0].ModRevision != modRev {
			return 0, fmt.Errorf("group %q (etag %s): %w", id, etag, ErrConflict)
		}
		if err := backoff(ctx, attempt); err != nil {
			return 0, err
		}
	}
	return 0, fmt.Errorf("delete group %q: %w", id, ErrContention)
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
	var out []*pb.PolicyRevision
	for i, kv := range resp.Kvs {
		if i == limit {
			return out, true, nil
		}
		r, err := decode(string(kv.Key), kv.Value, &pb.PolicyRevision{})
		if err != nil {
			return nil, false, err
		}
		out = append(out, r)
	}
	return out, false, nil
}

// GetRevision returns revision n of a group's policy.
func (s *Store) GetRevision(ctx context.Context, id string, n int64) (*pb.PolicyRevision, error) {
	resp, err := s.c.Get(ctx, s.revisionKey(id, n))
	if err != nil {
		return nil, fmt.Errorf("get revision %d of group %q: %w", n, id, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("revision %d of group %q: %w", n, id, ErrNotFound)
	}
	return decode(string(resp.Kvs[0].Key), resp.Kvs[0].Value, &pb.PolicyRevision{})
}

func (s *Store) hostsPrefix() string { return s.prefix + "hosts/" }

// LeaderFence is the compare that fences a leader-only write: the leader key
// still exists with the create revision it had when this replica won.
func LeaderFence(key string, createRev int64) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(key), "=", createRev)
}

// ElectionPrefix is where controller replicas campaign for leadership.
func (s *Store) ElectionPrefix() string { return s.prefix + "leader" }
