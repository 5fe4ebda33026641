package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	etcdpb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
)

// A guarded request to an etcd that does not answer fails with
// ErrUnavailable after the guard's timeout, not the caller's deadline; while
// the store is marked down it fails at once; the caller's own deadline stays
// a deadline.
func TestGuard(t *testing.T) {
	// Nothing listens on the port.
	c := etcdtest.Client(t, []string{fmt.Sprintf("http://127.0.0.1:%d", etcdtest.FreePort(t))})
	g := store.NewGuard(300 * time.Millisecond)
	kv := g.KV(c.KV)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	start := time.Now()
	_, err := kv.Get(ctx, "k")
	if !errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), "no answer from etcd within 300ms") {
		t.Fatalf("get from nobody: err = %v, want ErrUnavailable after the guard's timeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("get from nobody took %s", d)
	}
	start = time.Now()
	_, err = kv.Txn(ctx).If(clientv3.Compare(clientv3.Version("k"), "=", 0)).Then(clientv3.OpPut("k", "v")).Commit()
	if !errors.Is(err, store.ErrUnavailable) || time.Since(start) > 5*time.Second {
		t.Fatalf("txn to nobody: err = %v after %s, want ErrUnavailable", err, time.Since(start))
	}

	// The caller's deadline, shorter than the guard's, is the caller's.
	short, scancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err = store.NewGuard(10*time.Second).KV(c.KV).Get(short, "k")
	scancel()
	if errors.Is(err, store.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("get with a short deadline: err = %v, want the caller's deadline", err)
	}

	g.SetDown(errors.New("probes unanswered"))
	start = time.Now()
	if _, err := kv.Put(ctx, "k", "v"); !errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), "probes unanswered") {
		t.Fatalf("put while down: err = %v", err)
	}
	if d := time.Since(start); d > 50*time.Millisecond {
		t.Fatalf("put while down took %s, want at once", d)
	}
	g.SetDown(nil)
	if _, err := kv.Put(ctx, "k", "v"); err == nil || strings.Contains(err.Error(), "probes unanswered") {
		t.Fatalf("put after up again: err = %v, want a real attempt", err)
	}
}

// fill writes 1 KiB values under /junk/, a hundred a transaction, until
// etcd refuses with NOSPACE. (Small values: large ones leave much of
// etcd's backend in free pages, so that a recovery finds room.)
func fill(ctx context.Context, t *testing.T, kv clientv3.KV) {
	t.Helper()
	val := strings.Repeat("x", 1<<10)
	var mu sync.Mutex
	var nospace error
	var wg sync.WaitGroup
	run := time.Now().UnixNano()
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100000; i++ {
				ops := make([]clientv3.Op, 100)
				for j := range ops {
					ops[j] = clientv3.OpPut(fmt.Sprintf("/junk/%d/%d/%d/%d", run, w, i, j), val)
				}
				if _, err := kv.Txn(ctx).Then(ops...).Commit(); err != nil {
					mu.Lock()
					if nospace == nil {
						nospace = err
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	if !errors.Is(nospace, store.ErrNoSpace) {
		t.Fatalf("filling etcd: err = %v, want ErrNoSpace", nospace)
	}
}

// An embedded member with a small quota fills up, raises NOSPACE and refuses
// writes; RecoverSpace will not disarm while the data fills the quota, and
// does once it is deleted: compaction, defragmentation over the member's
// unix socket, disarm; writes work again.
func TestRecoverSpace(t *testing.T) {
	e, err := store.StartEmbedded(context.Background(), store.EmbedConfig{DataDir: t.TempDir(), QuotaBytes: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	c := etcdtest.Client(t, e.Endpoints())
	c.KV = store.NewGuard(5 * time.Second).KV(c.KV)
	s := store.New(c, "/test/")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// Nothing to do without the alarm.
	if rep, err := s.RecoverSpace(ctx); err != nil || len(rep.NoSpace) != 0 || rep.CompactedTo != 0 {
		t.Fatalf("recover without an alarm = %+v, %v", rep, err)
	}
	// Fill it until what is in use fills the quota: a fill leaves free
	// pages in the backend, which a recovery finds room in (and writes fill
	// again).
	var rep store.SpaceReport
	for round := 0; ; round++ {
		if round == 4 {
			t.Fatalf("etcd never filled its quota: %+v", rep)
		}
		fill(ctx, t, c.KV)
		alarms, err := s.Alarms(ctx)
		if err != nil || len(alarms) != 1 || alarms[0].Alarm != etcdpb.AlarmType_NOSPACE {
			t.Fatalf("alarms = %v, %v; want NOSPACE", alarms, err)
		}
		if _, _, err := s.CreateGroup(ctx, "web", group(2), meta); !errors.Is(err, store.ErrNoSpace) {
			t.Fatalf("create under NOSPACE: err = %v, want ErrNoSpace", err)
		}
		rep, err = s.RecoverSpace(ctx)
		if rep.CompactedTo == 0 || len(rep.Members) != 1 || rep.Members[0].Quota != 16<<20 {
			t.Fatalf("recover = %+v, %v; want compacted, the member's quota", rep, err)
		}
		if err == nil {
			if !rep.Disarmed {
				t.Fatalf("recover = %+v without an error, not disarmed", rep)
			}
			continue // there was room: fill again
		}
		if !errors.Is(err, store.ErrNoSpace) || rep.Disarmed {
			t.Fatalf("recover while full = %+v, %v; want ErrNoSpace, not disarmed", rep, err)
		}
		t.Logf("full after %d fills: %+v", round+1, rep.Members[0])
		break
	}
	if alarms, _ := s.Alarms(ctx); len(alarms) != 1 {
		t.Fatalf("alarm disarmed while full: %v", alarms)
	}

	// Deletes work under the alarm.
	if _, err := c.Delete(ctx, "/junk/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error
		rep, err = s.RecoverSpace(ctx)
		if err == nil {
			break
		}
		if !errors.Is(err, store.ErrNoSpace) || time.Now().After(deadline) {
			t.Fatalf("recover after deleting: %+v, %v", rep, err)
		}
		time.Sleep(200 * time.Millisecond) // the backend's in-use size follows its commits
	}
	m := rep.Members[0]
	if !rep.Disarmed || m.Defragmented == 0 || m.Defragmented >= m.Size || m.Endpoint != e.Endpoints()[0] {
		t.Fatalf("recover after deleting = %+v, want defragmented and disarmed", rep)
	}
	if alarms, err := s.Alarms(ctx); err != nil || len(alarms) != 0 {
		t.Fatalf("alarms after recovery = %v, %v", alarms, err)
	}
	if _, _, err := s.CreateGroup(ctx, "web", group(2), meta); err != nil {
		t.Fatalf("create after recovery: %v", err)
	}
}

// AuditSize sums a small log exactly and estimates a large one from
// samples; AuditSeqFreeing finds how far to prune to free some bytes.
func TestAuditSize(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	if size, err := s.AuditSize(ctx); err != nil || size != (store.AuditSize{Exact: true}) {
		t.Fatalf("empty log: %+v, %v", size, err)
	}
	var sizes []uint64
	var total uint64
	for i := 0; i < 40; i++ {
		// Events of growing size: a sample must be spread to see them.
		ev, err := s.AppendAudit(ctx, &pb.AuditEvent{Actor: "alice", Action: "test", Reason: strings.Repeat("r", 10*i)})
		if err != nil {
			t.Fatal(err)
		}
		n := uint64(proto.Size(ev))
		sizes = append(sizes, n)
		total += n
	}
	size, err := s.AuditSize(ctx)
	if err != nil || size.Events != 40 || size.Bytes != total || !size.Exact {
		t.Fatalf("exact size = %+v, %v; want 40 events of %d bytes", size, err, total)
	}
	defer store.SetAuditSampling(10, 4, 2)()
	size, err = s.AuditSize(ctx)
	if err != nil || size.Events != 40 || size.Exact {
		t.Fatalf("sampled size = %+v, %v", size, err)
	}
	if lo, hi := total*3/4, total*5/4; size.Bytes < lo || size.Bytes > hi {
		t.Fatalf("sampled size %d bytes, want about %d", size.Bytes, total)
	}
	// Freeing the first three events' bytes, and one more byte.
	three := sizes[0] + sizes[1] + sizes[2]
	for _, tc := range []struct{ n, want uint64 }{{0, 0}, {1, 1}, {three, 3}, {three + 1, 4}, {total * 2, 40}} {
		if got, err := s.AuditSeqFreeing(ctx, tc.n); err != nil || got != tc.want {
			t.Errorf("AuditSeqFreeing(%d) = %d, %v; want %d", tc.n, got, err, tc.want)
		}
	}
}
