package scale

// The do-it-yourself baseline: every agent holds its own etcd client and
// watch on the key of its group's desired configuration.

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/etcdtest"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
)

const (
	baseKey    = "/scale-benchmark/desired/" + groupID
	basePrefix = "/scale-benchmark/status/"
)

// runBaseline runs the baseline side on an etcd process of its own, so
// that its RSS is the watchers' alone.
func runBaseline(b *testing.B, dir, lgBin, etcdBin string, n int, res *results) {
	ctx := context.Background()
	etcd := startEtcd(b, etcdBin, dir, "etcd-baseline")
	ecli := etcdtest.Client(b, []string{etcd.endpoint})
	pid := etcd.p.pid()
	s := &side{name: "etcd", server: "etcd", changes: *changes}
	res.base = s
	s.idleKB = medianRSS(b, pid)

	statuses := followStatuses(b, ecli)
	put := func(rev int64, subflows uint32) (called, ret time.Time) {
		v, err := proto.Marshal(&pb.DesiredConfig{
			Assignment: pb.DesiredConfig_ASSIGNMENT_MANAGED, Group: "groups/" + groupID, Revision: rev, Policy: scalePolicy(subflows),
		})
		if err != nil {
			b.Fatal(err)
		}
		called = time.Now()
		if _, err := ecli.Put(ctx, baseKey, string(v)); err != nil {
			b.Fatalf("put the desired configuration: %v", err)
		}
		return called, time.Now()
	}
	put(1, 2)
	args := []string{"--etcd-endpoints", etcd.endpoint, "--etcd-key", baseKey, "--labels", "role=scale", "--log-level", "warn"}
	if *baselineWrites {
		args = append(args, "--etcd-status-prefix", basePrefix)
	}
	start := time.Now()
	lgs := startLoadgens(b, lgBin, dir, n, *loadgens, args...)
	wctx, cancel := context.WithTimeout(ctx, *waitLimit)
	defer cancel()
	if err := waitConnected(wctx, lgs, time.Time{}); err != nil {
		b.Fatalf("baseline watchers: %v", err)
	}
	if _, err := waitRevision(wctx, lgs, "groups/"+groupID, 1); err != nil {
		b.Fatalf("baseline watchers holding revision 1: %v", err)
	}
	if *baselineWrites {
		if _, err := statuses.wait(wctx, n, 1); err != nil {
			b.Fatalf("baseline statuses: %v", err)
		}
	}
	s.connect = time.Since(start)
	s.loadgenKB = loadgensRSS(b, lgs)
	s.loadedKB = medianRSS(b, pid)
	s.background = background(b, pid)

	rev0 := etcdRevision(b, ecli)
	cpu0, t0 := mustCPU(b, pid), time.Now()
	for k := range *changes {
		rev := int64(k + 2)
		called, ret := put(rev, uint32(3+k%5))
		s.call = append(s.call, ret.Sub(called))
		last, err := waitRevision(wctx, lgs, "groups/"+groupID, rev)
		if err != nil {
			b.Fatalf("baseline change %d: %v", k, err)
		}
		s.all = append(s.all, last.Sub(ret))
		if *baselineWrites {
			stored, err := statuses.wait(wctx, n, rev)
			if err != nil {
				b.Fatalf("baseline change %d: %v", k, err)
			}
			s.settle = append(s.settle, stored.Sub(ret))
		}
		lat, err := receiptLatencies(ctx, lgs, "groups/"+groupID, rev, called)
		if err != nil {
			b.Fatal(err)
		}
		s.agent = append(s.agent, lat...)
	}
	s.cpu, s.phase = mustCPU(b, pid)-cpu0, time.Since(t0)
	s.writes = etcdRevision(b, ecli) - rev0
	stopLoadgens(lgs)
}

// statusFollower counts, with one etcd watch on the baseline's status
// prefix, the agents whose status holds a revision.
type statusFollower struct {
	mu    sync.Mutex
	revs  map[string]int64 // status key → applied revision
	count map[int64]int    // applied revision → statuses holding it
	wake  chan struct{}
}

func followStatuses(b *testing.B, c *clientv3.Client) *statusFollower {
	f := &statusFollower{revs: map[string]int64{}, count: map[int64]int{}, wake: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	b.Cleanup(func() { cancel(); <-done })
	wch := c.Watch(ctx, basePrefix, clientv3.WithPrefix())
	go func() {
		defer close(done)
		for wr := range wch {
			f.mu.Lock()
			for _, ev := range wr.Events {
				h := &pb.Host{}
				if ev.Type == clientv3.EventTypePut && proto.Unmarshal(ev.Kv.Value, h) == nil {
					k := string(ev.Kv.Key)
					if old, ok := f.revs[k]; ok {
						f.count[old]--
					}
					f.revs[k] = h.GetAppliedRevision()
					f.count[h.GetAppliedRevision()]++
				}
			}
			close(f.wake)
			f.wake = make(chan struct{})
			f.mu.Unlock()
		}
	}()
	return f
}

// wait waits until n statuses hold rev and returns when the last came.
func (f *statusFollower) wait(ctx context.Context, n int, rev int64) (time.Time, error) {
	for {
		f.mu.Lock()
		c, wake := f.count[rev], f.wake
		f.mu.Unlock()
		if c >= n {
			return time.Now(), nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("%d of %d statuses at revision %d: %w", c, n, rev, ctx.Err())
		}
	}
}
