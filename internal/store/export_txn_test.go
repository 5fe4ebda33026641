package store

import (
	"context"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// MaxAttempts is how often an audited write tries before ErrContention.
const MaxAttempts = maxAttempts

// AuditedPut puts key (under the prefix) with ev through auditedTxn.
// onPlan runs in every attempt's plan, before the transaction: skip
// leaves nothing to write, an error ends the write. With ifAbsent the
// write compares that the key does not exist, and fails with
// ErrAlreadyExists when it does. It returns the revision of the write (0
// when skipped).
func (s *Store) AuditedPut(ctx context.Context, key, value string, ev *pb.AuditEvent, ifAbsent bool, onPlan func(attempt int) (skip bool, err error)) (int64, error) {
	key = s.prefix + key
	attempt := 0
	resp, err := s.auditedTxn(ctx, "put "+key, func(head) (*txnPlan, error) {
		skip, err := onPlan(attempt)
		attempt++
		if skip || err != nil {
			return nil, err
		}
		p := &txnPlan{ops: []clientv3.Op{clientv3.OpPut(key, value)}, events: []*pb.AuditEvent{ev}}
		if ifAbsent {
			p.cmps = []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)}
			p.orElse = []clientv3.Op{clientv3.OpGet(key, clientv3.WithCountOnly())}
		}
		return p, nil
	}, func(resp *clientv3.TxnResponse) error {
		if ifAbsent && resp.Responses[0].GetResponseRange().Count > 0 {
			return ErrAlreadyExists
		}
		return nil
	})
	if err != nil || resp == nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}
