package scale

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/etcdtest"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
)

var (
	agents         = flag.Int("agents", 0, "fleet size N; 0 skips the benchmark")
	changes        = flag.Int("changes", 20, "policy changes K measured on each side")
	loadgens       = flag.Int("loadgens", 1, "loadgen processes sharing the N agents")
	reportInterval = flag.Duration("report-interval", 10*time.Second, "each agent's health report interval (the real agent's default is 10s)")
	confirm        = flag.Bool("confirm", false, "agents report APPLYING and ask the controller to confirm before IN_SYNC, as a real agent applying a change")
	events         = flag.Bool("events", false, "agents send an APPLIED event (an audit write) per revision, as a real agent")
	silent         = flag.Bool("silent", false, "agents send no reports at all (only the hello): the fan-out's cost without the reports'; no status is waited for")
	doStorm        = flag.Bool("storm", true, "measure the reconnect storm after a controller restart")
	stormKill      = flag.Bool("storm-kill", false, "restart the controller after SIGKILL (a crash: its sessions stay held until their lease expires) instead of SIGTERM")
	doBaseline     = flag.Bool("baseline", true, "measure the baseline: every agent holding its own etcd watch")
	baselineWrites = flag.Bool("baseline-writes", true, "baseline agents write their status to etcd after each revision, as the hub does for its agents")
	waitLimit      = flag.Duration("wait", 30*time.Minute, "longest each side (its agents connecting and its K changes) may take")
	stormLimit     = flag.Duration("storm-wait", 10*time.Minute, "longest the storm may take; past it the storm is reported as not recovered and the run goes on")
	controllerBin  = flag.String("controller-bin", "", "controller binary (default: bin/mpfleet-controller of `make build`)")
	loadgenBin     = flag.String("loadgen-bin", "", "mpfleet-loadgen binary (default: built from test/loadgen/cmd/mpfleet-loadgen)")
	controllerArgs = flag.String("controller-args", "", "more controller flags, separated by spaces (e.g. \"--enable-pprof --metrics-listen 127.0.0.1:9464\" to profile it during the run)")
)

// groupID is the group every simulated agent falls in.
const groupID = "scale"

func scalePolicy(subflows uint32) *pb.MultipathPolicy {
	return &pb.MultipathPolicy{
		Enabled:   proto.Bool(true),
		Limits:    &pb.Limits{Subflows: proto.Uint32(subflows), AddAddrAccepted: proto.Uint32(2)},
		Endpoints: []*pb.EndpointRule{{Interface: "eth*", Flags: []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW}}},
		Routing:   &pb.Routing{Enabled: true},
	}
}

// BenchmarkScale measures the hub — the real controller binary, N agents
// in loadgen processes — and the do-it-yourself baseline side by side: see
// package doc and docs/scaling.md. It runs its scenario once, whatever
// b.N.
func BenchmarkScale(b *testing.B) {
	n := *agents
	if n <= 0 {
		b.Skip("a scale run needs a fleet size: -args -agents 1000 (or make bench-scale SCALE_AGENTS=1000)")
	}
	if *changes <= 0 || *loadgens <= 0 || *loadgens > n {
		b.Fatalf("-changes %d, -loadgens %d: must be positive, and loadgens at most -agents", *changes, *loadgens)
	}
	etcdBin := etcdtest.Binary(b)
	if etcdBin == "" {
		b.Fatal("no etcd binary: run `make tools` (builds .tools/bin/etcd) or set MPFLEET_ETCD_BIN")
	}
	dir := b.TempDir()
	ctlBin, lgBin := binaries(b, dir)
	if !*doHub && !*doBaseline && !*doFloor {
		b.Fatal("-hub=false, -baseline=false and no -floor: nothing to measure")
	}
	var flBin string
	if *doFloor {
		flBin = floorBinary(b, dir)
	}
	notes := []string{fmt.Sprintf("N=%d agents in %d loadgen process(es), K=%d changes a side, health reports every %v, confirm=%v, events=%v, silent=%v, %d CPUs (GOMAXPROCS %d)",
		n, *loadgens, *changes, *reportInterval, *confirm, *events, *silent, runtime.NumCPU(), runtime.GOMAXPROCS(0))}

	load0 := loadAverage()
	// What was measured is printed even when a step fails (b.Fatal ends the
	// benchmark's goroutine, running the deferred calls).
	res := &results{}
	complete := false
	defer func() {
		if !complete {
			if st := res.storm; st != nil && st.err == "" && st.duration == 0 {
				st.err = "not finished"
			}
			fmt.Print(table(n, res.hub, res.base, res.storm, res.floor, append(notes, "INCOMPLETE: the run stopped early; what it measured so far:")))
		}
	}()
	b.ResetTimer()
	if *doHub {
		runHub(b, dir, ctlBin, lgBin, etcdBin, n, res)
	}
	if *doBaseline {
		runBaseline(b, dir, lgBin, etcdBin, n, res)
	}
	if *doFloor {
		runFloor(b, dir, lgBin, flBin, n, res)
	}
	b.StopTimer()
	complete = true
	hub, base, st := res.hub, res.base, res.storm
	notes = append(notes, fmt.Sprintf("load average (1, 5, 15 min) at the start: %s; at the end: %s", load0, loadAverage()),
		"change → …: from the return of the change call (UpdateGroup, or the etcd put) to the last agent's receipt, or to every status stored as one watcher saw it (WatchHosts, or an etcd watch);",
		"  each agent: from the start of the call to each agent's receipt (agents may receive a change before its call returns).",
		"memory: (RSS with N connected − RSS idle) / N, of the server process alone; CPU: utime+stime over the K changes / K, in brackets less the background rate.")
	if *baselineWrites && base != nil {
		notes = append(notes, "baseline agents write their status to etcd after each revision (-baseline-writes).")
	}
	// Printed, not logged: the testing package keeps 10 lines of a
	// benchmark's log.
	notes = append(notes, hubRuntimeNotes(hub)...)
	notes = append(notes, floorNotes(res.floor)...)
	fmt.Print(table(n, hub, base, st, res.floor, notes))
	report(b, n, hub, base, st, res.floor)
}

// results are what a run measured, filled in as it goes.
type results struct {
	hub, base *side
	storm     *storm
	floor     *floorRun
}

// loadgenArgs are the loadgens' flags for a server at addr: the run's
// reporting (-report-interval, -confirm, -events, -silent).
func loadgenArgs(addr string) []string {
	args := []string{"--controller", addr, "--labels", "role=scale", "--report-interval", reportInterval.String()}
	if *confirm {
		args = append(args, "--confirm")
	}
	if *events {
		args = append(args, "--events")
	}
	if *silent {
		args = append(args, "--silent")
	}
	return args
}

// runHub runs the hub side: an etcd process, the controller binary on it,
// the loadgens; then the changes and the storm.
func runHub(b *testing.B, dir, ctlBin, lgBin, etcdBin string, n int, res *results) {
	ctx := context.Background()
	etcd := startEtcd(b, etcdBin, dir, "etcd-hub")
	ecli := etcdtest.Client(b, []string{etcd.endpoint})
	ctl := startController(b, ctlBin, dir, etcd.endpoint)
	g, err := ctl.groups().CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: groupID, Group: &pb.Group{
		Description: "scale benchmark", Selector: &pb.Selector{MatchLabels: map[string]string{"role": "scale"}},
		Policy: scalePolicy(2),
	}})
	if err != nil {
		b.Fatalf("CreateGroup: %v", err)
	}
	hosts := followHosts(b, ctl.conn, g.GetName())
	s := &side{name: "hub", server: "controller", changes: *changes}
	res.hub = s
	s.idleKB = medianRSS(b, ctl.p.pid())
	s.rt = &runtimeSplit{idle: ctl.runtime()}

	start := time.Now()
	lgs := startLoadgens(b, lgBin, dir, n, *loadgens, loadgenArgs(ctl.addr)...)
	wctx, cancel := context.WithTimeout(ctx, *waitLimit)
	defer cancel()
	if _, err := waitRevision(wctx, lgs, g.GetName(), g.GetPolicyRevision()); err != nil {
		b.Fatalf("agents holding the first revision: %v\n%s", err, ctl.p.tail(20))
	}
	if err := waitConnected(wctx, lgs, time.Time{}); err != nil {
		b.Fatalf("agents connected: %v\n%s", err, ctl.p.tail(20))
	}
	if !*silent {
		if _, err := hosts.wait(wctx, n, g.GetPolicyRevision()); err != nil {
			b.Fatalf("hosts IN_SYNC: %v\n%s", err, ctl.p.tail(20))
		}
	}
	s.connect = time.Since(start)
	s.loadgenKB = loadgensRSS(b, lgs)
	s.loadedKB = medianRSS(b, ctl.p.pid())
	s.rt.loaded = ctl.runtime()
	if s.rt.loaded.Streams != n {
		b.Fatalf("hub: %d agent streams (mpfleet_controller_agents_connected) with every agent served; want %d", s.rt.loaded.Streams, n)
	}
	s.background = background(b, ctl.p.pid())

	rev0 := etcdRevision(b, ecli)
	cpu0, t0 := mustCPU(b, ctl.p.pid()), time.Now()
	for k := range *changes {
		g.Policy = scalePolicy(uint32(3 + k%5))
		g.Etag = ""
		called := time.Now()
		upd, err := ctl.groups().UpdateGroup(ctx, &pb.UpdateGroupRequest{Group: g, Reason: "scale benchmark"})
		if err != nil {
			b.Fatalf("UpdateGroup: %v", err)
		}
		ret := time.Now()
		s.call = append(s.call, ret.Sub(called))
		last, err := waitRevision(wctx, lgs, upd.GetName(), upd.GetPolicyRevision())
		if err != nil {
			b.Fatalf("change %d: %v\n%s", k, err, ctl.p.tail(20))
		}
		s.all = append(s.all, last.Sub(ret))
		if !*silent {
			stored, err := hosts.wait(wctx, n, upd.GetPolicyRevision())
			if err != nil {
				b.Fatalf("change %d: %v\n%s", k, err, ctl.p.tail(20))
			}
			s.settle = append(s.settle, stored.Sub(ret))
		}
		lat, err := receiptLatencies(ctx, lgs, upd.GetName(), upd.GetPolicyRevision(), called)
		if err != nil {
			b.Fatal(err)
		}
		s.agent = append(s.agent, lat...)
		g = upd
	}
	s.cpu, s.phase = mustCPU(b, ctl.p.pid())-cpu0, time.Since(t0)
	s.writes = etcdRevision(b, ecli) - rev0

	if *doStorm {
		res.storm = &storm{}
		runStorm(b, ctl, lgs, hosts, ecli, n, g.GetPolicyRevision(), res.storm)
	}
	stopLoadgens(lgs)
	ctl.stop(syscall.SIGTERM)
}

// runStorm stops the controller, starts it again, and measures into st
// until every host is served and IN_SYNC again. A storm that does not
// settle within -storm-wait is an error, and the run goes on.
func runStorm(b *testing.B, ctl *controllerProc, lgs []*loadgenProc, hosts *hostFollower, ecli *clientv3.Client, n int, rev int64, st *storm) {
	st.signal, st.until = "SIGTERM", "IN_SYNC"
	if *silent {
		st.until = "served"
	}
	sig := syscall.SIGTERM
	if *stormKill {
		st.signal, sig = "SIGKILL", syscall.SIGKILL
	}
	rev0 := etcdRevision(b, ecli)
	sampler := sampleRevisions(ecli)
	t0 := time.Now()
	ctl.stop(sig)
	ctl.start()
	st.down = time.Since(t0)
	ctx, cancel := context.WithTimeout(context.Background(), *stormLimit)
	defer cancel()
	err := waitConnected(ctx, lgs, t0)
	if err == nil && !*silent {
		_, err = hosts.wait(ctx, n, rev)
	}
	st.duration = time.Since(t0)
	st.writes = etcdRevision(b, ecli) - rev0
	st.peak = sampler()
	if err != nil {
		served := 0
		for _, l := range lgs {
			if s, serr := l.client.Status(context.Background()); serr == nil {
				served += s.Connected
			}
		}
		st.err = fmt.Sprintf("not recovered within %v: %d of %d agents served, %d hosts connected and IN_SYNC", *stormLimit, served, n, hosts.count())
		b.Errorf("storm: %s: %v\n%s", st.err, err, ctl.p.tail(10))
	}
}

// background measures a process's CPU rate over a quiet 5 s: agents
// connected, health reports flowing, nothing changing.
func background(b *testing.B, pid int) float64 {
	const window = 5 * time.Second
	c0 := mustCPU(b, pid)
	time.Sleep(window) // a measurement window, not a wait for an event
	return (mustCPU(b, pid) - c0).Seconds() / window.Seconds()
}

// loadAverage returns the first three fields of /proc/loadavg: how busy
// the machine was, which every figure depends on.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return err.Error()
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return string(b)
	}
	return strings.Join(f[:3], " ")
}

// etcdRevision returns etcd's current revision (one per write).
func etcdRevision(b *testing.B, c *clientv3.Client) int64 {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Get(ctx, "/scale-benchmark/revision", clientv3.WithCountOnly())
	if err != nil {
		b.Fatalf("etcd revision: %v", err)
	}
	return resp.Header.Revision
}

// sampleRevisions samples etcd's revision every 100 ms until the returned
// function is called, which returns the most revisions made in any 1 s.
func sampleRevisions(c *clientv3.Client) func() int64 {
	type sample struct {
		at  time.Time
		rev int64
	}
	var samples []sample
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			resp, err := c.Get(ctx, "/scale-benchmark/revision", clientv3.WithCountOnly())
			cancel()
			if err == nil {
				samples = append(samples, sample{time.Now(), resp.Header.Revision})
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	return func() int64 {
		close(stop)
		<-done
		var peak int64
		for i, s := range samples {
			for _, e := range samples[i+1:] {
				if e.at.Sub(s.at) > time.Second {
					break
				}
				peak = max(peak, e.rev-s.rev)
			}
		}
		return peak
	}
}
