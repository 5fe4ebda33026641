package agent

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/nstest"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/vishvananda/netlink"
	"google.golang.org/protobuf/proto"
)

// BenchmarkAddrToEndpoint measures the time from an address being added to
// a matching interface (through netlink, from outside the agent) to its
// MPTCP endpoint existing in the kernel (polled with mptcpnl.Client), with
// its rule and routes added before it. It reports the p50, p99 and maximum
// over b.N runs, and the p50 and p99 from the address's removal to the
// endpoint's (the kernel's DEL_ADDR alone takes 8-25 ms here: it waits for
// an RCU grace period); run it with -benchtime=500x for a stable p99.
func BenchmarkAddrToEndpoint(b *testing.B) {
	l := newLab(b, 1)
	ctrl := newController(b, false)
	ctrl.setDesired(managed(1, &pb.MultipathPolicy{
		Endpoints: []*pb.EndpointRule{{Interface: "veth0", Cidr: "198.18.0.0/15", Flags: []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW}}},
		Routing:   &pb.Routing{Enabled: true},
	}))
	startAgent(b, l.ns, ctrl, nil)
	ctrl.waitReport(b, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	link := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: l.links[0].index}}
	var lat, gone []time.Duration
	i := 0
	for b.Loop() {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 10, byte(10 + i%200)}), 24)
		i++
		start := time.Now()
		if err := l.h.AddrAdd(link, nlAddr(p)); err != nil {
			b.Fatal(err)
		}
		for {
			if _, ok := l.endpoint(b, p.Addr()); ok {
				break
			}
			if time.Since(start) > 5*time.Second {
				b.Fatalf("no endpoint for %v after 5s", p)
			}
			time.Sleep(20 * time.Microsecond)
		}
		lat = append(lat, time.Since(start))
		start = time.Now()
		if err := l.h.AddrDel(link, nlAddr(p)); err != nil {
			b.Fatal(err)
		}
		for {
			if _, ok := l.endpoint(b, p.Addr()); !ok {
				break
			}
			if time.Since(start) > 5*time.Second {
				b.Fatalf("endpoint for %v still there 5s after the address went", p)
			}
			time.Sleep(20 * time.Microsecond)
		}
		gone = append(gone, time.Since(start))
	}
	q := func(ds []time.Duration, f float64) float64 {
		slices.Sort(ds)
		return float64(ds[min(len(ds)-1, int(f*float64(len(ds))))].Microseconds()) / 1000
	}
	b.ReportMetric(q(lat, 0.50), "p50-ms")
	b.ReportMetric(q(lat, 0.99), "p99-ms")
	b.ReportMetric(q(lat, 1), "max-ms")
	b.ReportMetric(q(gone, 0.50), "removed-p50-ms")
	b.ReportMetric(q(gone, 0.99), "removed-p99-ms")
}

// buildAgent builds the mpfleet-agent binary into a temporary directory.
func buildAgent(t testing.TB) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		nstest.Skip(t, "no go tool to build the binary: "+err.Error())
	}
	out := filepath.Join(t.TempDir(), "mpfleet-agent")
	cmd := exec.Command(goBin, "build", "-o", out, "github.com/mpfleet/mpfleet/agent/cmd/mpfleet-agent")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	return out
}

// runBinary starts the agent binary inside l's namespace (ip netns exec)
// against a fake controller listening in the same namespace. The agent is
// stopped with SIGTERM at the end; its log goes to the returned buffer.
func runBinary(t testing.TB, l *lab, bin string, p *pb.MultipathPolicy) (*exec.Cmd, *fakeController, *bytes.Buffer) {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		nstest.Skip(t, "no ip command (iproute2) to run the binary in a namespace")
	}
	var lis net.Listener
	if err := l.ns.Do(func() error {
		var err error
		lis, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ctrl := newControllerOn(t, lis, false)
	ctrl.setDesired(managed(1, p))
	var log bytes.Buffer
	cmd := exec.Command("ip", "netns", "exec", l.ns.Name, bin,
		"--controller", ctrl.addr, "--labels", "role=bench", "--state-dir", t.TempDir(), "--log-level", "debug")
	cmd.Env = append(os.Environ(), "MPFLEET_AGENT_HOST_ID=bin-1", "MPFLEET_AGENT_REPORT_INTERVAL=10s")
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd, ctrl, &log
}

func stop(t testing.TB, cmd *exec.Cmd, log *bytes.Buffer) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("agent exited with %v; log:\n%s", err, log)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("agent did not stop on SIGTERM; log:\n%s", log)
	}
}

// TestIntegrationBinary runs the mpfleet-agent binary in a namespace: it
// applies the policy there, says hello with its flags from the command line
// and the environment, and leaves the kernel as it is on SIGTERM.
func TestIntegrationBinary(t *testing.T) {
	l := newLab(t, 2)
	bin := buildAgent(t)
	p := labPolicy()
	cmd, ctrl, log := runBinary(t, l, bin, p)
	ctrl.waitReport(t, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	hello := ctrl.hello(0)
	if hello.GetHostId() != "bin-1" || hello.GetLabels()["role"] != "bench" || !hello.GetFacts().GetMptcpSupported() ||
		len(hello.GetFacts().GetInterfaces()) != 5 || !slices.Contains(hello.GetFacts().GetAvailableSchedulers(), "default") {
		t.Errorf("hello %v", hello)
	}
	for _, ll := range l.links {
		if !l.routedVia(t, ll.v4, ll.index, ll.gw4) {
			t.Errorf("%s: no policy routing", ll.v4)
		}
	}
	eps, err := l.mp.Endpoints()
	if err != nil || len(eps) != 4 {
		t.Fatalf("%d endpoints, %v; want 4", len(eps), err)
	}
	stop(t, cmd, log)
	if after, err := l.mp.Endpoints(); err != nil || len(after) != 4 {
		t.Errorf("after SIGTERM: %d endpoints, %v; the agent must leave the kernel as it is", len(after), err)
	}
	if !strings.Contains(log.String(), "the kernel is left as it is") {
		t.Errorf("log:\n%s", log)
	}
}

// BenchmarkAgentIdle runs the agent binary idle for 10s in a namespace,
// the policy applied, and reports the CPU it used (percent of one core)
// and its resident memory. Run it with -benchtime=1x.
func BenchmarkAgentIdle(b *testing.B) {
	l := newLab(b, 2)
	bin := buildAgent(b)
	p := labPolicy()
	p.Limits = &pb.Limits{Subflows: proto.Uint32(2)}
	for range b.N {
		cmd, ctrl, log := runBinary(b, l, bin, p)
		ctrl.waitReport(b, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
		pid := cmd.Process.Pid
		t0, c0 := time.Now(), cpuTicks(b, pid)
		time.Sleep(10 * time.Second)
		c1, el := cpuTicks(b, pid), time.Since(t0)
		rss := rssKiB(b, pid)
		stop(b, cmd, log)
		const clkTck = 100 // USER_HZ on Linux
		b.ReportMetric(float64(c1-c0)/clkTck/el.Seconds()*100, "idle-cpu-%")
		b.ReportMetric(float64(rss)/1024, "rss-MiB")
	}
}

// cpuTicks returns utime+stime of pid, in clock ticks.
func cpuTicks(t testing.TB, pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	return ut + st
}

// rssKiB returns VmRSS of pid.
func rssKiB(t testing.TB, pid int) uint64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			n, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	t.Fatal("no VmRSS")
	return 0
}
