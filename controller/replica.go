package controller

// The replica's etcd session. One concurrency.Session per replica: its lease
// holds both the replica's key in the leader election (leader.go) and the
// sessions/{host} key of every agent stream it serves (hubowner.go). When
// the lease is lost — etcd unreachable for longer than its TTL — the
// session ends, and with it any leader work; a new session is made, the
// hosts served here are claimed again under its lease, and the replica
// campaigns again. When the controller stops, the lease is revoked, so that
// its hosts show as disconnected and another replica may lead at once.

import (
	"context"
	"time"

	"github.com/mpfleet/mpfleet/internal/wait"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// minSessionTTL is the shortest lease TTL in seconds: a lease of one second
// would be lost to one slow keepalive.
const minSessionTTL = 2

// runSession holds this replica's etcd session until ctx ends, making a new
// one whenever the last was lost.
func (c *Controller) runSession(ctx context.Context) {
	ttl := max(int(c.hub.opts.SessionTTL/time.Second), minSessionTTL)
	var lease clientv3.LeaseID
	for ctx.Err() == nil {
		sess, err := concurrency.NewSession(c.store.Client(), concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
		if err != nil || sess == nil {
			if ctx.Err() == nil {
				c.log.Warn("session lease", "err", err)
			}
			wait.Sleep(ctx, time.Second)
			continue
		}
		lease = sess.Lease()
		// sess.Ctx ends with the session (lease lost) or with ctx.
		reclaimed := make(chan struct{})
		go func() { defer close(reclaimed); c.hub.renewLease(sess.Ctx(), lease) }()
		c.runLeader(sess)
		<-reclaimed
		if ctx.Err() == nil {
			c.log.Warn("session lease lost; making a new session")
		}
	}
	// The session's own Close revokes with its context, which has ended:
	// revoke here, so that this replica's hosts show as disconnected and its
	// election key goes at once.
	if lease != 0 {
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, _ = c.store.Client().Revoke(rctx, lease)
		cancel()
	}
}
