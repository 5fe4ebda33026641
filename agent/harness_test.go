package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/policy"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/reconcile/fakekernel"
	"github.com/mpfleet/mpfleet/internal/route"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeController is a real gRPC server on 127.0.0.1 implementing
// AgentService as the controller does: it sends the desired configuration
// after the hello and on every change, echoes confirms (unless told not to)
// and records everything the agents send.
type fakeController struct {
	pb.UnimplementedAgentServiceServer

	mu       sync.Mutex
	desired  *pb.DesiredConfig
	hugeOnce bool // the next session first gets a message over the agent's limit
	noEcho   bool
	subs     map[chan struct{}]bool
	hellos   []*pb.AgentHello
	reports  []*pb.AgentReport
	events   []*pb.AgentEvent
	confirms int

	lis   net.Listener
	srv   *grpc.Server
	sopts []grpc.ServerOption // set before serve
	addr  string
	auth  []string // authorization metadata of each session
	peers []string // client certificate common name of each session

	drainC chan *pb.Drain // the stream serving takes one, sends it, and ends
}

// newController listens on 127.0.0.1 and serves at once unless paused.
func newController(t testing.TB, paused bool) *fakeController {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return newControllerOn(t, lis, paused)
}

// newControllerOn serves on lis (made in another namespace, say).
func newControllerOn(t testing.TB, lis net.Listener, paused bool) *fakeController {
	c := &fakeController{subs: map[chan struct{}]bool{}, lis: lis, addr: lis.Addr().String(), drainC: make(chan *pb.Drain, 1)}
	if !paused {
		c.serve()
	}
	t.Cleanup(c.stop)
	return c
}

func (c *fakeController) serve() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.srv = grpc.NewServer(c.sopts...)
	pb.RegisterAgentServiceServer(c.srv, c)
	go func() { _ = c.srv.Serve(c.lis) }()
}

func (c *fakeController) stop() {
	c.mu.Lock()
	srv := c.srv
	c.mu.Unlock()
	if srv != nil {
		srv.Stop()
	} else {
		_ = c.lis.Close()
	}
}

// restart stops the server and serves again on the same address, as a
// controller restart does.
func (c *fakeController) restart(t *testing.T) {
	t.Helper()
	c.stop()
	lis, err := net.Listen("tcp", c.addr)
	if err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	c.lis = lis
	c.mu.Unlock()
	c.serve()
}

func (c *fakeController) setDesired(d *pb.DesiredConfig) {
	c.mu.Lock()
	c.desired = d
	for ch := range c.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	c.mu.Unlock()
}

func (c *fakeController) setEcho(on bool) {
	c.mu.Lock()
	c.noEcho = !on
	c.mu.Unlock()
}

func (c *fakeController) Connect(st pb.AgentService_ConnectServer) error {
	m, err := st.Recv()
	if err != nil {
		return err
	}
	notify := make(chan struct{}, 1)
	md, _ := metadata.FromIncomingContext(st.Context())
	cn := ""
	if p, ok := peer.FromContext(st.Context()); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 {
			cn = ti.State.PeerCertificates[0].Subject.CommonName
		}
	}
	c.mu.Lock()
	c.auth = append(c.auth, strings.Join(md.Get("authorization"), ","))
	c.peers = append(c.peers, cn)
	c.hellos = append(c.hellos, m.GetHello())
	c.subs[notify] = true
	huge := c.hugeOnce
	c.hugeOnce = false
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.subs, notify)
		c.mu.Unlock()
	}()
	if huge {
		d := &pb.DesiredConfig{Assignment: pb.DesiredConfig_ASSIGNMENT_MANAGED, Group: "groups/" + strings.Repeat("x", maxRecvMsgSize), Revision: 1}
		return st.Send(&pb.ConnectResponse{Kind: &pb.ConnectResponse_Desired{Desired: d}})
	}
	echo := make(chan uint64, 16)
	errc := make(chan error, 1)
	go func() {
		for {
			m, err := st.Recv()
			if err != nil {
				errc <- err
				return
			}
			c.mu.Lock()
			switch k := m.GetKind().(type) {
			case *pb.ConnectRequest_Report:
				c.reports = append(c.reports, k.Report)
			case *pb.ConnectRequest_Event:
				c.events = append(c.events, k.Event)
			case *pb.ConnectRequest_Confirm:
				c.confirms++
				if !c.noEcho {
					echo <- k.Confirm.GetNonce()
				}
			}
			c.mu.Unlock()
		}
	}()
	var sent *pb.DesiredConfig
	for {
		c.mu.Lock()
		d := c.desired
		c.mu.Unlock()
		if d != nil && d != sent {
			if err := st.Send(&pb.ConnectResponse{Kind: &pb.ConnectResponse_Desired{Desired: d}}); err != nil {
				return err
			}
			sent = d
		}
		select {
		case <-notify:
		case n := <-echo:
			if err := st.Send(&pb.ConnectResponse{Kind: &pb.ConnectResponse_Confirmed{Confirmed: &pb.Confirm{Nonce: n}}}); err != nil {
				return err
			}
		case err := <-errc:
			return err
		case d := <-c.drainC:
			if err := st.Send(&pb.ConnectResponse{Kind: &pb.ConnectResponse_Drain{Drain: d}}); err != nil {
				return err
			}
			return nil
		case <-st.Context().Done():
			return st.Context().Err()
		}
	}
}

// counts returns how many hellos, reports and events were received.
func (c *fakeController) counts() (hellos, reports, events int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.hellos), len(c.reports), len(c.events)
}

func (c *fakeController) hello(i int) *pb.AgentHello {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hellos[i]
}

func (c *fakeController) eventsSince(n int) []*pb.AgentEvent {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.events[min(n, len(c.events)):])
}

func (c *fakeController) reportsSince(n int) []*pb.AgentReport {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.reports[min(n, len(c.reports)):])
}

const waitFor = 10 * time.Second

// waitReport waits for a report, from the n-th on, that ok accepts.
func (c *fakeController) waitReport(t testing.TB, n int, what string, ok func(*pb.AgentReport) bool) *pb.AgentReport {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		rs := c.reportsSince(n)
		for _, r := range rs {
			if ok(r) {
				return r
			}
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			for _, r := range rs {
				fmt.Fprintf(&b, "  %s rev %d err %q plan %d\n", r.GetSyncState(), r.GetAppliedRevision(), r.GetLastError(), len(r.GetLastPlan()))
			}
			t.Fatalf("no report with %s; got:\n%s", what, b.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func inState(s pb.SyncState, rev int64) func(*pb.AgentReport) bool {
	return func(r *pb.AgentReport) bool { return r.GetSyncState() == s && r.GetAppliedRevision() == rev }
}

// waitEvent waits for an event of kind, from the n-th on.
func (c *fakeController) waitEvent(t testing.TB, n int, kind pb.AgentEvent_Kind) *pb.AgentEvent {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		evs := c.eventsSince(n)
		for _, e := range evs {
			if e.GetKind() == kind {
				return e
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s event; got %v", kind, evs)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitUntil(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// fakeSystem is a System whose facts the test sets and whose changes it
// announces.
type fakeSystem struct {
	mu     sync.Mutex
	facts  *pb.HostFacts
	notify func(Change)
	health *pb.MptcpHealth
	// probe answers Probe; nil answers every probe over MPTCP through the
	// path's own link.
	probe  func(src netip.Addr, link int, target netip.AddrPort) ProbeResult
	probes int
}

func (s *fakeSystem) Probe(_ context.Context, src netip.Addr, link int, target netip.AddrPort, _ time.Duration) ProbeResult {
	s.mu.Lock()
	f := s.probe
	s.probes++
	s.mu.Unlock()
	if f != nil {
		return f(src, link, target)
	}
	return ProbeResult{RouteLink: link, Dialed: true, MPTCP: true, Latency: time.Millisecond}
}

// setProbe replaces how probes are answered.
func (s *fakeSystem) setProbe(f func(src netip.Addr, link int, target netip.AddrPort) ProbeResult) {
	s.mu.Lock()
	s.probe = f
	s.mu.Unlock()
}

func (s *fakeSystem) probeCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.probes
}

func newFakeSystem(ifaces ...*pb.Interface) *fakeSystem {
	return &fakeSystem{
		facts: &pb.HostFacts{
			Hostname: "test", KernelVersion: "6.18.0-test", MptcpSupported: true,
			AvailableSysctls: []string{"enabled", "add_addr_timeout", "scheduler"}, Interfaces: ifaces,
		},
		health: &pb.MptcpHealth{Connections: 1, Subflows: 2, Counters: map[string]uint64{"MPCapableSYNTX": 1}},
	}
}

func (s *fakeSystem) Facts(ctx context.Context) (*pb.HostFacts, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return proto.Clone(s.facts).(*pb.HostFacts), nil
}

func (s *fakeSystem) Health(context.Context) (*pb.MptcpHealth, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return proto.Clone(s.health).(*pb.MptcpHealth), nil
}

func (s *fakeSystem) Watch(ctx context.Context, notify func(Change)) error {
	s.mu.Lock()
	s.notify = notify
	s.mu.Unlock()
	<-ctx.Done()
	return ctx.Err()
}

// setInterfaces replaces the interfaces and announces changes.
func (s *fakeSystem) setInterfaces(ifaces []*pb.Interface, changes ...Change) {
	// A copy: the caller may change its interfaces for the next call while
	// the agent reads these.
	own := make([]*pb.Interface, len(ifaces))
	for i, ifc := range ifaces {
		own[i] = proto.CloneOf(ifc)
	}
	s.mu.Lock()
	s.facts.Interfaces = own
	n := s.notify
	s.mu.Unlock()
	for _, c := range changes {
		n(c)
	}
}

func (s *fakeSystem) change(c Change) {
	s.mu.Lock()
	n := s.notify
	s.mu.Unlock()
	n(c)
}

func (s *fakeSystem) watching() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.notify != nil
}

// The fake host: loopback and two Ethernet links, each with a gateway.
func lo() *pb.Interface {
	return &pb.Interface{Name: "lo", Index: 1, Up: true, Addresses: []string{"127.0.0.1/8", "::1/128"}}
}

func eth(i int, up bool, addrs ...string) *pb.Interface {
	return &pb.Interface{Name: fmt.Sprintf("eth%d", i), Index: int32(i + 2), Up: up,
		Addresses: addrs, Gateways: []string{fmt.Sprintf("198.18.%d.1", i)}}
}

func hostIfaces() []*pb.Interface {
	return []*pb.Interface{lo(), eth(0, true, "198.18.0.2/24", "fe80::2/64"), eth(1, true, "198.18.1.2/24")}
}

var fakeLinks = map[int]string{1: "lo", 2: "eth0", 3: "eth1"}

// testPolicy is a policy of revision rev: every global address of eth* a
// subflow endpoint with its own routing table.
func testPolicy(extra ...pb.EndpointFlag) *pb.MultipathPolicy {
	return &pb.MultipathPolicy{
		Enabled:   proto.Bool(true),
		Limits:    &pb.Limits{Subflows: proto.Uint32(4), AddAddrAccepted: proto.Uint32(2)},
		Endpoints: []*pb.EndpointRule{{Interface: "eth*", Flags: append([]pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW}, extra...)}},
		Routing:   &pb.Routing{Enabled: true},
		Sysctls:   &pb.Sysctls{AddAddrTimeout: proto.Uint32(60)},
	}
}

func managed(rev int64, p *pb.MultipathPolicy) *pb.DesiredConfig {
	return &pb.DesiredConfig{Assignment: pb.DesiredConfig_ASSIGNMENT_MANAGED, Group: "groups/web", Revision: rev, Policy: p}
}

// harness is one in-process agent against a fake controller, a fake
// kernel and a fake system.
type harness struct {
	t     *testing.T
	ctrl  *fakeController
	sys   *fakeSystem
	k     *fakekernel.Kernel
	opts  Options
	agent *Agent
	// localAddr, if set, replaces the controller connection's local address.
	localAddr func() netip.Addr
	// dialHook, if set, dials the controller.
	dialHook func(ctx context.Context, d *net.Dialer, addr string) (net.Conn, error)
	cancel   context.CancelFunc
	done     chan struct{}

	passMu sync.Mutex
	passes []Pass // ended, in order (Options.OnReconcile)
}

func newHarness(t *testing.T, mutate ...func(*harness)) *harness {
	t.Helper()
	h := &harness{t: t, sys: newFakeSystem(hostIfaces()...), k: fakekernel.New(route.Range{})}
	h.k.SetLinks(fakeLinks)
	h.ctrl = newController(t, false)
	h.opts = Options{
		HostID: "web-1", Labels: map[string]string{"role": "web"}, Controller: h.ctrl.addr,
		StateDir: t.TempDir(), ResyncInterval: time.Hour, ReportInterval: time.Hour,
		ConfirmTimeout: 5 * time.Second, BackoffMin: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond,
		ConnectTimeout: time.Second,
		Kernel:         func(route.Range) (reconcile.Kernel, error) { return h.k, nil },
		System:         h.sys,
		Logger:         testLogger(t),
		OnReconcile:    h.recordPass,
	}
	for _, m := range mutate {
		m(h)
	}
	return h
}

func (h *harness) start() {
	h.t.Helper()
	a, err := New(h.opts)
	if err != nil {
		h.t.Fatal(err)
	}
	a.localAddr, a.dialHook = h.localAddr, h.dialHook
	h.agent = a
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan struct{})
	go func() {
		defer close(h.done)
		if err := a.Run(ctx); err != nil {
			h.t.Errorf("Run: %v", err)
		}
	}()
	h.t.Cleanup(h.stop)
	waitUntil(h.t, "the agent to watch for changes", h.sys.watching)
}

func (h *harness) stop() {
	if h.cancel != nil {
		h.cancel()
		<-h.done
		h.cancel = nil
	}
}

// rendered is what p renders to on the fake host's current interfaces.
func (h *harness) rendered(p *pb.MultipathPolicy) reconcile.HostConfig {
	h.t.Helper()
	f, _ := h.sys.Facts(context.Background())
	r, err := policy.Render(p, policy.InterfacesFromFacts(f))
	if err != nil {
		h.t.Fatal(err)
	}
	return r.Config
}

// converged reports whether the fake kernel holds cfg exactly.
func (h *harness) converged(cfg reconcile.HostConfig) bool {
	st, err := h.k.Read(context.Background(), cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	ops, err := reconcile.Plan(cfg, st)
	if err != nil {
		h.t.Fatal(err)
	}
	return len(ops) == 0
}

func (h *harness) waitConverged(p *pb.MultipathPolicy) {
	h.t.Helper()
	waitUntil(h.t, "the fake kernel to hold the policy", func() bool { return h.converged(h.rendered(p)) })
}

func (h *harness) recordPass(p Pass) {
	h.passMu.Lock()
	h.passes = append(h.passes, p)
	h.passMu.Unlock()
}

// lastPass returns the number of the agent's latest ended reconcile pass
// (0 before the first).
func (h *harness) lastPass() uint64 {
	h.passMu.Lock()
	defer h.passMu.Unlock()
	if len(h.passes) == 0 {
		return 0
	}
	return h.passes[len(h.passes)-1].Seq
}

// passesSince returns the passes that ended after pass seq.
func (h *harness) passesSince(seq uint64) []Pass {
	h.passMu.Lock()
	defer h.passMu.Unlock()
	return slices.Clone(h.passes[min(int(seq), len(h.passes)):])
}

// waitPasses waits until n passes for reason why have ended after pass
// seq, and returns every pass that ended after seq.
func (h *harness) waitPasses(seq uint64, why string, n int) []Pass {
	h.t.Helper()
	var ps []Pass
	waitUntil(h.t, fmt.Sprintf("%d %s reconcile passes after pass %d", n, why, seq), func() bool {
		ps = h.passesSince(seq)
		c := 0
		for _, p := range ps {
			if p.Reason == why {
				c++
			}
		}
		return c >= n
	})
	return ps
}

// reconcileNow makes the agent reconcile, and waits for a pass that began
// after the call to end: the changes announced before it have been acted
// on, and every pass begun before it has ended. It returns the passes that
// ended meanwhile. Kicking twice makes sure: the first pass that ends after
// a kick may have begun before it, the pass after that one cannot have.
func (h *harness) reconcileNow() []Pass {
	h.t.Helper()
	seq := h.lastPass()
	for range 2 {
		last := h.lastPass()
		h.agent.kick()
		h.waitPasses(last, "event", 1)
	}
	return h.passesSince(seq)
}

// noEvents fails the test if one of the passes for reason why ("" for any)
// emitted an event or ended in another state than want (unset: any).
func noEvents(t *testing.T, ps []Pass, why string, want pb.SyncState) {
	t.Helper()
	for _, p := range ps {
		if why != "" && p.Reason != why {
			continue
		}
		if p.Events != 0 {
			t.Errorf("%s pass %d emitted %d events", p.Reason, p.Seq, p.Events)
		}
		if want != pb.SyncState_SYNC_STATE_UNSPECIFIED && p.State != want {
			t.Errorf("%s pass %d left the state %s, want %s", p.Reason, p.Seq, p.State, want)
		}
	}
}

// countDials makes the harness count the agent's connection attempts.
func (h *harness) countDials() *atomic.Int64 {
	var n atomic.Int64
	h.dialHook = func(ctx context.Context, d *net.Dialer, addr string) (net.Conn, error) {
		n.Add(1)
		return d.DialContext(ctx, "tcp", addr)
	}
	return &n
}

// testLogger logs to the test's output, at debug level with -v.
func testLogger(t *testing.T) *slog.Logger {
	level := slog.LevelWarn
	if testing.Verbose() {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: level}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	defer func() { _ = recover() }() // a log line after the test ended
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

var errInjected = errors.New("injected failure")

func stateFileExists(dir string) bool {
	_, err := os.Stat(dir + "/" + stateFile)
	return err == nil
}

func mustLoad(t *testing.T, k *fakekernel.Kernel, s reconcile.State) {
	t.Helper()
	if err := k.Load(s); err != nil {
		t.Fatal(err)
	}
}

func filepathGlob(pattern string) ([]string, error) { return filepath.Glob(pattern) }

func writeFile(name, content string) error { return os.WriteFile(name, []byte(content), 0o600) }

func (c *fakeController) confirmCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.confirms
}
