package scale

// The programs of a run: the controller binary, loadgen processes, and a
// follower of the hosts' state (one WatchHosts stream).

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/etcdtest"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/mpfleet/mpfleet/test/loadgen"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// repoRoot is the module's root directory.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// binaries returns the controller binary (-controller-bin, else
// bin/mpfleet-controller of `make build`) and the loadgen (-loadgen-bin,
// else built now into dir).
func binaries(b *testing.B, dir string) (ctl, lg string) {
	b.Helper()
	ctl = *controllerBin
	if ctl == "" {
		ctl = filepath.Join(repoRoot(), "bin", "mpfleet-controller")
	}
	if _, err := os.Stat(ctl); err != nil {
		b.Fatalf("controller binary: %v (run `make build`, or give -controller-bin)", err)
	}
	lg = *loadgenBin
	if lg == "" {
		lg = filepath.Join(dir, "mpfleet-loadgen")
		cmd := exec.Command("go", "build", "-o", lg, "./test/loadgen/cmd/mpfleet-loadgen")
		cmd.Dir = repoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("build mpfleet-loadgen: %v\n%s", err, out)
		}
	}
	return ctl, lg
}

// etcdProc is an etcd server process on loopback.
type etcdProc struct {
	p        *proc
	endpoint string
}

// startEtcd starts an etcd process, its data in dir/name, and waits until
// it serves.
func startEtcd(b *testing.B, bin, dir, name string) *etcdProc {
	b.Helper()
	cu, pu := etcdtest.URLs(b)
	p := startProc(b, dir, name, bin, []string{
		"--name", name, "--data-dir", filepath.Join(dir, name),
		"--listen-client-urls", cu, "--advertise-client-urls", cu,
		"--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu,
		"--initial-cluster", name + "=" + pu, "--log-level", "error",
	}, nil)
	c := etcdtest.Client(b, []string{cu})
	err := eventually(context.Background(), 30*time.Second, 50*time.Millisecond, func() error {
		if p.exited() {
			return fmt.Errorf("etcd exited: %w", p.err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := c.Get(ctx, "health")
		return err
	})
	if err != nil {
		b.Fatalf("etcd not serving: %v\n%s", err, p.tail(20))
	}
	return &etcdProc{p: p, endpoint: cu}
}

// controllerProc is the controller binary on an external etcd, restartable
// on the same address and data.
type controllerProc struct {
	b    *testing.B
	bin  string
	dir  string
	addr string
	args []string
	p    *proc
	conn *grpc.ClientConn
	// metrics reads its /metrics and /debug/pprof/ (--metrics-listen).
	metrics *metricsClient
}

func startController(b *testing.B, bin, dir, etcd string) *controllerProc {
	b.Helper()
	c := &controllerProc{b: b, bin: bin, dir: dir, addr: fmt.Sprintf("127.0.0.1:%d", etcdtest.FreePort(b))}
	c.args = []string{
		"--listen", c.addr, "--etcd-endpoints", etcd, "--data-dir", filepath.Join(dir, "controller"),
		"--log-level", "warn",
	}
	c.args, c.metrics = withMetrics(b, append(c.args, strings.Fields(*controllerArgs)...))
	conn, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close() })
	c.conn = conn
	c.start()
	return c
}

// start starts the process and waits until it serves.
func (c *controllerProc) start() {
	c.b.Helper()
	c.p = startProc(c.b, c.dir, "controller", c.bin, c.args, nil)
	hc := healthpb.NewHealthClient(c.conn)
	err := eventually(context.Background(), 60*time.Second, 50*time.Millisecond, func() error {
		if c.p.exited() {
			return fmt.Errorf("the controller exited: %w", c.p.err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		if err == nil && r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			err = fmt.Errorf("health %s", r.GetStatus())
		}
		return err
	})
	if err != nil {
		c.b.Fatalf("controller not serving: %v\n%s", err, c.p.tail(20))
	}
}

// stop stops the process with sig (SIGTERM: a clean shutdown).
func (c *controllerProc) stop(sig syscall.Signal) { c.p.stop(sig, 30*time.Second) }

func (c *controllerProc) groups() pb.GroupServiceClient { return pb.NewGroupServiceClient(c.conn) }

// loadgenProc is one mpfleet-loadgen process and the client of its
// receipts.
type loadgenProc struct {
	p      *proc
	client loadgen.Client
	agents int
}

// startLoadgens starts procs loadgen processes sharing n agents, each with
// its own prefix, with args.
func startLoadgens(b *testing.B, bin, dir string, n, procs int, args ...string) []*loadgenProc {
	b.Helper()
	var out []*loadgenProc
	for i := range procs {
		share := n / procs
		if i < n%procs {
			share++
		}
		pr, pw := io.Pipe()
		name := fmt.Sprintf("loadgen%d", i)
		a := append([]string{"--agents", strconv.Itoa(share), "--prefix", fmt.Sprintf("lg%d", i), "--http-listen", "127.0.0.1:0"}, args...)
		p := startProc(b, dir, name, bin, a, pw)
		lf, err := os.OpenFile(filepath.Join(dir, name+".out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = pw.Close(); _ = lf.Close() })
		line, err := firstLine(pr, lf, 30*time.Second)
		if err != nil {
			b.Fatalf("%s: %v\n%s", name, err, p.tail(20))
		}
		u, ok := strings.CutPrefix(line, "status ")
		if !ok {
			b.Fatalf("%s: first line %q; want \"status URL\"", name, line)
		}
		out = append(out, &loadgenProc{p: p, client: loadgen.Client{URL: u}, agents: share})
	}
	return out
}

// stopLoadgens stops the processes cleanly.
func stopLoadgens(lgs []*loadgenProc) {
	for _, l := range lgs {
		l.p.stop(syscall.SIGTERM, 30*time.Second)
	}
}

// loadgensRSS returns the RSS of the loadgen processes together, in KiB.
func loadgensRSS(b *testing.B, lgs []*loadgenProc) int64 {
	b.Helper()
	var sum int64
	for _, l := range lgs {
		kb, err := rssKB(l.p.pid())
		if err != nil {
			b.Fatal(err)
		}
		sum += kb
	}
	return sum
}

// waitRevision waits until every agent of lgs holds group's revision and
// returns the last receipt.
func waitRevision(ctx context.Context, lgs []*loadgenProc, group string, rev int64) (time.Time, error) {
	var last int64
	for _, l := range lgs {
		st, err := l.client.WaitRevision(ctx, group, rev, l.agents)
		if err != nil {
			return time.Time{}, err
		}
		last = max(last, st.Last)
	}
	return time.Unix(0, last), nil
}

// waitConnected waits until every agent of lgs is served by a session
// begun after since.
func waitConnected(ctx context.Context, lgs []*loadgenProc, since time.Time) error {
	for _, l := range lgs {
		if _, err := l.client.WaitConnected(ctx, l.agents, since); err != nil {
			return err
		}
	}
	return nil
}

// receiptLatencies returns every agent's receipt of group's revision,
// relative to t0.
func receiptLatencies(ctx context.Context, lgs []*loadgenProc, group string, rev int64, t0 time.Time) ([]time.Duration, error) {
	var out []time.Duration
	for _, l := range lgs {
		times, err := l.client.Receipts(ctx, group, rev)
		if err != nil {
			return nil, err
		}
		for _, t := range times {
			out = append(out, time.Unix(0, t).Sub(t0))
		}
	}
	return out, nil
}

// hostFollower follows the hosts of a group with one WatchHosts stream
// (opened again after the controller restarts), and counts those that are
// connected and IN_SYNC at the target revision.
type hostFollower struct {
	mu     sync.Mutex
	hosts  map[string]*pb.Host
	target int64
	good   int
	wake   chan struct{}
}

func followHosts(b *testing.B, conn *grpc.ClientConn, group string) *hostFollower {
	f := &hostFollower{hosts: map[string]*pb.Host{}, wake: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	b.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		hc := pb.NewHostServiceClient(conn)
		for ctx.Err() == nil {
			// The stream ends when the controller stops; it is opened again.
			if stream, err := hc.WatchHosts(ctx, &pb.WatchHostsRequest{Group: group}, grpc.WaitForReady(true)); err == nil {
				f.follow(stream)
			}
			select { // the controller restarts; WaitForReady paces the rest
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return f
}

// follow takes the events of stream until it ends.
func (f *hostFollower) follow(stream pb.HostService_WatchHostsClient) {
	fresh := true
	for {
		ev, err := stream.Recv()
		if err != nil {
			return
		}
		f.mu.Lock()
		if fresh {
			// A new stream sends every host again.
			f.hosts, f.good, fresh = map[string]*pb.Host{}, 0, false
		}
		switch ev.GetType() {
		case pb.HostEvent_TYPE_UPSERT:
			f.setLocked(ev.GetHost().GetName(), ev.GetHost())
		case pb.HostEvent_TYPE_DELETED:
			f.setLocked(ev.GetHost().GetName(), nil)
		}
		close(f.wake)
		f.wake = make(chan struct{})
		f.mu.Unlock()
	}
}

func (f *hostFollower) isGood(h *pb.Host) bool {
	return h != nil && h.GetConnected() && h.GetSyncState() == pb.SyncState_SYNC_STATE_IN_SYNC && h.GetAppliedRevision() == f.target
}

func (f *hostFollower) setLocked(name string, h *pb.Host) {
	if f.isGood(f.hosts[name]) {
		f.good--
	}
	if h == nil {
		delete(f.hosts, name)
		return
	}
	f.hosts[name] = h
	if f.isGood(h) {
		f.good++
	}
}

// count returns how many hosts are connected and IN_SYNC at the target
// revision.
func (f *hostFollower) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.good
}

// wait waits until n hosts are connected and IN_SYNC at rev, and returns
// when the last of them was seen so.
func (f *hostFollower) wait(ctx context.Context, n int, rev int64) (time.Time, error) {
	f.mu.Lock()
	if f.target != rev {
		f.target, f.good = rev, 0
		for _, h := range f.hosts {
			if f.isGood(h) {
				f.good++
			}
		}
	}
	f.mu.Unlock()
	for {
		f.mu.Lock()
		good, total, wake := f.good, len(f.hosts), f.wake
		f.mu.Unlock()
		if good >= n {
			return time.Now(), nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("%d of %d hosts (%d known) connected and IN_SYNC at revision %d: %w", good, n, total, rev, ctx.Err())
		}
	}
}
