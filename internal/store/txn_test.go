package store_test

import (
	"context"
	"errors"
	"testing"

	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func auditEvent(action string) *pb.AuditEvent {
	return &pb.AuditEvent{Actor: "test", Action: action}
}

// checkChain verifies the audit chain and that it holds n events.
func checkChain(t *testing.T, s *store.Store, n uint64) {
	t.Helper()
	v, err := s.VerifyAudit(context.Background())
	if err != nil || !v.Ok || v.EventsChecked != n || v.LastSequence != n {
		t.Fatalf("verify = %v, %v; want ok with %d events", v, err, n)
	}
}

func keyExists(t *testing.T, c *clientv3.Client, key string) bool {
	t.Helper()
	resp, err := c.Get(context.Background(), "/test/"+key, clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count > 0
}

// TestAuditedTxnRetriesALostHead: a write that loses the audit chain head
// to another between its read and its commit tries again, and both events
// are chained.
func TestAuditedTxnRetriesALostHead(t *testing.T) {
	s, c := newStore(t)
	ctx := context.Background()
	attempts := 0
	rev, err := s.AuditedPut(ctx, "k", "v", auditEvent("test.put"), false, func(attempt int) (bool, error) {
		attempts++
		if attempt == 0 {
			_, err := s.AppendAudit(ctx, auditEvent("test.other"))
			return false, err
		}
		return false, nil
	})
	if err != nil || rev == 0 {
		t.Fatalf("put: rev %d, %v", rev, err)
	}
	if attempts != 2 {
		t.Errorf("%d attempts, want 2 (one lost to the other write)", attempts)
	}
	if !keyExists(t, c, "k") {
		t.Error("the key was not written")
	}
	checkChain(t, s, 2)
}

// TestAuditedTxnOwnCompareEnds: a compare of the write itself that fails
// ends it at once, with nothing written.
func TestAuditedTxnOwnCompareEnds(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	if _, err := s.AuditedPut(ctx, "k", "v1", auditEvent("test.put"), true, func(int) (bool, error) { return false, nil }); err != nil {
		t.Fatal(err)
	}
	attempts := 0
	_, err := s.AuditedPut(ctx, "k", "v2", auditEvent("test.put"), true, func(int) (bool, error) { attempts++; return false, nil })
	if !errors.Is(err, store.ErrAlreadyExists) || attempts != 1 {
		t.Fatalf("second put: %v after %d attempts, want ErrAlreadyExists after 1", err, attempts)
	}
	checkChain(t, s, 1)
}

// TestAuditedTxnNothingToWrite: a plan with nothing to write writes
// nothing, not even an audit event; a plan's error ends the write.
func TestAuditedTxnNothingToWrite(t *testing.T) {
	s, c := newStore(t)
	ctx := context.Background()
	if _, err := s.AppendAudit(ctx, auditEvent("test.first")); err != nil {
		t.Fatal(err)
	}
	rev, err := s.AuditedPut(ctx, "k", "v", auditEvent("test.put"), false, func(int) (bool, error) { return true, nil })
	if err != nil || rev != 0 {
		t.Fatalf("skipped put: rev %d, %v", rev, err)
	}
	boom := errors.New("boom")
	if _, err := s.AuditedPut(ctx, "k", "v", auditEvent("test.put"), false, func(int) (bool, error) { return false, boom }); !errors.Is(err, boom) {
		t.Fatalf("failed plan: %v, want boom", err)
	}
	if keyExists(t, c, "k") {
		t.Error("a write with nothing to write wrote the key")
	}
	checkChain(t, s, 1)
}

// TestAuditedTxnContention: a write that loses the head on every attempt
// gives up with ErrContention after MaxAttempts, having written nothing.
func TestAuditedTxnContention(t *testing.T) {
	s, c := newStore(t)
	ctx := context.Background()
	attempts := 0
	_, err := s.AuditedPut(ctx, "k", "v", auditEvent("test.put"), false, func(int) (bool, error) {
		attempts++
		_, err := s.AppendAudit(ctx, auditEvent("test.other"))
		return false, err
	})
	if !errors.Is(err, store.ErrContention) || attempts != store.MaxAttempts {
		t.Fatalf("%v after %d attempts, want ErrContention after %d", err, attempts, store.MaxAttempts)
	}
	if keyExists(t, c, "k") {
		t.Error("the key was written")
	}
	checkChain(t, s, store.MaxAttempts)
}
