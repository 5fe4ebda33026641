package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/nsrun"
	"github.com/mpfleet/mpfleet/internal/nstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Real-kernel tests. Each runs in its own throwaway namespaces, removed with
// everything in them when the test ends, also on failure; they skip without
// root and fail under CI=true (nstest). Lab addresses come from
// 198.18.0.0/15 and 2001:db8::/32 only.

// waitFor bounds every wait for an event.
const waitFor = 10 * time.Second

// pair is two namespaces, client and server, joined by two veth links: aN
// (client: 198.18.3N.1/24, 2001:db8:3N::1/64) to bN (server: .2 and ::2).
type pair struct {
	client, server *nstest.NS
	ch, sh         *netlink.Handle
	a              [2]int // client interface indexes
}

func newPair(t testing.TB) *pair {
	t.Helper()
	p := &pair{client: nstest.New(t), server: nstest.New(t)}
	var err error
	if p.ch, err = netlink.NewHandleAt(p.client.Handle, unix.NETLINK_ROUTE); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.ch.Close)
	if p.sh, err = netlink.NewHandleAt(p.server.Handle, unix.NETLINK_ROUTE); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.sh.Close)
	for i := range 2 {
		a, b := fmt.Sprintf("a%d", i), fmt.Sprintf("b%d", i)
		if err := p.ch.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a}, PeerName: b,
			PeerNamespace: netlink.NsFd(int(p.server.Handle))}); err != nil {
			t.Fatalf("add veth %s/%s: %v", a, b, err)
		}
		for _, x := range []struct {
			h    *netlink.Handle
			name string
			host int
		}{{p.ch, a, 1}, {p.sh, b, 2}} {
			link, err := x.h.LinkByName(x.name)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range []string{fmt.Sprintf("198.18.%d.%d/24", 30+i, x.host), fmt.Sprintf("2001:db8:%d::%d/64", 30+i, x.host)} {
				if err := x.h.AddrAdd(link, nlAddr(netip.MustParsePrefix(s))); err != nil {
					t.Fatalf("add %s to %s: %v", s, x.name, err)
				}
			}
			if err := x.h.LinkSetUp(link); err != nil {
				t.Fatal(err)
			}
			if x.h == p.ch {
				p.a[i] = link.Attrs().Index
			}
		}
	}
	for _, h := range []*netlink.Handle{p.ch, p.sh} {
		waitUntil(t, "the veth links to come up", func() bool {
			links, err := h.LinkList()
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range links {
				if l.Attrs().Name != "lo" && l.Attrs().OperState != netlink.OperUp {
					return false
				}
			}
			return true
		})
	}
	return p
}

// addr returns the address of host (1 client, 2 server) on link i.
func addr(v6 bool, link, host int) netip.Addr {
	if v6 {
		return netip.MustParseAddr(fmt.Sprintf("2001:db8:%d::%d", 30+link, host))
	}
	return netip.MustParseAddr(fmt.Sprintf("198.18.%d.%d", 30+link, host))
}

// nlAddr is p without duplicate address detection, usable at once.
func nlAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

func waitUntil(t testing.TB, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// listenProbe starts a Listener in the server namespace, skipping when the
// kernel has no MPTCP.
func (p *pair) listenProbe(t testing.TB, addr string, maxConns int, drain time.Duration) *Listener {
	t.Helper()
	l, err := listenLimits(context.Background(), p.server.Handle, addr, maxConns, drain)
	if errors.Is(err, mptcp.ErrUnsupported) {
		nstest.Skip(t, "kernel without MPTCP: "+err.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("close listener: %v", err)
		}
	})
	return l
}

func port(a net.Addr) uint16 { return a.(*net.TCPAddr).AddrPort().Port() }

// A probe to an MPTCP listener in another namespace, over IPv4 and IPv6, is
// MPTCP; the listener drains what it sends. It works from the caller's
// namespace too (ns < 0, on a thread the test put in the client namespace).
func TestIntegrationDialMPTCP(t *testing.T) {
	p := newPair(t)
	l := p.listenProbe(t, ":0", MaxConns, DrainTimeout) // both families
	var served uint64
	for _, tt := range []struct {
		name     string
		v6       bool
		callerNS bool
	}{{"IPv4", false, false}, {"IPv6", true, false}, {"IPv4 in the caller's namespace", false, true}} {
		t.Run(tt.name, func(t *testing.T) {
			src, target := addr(tt.v6, 0, 1), netip.AddrPortFrom(addr(tt.v6, 0, 2), port(l.Addr()))
			var r Result
			if tt.callerNS {
				if err := nsrun.In(p.client.Handle, func() error {
					r = Dial(context.Background(), -1, src, target, 5*time.Second)
					return nil
				}); err != nil {
					t.Fatal(err)
				}
			} else {
				r = Dial(context.Background(), p.client.Handle, src, target, 5*time.Second)
			}
			if r.Err != nil || !r.MPTCP || r.Latency <= 0 {
				t.Fatalf("Dial(%v, %v) = %+v, want an MPTCP connection", src, target, r)
			}
			t.Logf("probe %v -> %v over veth: established in %v", src, target, r.Latency)
			served++
			waitUntil(t, "the listener to drain the probe", func() bool {
				s := l.Stats()
				return s.Served == served && s.Bytes == served*uint64(len(Payload))
			})
		})
	}
}

// A probe to a plain TCP listener falls back: MPTCP false, no error.
func TestIntegrationDialFallback(t *testing.T) {
	p := newPair(t)
	var ln net.Listener
	if err := p.server.Do(func() error {
		// Since Go 1.24 a listener is MPTCP unless told otherwise.
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		var err error
		ln, err = lc.Listen(context.Background(), "tcp4", "198.18.30.2:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if proto, err := protocol(rc); err != nil || proto != unix.IPPROTO_TCP {
		t.Fatalf("the plain listener's protocol is %d (%v), want TCP", proto, err)
	}
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(waitFor))
		b, err := io.ReadAll(c)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(b)
	}()
	r := Dial(context.Background(), p.client.Handle, addr(false, 0, 1), netip.AddrPortFrom(addr(false, 0, 2), port(ln.Addr())), 5*time.Second)
	if r.Err != nil || r.MPTCP {
		t.Fatalf("Dial to a plain TCP listener = %+v, want a fallback (MPTCP false, no error)", r)
	}
	if s := <-got; s != Payload {
		t.Errorf("the listener read %q, want %q", s, Payload)
	}
}

// A probe to a closed port is refused, as an error: Go's plain TCP retry
// does not turn it into a connection.
func TestIntegrationDialRefused(t *testing.T) {
	p := newPair(t)
	l := p.listenProbe(t, "198.18.30.2:0", MaxConns, DrainTimeout)
	closed := port(l.Addr())
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for _, v6 := range []bool{false, true} {
		src, target := addr(v6, 0, 1), netip.AddrPortFrom(addr(v6, 0, 2), closed)
		r := Dial(context.Background(), p.client.Handle, src, target, 5*time.Second)
		if !errors.Is(r.Err, syscall.ECONNREFUSED) || r.MPTCP {
			t.Fatalf("Dial to a closed port = %+v, want ECONNREFUSED", r)
		}
		if msg := r.Err.Error(); !strings.Contains(msg, src.String()) || !strings.Contains(msg, target.String()) {
			t.Errorf("error %q does not name the source and the target", msg)
		}
	}
}

// A probe whose answers the server's routing drops (a blackhole route back
// to the client) times out within its timeout.
func TestIntegrationDialBlackHole(t *testing.T) {
	p := newPair(t)
	l := p.listenProbe(t, ":0", MaxConns, DrainTimeout)
	for _, v6 := range []bool{false, true} {
		src := addr(v6, 0, 1)
		if err := p.sh.RouteAdd(&netlink.Route{
			Dst:  &net.IPNet{IP: src.AsSlice(), Mask: net.CIDRMask(src.BitLen(), src.BitLen())},
			Type: unix.RTN_BLACKHOLE,
		}); err != nil {
			t.Fatalf("blackhole route to %v: %v", src, err)
		}
		const timeout = 500 * time.Millisecond
		before := tcpInSegs(t, p.server)
		start := time.Now()
		r := Dial(context.Background(), p.client.Handle, src, netip.AddrPortFrom(addr(v6, 0, 2), port(l.Addr())), timeout)
		took := time.Since(start)
		if !errors.Is(r.Err, os.ErrDeadlineExceeded) || r.MPTCP {
			t.Fatalf("Dial through a black hole = %+v, want a timeout", r)
		}
		if took < timeout || took > timeout+time.Second {
			t.Errorf("Dial through a black hole took %v, want about %v", took, timeout)
		}
		t.Logf("black hole (%v): %v after %v", src, r.Err, took)
		// One SYN, no retransmission within 500 ms, and no plain TCP retry
		// after the deadline.
		if n := tcpInSegs(t, p.server) - before; n != 1 {
			t.Errorf("%v: the server received %d TCP segments, want the one SYN", src, n)
		}
	}
	if s := l.Stats(); s.Served != 0 || s.Active != 0 {
		t.Errorf("the listener served %+v through a black hole", s)
	}
}

// tcpInSegs returns the TCP segments ns has received (Tcp InSegs).
func tcpInSegs(t testing.TB, ns *nstest.NS) uint64 {
	t.Helper()
	var b []byte
	if err := ns.Do(func() error {
		var err error
		b, err = os.ReadFile("/proc/thread-self/net/snmp")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var names []string
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Tcp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == "InSegs" && i < len(f) {
				v, err := strconv.ParseUint(f[i], 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				return v
			}
		}
	}
	t.Fatal("no Tcp InSegs in /proc/net/snmp")
	return 0
}

// The context bounds a probe as the timeout does.
func TestIntegrationDialCanceled(t *testing.T) {
	p := newPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := Dial(ctx, p.client.Handle, addr(false, 0, 1), netip.AddrPortFrom(addr(false, 0, 2), 7), 5*time.Second)
	if r.Err == nil {
		t.Fatalf("Dial with a canceled context = %+v, want an error", r)
	}
}

// RouteLink follows the kernel's lookup, policy rules included.
func TestIntegrationRouteLink(t *testing.T) {
	p := newPair(t)
	for _, v6 := range []bool{false, true} {
		src, dst := addr(v6, 0, 1), addr(v6, 0, 2)
		if got, err := RouteLink(p.ch, src, dst); err != nil || got != p.a[0] {
			t.Errorf("RouteLink(%v, %v) = %d, %v; want a0 (%d)", src, dst, got, err, p.a[0])
		}
		// No route at all.
		unrouted := netip.MustParseAddr("198.19.99.1")
		if v6 {
			unrouted = netip.MustParseAddr("2001:db8:99::1")
		}
		if got, err := RouteLink(p.ch, src, unrouted); err == nil {
			t.Errorf("RouteLink(%v, %v) = %d with no route, want an error", src, unrouted, got)
		} else {
			t.Logf("no route: %v", err)
		}
	}
	// A source that is not local.
	if got, err := RouteLink(p.ch, netip.MustParseAddr("198.18.99.1"), addr(false, 0, 2)); err == nil {
		t.Errorf("RouteLink from a foreign address = %d, want an error", got)
	} else {
		t.Logf("foreign source: %v", err)
	}
	// A blackhole route has no output interface: the lookup fails (EINVAL
	// from the kernel), it does not name lo.
	for _, v6 := range []bool{false, true} {
		src, dst := addr(v6, 0, 1), netip.MustParseAddr("198.19.5.1")
		if v6 {
			dst = netip.MustParseAddr("2001:db8:55::1")
		}
		pfx := netip.PrefixFrom(dst, dst.BitLen()-8).Masked()
		if err := p.ch.RouteAdd(&netlink.Route{
			Dst: &net.IPNet{IP: pfx.Addr().AsSlice(), Mask: net.CIDRMask(pfx.Bits(), dst.BitLen())}, Type: unix.RTN_BLACKHOLE,
		}); err != nil {
			t.Fatalf("blackhole route to %v: %v", dst, err)
		}
		if got, err := RouteLink(p.ch, src, dst); err == nil {
			t.Errorf("RouteLink(%v, %v) = %d into a black hole, want an error", src, dst, got)
		} else {
			t.Logf("black hole: %v", err)
		}
	}
	// from SRC lookup 100, where the target leaves by a1.
	const table = 100
	for _, v6 := range []bool{false, true} {
		src, dst := addr(v6, 0, 1), addr(v6, 0, 2)
		bits := src.BitLen()
		rule := netlink.NewRule()
		rule.Family = unix.AF_INET
		if v6 {
			rule.Family = unix.AF_INET6
		}
		rule.Src = &net.IPNet{IP: src.AsSlice(), Mask: net.CIDRMask(bits, bits)}
		rule.Table = table
		rule.Priority = 100
		if err := p.ch.RuleAdd(rule); err != nil {
			t.Fatalf("rule from %v lookup %d: %v", src, table, err)
		}
		if err := p.ch.RouteAdd(&netlink.Route{
			Dst: &net.IPNet{IP: dst.AsSlice(), Mask: net.CIDRMask(bits, bits)}, LinkIndex: p.a[1],
			Table: table, Scope: netlink.SCOPE_LINK,
		}); err != nil {
			t.Fatalf("route to %v in table %d: %v", dst, table, err)
		}
		if got, err := RouteLink(p.ch, src, dst); err != nil || got != p.a[1] {
			t.Errorf("RouteLink(%v, %v) with the rule = %d, %v; want a1 (%d)", src, dst, got, err, p.a[1])
		}
		// Another source still uses the main table.
		other := addr(v6, 1, 1)
		if got, err := RouteLink(p.ch, other, dst); err != nil || got != p.a[0] {
			t.Errorf("RouteLink(%v, %v) = %d, %v; want a0 (%d)", other, dst, got, err, p.a[0])
		}
	}
}

// The listener drains a connection until its deadline, closes the ones
// beyond its limit at once, and Close ends the connections it still holds
// (TestMain checks that its goroutines end).
func TestIntegrationListener(t *testing.T) {
	p := newPair(t)
	const drain = 300 * time.Millisecond
	l := p.listenProbe(t, "198.18.30.2:0", 1, drain)
	target := netip.AddrPortFrom(addr(false, 0, 2), port(l.Addr()))
	connect := func() net.Conn {
		t.Helper()
		var c net.Conn
		if err := p.client.Do(func() error {
			d := net.Dialer{Timeout: waitFor}
			d.SetMultipathTCP(true)
			var err error
			c, err = d.Dial("tcp4", target.String())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		_ = c.SetReadDeadline(time.Now().Add(waitFor))
		return c
	}
	// readEOF waits until the listener closes c.
	readEOF := func(c net.Conn, what string) {
		t.Helper()
		if n, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("%s: read %d, %v; want EOF", what, n, err)
		}
	}

	start := time.Now() // before the listener sets the drain deadline
	held := connect()
	if _, err := io.WriteString(held, "hello"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the listener to take the first connection", func() bool { return l.Stats().Active == 1 })
	readEOF(connect(), "a connection beyond the limit")
	if s := l.Stats(); s.Rejected != 1 || s.Active != 1 {
		t.Errorf("after one connection beyond the limit: %+v", s)
	}
	readEOF(held, "a connection past its drain deadline")
	if took := time.Since(start); took < drain {
		t.Errorf("the listener closed a connection after %v, before its drain deadline %v", took, drain)
	}
	waitUntil(t, "the drained connection to be counted", func() bool { return l.Stats().Served == 1 })
	if s := l.Stats(); s.Bytes != 5 || s.Active != 0 {
		t.Errorf("after draining: %+v, want 5 bytes, none active", s)
	}

	last := connect()
	waitUntil(t, "the listener to take another connection", func() bool { return l.Stats().Active == 1 })
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	readEOF(last, "a connection open at Close")
	if s := l.Stats(); s.Active != 0 || s.Served != 2 {
		t.Errorf("after Close: %+v", s)
	}
	// Nothing listens any more.
	if r := Dial(context.Background(), p.client.Handle, addr(false, 0, 1), target, waitFor); !errors.Is(r.Err, syscall.ECONNREFUSED) {
		t.Errorf("Dial after Close = %+v, want refused", r)
	}
}

// Listen fails, naming the address, when it cannot listen.
func TestIntegrationListenErrors(t *testing.T) {
	p := newPair(t)
	l := p.listenProbe(t, "198.18.30.2:0", MaxConns, DrainTimeout)
	for _, a := range []string{"nowhere", "198.18.99.1:0", l.Addr().String()} {
		if l2, err := Listen(context.Background(), p.server.Handle, a); err == nil {
			_ = l2.Close()
			t.Errorf("Listen(%q) succeeded", a)
		} else if !strings.Contains(err.Error(), a) {
			t.Errorf("Listen(%q) = %v, want an error naming the address", a, err)
		}
	}
}

// In a namespace with net.mptcp.enabled=0 the kernel makes no MPTCP socket:
// Dial's connection falls back to plain TCP (Go retries without MPTCP), and
// Listen fails rather than serve plain TCP.
func TestIntegrationMPTCPDisabled(t *testing.T) {
	p := newPair(t)
	l := p.listenProbe(t, "198.18.30.2:0", MaxConns, DrainTimeout)
	for _, ns := range []*nstest.NS{p.client, p.server} {
		if err := ns.Do(func() error { return os.WriteFile("/proc/sys/net/mptcp/enabled", []byte("0"), 0o644) }); err != nil {
			t.Fatalf("disable MPTCP in %s: %v", ns.Name, err)
		}
	}
	r := Dial(context.Background(), p.client.Handle, addr(false, 0, 1), netip.AddrPortFrom(addr(false, 0, 2), port(l.Addr())), 5*time.Second)
	if r.Err != nil || r.MPTCP {
		t.Errorf("Dial from a namespace without MPTCP = %+v, want a fallback (MPTCP false, no error)", r)
	}
	if l2, err := Listen(context.Background(), p.server.Handle, "198.18.30.2:0"); !errors.Is(err, mptcp.ErrUnsupported) {
		if l2 != nil {
			_ = l2.Close()
		}
		t.Errorf("Listen in a namespace without MPTCP: %v, want ErrUnsupported", err)
	} else {
		t.Logf("Listen without MPTCP: %v", err)
	}
}

// BenchmarkIntegrationDial measures one probe over a veth: connect, write,
// close. connect-ns/op is Result.Latency.
func BenchmarkIntegrationDial(b *testing.B) {
	p := newPair(b)
	l := p.listenProbe(b, "198.18.30.2:0", MaxConns, DrainTimeout)
	src, target := addr(false, 0, 1), netip.AddrPortFrom(addr(false, 0, 2), port(l.Addr()))
	var connect time.Duration
	for b.Loop() {
		r := Dial(context.Background(), p.client.Handle, src, target, waitFor)
		if r.Err != nil || !r.MPTCP {
			b.Fatalf("Dial = %+v", r)
		}
		connect += r.Latency
	}
	b.ReportMetric(float64(connect.Nanoseconds())/float64(b.N), "connect-ns/op")
}

// BenchmarkIntegrationRouteLink measures one route lookup.
func BenchmarkIntegrationRouteLink(b *testing.B) {
	p := newPair(b)
	src, dst := addr(false, 0, 1), addr(false, 0, 2)
	for b.Loop() {
		if _, err := RouteLink(p.ch, src, dst); err != nil {
			b.Fatal(err)
		}
	}
}
