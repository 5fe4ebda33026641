package agent

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mpfleet/mpfleet/internal/testpki"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestParseControllers(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
		err  string // in the error; "" for none
	}{
		{in: "127.0.0.1:7400", want: []string{"127.0.0.1:7400"}},
		{in: "a.example:7400, b.example:7401 ,[2001:db8::1]:7400", want: []string{"a.example:7400", "b.example:7401", "[2001:db8::1]:7400"}},
		{in: "ctl.example:7400", want: []string{"ctl.example:7400"}},
		{in: "", err: "empty entry"},
		{in: "a:7400,,b:7400", err: "empty entry"},
		{in: "a:7400,", err: "empty entry"},
		{in: "a.example", err: `"a.example": want host:port`},
		{in: "2001:db8::1:7400", err: "want host:port"},
		{in: ":7400", err: "no host"},
		{in: "a:", err: `port ""`},
		{in: "a:0", err: `port "0"`},
		{in: "a:65536", err: `port "65536"`},
		{in: "a:http", err: `port "http"`},
		{in: "a b:7400", err: "neither a host name"},
		{in: "a:7400,a:7400", err: `"a:7400" is listed twice`},
	} {
		got, err := parseControllers(tc.in)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("parseControllers(%q): %v", tc.in, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("parseControllers(%q) = %q, %v; want an error with %q", tc.in, got, err, tc.err)
		case tc.err == "":
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("parseControllers(%q) (-want +got):\n%s", tc.in, d)
			}
		}
	}
}

// New and Run refuse a bad address list, naming it.
func TestControllerListRefused(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct {
		controller, token, want string
	}{
		{"127.0.0.1:7400,nowhere", "", `controller address "nowhere"`},
		{"127.0.0.1:7400,198.18.0.1:7400", "s3cret", "refusing to send a bearer token in plaintext"},
	} {
		opts := h.opts
		opts.Controller, opts.Token = tc.controller, tc.token
		if _, err := New(opts); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New with --controller %q: %v, want an error with %q", tc.controller, err, tc.want)
		}
	}
	err := Run(context.Background(), []string{"--host-id", "h1", "--controller", "127.0.0.1:7400,127.0.0.1:0"}, &strings.Builder{}, &strings.Builder{})
	if err == nil || !strings.Contains(err.Error(), "--controller") || !strings.Contains(err.Error(), `port "0"`) {
		t.Errorf("Run with a bad --controller: %v", err)
	}
}

// fakeResolver answers lookups from a table the test changes, and counts
// them.
type fakeResolver struct {
	mu    sync.Mutex
	addrs map[string][]netip.Addr
	calls int
}

func (r *fakeResolver) set(host string, addrs ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.addrs == nil {
		r.addrs = map[string][]netip.Addr{}
	}
	r.addrs[host] = nil
	for _, a := range addrs {
		r.addrs[host] = append(r.addrs[host], netip.MustParseAddr(a))
	}
}

func (r *fakeResolver) lookup(_ context.Context, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	a, ok := r.addrs[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return slices.Clone(a), nil
}

func (r *fakeResolver) lookups() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls
}

func roundOf(ctx context.Context, r *rotation, last string) []target {
	r.newRound(ctx, last)
	var out []target
	for t, ok := r.take(); ok; t, ok = r.take() {
		out = append(out, t)
	}
	return out
}

// TestRotation: a round holds every address of every entry once (names
// resolved afresh each round, an address two entries share once), in an
// order that differs from round to round, with the address last served
// last.
func TestRotation(t *testing.T) {
	ctx := context.Background()
	res := &fakeResolver{}
	res.set("ctl.test", "198.18.0.2", "2001:db8::2", "198.18.0.1")
	var warned []string
	r := &rotation{
		entries: []string{"198.18.0.1:7400", "ctl.test:7400", "[2001:db8::1]:7400", "gone.test:7400"},
		lookup:  res.lookup,
		warn:    func(entry string, err error) { warned = append(warned, entry) },
	}
	want := []target{
		{"198.18.0.1:7400", "198.18.0.1:7400"},
		{"ctl.test:7400", "198.18.0.2:7400"},
		{"ctl.test:7400", "[2001:db8::2]:7400"},
		{"[2001:db8::1]:7400", "[2001:db8::1]:7400"},
		{"gone.test:7400", "gone.test:7400"}, // dialed as it is: the dial says why it fails
	}
	byAddr := func(a, b target) int { return strings.Compare(a.addr, b.addr) }
	first := map[string]int{}
	for i := range 200 {
		last := ""
		if i%2 == 1 {
			last = "198.18.0.2:7400"
		}
		got := roundOf(ctx, r, last)
		if last != "" && got[len(got)-1].addr != last {
			t.Fatalf("round %d: %v; want %s last", i, got, last)
		}
		first[got[0].addr]++
		slices.SortFunc(got, byAddr)
		if d := cmp.Diff(slices.SortedFunc(slices.Values(want), byAddr), got, cmp.AllowUnexported(target{})); d != "" {
			t.Fatalf("round %d (-want +got):\n%s", i, d)
		}
	}
	if len(first) != len(want) {
		t.Errorf("first of a round, over 200 rounds: %v; want every address sometimes", first)
	}
	if n := res.lookups(); n != 400 {
		t.Errorf("%d lookups in 200 rounds of two names, want 400 (names resolved every round)", n)
	}
	if len(warned) != 200 || warned[0] != "gone.test:7400" {
		t.Errorf("warned of %d unresolved names (%v...), want 200 of gone.test", len(warned), warned[:min(1, len(warned))])
	}
	// The name now resolves elsewhere: the next round dials that.
	res.set("ctl.test", "198.18.0.3")
	got := roundOf(ctx, r, "")
	if !slices.ContainsFunc(got, func(t target) bool { return t.addr == "198.18.0.3:7400" }) ||
		slices.ContainsFunc(got, func(t target) bool { return t.addr == "198.18.0.2:7400" }) {
		t.Errorf("after the name moved: %v", got)
	}
}

// helloCount is how many hellos c received.
func helloCount(c *fakeController) int {
	n, _, _ := c.counts()
	return n
}

// holder waits until one of cs got its first hello, and returns its index.
func holder(t *testing.T, cs ...*fakeController) int {
	t.Helper()
	at := -1
	waitUntil(t, "a hello at one of the controllers", func() bool {
		for i, c := range cs {
			if helloCount(c) > 0 {
				at = i
				return true
			}
		}
		return false
	})
	return at
}

// moveAndUpdate: the agent, having moved to controller to, reports the
// configuration it holds there and applies the next revision that
// controller sends, confirmed by it.
func moveAndUpdate(t *testing.T, h *harness, to *fakeController) {
	t.Helper()
	to.waitReport(t, 0, "IN_SYNC at 1 on the new controller", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	to.setDesired(managed(2, testPolicy(pb.EndpointFlag_ENDPOINT_FLAG_BACKUP)))
	to.waitReport(t, 0, "IN_SYNC at 2 on the new controller", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 2))
	h.waitConverged(testPolicy(pb.EndpointFlag_ENDPOINT_FLAG_BACKUP))
	if to.confirmCount() == 0 {
		t.Error("revision 2 was not confirmed by the controller serving it")
	}
}

// TestAgentMovesWhenItsControllerDies: an agent given two controllers,
// whose controller stops, is served by the other, which sends it a new
// revision (and confirms it).
func TestAgentMovesWhenItsControllerDies(t *testing.T) {
	h := newHarness(t)
	b := newController(t, false)
	cs := []*fakeController{h.ctrl, b}
	h.opts.Controller = h.ctrl.addr + "," + b.addr
	for _, c := range cs {
		c.setDesired(managed(1, testPolicy()))
	}
	h.start()
	from := holder(t, cs...)
	cs[from].waitReport(t, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	cs[from].stop()
	to := cs[1-from]
	moveAndUpdate(t, h, to)
	if n := helloCount(to); n != 1 {
		t.Errorf("%d hellos at the controller moved to, want 1", n)
	}
}

// TestAgentDrainMovesAtOnce: a controller that drains the agent sees it go
// to the other controller first — although it still serves — after the
// jitter the drain asks for, not the agent's backoff.
func TestAgentDrainMovesAtOnce(t *testing.T) {
	h := newHarness(t, func(h *harness) {
		// Were the backoff paced the move, it would take a minute.
		h.opts.BackoffMin, h.opts.BackoffMax = time.Minute, time.Minute
	})
	b := newController(t, false)
	cs := []*fakeController{h.ctrl, b}
	h.opts.Controller = h.ctrl.addr + "," + b.addr
	for _, c := range cs {
		c.setDesired(managed(1, testPolicy()))
	}
	h.start()
	from := holder(t, cs...)
	cs[from].waitReport(t, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	sent := time.Now()
	cs[from].drainC <- &pb.Drain{Reason: "test drain", ReconnectWithin: durationpb.New(20 * time.Millisecond)}
	to := cs[1-from]
	waitUntil(t, "a hello at the other controller", func() bool { return helloCount(to) == 1 })
	t.Logf("moved %v after the drain", time.Since(sent).Round(time.Millisecond))
	if n := helloCount(cs[from]); n != 1 {
		t.Errorf("%d hellos at the draining controller, want 1 (the agent must try the other first)", n)
	}
	if n := h.agent.drains.Load(); n != 1 {
		t.Errorf("%d drains counted, want 1", n)
	}
	moveAndUpdate(t, h, to)
}

// refuser is an AgentService that refuses every stream as a replica does
// while another holds the host.
type refuser struct {
	pb.UnimplementedAgentServiceServer
	n atomic.Int64
}

func (r *refuser) Connect(st pb.AgentService_ConnectServer) error {
	r.n.Add(1)
	if _, err := st.Recv(); err != nil {
		return err
	}
	return status.Error(codes.AlreadyExists, `host "web-1" is connected to controller replica "other"`)
}

// TestAgentRefusedTriesNext: a refused stream (ALREADY_EXISTS) sends the
// agent to the next address of the round at once, not after a backoff.
func TestAgentRefusedTriesNext(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ref := &refuser{}
	srv := grpc.NewServer()
	pb.RegisterAgentServiceServer(srv, ref)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	for i := range 4 { // the order of the round is random: try both
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			h := newHarness(t, func(h *harness) {
				h.opts.BackoffMin, h.opts.BackoffMax = time.Minute, time.Minute
				h.opts.Controller = lis.Addr().String() + "," + h.ctrl.addr
			})
			h.ctrl.setDesired(managed(1, testPolicy()))
			before := ref.n.Load()
			h.start()
			h.ctrl.waitReport(t, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
			if n := ref.n.Load() - before; n > 1 {
				t.Errorf("the refusing controller was tried %d times, want at most once", n)
			}
		})
	}
}

// TestAgentNameWithSeveralAddresses: a controller name that resolves to two
// addresses is used as two controllers, and resolved again each round.
func TestAgentNameWithSeveralAddresses(t *testing.T) {
	la, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := la.Addr().(*net.TCPAddr).Port
	lb, err := net.Listen("tcp", fmt.Sprintf("127.0.0.2:%d", port))
	if err != nil {
		_ = la.Close()
		t.Skipf("cannot listen on 127.0.0.2:%d: %v", port, err)
	}
	cs := []*fakeController{newControllerOn(t, la, false), newControllerOn(t, lb, false)}
	res := &fakeResolver{}
	res.set("ctl.test", "127.0.0.1", "127.0.0.2")
	h := newHarness(t, func(h *harness) {
		h.opts.Controller = fmt.Sprintf("ctl.test:%d", port)
		h.opts.LookupHost = res.lookup
	})
	for _, c := range cs {
		c.setDesired(managed(1, testPolicy()))
	}
	h.start()
	from := holder(t, cs...)
	cs[from].waitReport(t, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	cs[from].stop()
	moveAndUpdate(t, h, cs[1-from])
	if n := res.lookups(); n < 2 {
		t.Errorf("%d lookups of the name, want one per round (at least 2)", n)
	}
}

// TestAgentTLSPerAddress: without --server-name, each controller's
// certificate is checked against the host of its own address: two replicas
// with their own names serve the agent in turn, and a third listed under a
// name its certificate lacks never gets a hello.
func TestAgentTLSPerAddress(t *testing.T) {
	dir := t.TempDir()
	ca, caFile := testCA(t, dir)
	serve := func(name, certName string) *fakeController {
		certFile, keyFile, err := ca.WriteLeaf(dir, name, testpki.Leaf{CommonName: certName, DNSNames: []string{certName}, Server: true})
		if err != nil {
			t.Fatal(err)
		}
		kp, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		c := newController(t, true)
		c.sopts = []grpc.ServerOption{grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS12}))}
		c.serve()
		c.setDesired(managed(1, testPolicy()))
		return c
	}
	a, b := serve("ctl-a", "ctl-a.test"), serve("ctl-b", "ctl-b.test")
	impostor := serve("ctl-c", "ctl-a.test")
	port := func(c *fakeController) string { _, p, _ := net.SplitHostPort(c.addr); return p }
	res := &fakeResolver{}
	for _, n := range []string{"ctl-a.test", "ctl-b.test", "ctl-c.test"} {
		res.set(n, "127.0.0.1")
	}
	creds, err := clientCreds(Flags{TLSCAFile: caFile})
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, func(h *harness) {
		h.opts.Controller = "ctl-a.test:" + port(a) + ",ctl-b.test:" + port(b) + ",ctl-c.test:" + port(impostor)
		h.opts.Credentials = creds
		h.opts.LookupHost = res.lookup
	})
	h.start()
	cs := []*fakeController{a, b}
	from := holder(t, cs...)
	cs[from].waitReport(t, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	cs[from].stop()
	moveAndUpdate(t, h, cs[1-from])
	if n := helloCount(impostor); n != 0 {
		t.Errorf("%d hellos reached a controller whose certificate does not name its address", n)
	}
}
