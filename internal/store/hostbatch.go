package store

import (
	"context"
	"fmt"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	etcdpb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Batched host writes. At fleet size one etcd transaction per host write —
// a status, the claim of a session key, its release — is more than etcd
// takes: WriteHosts commits the writes of many hosts in one transaction, one
// revision. A claim or a release keeps its own compare, nested in the
// transaction, so that one host's failed compare changes nothing of the
// others' writes.

// MaxHostBatch is the most hosts one WriteHosts call takes. etcd refuses a
// transaction of more than --max-txn-ops operations (default 128), counting
// along each path through nested transactions, and a claim nests two levels
// of at most two.
const MaxHostBatch = 120

// HostWrite is what WriteHosts writes of one host.
type HostWrite struct {
	ID string
	// Claim claims the host's session key for the replica, bound to Lease,
	// as ClaimSession does; Status is written only if the claim succeeds.
	Claim bool
	Lease clientv3.LeaseID
	// Status, if set, is stored as the host's status, as PutHost does.
	Status *pb.Host
	// Release deletes the host's session key if the replica holds it, as
	// DeleteSession does (Status is written either way).
	Release bool
}

// HostResult is the outcome of one HostWrite of a transaction that
// committed.
type HostResult struct {
	// Holder is the replica holding the host when a claim was refused.
	Holder string
	// Err wraps ErrAlreadyExists when a claim was refused.
	Err error
}

// WriteHosts commits ws, at most one write per host, in one transaction,
// and returns each write's outcome. An error means that nothing was written.
func (s *Store) WriteHosts(ctx context.Context, replica string, ws []HostWrite) ([]HostResult, error) {
	ops := make([]clientv3.Op, len(ws))
	values := make([]string, len(ws)) // the statuses encoded
	for i, w := range ws {
		op, v, err := s.hostWriteOp(replica, w)
		if err != nil {
			return nil, err
		}
		ops[i], values[i] = op, v
	}
	// Recorded before the commit: the watch may bring a write back before
	// the commit returns.
	for i, w := range ws {
		if w.Status != nil {
			s.written.put(w.ID, values[i], w.Status)
		}
	}
	resp, err := s.c.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		for i, w := range ws {
			s.written.drop(w.ID, values[i])
		}
		if len(ws) == 1 {
			return nil, fmt.Errorf("write host %q: %w", ws[0].ID, err)
		}
		return nil, fmt.Errorf("write %d hosts: %w", len(ws), err)
	}
	res := make([]HostResult, len(ws))
	for i, w := range ws {
		if w.Claim {
			res[i].Holder, res[i].Err = claimOutcome(w.ID, replica, resp.Responses[i].GetResponseTxn())
		}
		if res[i].Err != nil {
			s.written.drop(w.ID, values[i]) // not written
		}
	}
	return res, nil
}

// hostWriteOp is the operation of one host's write, and the status it
// puts, encoded.
func (s *Store) hostWriteOp(replica string, w HostWrite) (clientv3.Op, string, error) {
	hk, sk := s.hostKey(w.ID), s.sessionKey(w.ID)
	var puts []clientv3.Op
	var val string
	if w.Status != nil {
		val = encode(w.Status)
		puts = append(puts, clientv3.OpPut(hk, val))
	}
	holds := []clientv3.Cmp{clientv3.Compare(clientv3.Value(sk), "=", replica)}
	switch {
	case w.Claim && w.Release:
		return clientv3.Op{}, "", fmt.Errorf("host %q: a write cannot both claim and release the session: %w", w.ID, ErrFailedPrecondition)
	case w.Claim:
		// Free, or held by this replica already (under an older lease):
		// claim it; else read who holds it.
		then := append([]clientv3.Op{clientv3.OpPut(sk, replica, clientv3.WithLease(w.Lease))}, puts...)
		return clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(sk), "=", 0)}, then,
			[]clientv3.Op{clientv3.OpTxn(holds, then, []clientv3.Op{clientv3.OpGet(sk)})}), val, nil
	case w.Release:
		return clientv3.OpTxn(holds, append(puts, clientv3.OpDelete(sk)), puts), val, nil
	case w.Status != nil:
		return puts[0], val, nil
	}
	return clientv3.Op{}, "", fmt.Errorf("host %q: nothing to write: %w", w.ID, ErrFailedPrecondition)
}

// claimOutcome reads the outcome of a claim from its nested transaction's
// response.
func claimOutcome(id, replica string, tr *etcdpb.TxnResponse) (string, error) {
	if tr.GetSucceeded() {
		return replica, nil
	}
	var inner *etcdpb.TxnResponse
	if rs := tr.GetResponses(); len(rs) > 0 {
		inner = rs[0].GetResponseTxn()
	}
	if inner.GetSucceeded() {
		return replica, nil
	}
	if rs := inner.GetResponses(); len(rs) > 0 {
		if kvs := rs[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
			holder := string(kvs[0].Value)
			return holder, fmt.Errorf("host %q: its stream is held by controller replica %q: %w", id, holder, ErrAlreadyExists)
		}
	}
	// The compares and the read are one transaction: the key cannot have
	// gone between them.
	return "", fmt.Errorf("claim session %q: refused, but no holder read: %w", id, ErrContention)
}
