package store

import (
	"context"
	"fmt"
	"slices"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// maxAttempts bounds retries of a transaction that lost a race for the audit
// chain head.
const maxAttempts = 64

// txnPlan is one attempt at an audited write: the write's own compares
// and ops, the audit events that go with it (none: the transaction does
// not touch the audit chain) and what the transaction reads when a compare
// fails.
type txnPlan struct {
	cmps   []clientv3.Cmp
	ops    []clientv3.Op
	events []*pb.AuditEvent
	orElse []clientv3.Op
}

// auditedTxn commits an audited write: its compares and ops, and the puts
// that append its events to the audit chain under a compare on the chain
// head, in one transaction. Every attempt reads the head and asks plan for
// the transaction; a nil plan means there is nothing to write (auditedTxn
// returns nil, nil), an error ends the write. When the transaction fails,
// failed (if not nil) looks at the response: an error from it ends the
// write (one of the write's own compares failed); nil means another write
// took the chain head, and the write is retried after a backoff, up to
// maxAttempts (then ErrContention). what names the write in errors.
func (s *Store) auditedTxn(ctx context.Context, what string, plan func(h head) (*txnPlan, error), failed func(*clientv3.TxnResponse) error) (*clientv3.TxnResponse, error) {
	for attempt := 0; attempt < maxAttempts; attempt++ {
		h, err := s.readHead(ctx)
		if err != nil {
			return nil, err
		}
		p, err := plan(h)
		if err != nil || p == nil {
			return nil, err
		}
		cmps, ops := p.cmps, p.ops
		if len(p.events) > 0 {
			hcmp, hops, err := s.auditOpsN(p.events, h)
			if err != nil {
				return nil, err
			}
			cmps = append(slices.Clip(cmps), hcmp)
			ops = append(slices.Clip(ops), hops...)
		}
		resp, err := s.c.Txn(ctx).If(cmps...).Then(ops...).Else(p.orElse...).Commit()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		if resp.Succeeded {
			return resp, nil
		}
		if failed != nil {
			if err := failed(resp); err != nil {
				return nil, err
			}
		}
		if err := backoff(ctx, attempt); err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("%s: %w", what, ErrContention)
}
