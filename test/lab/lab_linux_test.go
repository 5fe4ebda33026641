package lab_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/mpfleet/mpfleet/internal/nstest"
	"github.com/mpfleet/mpfleet/test/lab"
	"github.com/mpfleet/mpfleet/test/lab/traffic"
)

// integration skips the test under -short (unit tests only), and without
// root (failing under CI=true).
func integration(tb testing.TB) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("integration test: skipped with -short")
	}
	nstest.RequireRoot(tb)
}

// newLab brings up a lab for the test (see lab.New) unless integration
// skips it.
func newLab(tb testing.TB, cfg lab.Config) *lab.Lab {
	tb.Helper()
	integration(tb)
	return lab.New(tb, cfg)
}

// leftovers lists what of the lab with prefix exists: its namespaces and
// links in the root namespace named after it.
func leftovers(t *testing.T, prefix string) []string {
	t.Helper()
	var found []string
	entries, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			found = append(found, "namespace "+e.Name())
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, prefix) {
			found = append(found, "root link "+l.Attrs().Name)
		}
	}
	return found
}

// nsLinks returns the names of the links in the namespace at path.
func nsLinks(t *testing.T, path string) []string {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	return names
}

func TestIntegrationUpDown(t *testing.T) {
	integration(t)
	ctx := context.Background()
	rootBefore := nsLinks(t, "/proc/self/ns/net")
	l, err := lab.Up(ctx, lab.Config{IPv6: true})
	if err != nil {
		t.Fatal(err)
	}
	prefix := l.Prefix()
	t.Cleanup(func() { _ = lab.Cleanup(prefix) })
	if len(prefix) > 5 || !strings.HasPrefix(prefix, lab.BasePrefix) {
		t.Errorf("prefix %q: want %q and at most 5 characters", prefix, lab.BasePrefix)
	}
	if got := leftovers(t, prefix); len(got) != len(lab.Hosts) {
		t.Errorf("running lab: found %v, want exactly its %d namespaces", got, len(lab.Hosts))
	}
	want := map[lab.Host]string{
		lab.Client:     "lo eth1 eth2 mgmt0",
		lab.Server:     "lo eth1 eth2 mgmt0",
		lab.Controller: "lo mgmt0",
		lab.Router:     "lo client1 client2 server1 server2 mgmt mgmt-ctl mgmt-client mgmt-server",
	}
	for h, w := range want {
		if got := strings.Join(nsLinks(t, l.NSPath(h)), " "); got != w {
			t.Errorf("links of %s: %q, want %q", h, got, w)
		}
	}
	if got := nsLinks(t, "/proc/self/ns/net"); len(got) != len(rootBefore) {
		t.Logf("root namespace links changed from %v to %v (maybe another test)", rootBefore, got)
	}
	if err := l.Down(); err != nil {
		t.Fatalf("Down: %v", err)
	}
	if got := leftovers(t, prefix); len(got) != 0 {
		t.Errorf("after Down: %v left", got)
	}
	if err := l.Down(); err != nil {
		t.Errorf("second Down: %v", err)
	}
}

// TestIntegrationCleanupAfterCrash brings a lab up with a process in it,
// forgets it as a crashed test would, and removes it with Cleanup; a second
// lab with another prefix is left alone.
func TestIntegrationCleanupAfterCrash(t *testing.T) {
	integration(t)
	ctx := context.Background()
	other := lab.New(t, lab.Config{})
	l, err := lab.Up(ctx, lab.Config{})
	if err != nil {
		t.Fatal(err)
	}
	prefix := l.Prefix()
	t.Cleanup(func() { _ = lab.Cleanup(prefix) })
	// A process the crashed test left running in the lab.
	orphan := l.Command(context.Background(), lab.Server, "sleep", "300")
	if err := orphan.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = orphan.Process.Kill() })
	exited := make(chan error, 1)
	go func() { exited <- orphan.Wait() }()
	waitInNamespace(t, orphan.Process.Pid, l.NSPath(lab.Server))
	if err := l.Close(); err != nil { // the crash: handles gone, nothing removed
		t.Fatal(err)
	}
	if got := leftovers(t, prefix); len(got) != len(lab.Hosts) {
		t.Fatalf("crashed lab: found %v, want its %d namespaces", got, len(lab.Hosts))
	}

	if err := lab.Cleanup(prefix); err != nil {
		t.Fatalf("Cleanup(%q): %v", prefix, err)
	}
	if got := leftovers(t, prefix); len(got) != 0 {
		t.Errorf("after Cleanup: %v left", got)
	}
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Errorf("orphan exited with %v, want killed", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("Cleanup left the orphan process running")
	}
	if got := leftovers(t, other.Prefix()); len(got) != len(lab.Hosts) {
		t.Errorf("Cleanup(%q) touched lab %s: %v left of it", prefix, other.Prefix(), got)
	}
}

// waitInNamespace waits until the process pid has entered the namespace at
// path (nsenter has exec'd the command).
func waitInNamespace(t *testing.T, pid int, path string) {
	t.Helper()
	var want unix.Stat_t
	if err := unix.Stat(path, &want); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		var st unix.Stat_t
		if unix.Stat("/proc/"+strconv.Itoa(pid)+"/ns/net", &st) == nil && st.Ino == want.Ino {
			return
		}
	}
	t.Fatalf("process %d did not enter %s", pid, path)
}

// TestIntegrationCommand drives the mpfleet-lab command's up, status and
// down with a prefix of its own and two extra hosts.
func TestIntegrationCommand(t *testing.T) {
	integration(t)
	ctx := context.Background()
	var prefix string
	for i := 0; ; i++ {
		prefix = "mpfc" + strconv.Itoa(i)
		if _, err := os.Stat(filepath.Join("/run/netns", prefix+"-client")); errors.Is(err, os.ErrNotExist) {
			break
		}
	}
	t.Cleanup(func() { _ = lab.Cleanup(prefix) })
	var out, errOut strings.Builder
	if err := lab.Run(ctx, []string{"up", "--prefix", prefix, "--rate", "50M", "--hosts", "2"}, &out, &errOut); err != nil {
		t.Fatalf("up: %v\n%s", err, errOut.String())
	}
	for _, w := range []string{prefix + "-client", "198.18.12.2/24", "50 Mbit/s", prefix + "-h2", "198.18.24.2/24", "h2-eth2"} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("up printed no %q:\n%s", w, out.String())
		}
	}
	if err := lab.Run(ctx, []string{"up", "--prefix", prefix}, &out, &errOut); err == nil {
		t.Error("second up succeeded")
	}
	out.Reset()
	if err := lab.Run(ctx, []string{"status", "--prefix", prefix}, &out, &errOut); err != nil ||
		!strings.Contains(out.String(), prefix+"-server") || !strings.Contains(out.String(), "198.18.100.12/24") || strings.Contains(out.String(), prefix+"-h3") {
		t.Errorf("status: %v, want the server and h1-h2 (198.18.100.12), not h3:\n%s", err, out.String())
	}
	if err := lab.Run(ctx, []string{"down", "--prefix", prefix}, &out, &errOut); err != nil {
		t.Fatalf("down: %v", err)
	}
	if got := leftovers(t, prefix); len(got) != 0 {
		t.Errorf("after down: %v left", got)
	}
}

// listen starts a traffic server of the lab on host at addr and returns
// its address.
func listen(t testing.TB, l *lab.Lab, h lab.Host, addr string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var ln net.Listener
	if err := l.Do(h, func() (err error) { ln, err = traffic.Listen(ctx, addr); return err }); err != nil {
		cancel()
		t.Fatalf("listen on %s in %s: %v", addr, h, err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = traffic.Serve(ctx, ln, nil) }()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String()
}

// dial connects from host h (from bind, if set) to addr within timeout.
func dial(l *lab.Lab, h lab.Host, bind, addr string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var c net.Conn
	err := l.Do(h, func() (err error) {
		c, err = traffic.Dial(ctx, addr, traffic.DialOptions{Bind: bind})
		return err
	})
	return c, err
}

// transfer sends n bytes from host h (from bind, if set) to addr.
func transfer(t testing.TB, l *lab.Lab, h lab.Host, bind, addr string, n int64) traffic.Report {
	t.Helper()
	c, err := dial(l, h, bind, addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s from %s %s: %v", addr, h, bind, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r, err := traffic.Send(ctx, c, traffic.SendOptions{Bytes: n})
	if err != nil {
		t.Fatalf("transfer to %s from %s %s: %v", addr, h, bind, err)
	}
	return r
}

func hostPort(a netip.Addr, port string) string { return net.JoinHostPort(a.String(), port) }

// netstat returns a counter of /proc/net/netstat in the namespace of h.
func netstat(t *testing.T, l *lab.Lab, h lab.Host, name string) uint64 {
	t.Helper()
	var v uint64
	err := l.Do(h, func() error {
		f, err := os.Open("/proc/thread-self/net/netstat")
		if err != nil {
			return err
		}
		defer f.Close()
		s := bufio.NewScanner(f)
		for s.Scan() {
			keys := strings.Fields(s.Text())
			if !s.Scan() {
				break
			}
			vals := strings.Fields(s.Text())
			for i, k := range keys {
				if k == name && i < len(vals) {
					v, err = strconv.ParseUint(vals[i], 10, 64)
					return err
				}
			}
		}
		return errors.New("no counter " + name)
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// mptcpCounters returns the non-zero MPTcpExt counters of the namespace of
// h, for failure messages.
func mptcpCounters(t *testing.T, l *lab.Lab, h lab.Host) string {
	t.Helper()
	var out []string
	err := l.Do(h, func() error {
		b, err := os.ReadFile("/proc/thread-self/net/netstat")
		if err != nil {
			return err
		}
		lines := strings.Split(string(b), "\n")
		for i := 0; i+1 < len(lines); i += 2 {
			keys, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
			if len(keys) == 0 || keys[0] != "MPTcpExt:" {
				continue
			}
			for j := 1; j < len(keys) && j < len(vals); j++ {
				if vals[j] != "0" {
					out = append(out, keys[j]+"="+vals[j])
				}
			}
		}
		return nil
	})
	if err != nil {
		return err.Error()
	}
	return strings.Join(out, " ")
}

// addSourceRoute adds source-based policy routing for the link of h: a rule
// sending traffic from its address to a table with a default route through
// the link's gateway.
func addSourceRoute(t testing.TB, l *lab.Lab, h lab.Host, k lab.Link, v6 bool) {
	t.Helper()
	nh := l.Netlink(h)
	link, err := nh.LinkByName(lab.Iface(h, k))
	if err != nil {
		t.Fatal(err)
	}
	src, gw, bits := lab.Addr(h, k), lab.Gateway(h, k), 32
	dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	if v6 {
		src, gw, bits = lab.Addr6(h, k), lab.Gateway6(h, k), 128
		dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	}
	table := 100 + int(k)
	rule := netlink.NewRule()
	rule.Priority = 100 + int(k)
	rule.Table = table
	rule.Src = &net.IPNet{IP: src.AsSlice(), Mask: net.CIDRMask(bits, bits)}
	if err := nh.RuleAdd(rule); err != nil {
		t.Fatalf("%s: %v", rule, err)
	}
	route := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(0, bits)},
		Gw:        gw.AsSlice(),
		Table:     table,
	}
	if err := nh.RouteAdd(route); err != nil {
		t.Fatalf("%s: %v", route, err)
	}
}

// TestIntegrationReachability proves the topology's claims: the data links
// and the management network work, the management network does not reach
// the data links, and traffic from a host's link-2 address gets through
// only with source-based policy routing (the router drops it when it
// arrives on link 1, where the main table's default route sends it).
func TestIntegrationReachability(t *testing.T) {
	l := newLab(t, lab.Config{IPv6: true})
	server := listen(t, l, lab.Server, ":5201")
	_, port, _ := net.SplitHostPort(server)
	listen(t, l, lab.Controller, ":5202")
	ctl := hostPort(l.ControllerAddr(), "5202")

	for _, tc := range []struct {
		name string
		from lab.Host
		bind netip.Addr
		to   string
	}{
		{"client link1 to server link1", lab.Client, lab.Addr(lab.Client, lab.Link1), hostPort(lab.Addr(lab.Server, lab.Link1), port)},
		{"client to server link1 v6", lab.Client, netip.Addr{}, hostPort(lab.Addr6(lab.Server, lab.Link1), port)},
		{"client to controller", lab.Client, netip.Addr{}, ctl},
		{"server to controller", lab.Server, netip.Addr{}, ctl},
		{"client to controller v6", lab.Client, netip.Addr{}, hostPort(lab.Addr6(lab.Controller, lab.Mgmt), "5202")},
	} {
		bind := ""
		if tc.bind.IsValid() {
			bind = tc.bind.String()
		}
		if r := transfer(t, l, tc.from, bind, tc.to, 100_000); !r.Verified {
			t.Errorf("%s: %s", tc.name, r)
		}
	}

	// The controller has no route to the data links.
	if c, err := dial(l, lab.Controller, "", hostPort(lab.Addr(lab.Server, lab.Link1), port), 2*time.Second); err == nil {
		c.Close()
		t.Error("controller reached the server's data address")
	} else if !errors.Is(err, unix.ENETUNREACH) {
		t.Errorf("controller to data link: %v, want ENETUNREACH", err)
	}

	// Wrong gateway: from the client's link-2 address the main table sends
	// the SYN out of eth1, where the router's strict rp_filter drops it.
	for _, v6 := range []bool{false, true} {
		src, dst := lab.Addr(lab.Client, lab.Link2), lab.Addr(lab.Server, lab.Link1)
		if v6 {
			src, dst = lab.Addr6(lab.Client, lab.Link2), lab.Addr6(lab.Server, lab.Link1)
		}
		to := hostPort(dst, port)
		eth1Before, err := l.LinkStats(lab.Client, lab.Link1)
		if err != nil {
			t.Fatal(err)
		}
		rpBefore := netstat(t, l, lab.Router, "IPReversePathFilter")
		if c, err := dial(l, lab.Client, src.String(), to, 1500*time.Millisecond); err == nil {
			c.Close()
			t.Fatalf("%s to %s got through without policy routing", src, to)
		}
		eth1After, _ := l.LinkStats(lab.Client, lab.Link1)
		if eth1After.TxPackets == eth1Before.TxPackets {
			t.Errorf("%s to %s: nothing left through eth1, the main table's default route", src, to)
		}
		if !v6 {
			if rp := netstat(t, l, lab.Router, "IPReversePathFilter"); rp <= rpBefore {
				t.Errorf("%s to %s: router's IPReversePathFilter %d -> %d, want a drop", src, to, rpBefore, rp)
			}
		}
		// With source-based policy routing it leaves by eth2 and works.
		addSourceRoute(t, l, lab.Client, lab.Link2, v6)
		eth2Before, _ := l.LinkStats(lab.Client, lab.Link2)
		if r := transfer(t, l, lab.Client, src.String(), to, 100_000); !r.Verified {
			t.Errorf("%s to %s with policy routing: %s", src, to, r)
		}
		if eth2After, _ := l.LinkStats(lab.Client, lab.Link2); eth2After.TxBytes < eth2Before.TxBytes+100_000 {
			t.Errorf("%s to %s with policy routing: eth2 sent %d bytes, want at least 100000", src, to, eth2After.TxBytes-eth2Before.TxBytes)
		}
	}

	// Same for the server: a connection to its link-2 address is answered
	// from that address, by the main table out of eth1, and dropped.
	to := hostPort(lab.Addr(lab.Server, lab.Link2), port)
	if c, err := dial(l, lab.Client, "", to, 1500*time.Millisecond); err == nil {
		c.Close()
		t.Fatalf("client reached %s without the server's policy routing", to)
	}
	addSourceRoute(t, l, lab.Server, lab.Link2, false)
	if r := transfer(t, l, lab.Client, "", to, 100_000); !r.Verified {
		t.Errorf("client to %s with the server's policy routing: %s", to, r)
	}
}

// TestIntegrationLinkDownUp pulls the client's link 1 and puts it back.
func TestIntegrationLinkDownUp(t *testing.T) {
	l := newLab(t, lab.Config{})
	server := listen(t, l, lab.Server, ":5201")
	_, port, _ := net.SplitHostPort(server)
	to := hostPort(lab.Addr(lab.Server, lab.Link1), port)
	if err := l.LinkDown(lab.Client, lab.Link1); err != nil {
		t.Fatal(err)
	}
	if c, err := dial(l, lab.Client, "", to, time.Second); err == nil {
		c.Close()
		t.Fatal("reached the server with link 1 down")
	}
	if err := l.LinkUp(lab.Client, lab.Link1); err != nil {
		t.Fatal(err)
	}
	if r := transfer(t, l, lab.Client, "", to, 100_000); !r.Verified {
		t.Errorf("after LinkUp: %s", r)
	}
}

// TestIntegrationProcesses checks that Down stops what Start started.
func TestIntegrationProcesses(t *testing.T) {
	integration(t)
	l, err := lab.Up(context.Background(), lab.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lab.Cleanup(l.Prefix()) })
	out, err := l.Exec(context.Background(), lab.Client, "cat", "/proc/sys/net/ipv4/tcp_congestion_control")
	if err != nil || strings.TrimSpace(string(out)) != "reno" {
		t.Errorf("congestion control in the client: %q, %v; want reno", out, err)
	}
	p, err := l.Start(l.Command(context.Background(), lab.Controller, "sleep", "300"))
	if err != nil {
		t.Fatal(err)
	}
	waitInNamespace(t, p.Cmd.Process.Pid, l.NSPath(lab.Controller))
	if err := l.Down(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	default:
		t.Error("Down returned with the process still running")
	}
}

// TestIntegrationTrafficCommand runs the mpfleet-traffic command's serve
// and send (in process) in the lab and parses their JSON.
func TestIntegrationTrafficCommand(t *testing.T) {
	l := newLab(t, lab.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	listenAddr := hostPort(lab.Addr(lab.Server, lab.Link1), "5201")
	var serveOut strings.Builder
	serveErr := &signalWriter{match: "listening on", seen: make(chan struct{})}
	served := make(chan error, 1)
	go func() {
		served <- l.Do(lab.Server, func() error {
			return traffic.Run(ctx, []string{"serve", "--listen", listenAddr, "--once", "--json"}, &serveOut, serveErr)
		})
	}()
	// Wait for the listener: Go's MPTCP dialer retries a refused connection
	// at once with plain TCP, which could then find the listener.
	select {
	case <-serveErr.seen:
	case err := <-served:
		t.Fatalf("serve: %v\n%s", err, serveErr)
	}
	var sendOut, sendErr strings.Builder
	err := l.Do(lab.Client, func() error {
		return traffic.Run(ctx, []string{"send", "--to", listenAddr, "--bytes", "2M", "--json"}, &sendOut, &sendErr)
	})
	if err != nil {
		t.Fatalf("send: %v\n%s", err, sendErr.String())
	}
	if err := <-served; err != nil {
		t.Fatalf("serve: %v\n%s", err, serveErr)
	}
	for name, out := range map[string]string{"send": sendOut.String(), "serve": serveOut.String()} {
		var r traffic.Report
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("%s printed %q: %v", name, out, err)
		}
		if !r.Verified || r.Bytes != 2_000_000 || !r.MPTCP || r.Mbps <= 0 {
			t.Errorf("%s reported %+v, want 2000000 bytes verified over MPTCP", name, r)
			t.Logf("client: %s", mptcpCounters(t, l, lab.Client))
			t.Logf("server: %s", mptcpCounters(t, l, lab.Server))
		}
	}
}

// signalWriter collects what is written to it and closes seen once it
// contains match.
type signalWriter struct {
	match string
	seen  chan struct{}
	mu    sync.Mutex
	b     strings.Builder
}

func (w *signalWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	had := strings.Contains(w.b.String(), w.match)
	w.b.Write(p)
	if !had && strings.Contains(w.b.String(), w.match) {
		close(w.seen)
	}
	return len(p), nil
}

func (w *signalWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}
