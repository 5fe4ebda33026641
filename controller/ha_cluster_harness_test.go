package controller_test

// The harness of the HA tests against a 3-member etcd cluster of separate
// processes (ha_cluster_test.go): controller replicas that can crash and
// start again, real agents on fake kernels, and waits on etcd's events.

import (
	"context"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/agent"
	"github.com/mpfleet/mpfleet/controller"
	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/nstest"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/reconcile/fakekernel"
	"github.com/mpfleet/mpfleet/internal/route"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// clusterTTL is the replicas' session lease TTL: how long a crashed
// replica still holds its hosts and its place in the leader election.
const clusterTTL = 2 * time.Second

// etcdCluster starts a 3-member etcd cluster of separate processes, or
// skips (fails under CI=true) without an etcd binary.
func etcdCluster(t *testing.T) *etcdtest.Cluster {
	t.Helper()
	bin := etcdtest.Binary(t)
	if bin == "" {
		nstest.Skip(t, "no etcd server binary: run `make tools` (builds .tools/bin/etcd) or set MPFLEET_ETCD_BIN")
	}
	return etcdtest.StartCluster(t, bin, 3)
}

// clusterReplica is a controller replica in the test process on its own
// etcd client, wired as Run wires one (guarded store, cache, controller,
// gRPC server), with a short session TTL. Run has no flag for the TTL and,
// stopped, revokes its lease: that is a clean stop. crash is a crash: the
// lease is left to expire, the streams are cut.
type clusterReplica struct {
	t         *testing.T
	name      string
	addr      string
	endpoints []string
	ttl       time.Duration
	log       *syncBuf // every run's log, info and up

	// While running:
	conn   *grpc.ClientConn
	cli    *clientv3.Client
	srv    *grpc.Server
	cancel context.CancelFunc
	done   chan struct{} // closed when the cache and the controller's work ended
	served chan struct{} // closed when the server ended
}

// startReplica starts replica name on a loopback port of its own, with
// etcd at endpoints.
func startReplica(t *testing.T, name string, endpoints []string, ttl time.Duration) *clusterReplica {
	t.Helper()
	r := &clusterReplica{t: t, name: name, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(etcdtest.FreePort(t))),
		endpoints: endpoints, ttl: ttl, log: &syncBuf{}}
	t.Cleanup(r.stop)
	r.start()
	return r
}

// start runs the replica (again, on the same address and with the same
// name, after crash or stop) and returns once it serves.
func (r *clusterReplica) start() {
	t := r.t
	t.Helper()
	if r.cli != nil {
		t.Fatalf("replica %s already running", r.name)
	}
	r.reap()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: r.endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		// As Run: reconnect within seconds once a member is back.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		})},
	})
	if err != nil {
		t.Fatalf("replica %s: etcd client: %v", r.name, err)
	}
	guard := store.NewGuard(5 * time.Second)
	cli.KV = guard.KV(cli.KV)
	st := store.New(cli, store.DefaultPrefix)
	log := slog.New(slog.NewTextHandler(r.log, &slog.HandlerOptions{Level: slog.LevelInfo})).With("replica", r.name)
	cache := store.NewCache(st, log.With("component", "cache"))
	c := controller.New(st, cache, controller.Options{Log: log, Store: controller.StoreHealthOptions{Guard: guard},
		Hub: controller.HubOptions{Replica: r.name, SessionTTL: r.ttl}})
	srv, _ := c.NewServer(controller.ServerOptions{})
	lis, err := net.Listen("tcp", r.addr)
	if err != nil {
		cli.Close()
		t.Fatalf("replica %s: %v", r.name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = cache.Run(ctx) })
	wg.Go(func() { c.Run(ctx) })
	done, served := make(chan struct{}), make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	go func() { defer close(served); _ = srv.Serve(lis) }()
	conn, err := grpc.NewClient(r.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	r.conn, r.cli, r.srv, r.cancel, r.done, r.served = conn, cli, srv, cancel, done, served
	wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer wcancel()
	if err := cache.WaitRevision(wctx, 1); err != nil {
		t.Fatalf("replica %s: cache not filled: %v\n%s", r.name, err, r.log.String())
	}
}

// crash ends the replica as a crash would: its etcd client goes first, so
// that nothing more reaches etcd (the session lease is neither kept alive
// nor revoked, and expires within the TTL; the leader key and the session
// keys stay until then), then every connection is cut. It returns at once;
// what the replica ran ends in the background (its requests on the closed
// client fail only at their deadline), and is waited for by the next start,
// or when the test ends.
func (r *clusterReplica) crash() {
	if r.cli == nil {
		return
	}
	r.cli.Close()
	r.srv.Stop()
	r.cancel()
	r.conn.Close()
	r.cli, r.conn, r.srv = nil, nil, nil
}

// stop stops the replica cleanly, as Run does with --drain-rate 0: its
// streams end (their hosts released at once), then its work, and its lease
// is revoked (its leader key goes at once).
func (r *clusterReplica) stop() {
	if r.cli == nil {
		r.reap()
		return
	}
	r.srv.Stop()
	r.cancel()
	r.reap()
	r.cli.Close()
	r.conn.Close()
	r.cli, r.conn, r.srv = nil, nil, nil
}

// reap waits until everything the replica last ran has ended.
func (r *clusterReplica) reap() {
	if r.done == nil {
		return
	}
	r.wait(r.done)
	r.wait(r.served)
	r.cancel, r.done, r.served = nil, nil, nil
}

func (r *clusterReplica) wait(ch chan struct{}) {
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		r.t.Fatalf("replica %s did not stop within 30s\n%s", r.name, r.log.String())
	}
}

func (r *clusterReplica) groups() pb.GroupServiceClient { return pb.NewGroupServiceClient(r.conn) }

// env is the replica as the single-controller helpers take it
// (connectReporting, waitHost, waitRollout, changePolicy).
func (r *clusterReplica) env() *env {
	return &env{conn: r.conn, groups: r.groups(), audit: pb.NewAuditServiceClient(r.conn),
		hosts: pb.NewHostServiceClient(r.conn), agents: pb.NewAgentServiceClient(r.conn), addr: r.addr}
}

// clusterAgent is a real agent on a fake kernel with one Ethernet link.
type clusterAgent struct {
	k      *fakekernel.Kernel
	passes chan struct{} // cap 1: a reconcile pass ended
}

// startClusterAgent runs agent id (labels role=web), given the addresses of
// replicas, until the test ends.
func startClusterAgent(t *testing.T, id string, replicas ...*clusterReplica) *clusterAgent {
	t.Helper()
	var addrs []string
	for _, r := range replicas {
		addrs = append(addrs, r.addr)
	}
	k := fakekernel.New(route.Range{})
	k.SetLinks(map[int]string{1: "lo", 2: "eth0"})
	ca := &clusterAgent{k: k, passes: make(chan struct{}, 1)}
	a, err := agent.New(agent.Options{
		HostID: id, Labels: map[string]string{"role": "web"}, Controller: strings.Join(addrs, ","),
		StateDir: t.TempDir(), ResyncInterval: time.Hour, ReportInterval: time.Hour, ConfirmTimeout: 30 * time.Second,
		BackoffMin: 200 * time.Millisecond, BackoffMax: time.Second, ConnectTimeout: 2 * time.Second,
		Kernel: func(route.Range) (reconcile.Kernel, error) { return k, nil }, System: haSystem{},
		OnReconcile: func(agent.Pass) {
			select {
			case ca.passes <- struct{}{}:
			default:
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return ca
}

// waitSubflows waits, pass by pass, until the agent's kernel holds the
// subflows limit n (each revision of the tests' group has its own).
func (a *clusterAgent) waitSubflows(t *testing.T, n uint32, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for {
		l := a.k.Snapshot().Limits
		if l != nil && l.Subflows == n {
			return
		}
		select {
		case <-a.passes:
		case <-deadline:
			t.Fatalf("the agent's kernel has limits %+v %s after the change, want %d subflows", l, within, n)
		}
	}
}

// waitKey waits, following etcd's events, until cond holds for key's value
// ("" when there is none), and returns the value.
func waitKey(t *testing.T, cli *clientv3.Client, key string, within time.Duration, cond func(string) bool) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	resp, err := cli.Get(ctx, key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	v := ""
	if len(resp.Kvs) > 0 {
		v = string(resp.Kvs[0].Value)
	}
	w := cli.Watch(ctx, key, clientv3.WithRev(resp.Header.Revision+1))
	for !cond(v) {
		wr, ok := <-w
		if !ok || wr.Err() != nil {
			t.Fatalf("%s is %q after %s: %v", key, v, within, ctx.Err())
		}
		for _, ev := range wr.Events {
			v = ""
			if ev.Type == clientv3.EventTypePut {
				v = string(ev.Kv.Value)
			}
		}
	}
	return v
}

// waitHolder waits until host id's stream is held by replica want.
func waitHolder(t *testing.T, cli *clientv3.Client, id, want string, within time.Duration) {
	t.Helper()
	waitKey(t, cli, store.DefaultPrefix+"sessions/"+id, within, func(v string) bool { return v == want })
}

// leaderReplica waits until a replica other than not leads (the oldest key
// in the election), and returns its name.
func leaderReplica(t *testing.T, cli *clientv3.Client, not string, within time.Duration) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	prefix := store.DefaultPrefix + "leader/"
	var w clientv3.WatchChan
	for {
		resp, err := cli.Get(ctx, prefix, clientv3.WithFirstCreate()...)
		if err != nil {
			t.Fatalf("leader: %v", err)
		}
		if len(resp.Kvs) > 0 && string(resp.Kvs[0].Value) != not {
			return string(resp.Kvs[0].Value)
		}
		if w == nil {
			w = cli.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
		}
		if wr, ok := <-w; !ok || wr.Err() != nil {
			t.Fatalf("no replica but %q leads after %s", not, within)
		}
	}
}

// setSubflows sets the subflows limit of group web through replica r,
// retrying while the calls are UNAVAILABLE (etcd electing a leader, the
// replica's client moving to another member) for up to 20s, and returns
// the group and how many UpdateGroup calls it took.
func setSubflows(t *testing.T, r *clusterReplica, n uint32) (*pb.Group, int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	calls := 0
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		g, err := r.groups().GetGroup(ctx, &pb.GetGroupRequest{Name: "groups/web"})
		if err == nil && g.GetPolicy().GetLimits().GetSubflows() == n {
			cancel()
			return g, calls // an earlier call took effect, unanswered
		}
		if err == nil {
			g.Policy.Limits.Subflows = proto.Uint32(n)
			calls++
			g, err = r.groups().UpdateGroup(ctx, &pb.UpdateGroupRequest{Group: g, Reason: "ha test"})
		}
		cancel()
		if err == nil {
			return g, calls
		}
		if c := status.Code(err); (c != codes.Unavailable && c != codes.DeadlineExceeded) || time.Now().After(deadline) {
			t.Fatalf("set subflows %d through replica %s: %v\n%s", n, r.name, err, r.log.String())
		}
		time.Sleep(100 * time.Millisecond) // retry backoff
	}
}
