package store

import (
	"context"
	"fmt"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Host status lives under hosts/{id} and persists; a host's live session
// lives under sessions/{id}, bound to the lease of the controller replica
// that holds the agent's stream. When that replica dies its lease expires,
// the session keys vanish, and every replica shows those hosts as
// DISCONNECTED with their last reported state. The key is also the host's
// stream's ownership across the fleet: one replica at a time holds it
// (ClaimSession).

func (s *Store) hostsPrefix() string         { return s.prefix + "hosts/" }
func (s *Store) sessionsPrefix() string      { return s.prefix + "sessions/" }
func (s *Store) hostKey(id string) string    { return s.hostsPrefix() + id }
func (s *Store) sessionKey(id string) string { return s.sessionsPrefix() + id }

// HostName returns "hosts/{id}".
func HostName(id string) string { return "hosts/" + id }

// PutHost stores a host's status.
func (s *Store) PutHost(ctx context.Context, id string, h *pb.Host) (int64, error) {
	resp, err := s.c.Put(ctx, s.hostKey(id), encode(h))
	if err != nil {
		return 0, fmt.Errorf("put host %q: %w", id, err)
	}
	return resp.Header.Revision, nil
}

// GetHost reads a host's stored status.
func (s *Store) GetHost(ctx context.Context, id string) (*pb.Host, error) {
	h, _, err := getRecord(ctx, s, s.hostKey(id), fmt.Sprintf("host %q", id), decodeHost)
	return h, err
}

// ClaimSession marks a host connected to replica, bound to lease, unless
// another replica holds its stream: then it returns that replica and an
// error wrapping ErrAlreadyExists. A replica may claim a host it already
// holds again (with a new lease, after its old one expired).
func (s *Store) ClaimSession(ctx context.Context, id, replica string, lease clientv3.LeaseID) (holder string, err error) {
	res, err := s.WriteHosts(ctx, replica, []HostWrite{{ID: id, Claim: true, Lease: lease}})
	if err != nil {
		return "", fmt.Errorf("claim session %q: %w", id, err)
	}
	return res[0].Holder, res[0].Err
}

// DeleteSession removes a host's session if replica still holds it (another
// replica may have taken the host over in the meantime).
func (s *Store) DeleteSession(ctx context.Context, id, replica string) error {
	if _, err := s.WriteHosts(ctx, replica, []HostWrite{{ID: id, Release: true}}); err != nil {
		return fmt.Errorf("delete session %q: %w", id, err)
	}
	return nil
}

// DeleteHost removes a host's stored status, with its audit event, if no
// controller holds a session of it: ErrNotFound when there is no such host,
// ErrFailedPrecondition while it is connected.
func (s *Store) DeleteHost(ctx context.Context, id string, m Meta) (int64, error) {
	tr, err := s.auditedTxn(ctx, fmt.Sprintf("delete host %q", id), func(head) (*txnPlan, error) {
		before, modRev, err := getRecord(ctx, s, s.hostKey(id), fmt.Sprintf("host %q", id), decodeHost)
		if err != nil {
			return nil, err
		}
		return &txnPlan{
			cmps: []clientv3.Cmp{
				clientv3.Compare(clientv3.ModRevision(s.hostKey(id)), "=", modRev),
				clientv3.Compare(clientv3.CreateRevision(s.sessionKey(id)), "=", 0),
			},
			ops:    []clientv3.Op{clientv3.OpDelete(s.hostKey(id)), clientv3.OpDelete(s.hostLabelsKey(id))},
			events: []*pb.AuditEvent{s.newEvent(m, "hosts.delete", HostName(id), before, nil)},
			orElse: []clientv3.Op{clientv3.OpGet(s.sessionKey(id), clientv3.WithCountOnly())},
		}, nil
	}, failIfCounted(fmt.Errorf("host %q is connected: stop its agent or revoke its credential first: %w", id, ErrFailedPrecondition)))
	if err != nil {
		return 0, err
	}
	s.written.forget(id)
	return tr.Header.Revision, nil
}

// Operator labels: hostlabels/{id} holds the labels an operator set on a
// host (UpdateHost), kept apart from the status its agent reports, so that
// no agent report can change them.

func (s *Store) hostLabelsPrefix() string       { return s.prefix + "hostlabels/" }
func (s *Store) hostLabelsKey(id string) string { return s.hostLabelsPrefix() + id }

// PutHostLabels sets the labels an operator gave host id, and the labels of
// its stored status if it has one, with their audit event, in one
// transaction. It returns the etcd revision of the write.
func (s *Store) PutHostLabels(ctx context.Context, id string, labels map[string]string, m Meta) (int64, error) {
	what := fmt.Sprintf("label host %q", id)
	tr, err := s.auditedTxn(ctx, what, func(head) (*txnPlan, error) {
		lresp, err := s.c.Get(ctx, s.hostLabelsKey(id))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		before := &pb.Host{Name: HostName(id)}
		var lrev int64
		if len(lresp.Kvs) > 0 {
			if before, err = decode(string(lresp.Kvs[0].Key), lresp.Kvs[0].Value, &pb.Host{}); err != nil {
				return nil, err
			}
			lrev = lresp.Kvs[0].ModRevision
		}
		after := &pb.Host{Name: HostName(id), Labels: labels}
		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.hostLabelsKey(id)), "=", lrev)}
		ops := []clientv3.Op{clientv3.OpPut(s.hostLabelsKey(id), encode(after))}
		hresp, err := s.c.Get(ctx, s.hostKey(id))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		if len(hresp.Kvs) > 0 {
			st, err := decode(string(hresp.Kvs[0].Key), hresp.Kvs[0].Value, &pb.Host{})
			if err != nil {
				return nil, err
			}
			st.Labels = labels
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(s.hostKey(id)), "=", hresp.Kvs[0].ModRevision))
			ops = append(ops, clientv3.OpPut(s.hostKey(id), encode(st)))
		}
		return &txnPlan{cmps: cmps, ops: ops, events: []*pb.AuditEvent{s.newEvent(m, "hosts.label", HostName(id), before, after)}}, nil
	}, nil)
	if err != nil {
		return 0, err
	}
	return tr.Header.Revision, nil
}
