package agent

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Where Debian's mptcpd and mptcpd-plugins packages put the daemon and its
// plugins.
const (
	mptcpdBin     = "/usr/libexec/mptcpd"
	mptcpdPlugins = "/usr/lib/x86_64-linux-gnu/mptcpd"
)

// hotplugSamples is how many addresses each contender turns into an
// endpoint per benchmark iteration.
const hotplugSamples = 100

// hotplugContender is one daemon under measurement, alone in its lab.
type hotplugContender struct {
	name string
	lab  *lab
	lat  []time.Duration
	// first counts the samples whose endpoint was there at the first poll,
	// made as soon as AddrAdd returned.
	first int
}

// BenchmarkHotplugVsMptcpd measures, side by side in one harness, how long
// mptcpd (Debian's package, its addr_adv plugin with
// --addr-flags=subflow) and the mpfleet-agent binary (a policy making every
// address on veth0 a subflow endpoint; once without and once with policy
// routing) take to turn a new address into an MPTCP endpoint. Each runs in
// a namespace of its own (newLab: veth0 and its peer, up, with an address
// and a gateway). One sample: add an address from 198.18.10.0/24 to veth0
// with netlink, poll the namespace's endpoint dump (mptcpnl) until its
// endpoint is there, then remove the address and wait for the endpoint to
// go. The contenders take turns, sample by sample, starting with a
// different one each time, with 10 ms of quiet between samples, so that a
// busy machine weighs on all alike. It reports the p50 and p90 of each
// over hotplugSamples samples per iteration, and the share of samples
// whose endpoint was already there at the first poll, made as soon as
// AddrAdd returned: for those, the figure is the harness's own floor
// (AddrAdd and one dump), however much sooner the endpoint came. It skips
// when mptcpd is not installed (`make bench` installs it).
func BenchmarkHotplugVsMptcpd(b *testing.B) {
	for _, f := range []string{mptcpdBin, mptcpdPlugins + "/addr_adv.so"} {
		if _, err := os.Stat(f); err != nil {
			b.Skipf("mptcpd is not installed (%v): apt-get install mptcpd mptcpd-plugins, or make bench", err)
		}
	}
	bin := buildAgent(b)
	policyFor := func(routed bool) *pb.MultipathPolicy {
		return &pb.MultipathPolicy{
			Endpoints: []*pb.EndpointRule{{Interface: "veth0", Cidr: "198.18.0.0/15", Flags: []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW}}},
			Routing:   &pb.Routing{Enabled: routed},
		}
	}
	var cs []*hotplugContender
	for _, routed := range []bool{false, true} {
		l := newLab(b, 1)
		ctrl := runQuietAgent(b, l, bin, policyFor(routed))
		ctrl.waitReport(b, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
		name := "agent"
		if routed {
			name = "agent-routed"
		}
		cs = append(cs, &hotplugContender{name: name, lab: l})
	}
	l := newLab(b, 1)
	startMptcpd(b, l)
	cs = append([]*hotplugContender{{name: "mptcpd", lab: l}}, cs...)

	for b.Loop() {
		for i := range hotplugSamples {
			for j := range cs {
				c := cs[(i+j)%len(cs)]
				p := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 10, byte(10 + i%200)}), 24)
				c.lat = append(c.lat, c.sample(b, p))
				time.Sleep(10 * time.Millisecond) // quiet: the contender settles
			}
		}
	}
	for _, c := range cs {
		b.ReportMetric(quantileMS(c.lat, 0.50), c.name+"-p50-ms")
		b.ReportMetric(quantileMS(c.lat, 0.90), c.name+"-p90-ms")
		b.ReportMetric(100*float64(c.first)/float64(len(c.lat)), c.name+"-first-poll-%")
	}
}

// sample adds p to the lab's veth0, returns how long until its endpoint
// appeared, and removes it again, waiting for the endpoint to go.
func (c *hotplugContender) sample(b *testing.B, p netip.Prefix) time.Duration {
	l := c.lab
	link := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: l.links[0].index}}
	start := time.Now()
	if err := l.h.AddrAdd(link, nlAddr(p)); err != nil {
		b.Fatal(err)
	}
	for polls := 0; ; polls++ {
		if _, ok := l.endpoint(b, p.Addr()); ok {
			if polls == 0 {
				c.first++
			}
			break
		}
		if time.Since(start) > 5*time.Second {
			b.Fatalf("%s: no endpoint for %v after 5s", c.name, p)
		}
		pollPause()
	}
	lat := time.Since(start)
	if err := l.h.AddrDel(link, nlAddr(p)); err != nil {
		b.Fatal(err)
	}
	for {
		if _, ok := l.endpoint(b, p.Addr()); !ok {
			return lat
		}
		if time.Since(start) > 5*time.Second {
			b.Fatalf("%s: endpoint for %v still there 5s after the address went", c.name, p)
		}
		pollPause()
	}
}

// runQuietAgent starts the agent binary in l's namespace as runBinary
// does, but logging only warnings, as mptcpd logs nothing at its default
// level when an address comes and goes. It is killed at the end.
func runQuietAgent(b *testing.B, l *lab, bin string, p *pb.MultipathPolicy) *fakeController {
	b.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		b.Skip("no ip command (iproute2) to run the agent in a namespace")
	}
	var lis net.Listener
	if err := l.ns.Do(func() error {
		var err error
		lis, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		b.Fatal(err)
	}
	ctrl := newControllerOn(b, lis, false)
	ctrl.setDesired(managed(1, p))
	var log bytes.Buffer
	cmd := exec.Command("ip", "netns", "exec", l.ns.Name, bin,
		"--controller", ctrl.addr, "--state-dir", b.TempDir(), "--log-level", "warn")
	cmd.Env = append(os.Environ(), "MPFLEET_AGENT_HOST_ID=bench-1")
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if b.Failed() {
			b.Logf("agent log:\n%s", log.String())
		}
	})
	return ctrl
}

// pollPause pauses the poll for 50 µs on the thread (nanosleep), not with
// time.Sleep: an idle Go program's timer waits in epoll_wait, whose
// timeout is whole milliseconds, so a short time.Sleep may take one.
func pollPause() {
	ts := unix.NsecToTimespec(int64(50 * time.Microsecond))
	_ = unix.Nanosleep(&ts, nil)
}

// startMptcpd runs mptcpd inside l's namespace, its addr_adv plugin making
// every address an endpoint with the subflow flag, and waits until it has
// made one for the address veth0 already has. It is killed at the end.
func startMptcpd(b *testing.B, l *lab) {
	b.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		b.Skip("no ip command (iproute2) to run mptcpd in a namespace")
	}
	var log bytes.Buffer
	cmd := exec.Command("ip", "netns", "exec", l.ns.Name, mptcpdBin, "--log=stderr",
		"--plugin-dir="+mptcpdPlugins, "--path-manager=addr_adv",
		"--addr-flags=subflow", "--notify-flags=existing,skip_link_local,skip_loopback")
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	start := time.Now()
	for {
		if _, ok := l.endpoint(b, l.links[0].v4.Addr()); ok {
			return
		}
		if time.Since(start) > 10*time.Second {
			b.Fatalf("mptcpd made no endpoint for %v in 10s; its log:\n%s", l.links[0].v4, logOf(cmd, &log))
		}
		time.Sleep(time.Millisecond)
	}
}

// logOf returns the log of a process that was killed first, so that its
// buffer is no longer written.
func logOf(cmd *exec.Cmd, log *bytes.Buffer) string {
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	return fmt.Sprintf("%s(exit: %v)", log.String(), cmd.ProcessState)
}

// quantileMS returns the q-quantile of ds in milliseconds.
func quantileMS(ds []time.Duration, q float64) float64 {
	s := slices.Clone(ds)
	slices.Sort(s)
	return float64(s[min(len(s)-1, int(q*float64(len(s))))].Microseconds()) / 1000
}
