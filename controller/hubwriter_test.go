package controller_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/controller"
	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/nstest"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// gate holds the etcd writes of one key — puts, and transactions that put
// it — until it is opened: the etcd is real, only the moment a write reaches
// it is the test's. (A write that waits stands for one that etcd takes long
// to commit.)
type gate struct {
	clientv3.KV
	key string

	mu      sync.Mutex
	open    chan struct{} // nil: open
	waiting int           // writes of key held now
}

// pass waits until the gate lets a write of its key through.
func (g *gate) pass(ctx context.Context) error {
	g.mu.Lock()
	open := g.open
	if open != nil {
		g.waiting++
	}
	g.mu.Unlock()
	if open == nil {
		return nil
	}
	select {
	case <-open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *gate) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	if key == g.key {
		if err := g.pass(ctx); err != nil {
			return nil, err
		}
	}
	return g.KV.Put(ctx, key, val, opts...)
}

func (g *gate) Txn(ctx context.Context) clientv3.Txn {
	return &gateTxn{Txn: g.KV.Txn(ctx), g: g, ctx: ctx}
}

// gateTxn is a transaction that passes the gate if it puts the gate's key.
type gateTxn struct {
	clientv3.Txn
	g    *gate
	ctx  context.Context
	puts bool
}

func (t *gateTxn) If(cs ...clientv3.Cmp) clientv3.Txn {
	t.Txn = t.Txn.If(cs...)
	return t
}

func (t *gateTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.puts = t.puts || putsKey(ops, t.g.key)
	t.Txn = t.Txn.Then(ops...)
	return t
}

func (t *gateTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.puts = t.puts || putsKey(ops, t.g.key)
	t.Txn = t.Txn.Else(ops...)
	return t
}

func (t *gateTxn) Commit() (*clientv3.TxnResponse, error) {
	if t.puts {
		if err := t.g.pass(t.ctx); err != nil {
			return nil, err
		}
	}
	return t.Txn.Commit()
}

// putsKey says whether ops, or the transactions among them, put key.
func putsKey(ops []clientv3.Op, key string) bool {
	for _, op := range ops {
		if op.IsPut() && string(op.KeyBytes()) == key {
			return true
		}
		if op.IsTxn() {
			if _, then, els := op.Txn(); putsKey(then, key) || putsKey(els, key) {
				return true
			}
		}
	}
	return false
}

// hold makes puts of the key wait until the returned func opens the gate.
func (g *gate) hold() (release func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	open := make(chan struct{})
	g.open, g.waiting = open, 0
	return func() {
		g.mu.Lock()
		g.open = nil
		g.mu.Unlock()
		close(open)
	}
}

func (g *gate) held() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.waiting
}

// startGated is startWith over an etcd client whose puts of hosts/{gated}
// pass through a gate, with the controller's log kept.
func startGated(t *testing.T, gated string) (*env, *gate, *syncBuf) {
	t.Helper()
	_, cli := etcdtest.Embedded(t)
	g := &gate{KV: cli.KV, key: "/mpfleet/v1/hosts/" + gated}
	cli.KV = g
	logs := &syncBuf{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	return startOn(t, cli, controller.Options{Log: log}), g, logs
}

// storedHost reads a host's status from etcd as stored, and the number of
// times its key was written.
func storedHost(t *testing.T, e *env, id string) (*pb.Host, int64) {
	t.Helper()
	resp, err := e.etcd.Get(context.Background(), "/mpfleet/v1/hosts/"+id)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0
	}
	h := &pb.Host{}
	if err := proto.Unmarshal(resp.Kvs[0].Value, h); err != nil {
		t.Fatal(err)
	}
	return h, resp.Kvs[0].Version
}

// waitUntil polls cond (a state the controller reaches by itself) until it
// holds, or fails the test after d.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func sendReport(t *testing.T, a *fakeAgent, r *pb.AgentReport) {
	t.Helper()
	if err := a.stream.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Report{Report: r}}); err != nil {
		t.Fatal(err)
	}
}

// TestStatusWritesCoalesced: a burst of reports from one host, each a
// change to write at once, taken in while etcd has the first write: two
// writes (the first, then the newest), the stored status is the last
// report's, and meanwhile another host gets its configuration and its
// status stored.
func TestStatusWritesCoalesced(t *testing.T) {
	e, g, _ := startGated(t, "burst-1")
	ctx := ctxT(t)
	a := connectAgent(t, e.agents, "burst-1", nil, false)
	a.waitFor(t, "UNMANAGED", func(d *pb.DesiredConfig) bool { return d.Assignment == pb.DesiredConfig_ASSIGNMENT_UNMANAGED })
	_, v0 := storedHost(t, e, "burst-1")
	if v0 == 0 {
		t.Fatal("host burst-1 not stored at connect")
	}
	reports0 := e.ctl.AgentReports()

	release := g.hold()
	const n = 200
	report := func(i int) *pb.AgentReport {
		st := pb.SyncState_SYNC_STATE_IN_SYNC
		var problems []*pb.HostProblem
		if i%2 == 1 {
			st = pb.SyncState_SYNC_STATE_DEGRADED
			problems = []*pb.HostProblem{{Code: pb.HostProblem_CODE_PATH_FAILED, Interface: "eth1", Message: fmt.Sprintf("report %d", i)}}
		}
		return &pb.AgentReport{SyncState: st, AppliedRevision: int64(i), Problems: problems,
			Health: &pb.MptcpHealth{Connections: uint32(i), Paths: []*pb.PathStatus{{Interface: "eth1", Address: "198.18.1.2", State: pb.PathState_PATH_STATE_OK}}}}
	}
	for i := 1; i <= n; i++ {
		sendReport(t, a, report(i))
	}
	// Every report is taken in while etcd still has the first write: the
	// stream never waits for a status write.
	waitUntil(t, 15*time.Second, "all reports taken in and the first write held", func() bool {
		return e.ctl.AgentReports()-reports0 == n && g.held() == 1
	})

	// Another host meanwhile: its configuration and its status go through.
	if _, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "web", Group: webGroup()}); err != nil {
		t.Fatal(err)
	}
	other := connectAgent(t, e.agents, "other-1", map[string]string{"role": "web"}, true)
	other.waitFor(t, "revision 1 while burst-1's write waits", managedAt("groups/web", 1))
	waitUntil(t, 15*time.Second, "other-1's report stored while burst-1's write waits", func() bool {
		h, _ := storedHost(t, e, "other-1")
		return h.GetSyncState() == pb.SyncState_SYNC_STATE_IN_SYNC
	})
	if g.held() != 1 {
		t.Fatalf("%d writes of burst-1 waiting, want 1 (one write in flight per host)", g.held())
	}

	release()
	want := report(n)
	waitUntil(t, 15*time.Second, "the last report stored", func() bool {
		h, _ := storedHost(t, e, "burst-1")
		return h.GetAppliedRevision() == n
	})
	h, v := storedHost(t, e, "burst-1")
	if writes := v - v0; writes > 2 {
		t.Errorf("%d reports made %d status writes, want at most 2", n, writes)
	} else {
		t.Logf("%d reports made %d status writes", n, writes)
	}
	if h.GetSyncState() != want.GetSyncState() || len(h.GetProblems()) != len(want.GetProblems()) ||
		h.GetHealth().GetConnections() != want.GetHealth().GetConnections() {
		t.Errorf("stored status %v, want the last report's %v", h, want)
	}
}

// TestHostStatusSizeCap: a hello whose facts make a status over 64 KiB is
// refused (INVALID_ARGUMENT naming hello); a report that would is refused
// and logged, the status stays as it was, and the next report is stored.
func TestHostStatusSizeCap(t *testing.T) {
	e, _, logs := startGated(t, "none")
	bigFacts := &pb.HostFacts{Hostname: "big-1"}
	for i := range 400 {
		ifc := &pb.Interface{Name: fmt.Sprintf("eth%d", i)}
		for j := range 16 {
			ifc.Addresses = append(ifc.Addresses, fmt.Sprintf("2001:db8:%x:%x::1/64", i, j))
		}
		bigFacts.Interfaces = append(bigFacts.Interfaces, ifc)
	}
	if n := proto.Size(bigFacts); n <= 64<<10 {
		t.Fatalf("test facts are %d bytes; want more than 64 KiB", n)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := e.agents.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Hello{Hello: &pb.AgentHello{HostId: "big-1", Facts: bigFacts}}}); err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	st := wantCode(t, err, codes.InvalidArgument)
	if !strings.Contains(st.Message(), "hello") || !strings.Contains(st.Message(), "65536") {
		t.Errorf("refusal %q does not name hello and the limit", st.Message())
	}
	if h, _ := storedHost(t, e, "big-1"); h != nil {
		t.Fatalf("a refused hello stored a host: %v", h)
	}

	a := connectAgent(t, e.agents, "big-1", nil, false)
	a.waitFor(t, "UNMANAGED", func(d *pb.DesiredConfig) bool { return d.Assignment == pb.DesiredConfig_ASSIGNMENT_UNMANAGED })
	sendReport(t, a, &pb.AgentReport{SyncState: pb.SyncState_SYNC_STATE_DEGRADED, Facts: bigFacts})
	sendReport(t, a, &pb.AgentReport{SyncState: pb.SyncState_SYNC_STATE_UNMANAGED, LastError: "small again"})
	waitUntil(t, 15*time.Second, "the report after the refused one stored", func() bool {
		h, _ := storedHost(t, e, "big-1")
		return h.GetLastError() == "small again"
	})
	h, _ := storedHost(t, e, "big-1")
	if len(h.GetFacts().GetInterfaces()) != 0 || proto.Size(h) > 64<<10 {
		t.Errorf("the refused report's facts were kept: %d interfaces, %d bytes", len(h.GetFacts().GetInterfaces()), proto.Size(h))
	}
	if !strings.Contains(logs.String(), "agent report refused") {
		t.Errorf("the refusal is not logged:\n%s", logs.String())
	}
}

// TestStatusWriteFailureEndsStream: when etcd dies, the next status write
// fails; the writer retries it, but the store is known unreachable (and in
// any case the write fails for longer than StatusFailTimeout, 30s): the
// agent's stream ends with UNAVAILABLE within that bound (the agent
// reconnects), rather than the controller keeping a status it could not
// store.
func TestStatusWriteFailureEndsStream(t *testing.T) {
	bin := etcdtest.Binary(t)
	if bin == "" {
		nstest.Skip(t, "no etcd server binary: run `make tools` (builds .tools/bin/etcd) or set MPFLEET_ETCD_BIN")
	}
	p := etcdtest.StartProc(t, bin, etcdtest.ProcOptions{})
	r := runController(t, "--etcd-endpoints", p.Endpoint(), "--audit-key-file", writeAuditKey(t, 1), "--etcd-request-timeout", "1s")
	a := connectAgent(t, pb.NewAgentServiceClient(r.conn), "h1", nil, false)
	a.waitFor(t, "UNMANAGED", func(d *pb.DesiredConfig) bool { return d.Assignment == pb.DesiredConfig_ASSIGNMENT_UNMANAGED })

	p.Kill()
	sendReport(t, a, &pb.AgentReport{SyncState: pb.SyncState_SYNC_STATE_UNMANAGED, LastError: "written while etcd is down"})
	select {
	case <-a.done:
	case <-time.After(35 * time.Second):
		t.Fatal("the stream did not end within the bound after its status write failed")
	}
	a.mu.Lock()
	err := a.err
	a.mu.Unlock()
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "could not store the status of host") {
		t.Fatalf("stream ended with %v, want UNAVAILABLE saying the status could not be stored", err)
	}
}
