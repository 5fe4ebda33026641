package controller_test

import (
	"context"
	"strings"
	"testing"
	"time"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestSessionLeaseLost: one lease holds the replica's place in the leader
// election and its agents' session keys. When that lease is lost (revoked
// here, as etcd does when it expires), the replica makes a new session,
// claims its host again under the new lease — the agent's stream goes on —
// and leads again under it.
func TestSessionLeaseLost(t *testing.T) {
	e := start(t)
	ctx := ctxT(t)
	a := connectAgent(t, e.agents, "web-1", map[string]string{"role": "web"}, false)
	a.waitFor(t, "a desired configuration", func(*pb.DesiredConfig) bool { return true })

	first := waitLeases(t, e.etcd, func(session, leader clientv3.LeaseID) bool { return session != 0 && session == leader })
	if _, err := e.etcd.Revoke(ctx, first); err != nil {
		t.Fatal(err)
	}
	renewed := waitLeases(t, e.etcd, func(session, leader clientv3.LeaseID) bool {
		return session != 0 && session != first && session == leader
	})
	if renewed == first {
		t.Fatalf("lease %x after the loss, want a new one", renewed)
	}
	select {
	case <-a.done:
		t.Fatalf("the agent's stream ended with the lease: %v", a.err)
	default:
	}
}

// waitLeases waits, following etcd's events, until cond holds for the leases
// of web-1's session key and of the leader election's key (0: no key), and
// returns the session key's.
func waitLeases(t *testing.T, cli *clientv3.Client, cond func(session, leader clientv3.LeaseID) bool) clientv3.LeaseID {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var w clientv3.WatchChan
	for {
		resp, err := cli.Get(ctx, "/mpfleet/v1/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			t.Fatalf("leases of the session and leader keys: %v", err)
		}
		var session, leader clientv3.LeaseID
		for _, kv := range resp.Kvs {
			switch k := string(kv.Key); {
			case k == "/mpfleet/v1/sessions/web-1":
				session = clientv3.LeaseID(kv.Lease)
			case strings.HasPrefix(k, "/mpfleet/v1/leader/"):
				leader = clientv3.LeaseID(kv.Lease)
			}
		}
		if cond(session, leader) {
			return session
		}
		if w == nil {
			w = cli.Watch(ctx, "/mpfleet/v1/", clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
		}
		if wr, ok := <-w; !ok || wr.Err() != nil {
			t.Fatalf("no change of the session and leader keys (session lease %x, leader lease %x): %v", session, leader, ctx.Err())
		}
	}
}
