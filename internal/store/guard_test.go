package store_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/store"
)

// TestGuardObserve: the guard's observer hears of every request of its
// KV, by operation, with how it ended — a request the guard fails at once
// (etcd known down) included.
func TestGuardObserve(t *testing.T) {
	_, cli := etcdtest.Embedded(t)
	g := store.NewGuard(5 * time.Second)
	type seen struct {
		op  string
		err error
	}
	var mu sync.Mutex
	var got []seen
	g.Observe(func(_ context.Context, op string, took time.Duration, err error) {
		if took < 0 {
			t.Errorf("%s took %v", op, took)
		}
		mu.Lock()
		got = append(got, seen{op, err})
		mu.Unlock()
	})
	kv := g.KV(cli.KV)
	ctx := t.Context()
	if _, err := kv.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Txn(ctx).Then().Commit(); err != nil {
		t.Fatal(err)
	}
	down := errors.New("etcd is unreachable")
	g.SetDown(down)
	if _, err := kv.Delete(ctx, "k"); err == nil {
		t.Fatal("Delete while the guard knows etcd down: no error")
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{"put", "get", "txn", "delete"}
	if len(got) != len(want) {
		t.Fatalf("observed %v, want the operations %v", got, want)
	}
	for i, w := range want {
		if got[i].op != w {
			t.Errorf("observation %d: op %q, want %q", i, got[i].op, w)
		}
		if failed := got[i].err != nil; failed != (w == "delete") {
			t.Errorf("observation %d (%s): err %v", i, w, got[i].err)
		}
	}
}
