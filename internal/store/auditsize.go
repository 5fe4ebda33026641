package store

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// AuditSize is the audit log's size: how many events it retains and the
// bytes of their stored values.
type AuditSize struct {
	Events uint64
	// Bytes is the sum of the events' value sizes: exact when Exact, else
	// estimated from samples spread over the log.
	Bytes uint64
	Exact bool
}

// Sampling: logs of up to auditExactEvents events are summed exactly;
// larger ones are sampled in auditSampleWindows runs of auditSampleRun
// consecutive events spread evenly from the oldest to the newest (a
// variable for the tests).
var (
	auditExactEvents   uint64 = 4096
	auditSampleWindows uint64 = 32
	auditSampleRun     uint64 = 32
)

// AuditSize returns the number of retained audit events and the bytes
// their values take, estimated for a large log: etcd keeps no sizes, and
// reading every value of a log of hundreds of MiB on every retention pass
// would cost more than it saves. What etcd's backend holds for them is
// larger (keys, revisions until the next compaction, bbolt's overhead).
func (s *Store) AuditSize(ctx context.Context) (AuditSize, error) {
	resp, err := s.c.Get(ctx, s.auditPrefix(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return AuditSize{}, fmt.Errorf("audit size: %w", err)
	}
	n := uint64(resp.Count)
	if n == 0 {
		return AuditSize{Exact: true}, nil
	}
	var sum, seen uint64
	add := func(limit uint64) func(uint64, int) bool {
		var k uint64
		return func(_ uint64, size int) bool {
			sum += uint64(size)
			seen++
			k++
			return limit == 0 || k < limit
		}
	}
	if n <= auditExactEvents {
		err := s.scanAudit(ctx, s.auditPrefix(), 512, add(0))
		return AuditSize{Events: n, Bytes: sum, Exact: true}, err
	}
	first, last, err := s.AuditRange(ctx)
	if err != nil {
		return AuditSize{}, err
	}
	span := last - first + 1
	for i := uint64(0); i < auditSampleWindows; i++ {
		if err := s.scanAudit(ctx, s.auditKey(first+span*i/auditSampleWindows), int64(auditSampleRun), add(auditSampleRun)); err != nil {
			return AuditSize{}, err
		}
	}
	if seen == 0 {
		return AuditSize{Events: n}, nil
	}
	return AuditSize{Events: n, Bytes: sum * n / seen}, nil
}

// AuditSeqFreeing returns the sequence up to which the oldest audit events'
// values hold at least n bytes together (the newest event's sequence if
// all of them hold less; 0 for an empty log): pruning up to it frees n
// bytes.
func (s *Store) AuditSeqFreeing(ctx context.Context, n uint64) (uint64, error) {
	if n == 0 {
		return 0, nil
	}
	var sum, last uint64
	err := s.scanAudit(ctx, s.auditPrefix(), 512, func(seq uint64, size int) bool {
		sum += uint64(size)
		last = seq
		return sum < n
	})
	return last, err
}

// scanAudit calls fn with the sequence and value size of every audit event
// from key from on, oldest first, until fn returns false, reading chunk
// events at a time.
func (s *Store) scanAudit(ctx context.Context, from string, chunk int64, fn func(seq uint64, size int) bool) error {
	end := clientv3.GetPrefixRangeEnd(s.auditPrefix())
	for {
		resp, err := s.c.Get(ctx, from, clientv3.WithRange(end), clientv3.WithLimit(chunk))
		if err != nil {
			return fmt.Errorf("audit size: %w", err)
		}
		for _, kv := range resp.Kvs {
			seq, err := strconv.ParseUint(strings.TrimPrefix(string(kv.Key), s.auditPrefix()), 10, 64)
			if err != nil {
				return fmt.Errorf("audit size: key %q: %w", kv.Key, ErrCorrupt)
			}
			if !fn(seq, len(kv.Value)) {
				return nil
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}
