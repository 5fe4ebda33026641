package store

import (
	"context"
	"fmt"
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

// The audit log: events under audit/events/{sequence}, hash-chained, and the
// chain head (the last event's sequence, hash and key id) under audit/head,
// which every audited write compares.

func (s *Store) auditPrefix() string { return s.prefix + "audit/events/" }
func (s *Store) auditKey(seq uint64) string {
	return fmt.Sprintf("%s%020d", s.auditPrefix(), seq)
}
func (s *Store) auditHeadKey() string { return s.prefix + "audit/head" }

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

// head is the audit chain head as stored.
type head struct {
	seq    uint64
	hash   []byte
	keyID  string
	modRev int64 // 0 if no event yet
}

// headRecord is what the head key stores: a copy of the last event without
// its content.
func headRecord(ev *pb.AuditEvent) *pb.AuditEvent {
	return &pb.AuditEvent{Name: ev.Name, Sequence: ev.Sequence, Hash: ev.Hash, KeyId: ev.KeyId}
}

func (s *Store) readHead(ctx context.Context, opts ...clientv3.OpOption) (head, error) {
	resp, err := s.c.Get(ctx, s.auditHeadKey(), opts...)
	if err != nil {
		return head{}, fmt.Errorf("read audit head: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return head{}, nil
	}
	kv := resp.Kvs[0]
	ev, err := decode(string(kv.Key), kv.Value, &pb.AuditEvent{})
	if err != nil {
		return head{}, err
	}
	return head{seq: ev.GetSequence(), hash: ev.GetHash(), keyID: ev.GetKeyId(), modRev: kv.ModRevision}, nil
}

// checkKey refuses to continue a chain keyed with another key: a replica
// given another key file would make the log unverifiable.
func (s *Store) checkKey(h head) error {
	var ours string
	if s.key != nil {
		ours = s.key.ID()
	}
	if h.keyID == "" || h.keyID == ours {
		return nil
	}
	if ours == "" {
		return fmt.Errorf("the audit chain is keyed (key id %s) and this controller has no audit key: %w", h.keyID, ErrFailedPrecondition)
	}
	return fmt.Errorf("the audit chain is keyed with key id %s, this controller's audit key has id %s: every controller replica needs the same audit key file: %w", h.keyID, ours, ErrFailedPrecondition)
}

// auditOps seals ev after h and returns the compare and puts that append it.
func (s *Store) auditOps(ev *pb.AuditEvent, h head) (clientv3.Cmp, []clientv3.Op, error) {
	if err := s.checkKey(h); err != nil {
		return clientv3.Cmp{}, nil, err
	}
	if err := audit.Seal(ev, h.seq, h.hash, s.key); err != nil {
		return clientv3.Cmp{}, nil, err
	}
	cmp := clientv3.Compare(clientv3.ModRevision(s.auditHeadKey()), "=", h.modRev)
	return cmp, []clientv3.Op{
		clientv3.OpPut(s.auditKey(ev.Sequence), encode(ev)),
		clientv3.OpPut(s.auditHeadKey(), encode(headRecord(ev))),
	}, nil
}

// AppendAudit appends an event that goes with no other change (a failed call,
// an agent event). It fills sequence, name, hashes and, if unset, time.
func (s *Store) AppendAudit(ctx context.Context, ev *pb.AuditEvent) (*pb.AuditEvent, error) {
	evs, err := s.AppendAudits(ctx, []*pb.AuditEvent{ev})
	if err != nil {
		return nil, err
	}
	return evs[0], nil
}

// MaxAuditBatch is the most events one AppendAudits call takes: each is a
// put, and the chain head one more, within etcd's default --max-txn-ops
// (128).
const MaxAuditBatch = 120

// AppendAudits appends events that go with no other change, in their order,
// in one transaction: the chain runs through them in memory, and the head is
// compared and put once. It returns the events as appended (copies, with
// sequence, name, hashes and, if unset, time filled in).
func (s *Store) AppendAudits(ctx context.Context, evs []*pb.AuditEvent) ([]*pb.AuditEvent, error) {
	if len(evs) == 0 || len(evs) > MaxAuditBatch {
		return nil, fmt.Errorf("append %d audit events: one call takes 1 to %d: %w", len(evs), MaxAuditBatch, ErrFailedPrecondition)
	}
	out := make([]*pb.AuditEvent, len(evs))
	for i, ev := range evs {
		out[i] = s.stamped(ev)
	}
	what := "append audit event"
	if len(evs) > 1 {
		what = fmt.Sprintf("append %d audit events", len(evs))
	}
	_, err := s.auditedTxn(ctx, what, func(head) (*txnPlan, error) {
		return &txnPlan{events: out}, nil
	}, nil)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// AuditQuery selects audit events.
type AuditQuery struct {
	Filter     audit.Filter
	AfterSeq   uint64    // only events with a larger sequence
	Start, End time.Time // zero: unbounded
	Limit      int
}

// ListAudit returns up to q.Limit matching events, oldest first, and the
// sequence to continue after (0 when there are no more).
func (s *Store) ListAudit(ctx context.Context, q AuditQuery) ([]*pb.AuditEvent, uint64, error) {
	const chunk = 512
	var out []*pb.AuditEvent
	after := q.AfterSeq
	for {
		resp, err := s.c.Get(ctx, s.auditKey(after+1),
			clientv3.WithRange(clientv3.GetPrefixRangeEnd(s.auditPrefix())), clientv3.WithLimit(chunk))
		if err != nil {
			return nil, 0, fmt.Errorf("list audit events: %w", err)
		}
		for _, kv := range resp.Kvs {
			ev, err := decode(string(kv.Key), kv.Value, &pb.AuditEvent{})
			if err != nil {
				return nil, 0, err
			}
			after = ev.GetSequence()
			t := ev.GetTime().AsTime()
			if !q.Start.IsZero() && t.Before(q.Start) {
				continue
			}
			if !q.End.IsZero() && !t.Before(q.End) {
				continue
			}
			if !q.Filter.Match(ev) {
				continue
			}
			out = append(out, ev)
			if len(out) == q.Limit {
				if more, err := s.auditAfter(ctx, after); err != nil || !more {
					return out, 0, err
				}
				return out, after, nil
			}
		}
		if !resp.More {
			return out, 0, nil
		}
	}
}

func (s *Store) auditAfter(ctx context.Context, seq uint64) (bool, error) {
	resp, err := s.c.Get(ctx, s.auditKey(seq+1),
		clientv3.WithRange(clientv3.GetPrefixRangeEnd(s.auditPrefix())), clientv3.WithCountOnly())
	if err != nil {
		return false, fmt.Errorf("list audit events: %w", err)
	}
	return resp.Count > 0, nil
}

// VerifyAudit recomputes the hash chain over every retained event, at one
// consistent etcd revision, and checks it against the chain head: keyed
// events with the store's audit key, and events missing before the oldest
// retained one against the checkpoints (see audit.Verifier).
func (s *Store) VerifyAudit(ctx context.Context) (*pb.VerifyAuditLogResponse, error) {
	// Read the head and every event at one revision.
	hresp, err := s.c.Get(ctx, s.auditHeadKey(), clientv3.WithCountOnly())
	if err != nil {
		return nil, fmt.Errorf("verify audit log: %w", err)
	}
	atRev := hresp.Header.Revision
	h, err := s.readHead(ctx, clientv3.WithRev(atRev))
	if err != nil {
		return nil, err
	}
	v := audit.Verifier{Key: s.key}
	from := s.auditPrefix()
	for {
		resp, err := s.c.Get(ctx, from, clientv3.WithRange(clientv3.GetPrefixRangeEnd(s.auditPrefix())),
			clientv3.WithLimit(512), clientv3.WithRev(atRev))
		if err != nil {
			return nil, fmt.Errorf("verify audit log: %w", err)
		}
		for _, kv := range resp.Kvs {
			ev, err := decode(string(kv.Key), kv.Value, &pb.AuditEvent{})
			if err != nil {
				// A value that no longer decodes was altered: verify an empty
				// event in its place, which cannot match the chain.
				seq, _ := strconv.ParseUint(strings.TrimPrefix(string(kv.Key), s.auditPrefix()), 10, 64)
				ev = &pb.AuditEvent{Sequence: seq, Name: fmt.Sprintf("auditEvents/%d", seq)}
			}
			if !v.Add(ev) {
				return v.Result(), nil
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	v.Finish(h.seq, h.hash)
	return v.Result(), nil
}

// AuditHead returns the sequence of the newest audit event (0 if none).
func (s *Store) AuditHead(ctx context.Context) (uint64, error) {
	h, err := s.readHead(ctx)
	return h.seq, err
}

// AuditRange returns the first and last retained audit sequences (0, 0 when
// the log is empty).
func (s *Store) AuditRange(ctx context.Context) (first, last uint64, err error) {
	first, err = s.firstAuditSeq(ctx)
	if err != nil || first == 0 {
		return 0, 0, err
	}
	last, err = s.AuditHead(ctx)
	return first, last, err
}

// AuditSeqBefore returns the sequence of the last retained event older than
// t (0 if none), scanning from the oldest.
func (s *Store) AuditSeqBefore(ctx context.Context, t time.Time) (uint64, error) {
	var seq uint64
	from := s.auditPrefix()
	for {
		resp, err := s.c.Get(ctx, from, clientv3.WithRange(clientv3.GetPrefixRangeEnd(s.auditPrefix())), clientv3.WithLimit(256))
		if err != nil {
			return 0, fmt.Errorf("audit scan: %w", err)
		}
		for _, kv := range resp.Kvs {
			ev, err := decode(string(kv.Key), kv.Value, &pb.AuditEvent{})
			if err != nil {
				return seq, err
			}
			if !ev.GetTime().AsTime().Before(t) {
				return seq, nil
			}
			seq = ev.GetSequence()
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return seq, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// Actors of the events the audit log writes about itself.
const (
	actorRetention = "system:audit-retention"
	actorAudit     = "system:audit"
)

// pruneBatch is how many events one delete transaction removes at most (a
// variable for the tests).
var pruneBatch uint64 = 1000

// PruneAudit removes the retained audit events with sequences up to and
// including upTo (at most the newest), oldest first, in batches, each
// fenced by fence (leader-only work). In the same transaction as the first
// batch it appends an "audit.checkpoint" event that records the first and
// last sequence removed, the last one's hash and how many: it becomes the
// newest event, so the chain head stays anchored, and VerifyAudit can tell
// this prune from events deleted by hand. It returns how many events it
// deleted.
func (s *Store) PruneAudit(ctx context.Context, fence clientv3.Cmp, upTo uint64) (uint64, error) {
	resp, err := s.auditedTxn(ctx, "prune audit", func(h head) (*txnPlan, error) {
		if h.seq == 0 {
			return nil, nil
		}
		upTo = min(upTo, h.seq)
		first, err := s.firstAuditSeq(ctx)
		if err != nil || first == 0 || first > upTo {
			return nil, err
		}
		last, err := s.auditEvent(ctx, upTo)
		if err != nil {
			return nil, fmt.Errorf("prune audit: %w", err)
		}
		n := upTo - first + 1
		cp := s.newEvent(Meta{Actor: actorRetention, Reason: fmt.Sprintf("retention removes %d events, %d to %d", n, first, upTo)},
			audit.ActionCheckpoint, "auditEvents", nil, nil)
		cp.Checkpoint = &pb.AuditCheckpoint{FirstSequence: first, LastSequence: upTo, LastHash: last.GetHash(), Events: n}
		end := min(first+pruneBatch, upTo+1)
		return &txnPlan{
			cmps:   []clientv3.Cmp{fence},
			ops:    []clientv3.Op{clientv3.OpDelete(s.auditKey(first), clientv3.WithRange(s.auditKey(end)))},
			events: []*pb.AuditEvent{cp},
		}, nil
	}, func(*clientv3.TxnResponse) error {
		if ok, err := s.holds(ctx, fence); err != nil {
			return err
		} else if !ok {
			return fmt.Errorf("prune audit: %w", ErrNotLeader)
		}
		return nil // another write took the head
	})
	if err != nil || resp == nil {
		return 0, err
	}
	deleted := uint64(resp.Responses[0].GetResponseDeleteRange().Deleted)
	for {
		first, err := s.firstAuditSeq(ctx)
		if err != nil || first == 0 || first > upTo {
			return deleted, err
		}
		end := min(first+pruneBatch, upTo+1)
		resp, err := s.c.Txn(ctx).If(fence).Then(
			clientv3.OpDelete(s.auditKey(first), clientv3.WithRange(s.auditKey(end))),
		).Commit()
		if err != nil {
			return deleted, fmt.Errorf("prune audit: %w", err)
		}
		if !resp.Succeeded {
			return deleted, fmt.Errorf("prune audit: %w", ErrNotLeader)
		}
		deleted += uint64(resp.Responses[0].GetResponseDeleteRange().Deleted)
	}
}

// firstAuditSeq returns the sequence of the oldest retained event (0: none).
func (s *Store) firstAuditSeq(ctx context.Context) (uint64, error) {
	resp, err := s.c.Get(ctx, s.auditPrefix(), clientv3.WithPrefix(), clientv3.WithLimit(1), clientv3.WithKeysOnly())
	if err != nil {
		return 0, fmt.Errorf("audit range: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return 0, nil
	}
	first, err := strconv.ParseUint(strings.TrimPrefix(string(resp.Kvs[0].Key), s.auditPrefix()), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("audit range: key %q: %w", resp.Kvs[0].Key, ErrCorrupt)
	}
	return first, nil
}

// auditEvent reads the event with sequence seq.
func (s *Store) auditEvent(ctx context.Context, seq uint64) (*pb.AuditEvent, error) {
	ev, _, err := getRecord(ctx, s, s.auditKey(seq), fmt.Sprintf("audit event %d", seq), decodeAudit)
	return ev, err
}

// KeyAuditChain makes sure the audit chain continues with the store's key;
// a controller calls it before it serves. An empty chain needs nothing (its
// first event will be keyed), nor one whose newest event is keyed with this
// key. A chain whose newest event is unkeyed — a log written before the
// controller had an audit key — gets an "audit.key_introduced" event, the
// first keyed one, whose hash covers all the unkeyed events before it; if
// retention had pruned the log before checkpoints were kept, the event
// carries a checkpoint of the events before the oldest retained one, which
// it accounts for. A chain keyed with another key is an error
// (ErrFailedPrecondition): replicas must share one key file. It reports
// whether it appended the event.
func (s *Store) KeyAuditChain(ctx context.Context) (bool, error) {
	if s.key == nil {
		return false, nil
	}
	resp, err := s.auditedTxn(ctx, "key audit chain", func(h head) (*txnPlan, error) {
		if err := s.checkKey(h); err != nil {
			return nil, err
		}
		if h.seq == 0 || h.keyID != "" {
			return nil, nil
		}
		ev := s.newEvent(Meta{Actor: actorAudit, Reason: fmt.Sprintf("audit key %s introduced: events from here on are keyed; the %d before are not", s.key.ID(), h.seq)},
			audit.ActionKeyIntroduced, "auditEvents", nil, nil)
		first, err := s.firstAuditSeq(ctx)
		if err != nil {
			return nil, err
		}
		if first > 1 {
			oldest, err := s.auditEvent(ctx, first)
			if err != nil {
				return nil, fmt.Errorf("key audit chain: %w", err)
			}
			ev.Checkpoint = &pb.AuditCheckpoint{FirstSequence: 1, LastSequence: first - 1, LastHash: oldest.GetPrevHash(), Events: first - 1}
			ev.Reason += fmt.Sprintf("; events 1 to %d were pruned before checkpoints were kept", first-1)
		}
		return &txnPlan{events: []*pb.AuditEvent{ev}}, nil
	}, nil)
	return resp != nil, err
}

// AuditKeyID returns the id of the store's audit key ("" without one).
func (s *Store) AuditKeyID() string {
	if s.key == nil {
		return ""
	}
	return s.key.ID()
}

// stamped returns a copy of ev to append, its time now if it has none.
func (s *Store) stamped(ev *pb.AuditEvent) *pb.AuditEvent {
	c := proto.Clone(ev).(*pb.AuditEvent)
	if c.Time == nil {
		c.Time = timestamppb.New(s.now())
	}
	return c
}
