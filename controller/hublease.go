package controller

// The session lease: every agent stream this replica holds is a
// sessions/{host} key bound to the lease of the replica's etcd session.

import (
	"context"
	"sync"
	"time"

	"github.com/mpfleet/mpfleet/internal/wait"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// renewLease binds this replica's session keys to lease, that of the
// replica's new etcd session (replica.go), and claims again under it the
// hosts served here: they were held under a lease that was lost.
func (h *hub) renewLease(ctx context.Context, lease clientv3.LeaseID) {
	h.mu.Lock()
	h.lease = lease
	ids := make([]string, 0, len(h.sessions))
	for hid := range h.sessions {
		ids = append(ids, hid)
	}
	h.mu.Unlock()
	// Many at once, so that the writer batches them.
	sem := make(chan struct{}, reclaimsAtOnce)
	var wg sync.WaitGroup
	for _, hid := range ids {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			h.reclaim(ctx, hid, lease)
		}()
	}
	wg.Wait()
}

// reclaimsAtOnce bounds the claims renewLease has waiting at once: enough
// to fill the writer's transactions.
const reclaimsAtOnce = 4 * batchesInFlight * 120

// currentLease waits for the replica's first session and returns its lease.
func (h *hub) currentLease(ctx context.Context) (clientv3.LeaseID, error) {
	for {
		h.mu.Lock()
		id := h.lease
		h.mu.Unlock()
		if id != 0 {
			return id, nil
		}
		if !wait.Sleep(ctx, 20*time.Millisecond) {
			return 0, ctx.Err()
		}
	}
}
