package loadgen_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/controller"
	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/mpfleet/mpfleet/test/loadgen"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
)

// env is a real controller in the test process, on an embedded etcd and
// a gRPC listener on loopback, plaintext and unauthenticated.
type env struct {
	addr   string
	ctl    *controller.Controller
	etcd   *clientv3.Client
	groups pb.GroupServiceClient
	hosts  pb.HostServiceClient
	audit  pb.AuditServiceClient
	// serve starts a new gRPC server of ctl on addr; stop stops the
	// current one (the agents' streams end).
	serve func()
	stop  func()
}

func startController(t *testing.T) *env {
	t.Helper()
	_, cli := etcdtest.Embedded(t)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	st := store.New(cli, "/mpfleet/v1/")
	cache := store.NewCache(st, log)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { defer func() { done <- struct{}{} }(); _ = cache.Run(ctx) }()
	c := controller.New(st, cache, controller.Options{Log: log, Hub: controller.HubOptions{SessionTTL: 2 * time.Second}})
	go func() { defer func() { done <- struct{}{} }(); c.Run(ctx) }()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{addr: lis.Addr().String(), ctl: c, etcd: cli}
	var srv *grpc.Server
	serveOn := func(l net.Listener) {
		var hs interface {
			SetServingStatus(string, healthpb.HealthCheckResponse_ServingStatus)
		}
		srv, hs = c.NewServer(controller.ServerOptions{})
		hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
		go func() { _ = srv.Serve(l) }()
	}
	serveOn(lis)
	e.stop = func() { srv.Stop() }
	e.serve = func() {
		l, err := net.Listen("tcp", e.addr)
		if err != nil {
			t.Fatalf("listen again on %s: %v", e.addr, err)
		}
		serveOn(l)
	}
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	e.groups, e.hosts, e.audit = pb.NewGroupServiceClient(conn), pb.NewHostServiceClient(conn), pb.NewAuditServiceClient(conn)
	t.Cleanup(func() {
		_ = conn.Close()
		srv.Stop()
		cancel()
		<-done
		<-done
	})
	return e
}

func testGroup() *pb.Group {
	return &pb.Group{
		Selector: &pb.Selector{MatchLabels: map[string]string{"role": "loadgen"}},
		Policy: &pb.MultipathPolicy{
			Limits:    &pb.Limits{Subflows: proto.Uint32(2), AddAddrAccepted: proto.Uint32(2)},
			Endpoints: []*pb.EndpointRule{{Interface: "eth*", Flags: []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW}}},
		},
	}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// listHosts returns the hosts of group.
func listHosts(ctx context.Context, t *testing.T, e *env, group string) []*pb.Host {
	t.Helper()
	var out []*pb.Host
	tok := ""
	for {
		resp, err := e.hosts.ListHosts(ctx, &pb.ListHostsRequest{Group: group, PageSize: 1000, PageToken: tok})
		if err != nil {
			t.Fatalf("ListHosts: %v", err)
		}
		out = append(out, resp.GetHosts()...)
		if tok = resp.GetNextPageToken(); tok == "" {
			return out
		}
	}
}

// waitHosts waits until n hosts of group are connected and IN_SYNC at rev.
func waitHosts(ctx context.Context, t *testing.T, e *env, group string, n int, rev int64) []*pb.Host {
	t.Helper()
	for {
		hosts := listHosts(ctx, t, e, group)
		ok := 0
		for _, h := range hosts {
			if h.GetConnected() && h.GetSyncState() == pb.SyncState_SYNC_STATE_IN_SYNC && h.GetAppliedRevision() == rev {
				ok++
			}
		}
		if ok == n && len(hosts) == n {
			return hosts
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d of %d hosts of %s connected and IN_SYNC at revision %d (of %d listed): %v", ok, n, group, rev, len(hosts), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func TestFleetAgainstController(t *testing.T) {
	for _, tc := range []struct {
		name            string
		confirm, events bool
	}{
		{name: "report"},
		{name: "confirm-and-events", confirm: true, events: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startController(t)
			ctx := testContext(t)
			g, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "lg", Group: testGroup()})
			if err != nil {
				t.Fatal(err)
			}
			const n = 5
			f, err := loadgen.Start(loadgen.Config{
				Agents: n, Prefix: "lg", First: 10, Labels: map[string]string{"role": "loadgen"},
				Controller: e.addr, ReportInterval: 50 * time.Millisecond, Confirm: tc.confirm, Events: tc.events,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WaitRevision(ctx, g.GetName(), g.GetPolicyRevision(), 0); err != nil {
				t.Fatal(err)
			}
			hosts := waitHosts(ctx, t, e, g.GetName(), n, g.GetPolicyRevision())
			for i, h := range hosts {
				if want := fmt.Sprintf("hosts/lg-%d", 10+i); h.GetName() != want {
					t.Errorf("host %d is %s, want %s", i, h.GetName(), want)
				}
				if h.GetAgentVersion() != loadgen.Version || len(h.GetFacts().GetInterfaces()) != 2 || len(h.GetApplied().GetEndpoints()) != 1 {
					t.Errorf("host %s: version %q, facts %v, applied %v; want the loadgen's", h.GetName(), h.GetAgentVersion(), h.GetFacts(), h.GetApplied())
				}
			}

			before := time.Now()
			g.Policy.Limits.Subflows = proto.Uint32(3)
			g.Etag = ""
			upd, err := e.groups.UpdateGroup(ctx, &pb.UpdateGroupRequest{Group: g})
			if err != nil {
				t.Fatal(err)
			}
			rs, err := f.WaitRevision(ctx, upd.GetName(), upd.GetPolicyRevision(), 0)
			if err != nil {
				t.Fatal(err)
			}
			if rs.Agents != n || rs.First < before.UnixNano() || rs.Last < rs.First || rs.Last > time.Now().UnixNano() {
				t.Errorf("revision %d: %+v; want %d agents, first after the update began (%d), last after first and not in the future", upd.GetPolicyRevision(), rs, n, before.UnixNano())
			}
			if got := f.Receipts(upd.GetName(), upd.GetPolicyRevision()); len(got) != n {
				t.Errorf("receipts of revision %d: %d, want %d", upd.GetPolicyRevision(), len(got), n)
			}
			waitHosts(ctx, t, e, g.GetName(), n, upd.GetPolicyRevision())
			st := f.Status()
			if st.Mode != "controller" || st.Agents != n || st.Connected != n || st.Sessions != n || len(st.Revisions) != 2 {
				t.Errorf("status %+v; want %d agents connected, %d sessions, 2 revisions", st, n, n)
			}
			// Periodic health reports: more than the two per agent that the
			// revisions caused.
			for e.ctl.AgentReports() < 4*n {
				select {
				case <-ctx.Done():
					t.Fatalf("%d reports taken in; want periodic health reports beyond the %d of the revisions", e.ctl.AgentReports(), 2*n)
				case <-time.After(20 * time.Millisecond):
				}
			}
			if tc.events {
				resp, err := e.audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{Action: "agent.applied", PageSize: 100})
				if err != nil {
					t.Fatal(err)
				}
				if got := len(resp.GetEvents()); got != 2*n {
					t.Errorf("%d agent.applied audit events; want %d (one per agent and revision)", got, 2*n)
				}
			}
		})
	}
}

func TestFleetReconnectsAfterControllerRestart(t *testing.T) {
	e := startController(t)
	ctx := testContext(t)
	g, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "lg", Group: testGroup()})
	if err != nil {
		t.Fatal(err)
	}
	const n = 4
	f, err := loadgen.Start(loadgen.Config{
		Agents: n, Prefix: "rc", Labels: map[string]string{"role": "loadgen"}, Controller: e.addr,
		BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.WaitConnected(ctx, 0, time.Time{}); err != nil {
		t.Fatal(err)
	}
	waitHosts(ctx, t, e, g.GetName(), n, g.GetPolicyRevision())

	restart := time.Now()
	e.stop()
	e.serve()
	if err := f.WaitConnected(ctx, 0, restart); err != nil {
		t.Fatalf("agents back after the restart: %v (status %+v)", err, f.Status())
	}
	st := f.Status()
	if st.Sessions < 2*n || st.Failures < n || st.OldestSession < restart.UnixNano() {
		t.Errorf("status %+v; want %d sessions or more, %d failures or more, the oldest after the restart (%d)", st, 2*n, n, restart.UnixNano())
	}
	// A revision already held is no new receipt.
	if got := f.Receipts(g.GetName(), g.GetPolicyRevision()); len(got) != n {
		t.Errorf("receipts of revision %d: %d; want %d, one per agent", g.GetPolicyRevision(), len(got), n)
	}
	waitHosts(ctx, t, e, g.GetName(), n, g.GetPolicyRevision())
}

func TestBaselineWatchers(t *testing.T) {
	_, cli := etcdtest.Embedded(t)
	ctx := testContext(t)
	const key, prefix, n = "/bench/desired", "/bench/status/", 5
	put := func(rev int64) time.Time {
		b, err := proto.Marshal(&pb.DesiredConfig{Assignment: pb.DesiredConfig_ASSIGNMENT_MANAGED, Group: "groups/bench", Revision: rev, Policy: testGroup().GetPolicy()})
		if err != nil {
			t.Fatal(err)
		}
		at := time.Now()
		if _, err := cli.Put(ctx, key, string(b)); err != nil {
			t.Fatal(err)
		}
		return at
	}
	put(1)
	f, err := loadgen.Start(loadgen.Config{
		Agents: n, Prefix: "w", Labels: map[string]string{"role": "loadgen"},
		EtcdEndpoints: cli.Endpoints(), EtcdKey: key, EtcdStatusPrefix: prefix,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.WaitConnected(ctx, 0, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WaitRevision(ctx, "groups/bench", 1, 0); err != nil {
		t.Fatal(err)
	}
	at := put(2)
	rs, err := f.WaitRevision(ctx, "groups/bench", 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	if rs.Agents != n || rs.First < at.UnixNano() {
		t.Errorf("revision 2: %+v; want %d agents, the first after the put (%d)", rs, n, at.UnixNano())
	}
	// Every agent writes its status with the revision.
	for {
		resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		done := 0
		for _, kv := range resp.Kvs {
			h := &pb.Host{}
			if err := proto.Unmarshal(kv.Value, h); err != nil {
				t.Fatalf("status %s: %v", kv.Key, err)
			}
			if h.GetAppliedRevision() == 2 && h.GetSyncState() == pb.SyncState_SYNC_STATE_IN_SYNC {
				done++
			}
		}
		if done == n {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d of %d statuses at revision 2", done, n)
		case <-time.After(20 * time.Millisecond):
		}
	}
	if st := f.Status(); st.Mode != "etcd" || st.Connected != n {
		t.Errorf("status %+v; want mode etcd, %d connected", st, n)
	}
}

func TestFleetSilent(t *testing.T) {
	e := startController(t)
	ctx := testContext(t)
	g, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "lg", Group: testGroup()})
	if err != nil {
		t.Fatal(err)
	}
	f, err := loadgen.Start(loadgen.Config{
		Agents: 3, Prefix: "quiet", Labels: map[string]string{"role": "loadgen"}, Controller: e.addr,
		ReportInterval: 10 * time.Millisecond, Silent: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WaitRevision(ctx, g.GetName(), g.GetPolicyRevision(), 0); err != nil {
		t.Fatal(err)
	}
	g.Policy.Limits.Subflows = proto.Uint32(4)
	g.Etag = ""
	upd, err := e.groups.UpdateGroup(ctx, &pb.UpdateGroupRequest{Group: g})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WaitRevision(ctx, upd.GetName(), upd.GetPolicyRevision(), 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	hosts := listHosts(ctx, t, e, g.GetName())
	if len(hosts) != 3 {
		t.Fatalf("%d hosts of %s; want the 3 agents", len(hosts), g.GetName())
	}
	for _, h := range hosts {
		if h.GetAppliedRevision() != 0 {
			t.Errorf("host %s applied revision %d; a silent agent reports none", h.GetName(), h.GetAppliedRevision())
		}
	}
	if n := e.ctl.AgentReports(); n != 0 {
		t.Errorf("%d reports taken in; want none from silent agents", n)
	}
}
