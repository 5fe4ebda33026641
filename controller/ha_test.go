package controller_test

// High availability: agents with several controller addresses move to
// another replica when theirs stops, and a replica being stopped drains its
// agents to the others, paced.

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/agent"
	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/reconcile/fakekernel"
	"github.com/mpfleet/mpfleet/internal/route"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
)

// haSystem is an agent's view of a host with one Ethernet link.
type haSystem struct{}

func (haSystem) Facts(context.Context) (*pb.HostFacts, error) {
	return &pb.HostFacts{
		Hostname: "web-1", KernelVersion: "6.18.0-test", MptcpSupported: true,
		AvailableSysctls: []string{"enabled", "add_addr_timeout"},
		Interfaces: []*pb.Interface{
			{Name: "lo", Index: 1, Up: true, Addresses: []string{"127.0.0.1/8"}},
			{Name: "eth0", Index: 2, Up: true, Addresses: []string{"198.18.0.2/24"}, Gateways: []string{"198.18.0.1"}},
		},
	}, nil
}

func (haSystem) Health(context.Context) (*pb.MptcpHealth, error) { return &pb.MptcpHealth{}, nil }

func (haSystem) Watch(ctx context.Context, _ func(agent.Change)) error {
	<-ctx.Done()
	return ctx.Err()
}

func (haSystem) Probe(_ context.Context, _ netip.Addr, link int, _ netip.AddrPort, _ time.Duration) agent.ProbeResult {
	return agent.ProbeResult{RouteLink: link, Dialed: true, MPTCP: true, Latency: time.Millisecond}
}

// sessionHolder returns the replica holding host id's stream ("" if none).
func sessionHolder(t *testing.T, cli *clientv3.Client, id string) string {
	t.Helper()
	resp, err := cli.Get(context.Background(), "/mpfleet/v1/sessions/"+id)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return ""
	}
	return string(resp.Kvs[0].Value)
}

// waitReplicas waits until n replicas campaign in the leader election.
func waitReplicas(t *testing.T, cli *clientv3.Client, n int64) {
	t.Helper()
	ctx := ctxT(t)
	resp, err := cli.Get(ctx, "/mpfleet/v1/leader/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count >= n {
		return
	}
	w := cli.Watch(ctx, "/mpfleet/v1/leader/", clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	for count := resp.Count; count < n; {
		wr, ok := <-w
		if !ok || wr.Err() != nil {
			t.Fatalf("%d replicas in the election, want %d: %v", count, n, wr.Err())
		}
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypePut && ev.IsCreate() {
				count++
			}
		}
	}
}

// waitHostAt waits until host web-1 is connected to replica want and IN_SYNC
// at revision rev, as replica r shows it.
func waitHostAt(t *testing.T, r *running, cli *clientv3.Client, want string, rev int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		h, err := pb.NewHostServiceClient(r.conn).GetHost(context.Background(), &pb.GetHostRequest{Name: "hosts/web-1"})
		holder := sessionHolder(t, cli, "web-1")
		if err == nil && h.GetConnected() && h.GetSyncState() == pb.SyncState_SYNC_STATE_IN_SYNC && h.GetAppliedRevision() == rev &&
			(want == "" || holder == want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("web-1 not IN_SYNC at revision %d on replica %q: %v (err %v, held by %q)", rev, want, h, err, holder)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAgentMovesToAnotherReplica: a real agent given the addresses of two
// replicas is served by one; when that replica stops, the other serves it,
// and it applies the next revision from there.
func TestAgentMovesToAnotherReplica(t *testing.T) {
	e, cli := etcdtest.Embedded(t)
	base := []string{"--etcd-endpoints", strings.Join(e.Endpoints(), ","), "--audit-key-file", writeAuditKey(t, 1),
		"--drain-rate", "0"} // stopped as if it died: no drain
	rs := map[string]*running{
		"ra": runController(t, append(base, "--replica-name", "ra")...),
		"rb": runController(t, append(base, "--replica-name", "rb")...),
	}
	ctx := ctxT(t)
	g, err := pb.NewGroupServiceClient(rs["ra"].conn).CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "web", Group: webGroup()})
	if err != nil {
		t.Fatal(err)
	}

	k := fakekernel.New(route.Range{})
	k.SetLinks(map[int]string{1: "lo", 2: "eth0"})
	a, err := agent.New(agent.Options{
		HostID: "web-1", Labels: map[string]string{"role": "web"}, Controller: rs["ra"].addr + "," + rs["rb"].addr,
		StateDir: t.TempDir(), ResyncInterval: time.Hour, ReportInterval: time.Hour, ConfirmTimeout: 10 * time.Second,
		BackoffMin: 10 * time.Millisecond, BackoffMax: 200 * time.Millisecond, ConnectTimeout: 2 * time.Second,
		Kernel: func(route.Range) (reconcile.Kernel, error) { return k, nil }, System: haSystem{},
	})
	if err != nil {
		t.Fatal(err)
	}
	actx, stopAgent := context.WithCancel(context.Background())
	agentDone := make(chan struct{})
	go func() { defer close(agentDone); _ = a.Run(actx) }()
	t.Cleanup(func() { stopAgent(); <-agentDone })

	waitHostAt(t, rs["rb"], cli, "", 1)
	from := sessionHolder(t, cli, "web-1")
	to := map[string]string{"ra": "rb", "rb": "ra"}[from]
	if to == "" {
		t.Fatalf("web-1 held by %q, want ra or rb", from)
	}
	if err := rs[from].stop(); err != nil {
		t.Fatalf("stop %s: %v", from, err)
	}
	waitHostAt(t, rs[to], cli, to, 1)

	g.Policy.Limits.Subflows = proto.Uint32(4)
	if _, err := pb.NewGroupServiceClient(rs[to].conn).UpdateGroup(ctx, &pb.UpdateGroupRequest{Group: g}); err != nil {
		t.Fatal(err)
	}
	waitHostAt(t, rs[to], cli, to, 2)
	st, err := k.Read(ctx, reconcile.HostConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Limits == nil || st.Limits.Subflows != 4 {
		t.Errorf("kernel limits %+v after revision 2, want 4 subflows", st.Limits)
	}
}

// mover is a fake agent that connects to one replica and, when drained,
// to the other.
type mover struct {
	id string
	// drained is closed when the Drain came (drain, drainAt set), moved
	// when the agent is done with the first replica: err says whether the
	// second accepted it.
	drained, moved chan struct{}
	drain          *pb.Drain
	drainAt        time.Time
	err            error
}

// hello opens a stream as host id on conn, and returns it once the replica
// sent the desired configuration.
func hello(ctx context.Context, conn *grpc.ClientConn, id string) (pb.AgentService_ConnectClient, error) {
	st, err := pb.NewAgentServiceClient(conn).Connect(ctx)
	if err != nil {
		return nil, err
	}
	if err := st.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Hello{Hello: &pb.AgentHello{
		HostId: id, Labels: map[string]string{"role": "web"}, AgentVersion: "test",
	}}}); err != nil {
		return nil, err
	}
	m, err := st.Recv()
	if err != nil {
		return nil, err
	}
	if m.GetDesired() == nil {
		return nil, fmt.Errorf("first message %v, want a desired configuration", m)
	}
	return st, nil
}

// run reads the stream on the first replica until Drain, then connects to
// the second, and holds that stream until ctx ends.
func (m *mover) run(ctx context.Context, first pb.AgentService_ConnectClient, second *grpc.ClientConn, firstDrain func()) {
	for {
		msg, err := first.Recv()
		if err != nil {
			m.err = fmt.Errorf("stream to the first replica ended without a drain: %w", err)
			close(m.moved)
			return
		}
		if d := msg.GetDrain(); d != nil {
			m.drain, m.drainAt = d, time.Now()
			close(m.drained)
			firstDrain()
			break
		}
	}
	_, m.err = hello(ctx, second, m.id)
	close(m.moved)
	<-ctx.Done()
}

// TestDrainMovesAgentsPaced: a replica stopped with 50 agents tells them to
// move, at --drain-rate: each is released before it is told, so that the
// other replica accepts every one at once; the drain takes at least
// (N-1)/rate, the replica is NOT_SERVING meanwhile, and it exits once all
// have gone.
func TestDrainMovesAgentsPaced(t *testing.T) {
	const n, rate = 50, 100
	e, cli := etcdtest.Embedded(t)
	base := []string{"--etcd-endpoints", strings.Join(e.Endpoints(), ","), "--audit-key-file", writeAuditKey(t, 1), "--log-level", "info"}
	ra := runController(t, append(base, "--replica-name", "ra", "--drain-rate", fmt.Sprint(rate))...)
	rb := runController(t, append(base, "--replica-name", "rb")...)
	dial := func(addr string) *grpc.ClientConn {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return conn
	}
	// Own connections: ra.stop closes ra.conn at once.
	toA, toB := dial(ra.addr), dial(rb.addr)
	if _, err := pb.NewGroupServiceClient(ra.conn).CreateGroup(ctxT(t), &pb.CreateGroupRequest{GroupId: "web", Group: webGroup()}); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	firstDrain := make(chan struct{})
	var once sync.Once
	movers := make([]*mover, n)
	for i := range movers {
		m := &mover{id: fmt.Sprintf("web-%d", i), drained: make(chan struct{}), moved: make(chan struct{})}
		st, err := hello(ctx, toA, m.id)
		if err != nil {
			t.Fatalf("%s to ra: %v", m.id, err)
		}
		movers[i] = m
		wg.Go(func() { m.run(ctx, st, toB, func() { once.Do(func() { close(firstDrain) }) }) })
	}
	for _, m := range movers {
		if h := sessionHolder(t, cli, m.id); h != "ra" {
			t.Fatalf("%s held by %q, want ra", m.id, h)
		}
	}
	waitReplicas(t, cli, 2) // ra drains only to a replica it knows to be alive

	stopped := make(chan error, 1)
	start := time.Now()
	go func() { stopped <- ra.stop() }()
	select {
	case <-firstDrain:
	case <-time.After(30 * time.Second):
		t.Fatal("no agent drained within 30s")
	}
	hc, err := healthpb.NewHealthClient(toA).Check(ctxT(t), &healthpb.HealthCheckRequest{})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health of the draining replica: %v, %v; want NOT_SERVING", hc.GetStatus(), err)
	}
	var last time.Time
	for _, m := range movers {
		select {
		case <-m.moved:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s did not move within 30s", m.id)
		}
		if m.err != nil {
			t.Fatalf("%s: %v", m.id, m.err)
		}
		if !strings.Contains(m.drain.GetReason(), `"ra"`) {
			t.Errorf("%s: drain reason %q, want one naming replica ra", m.id, m.drain.GetReason())
		}
		if m.drainAt.After(last) {
			last = m.drainAt
		}
		if h := sessionHolder(t, cli, m.id); h != "rb" {
			t.Errorf("%s held by %q after the drain, want rb", m.id, h)
		}
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("ra stopped with %v\n%s", err, ra.log.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("ra still running 60s after it was stopped")
	}
	took := time.Since(start)
	spread, want := last.Sub(start), time.Duration(n-1)*time.Second/rate
	t.Logf("%d agents drained over %v (paced: at least %v); ra stopped after %v", n, spread.Round(time.Millisecond), want, took.Round(time.Millisecond))
	if spread < want {
		t.Errorf("the last agent was drained %v after the stop, want at least %v at %d/s", spread, want, rate)
	}
	if !strings.Contains(ra.log.String(), "drained every agent") {
		t.Errorf("no drain in ra's log:\n%s", ra.log.String())
	}
}

// TestNoDrainWithoutOtherReplica: the only replica has nowhere to move its
// agents to: it ends their streams at once rather than pacing them.
func TestNoDrainWithoutOtherReplica(t *testing.T) {
	e, _ := etcdtest.Embedded(t)
	r := runController(t, "--etcd-endpoints", strings.Join(e.Endpoints(), ","), "--audit-key-file", writeAuditKey(t, 1),
		"--log-level", "info", "--drain-rate", "1")
	conn, err := grpc.NewClient(r.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	agents := make([]*fakeAgent, 3)
	for i := range agents {
		agents[i] = connectAgent(t, pb.NewAgentServiceClient(conn), fmt.Sprintf("web-%d", i), map[string]string{"role": "web"}, true)
		agents[i].waitFor(t, "UNMANAGED", func(d *pb.DesiredConfig) bool { return d.Assignment == pb.DesiredConfig_ASSIGNMENT_UNMANAGED })
	}
	start := time.Now()
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	// Paced at 1/s, three agents would take two seconds.
	if took := time.Since(start); took >= 2*time.Second {
		t.Errorf("stopping took %v; the streams should have ended at once", took)
	}
	if !strings.Contains(r.log.String(), "no other controller replica to drain the agents to") {
		t.Errorf("no word of skipping the drain in the log:\n%s", r.log.String())
	}
	for _, a := range agents {
		<-a.done
	}
}

// TestDrainFlags: a drain that cannot be done is refused by flag name.
func TestDrainFlags(t *testing.T) {
	for _, tc := range []struct{ args []string }{
		{[]string{"--drain-rate", "-1"}},
		{[]string{"--drain-rate", "NaN"}},
		{[]string{"--drain-timeout", "0s"}},
	} {
		err := runErr(t, append([]string{"--data-dir", t.TempDir()}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.args[0]) {
			t.Errorf("%q: %v, want an error naming %s", tc.args, err, tc.args[0])
		}
	}
}
