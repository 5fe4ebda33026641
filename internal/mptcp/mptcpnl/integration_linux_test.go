//go:build linux

package mptcpnl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/nstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Real-kernel tests. Each runs in its own throwaway namespaces (removed with
// everything in them when the test ends, also on failure); they skip without
// root and fail under CI=true (nstest). Lab addresses come from
// 198.18.0.0/15 and 2001:db8::/32 only.

// dialNS opens a Client in ns.
func dialNS(t *testing.T, ns *nstest.NS) *Client {
	t.Helper()
	c, err := Dial(&DialOptions{NetNS: int(ns.Handle)})
	if err != nil {
		if errors.Is(err, mptcp.ErrUnsupported) {
			nstest.Skip(t, fmt.Sprintf("kernel without MPTCP: %v", err))
		}
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

// do runs fn inside ns and fails the test on error.
func do(t *testing.T, ns *nstest.NS, fn func() error) {
	t.Helper()
	if err := ns.Do(fn); err != nil {
		t.Fatalf("in netns %s: %v", ns.Name, err)
	}
}

// veth makes a veth pair: name in ns, peer in peerNS (or ns when nil), both
// up. It returns the index of name.
func veth(t *testing.T, ns *nstest.NS, name, peer string, peerNS *nstest.NS) int {
	t.Helper()
	var idx int
	do(t, ns, func() error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer}
		if peerNS != nil {
			v.PeerNamespace = netlink.NsFd(int(peerNS.Handle))
		}
		if err := netlink.LinkAdd(v); err != nil {
			return fmt.Errorf("add veth %s/%s: %w", name, peer, err)
		}
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		idx = l.Attrs().Index
		return netlink.LinkSetUp(l)
	})
	if peerNS == nil {
		peerNS = ns
	}
	do(t, peerNS, func() error {
		l, err := netlink.LinkByName(peer)
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	return idx
}

// addAddr puts prefix on link in ns (IPv6 without duplicate address
// detection, so that it is usable at once).
func addAddr(t *testing.T, ns *nstest.NS, link, prefix string) {
	t.Helper()
	do(t, ns, func() error {
		l, err := netlink.LinkByName(link)
		if err != nil {
			return err
		}
		a, err := netlink.ParseAddr(prefix)
		if err != nil {
			return err
		}
		if a.IP.To4() == nil {
			a.Flags = unix.IFA_F_NODAD
		}
		return netlink.AddrAdd(l, a)
	})
}

func TestIntegrationDial(t *testing.T) {
	ns := nstest.New(t)
	c := dialNS(t, ns)
	if _, err := c.Endpoints(); err != nil {
		t.Fatal(err)
	}
	// NetNS 0 means the calling thread's namespace.
	do(t, ns, func() error {
		c0, err := Dial(nil)
		if err != nil {
			return err
		}
		defer c0.Close()
		if err := c0.AddEndpoint(mptcp.Endpoint{ID: 9, Addr: netip.MustParseAddr("198.18.9.9"), Flags: mptcp.FlagSubflow}); err != nil {
			return err
		}
		return nil
	})
	// ...and it was ns, not the namespace of the test.
	if _, err := c.c.endpoint(9); err != nil {
		t.Errorf("endpoint added through Dial(nil) inside the namespace: %v", err)
	}

	// A Client is safe for concurrent use (run with -race).
	var wg sync.WaitGroup
	errs := make(chan error, 4*20)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				eps, err := c.Endpoints()
				if err == nil && len(eps) != 1 {
					err = fmt.Errorf("%d endpoints, want 1", len(eps))
				}
				if err == nil {
					_, err = c.Limits()
				}
				if err == nil {
					_, err = c.Connections()
				}
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent use: %v", err)
	}
}

// TestIntegrationEndpointFlagMatrix tries every combination of the six
// endpoint flags, with and without a port, in both families, on the kernel:
// what it accepts must be exactly what Validate accepts, and what it accepts
// must read back unchanged.
func TestIntegrationEndpointFlagMatrix(t *testing.T) {
	ns := nstest.New(t)
	idx := veth(t, ns, "m0", "m1", nil)
	addAddr(t, ns, "m0", "198.18.1.1/24")
	addAddr(t, ns, "m0", "2001:db8:1::1/64")
	c := dialNS(t, ns)

	port := uint16(20000)
	var accepted int
	for _, addr := range []netip.Addr{netip.MustParseAddr("198.18.1.1"), netip.MustParseAddr("2001:db8:1::1")} {
		for f := mptcp.Flags(0); f <= mptcp.KnownFlags; f++ {
			for _, withPort := range []bool{false, true} {
				e := mptcp.Endpoint{Addr: addr, Flags: f}
				if withPort {
					port++
					e.Port = port
				}
				if f&1 == 1 { // half with an ID of ours, half kernel-chosen
					e.ID = uint8(f) + 10
				}
				if f&2 == 0 {
					e.IfIndex = idx
				}
				name := fmt.Sprintf("%s flags %q port %d", addr, f, e.Port)
				valid := e.Validate()
				err := c.c.addEndpoint(e) // unchecked: ask the kernel itself
				if (err == nil) != (valid == nil) {
					t.Errorf("%s: kernel says %v, Validate says %v", name, err, valid)
				}
				if err != nil {
					if !errors.Is(err, mptcp.ErrInvalid) {
						t.Errorf("%s: refusal %v does not match ErrInvalid", name, err)
					}
					continue
				}
				accepted++
				eps, err := c.Endpoints()
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if len(eps) != 1 {
					t.Fatalf("%s: %d endpoints after one add: %+v", name, len(eps), eps)
				}
				want := e
				if e.ID == 0 {
					want.ID = eps[0].ID
					if want.ID == 0 {
						t.Errorf("%s: the kernel chose id 0", name)
					}
				}
				if eps[0] != want {
					t.Errorf("%s: dump gives %+v, want %+v", name, eps[0], want)
				}
				if got, err := c.c.endpoint(want.ID); err != nil || got != want {
					t.Errorf("%s: Endpoint(%d) = %+v, %v; want %+v", name, want.ID, got, err, want)
				}
				if err := c.DeleteEndpoint(want.ID); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
			}
		}
	}
	// 24 flag sets without a port and 4 with one (signal, ±backup, ±laminar),
	// per family, on 6.18.
	t.Logf("kernel accepted %d of %d endpoints", accepted, 2*2*int(mptcp.KnownFlags+1))
	if accepted == 0 {
		t.Fatal("the kernel accepted no endpoint at all")
	}
}

func TestIntegrationEndpoints(t *testing.T) {
	ns := nstest.New(t)
	idx := veth(t, ns, "m0", "m1", nil)
	addAddr(t, ns, "m0", "198.18.1.1/24")
	addAddr(t, ns, "m0", "2001:db8:1::1/64")
	c := dialNS(t, ns)

	v4 := mptcp.Endpoint{Addr: netip.MustParseAddr("198.18.1.1"), Flags: mptcp.FlagSubflow, IfIndex: idx}
	v6 := mptcp.Endpoint{ID: 42, Addr: netip.MustParseAddr("2001:db8:1::1"), Flags: mptcp.FlagSignal | mptcp.FlagBackup}
	for _, e := range []mptcp.Endpoint{v4, v6} {
		if err := c.AddEndpoint(e); err != nil {
			t.Fatal(err)
		}
	}
	eps, err := c.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	v4.ID = 1 // the first ID the kernel gives in a fresh namespace
	if diff := cmp.Diff([]mptcp.Endpoint{v4, v6}, eps, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Errorf("endpoints (-want +got):\n%s", diff)
	}

	// Conflicts.
	err = c.AddEndpoint(mptcp.Endpoint{Addr: v4.Addr, Flags: mptcp.FlagSignal})
	if !errors.Is(err, os.ErrExist) || !errors.Is(err, mptcp.ErrEndpointExists) ||
		!strings.HasPrefix(err.Error(), "mptcp add endpoint 198.18.1.1: file exists") {
		t.Errorf("duplicate address: %v", err)
	}
	err = c.AddEndpoint(mptcp.Endpoint{ID: 42, Addr: netip.MustParseAddr("198.18.1.7"), Flags: mptcp.FlagSubflow})
	if !errors.Is(err, os.ErrExist) {
		t.Errorf("duplicate id: %v", err)
	}

	// Absent ones.
	if _, err := c.c.endpoint(7); !errors.Is(err, os.ErrNotExist) || !errors.Is(err, mptcp.ErrEndpointNotFound) {
		t.Errorf("get missing: %v", err)
	}
	if err := c.DeleteEndpoint(7); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("delete missing: %v", err)
	}

	// Signal with fullmesh: refused here, and the kernel agrees.
	sf := mptcp.Endpoint{Addr: netip.MustParseAddr("198.18.1.8"), Flags: mptcp.FlagSignal | mptcp.FlagFullmesh}
	if err := c.AddEndpoint(sf); !errors.Is(err, mptcp.ErrInvalid) {
		t.Errorf("signal+fullmesh: %v", err)
	}
	if err := c.c.addEndpoint(sf); !errors.Is(err, mptcp.ErrInvalid) || !errors.Is(err, syscall.EINVAL) {
		t.Errorf("signal+fullmesh sent to the kernel: %v", err)
	}

	// Fill the namespace: 8 endpoints fit, the 9th does not.
	for i := 3; i <= mptcp.MaxEndpoints; i++ {
		e := mptcp.Endpoint{Addr: netip.AddrFrom4([4]byte{198, 18, 1, byte(10 + i)}), Flags: mptcp.FlagSubflow}
		if err := c.AddEndpoint(e); err != nil {
			t.Fatalf("endpoint %d: %v", i, err)
		}
	}
	err = c.AddEndpoint(mptcp.Endpoint{Addr: netip.MustParseAddr("198.18.1.99"), Flags: mptcp.FlagSubflow})
	if !errors.Is(err, mptcp.ErrTooManyEndpoints) || !errors.Is(err, syscall.ERANGE) {
		t.Errorf("9th endpoint: %v", err)
	}
	if eps, err := c.Endpoints(); err != nil || len(eps) != mptcp.MaxEndpoints {
		t.Errorf("after the 9th: %d endpoints, %v", len(eps), err)
	}

	if err := c.DeleteEndpoint(42); err != nil {
		t.Fatal(err)
	}
	if _, err := c.c.endpoint(42); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("deleted endpoint still there: %v", err)
	}
	if err := c.FlushEndpoints(); err != nil {
		t.Fatal(err)
	}
	if eps, err := c.Endpoints(); err != nil || len(eps) != 0 {
		t.Errorf("after flush: %+v, %v", eps, err)
	}
	// Flushing nothing is fine too.
	if err := c.FlushEndpoints(); err != nil {
		t.Errorf("second flush: %v", err)
	}
}

func TestIntegrationSetEndpointFlags(t *testing.T) {
	ns := nstest.New(t)
	c := dialNS(t, ns)
	sub := mptcp.Endpoint{ID: 5, Addr: netip.MustParseAddr("198.18.1.5"), Flags: mptcp.FlagSubflow}
	sig := mptcp.Endpoint{ID: 6, Addr: netip.MustParseAddr("2001:db8:1::6"), Flags: mptcp.FlagSignal}
	for _, e := range []mptcp.Endpoint{sub, sig} {
		if err := c.AddEndpoint(e); err != nil {
			t.Fatal(err)
		}
	}
	flagsOf := func(id uint8) mptcp.Flags {
		t.Helper()
		e, err := c.c.endpoint(id)
		if err != nil {
			t.Fatal(err)
		}
		return e.Flags
	}
	for _, f := range []mptcp.Flags{
		mptcp.FlagSubflow | mptcp.FlagBackup,
		mptcp.FlagSubflow | mptcp.FlagBackup | mptcp.FlagFullmesh,
		mptcp.FlagSubflow | mptcp.FlagFullmesh,
		mptcp.FlagSubflow,
	} {
		if err := c.SetEndpointFlags(5, f); err != nil {
			t.Fatalf("set %q: %v", f, err)
		}
		if got := flagsOf(5); got != f {
			t.Errorf("after set %q: %q", f, got)
		}
	}
	if err := c.SetEndpointFlags(6, mptcp.FlagSignal|mptcp.FlagBackup); err != nil || flagsOf(6) != mptcp.FlagSignal|mptcp.FlagBackup {
		t.Errorf("signal endpoint backup: %v, flags %q", err, flagsOf(6))
	}

	// Other flags cannot change in place: refused, with the flag named...
	err := c.SetEndpointFlags(5, mptcp.FlagSignal)
	if !errors.Is(err, mptcp.ErrFlagsImmutable) || !strings.Contains(err.Error(), ": signal subflow") {
		t.Errorf("subflow → signal: %v", err)
	}
	// ...because the kernel would say yes and change nothing.
	attrs, err := encodeEndpoint(mptcp.Endpoint{ID: 5, Flags: mptcp.FlagSignal | mptcp.FlagBackup})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.c.execute("raw set flags", cmdSetFlags, flagsMutate, attrs, nil); err != nil {
		t.Fatalf("raw SET_FLAGS: %v", err)
	}
	if got := flagsOf(5); got != mptcp.FlagSubflow|mptcp.FlagBackup {
		t.Errorf("raw SET_FLAGS signal|backup on a subflow endpoint gave %q; this test expects the kernel to change backup only", got)
	}

	// Fullmesh on a signal endpoint: refused here and by the kernel.
	if err := c.SetEndpointFlags(6, mptcp.FlagSignal|mptcp.FlagFullmesh); !errors.Is(err, mptcp.ErrInvalid) {
		t.Errorf("fullmesh on signal: %v", err)
	}
	attrs, err = encodeEndpoint(mptcp.Endpoint{ID: 6, Flags: mptcp.FlagSignal | mptcp.FlagFullmesh})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.c.execute("raw set flags", cmdSetFlags, flagsMutate, attrs, nil); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("raw SET_FLAGS fullmesh on a signal endpoint: %v, want EINVAL", err)
	}

	if err := c.SetEndpointFlags(77, mptcp.FlagBackup); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing endpoint: %v", err)
	}
}

func TestIntegrationLimits(t *testing.T) {
	ns := nstest.New(t)
	c := dialNS(t, ns)
	l, err := c.Limits()
	if err != nil {
		t.Fatal(err)
	}
	if l != (mptcp.Limits{Subflows: 2, AddAddrAccepted: 0}) {
		t.Errorf("defaults of a new namespace: %+v, want subflows 2 add_addr_accepted 0", l)
	}
	for _, want := range []mptcp.Limits{{Subflows: 8, AddAddrAccepted: 8}, {Subflows: 0, AddAddrAccepted: 3}, {Subflows: 2, AddAddrAccepted: 2}} {
		if err := c.SetLimits(want); err != nil {
			t.Fatalf("set %+v: %v", want, err)
		}
		if got, err := c.Limits(); err != nil || got != want {
			t.Errorf("after set %+v: %+v, %v", want, got, err)
		}
	}
	for _, bad := range []mptcp.Limits{{Subflows: mptcp.MaxLimit + 1}, {AddAddrAccepted: mptcp.MaxLimit + 1}} {
		if err := c.SetLimits(bad); !errors.Is(err, mptcp.ErrInvalid) {
			t.Errorf("set %+v: %v, want ErrInvalid", bad, err)
		}
		// The kernel agrees with MaxLimit.
		err := c.c.setLimits(bad, "raw set limits")
		if !errors.Is(err, mptcp.ErrInvalid) || !errors.Is(err, syscall.EINVAL) {
			t.Errorf("raw set %+v: %v, want EINVAL", bad, err)
		}
		var oe *mptcp.OpError
		if errors.As(err, &oe) && !strings.Contains(oe.Message, "limit greater than maximum") {
			t.Logf("kernel message for %+v: %q", bad, oe.Message)
		}
	}
	if got, err := c.Limits(); err != nil || got != (mptcp.Limits{Subflows: 2, AddAddrAccepted: 2}) {
		t.Errorf("refused limits changed something: %+v, %v", got, err)
	}
}

// lab is a client and a server namespace joined by two veth pairs, with
// source routing on the client for the second link.
type lab struct {
	client, server     *nstest.NS
	c1, c2, s1, s2     netip.Addr // client and server address on links 1 and 2
	clientIf2          int        // index of the client's link-2 interface
	network            string     // "tcp4" or "tcp6"
	clientPM, serverPM *Client
}

func newLab(t *testing.T, v6 bool) *lab {
	l := &lab{client: nstest.New(t), server: nstest.New(t), network: "tcp4"}
	pfx := func(link, host int) string { return fmt.Sprintf("198.18.%d.%d", link, host) }
	bits := "/24"
	if v6 {
		pfx = func(link, host int) string { return fmt.Sprintf("2001:db8:%d::%d", link, host) }
		bits = "/64"
		l.network = "tcp6"
	}
	l.c1, l.s1 = netip.MustParseAddr(pfx(1, 1)), netip.MustParseAddr(pfx(1, 2))
	l.c2, l.s2 = netip.MustParseAddr(pfx(2, 1)), netip.MustParseAddr(pfx(2, 2))
	veth(t, l.client, "a1", "b1", l.server)
	l.clientIf2 = veth(t, l.client, "a2", "b2", l.server)
	addAddr(t, l.client, "a1", l.c1.String()+bits)
	addAddr(t, l.client, "a2", l.c2.String()+bits)
	addAddr(t, l.server, "b1", l.s1.String()+bits)
	addAddr(t, l.server, "b2", l.s2.String()+bits)
	// Traffic from the link-2 address leaves by link 2, whatever its
	// destination: the policy routing mpfleet sets up on real hosts.
	do(t, l.client, func() error {
		family := unix.AF_INET
		if v6 {
			family = unix.AF_INET6
		}
		rule := netlink.NewRule()
		rule.Family = family
		rule.Src = netlink.NewIPNet(l.c2.AsSlice())
		rule.Table, rule.Priority = 100, 100
		if err := netlink.RuleAdd(rule); err != nil {
			return fmt.Errorf("rule: %w", err)
		}
		return netlink.RouteAdd(&netlink.Route{
			Family: family, LinkIndex: l.clientIf2, Gw: l.s2.AsSlice(), Table: 100,
		})
	})
	l.clientPM, l.serverPM = dialNS(t, l.client), dialNS(t, l.server)
	return l
}

// events reads from ec until done says it has what it waits for.
func waitEvents(t *testing.T, ec *EventConn, what string, done func([]mptcp.Event) bool) []mptcp.Event {
	t.Helper()
	var seen []mptcp.Event
	deadline := time.Now().Add(5 * time.Second)
	for !done(seen) {
		if err := ec.SetReadDeadline(deadline); err != nil {
			t.Fatal(err)
		}
		evs, err := ec.Receive()
		if err != nil {
			t.Fatalf("waiting for %s: %v; saw %+v", what, err, seen)
		}
		seen = append(seen, evs...)
	}
	return seen
}

func findEvent(evs []mptcp.Event, typ mptcp.EventType, token uint32) (mptcp.Event, bool) {
	for _, e := range evs {
		if e.Type == typ && e.Token == token {
			return e, true
		}
	}
	return mptcp.Event{}, false
}

// waitConnection polls Connections until one with local address local
// satisfies ok.
func waitConnection(t *testing.T, c *Client, local netip.AddrPort, what string, ok func(mptcp.Connection) bool) mptcp.Connection {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		conns, err := c.Connections()
		if err != nil {
			t.Fatal(err)
		}
		for _, conn := range conns {
			if conn.Local == local && ok(conn) {
				return conn
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection from %s with %s; have %+v", local, what, conns)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func readCounters(t *testing.T, ns *nstest.NS) mptcp.Counters {
	t.Helper()
	var c mptcp.Counters
	do(t, ns, func() error {
		var err error
		c, err = mptcp.ReadCounters()
		return err
	})
	return c
}

func addrPort(a net.Addr) netip.AddrPort {
	ap := a.(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// TestIntegrationConnection opens a real MPTCP connection between two
// namespaces with a SUBFLOW endpoint on the client's second link, and checks
// what Connections, the events and the counters say about it, in both
// families.
func TestIntegrationConnection(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		name := "IPv4"
		if v6 {
			name = "IPv6"
		}
		t.Run(name, func(t *testing.T) { testConnection(t, v6) })
	}
}

func testConnection(t *testing.T, v6 bool) {
	l := newLab(t, v6)
	clientEv, err := DialEvents(&DialOptions{NetNS: int(l.client.Handle)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { clientEv.Close() })
	serverEv, err := DialEvents(&DialOptions{NetNS: int(l.server.Handle)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { serverEv.Close() })

	endp := mptcp.Endpoint{ID: 2, Addr: l.c2, Flags: mptcp.FlagSubflow, IfIndex: l.clientIf2}
	if err := l.clientPM.AddEndpoint(endp); err != nil {
		t.Fatal(err)
	}

	// Sockets are made inside the namespaces; I/O can then happen anywhere.
	var ln net.Listener
	do(t, l.server, func() error {
		var lc net.ListenConfig
		lc.SetMultipathTCP(true)
		var err error
		ln, err = lc.Listen(context.Background(), l.network, netip.AddrPortFrom(l.s1, 0).String())
		return err
	})
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- conn
		_, _ = io.Copy(conn, conn) // echo until the client closes
		conn.Close()
	}()
	var conn net.Conn
	do(t, l.client, func() error {
		d := net.Dialer{Timeout: 5 * time.Second}
		d.SetMultipathTCP(true)
		var err error
		conn, err = d.Dial(l.network, ln.Addr().String())
		return err
	})
	defer conn.Close()
	if mp, err := conn.(*net.TCPConn).MultipathTCP(); err != nil || !mp {
		t.Fatalf("connection is not MPTCP: %v, %v", mp, err)
	}
	payload := []byte("mpfleet says hello over two paths")
	if _, err := conn.Write(payload); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(conn, make([]byte, len(payload))); err != nil {
		t.Fatal(err)
	}
	local, remote := addrPort(conn.LocalAddr()), addrPort(conn.RemoteAddr())
	if local.Addr() != l.c1 || remote.Addr() != l.s1 {
		t.Fatalf("connection %s → %s, want it from %s to %s", local, remote, l.c1, l.s1)
	}

	// The client's path manager opens the second subflow on its own.
	c := waitConnection(t, l.clientPM, local, "2 subflows", func(c mptcp.Connection) bool { return c.Info.Subflows == 1 })
	if c.State != mptcp.StateEstablished || c.Remote != remote {
		t.Errorf("client connection: state %s remote %s, want ESTAB %s", c.State, c.Remote, remote)
	}
	wantFamily := uint8(unix.AF_INET)
	if v6 {
		wantFamily = unix.AF_INET6
	}
	if c.Family != wantFamily {
		t.Errorf("family %d, want %d", c.Family, wantFamily)
	}
	i := c.Info
	if i.Fallback || i.Token == 0 || i.SubflowsMax != 2 || i.LocalAddrMax != 1 || i.BytesSent < uint64(len(payload)) ||
		i.BytesReceived < uint64(len(payload)) || !i.RemoteKeyReceived {
		t.Errorf("client mptcp_info: %+v", i)
	}
	// subflows_total (6.10+) counts the initial subflow too.
	if i.SubflowsTotal != 0 && i.SubflowsTotal != 2 {
		t.Errorf("subflows_total %d, want 2", i.SubflowsTotal)
	}
	s := waitConnection(t, l.serverPM, remote, "a joined subflow", func(s mptcp.Connection) bool { return s.Remote == local && s.Info.Subflows == 1 })
	if s.Info.Fallback || s.Info.Token == 0 {
		t.Errorf("server mptcp_info: %+v", s.Info)
	}

	// Events, on both sides.
	token := i.Token
	evs := waitEvents(t, clientEv, "the client's CREATED, ESTABLISHED, SUB_ESTABLISHED", func(evs []mptcp.Event) bool {
		_, a := findEvent(evs, mptcp.EventCreated, token)
		_, b := findEvent(evs, mptcp.EventEstablished, token)
		_, c := findEvent(evs, mptcp.EventSubEstablished, token)
		return a && b && c
	})
	created, _ := findEvent(evs, mptcp.EventCreated, token)
	wantCreated := mptcp.Event{
		Type: mptcp.EventCreated, Token: token, Family: uint16(wantFamily), Saddr: local.Addr(), Daddr: remote.Addr(),
		Sport: local.Port(), Dport: remote.Port(),
	}
	if diff := cmp.Diff(wantCreated, created, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Errorf("CREATED (-want +got):\n%s", diff)
	}
	sub, _ := findEvent(evs, mptcp.EventSubEstablished, token)
	if sub.Saddr != l.c2 || sub.Daddr != l.s1 || sub.Dport != remote.Port() || sub.LocID != endp.ID ||
		sub.IfIndex != l.clientIf2 || sub.Backup || sub.Sport == 0 {
		t.Errorf("SUB_ESTABLISHED: %+v; want from %s (endpoint %d, ifindex %d) to %s", sub, l.c2, endp.ID, l.clientIf2, remote)
	}
	sevs := waitEvents(t, serverEv, "the server's ESTABLISHED and SUB_ESTABLISHED", func(evs []mptcp.Event) bool {
		_, a := findEvent(evs, mptcp.EventEstablished, s.Info.Token)
		_, b := findEvent(evs, mptcp.EventSubEstablished, s.Info.Token)
		return a && b
	})
	if est, _ := findEvent(sevs, mptcp.EventEstablished, s.Info.Token); !est.ServerSide || est.Saddr != remote.Addr() || est.Sport != remote.Port() {
		t.Errorf("server ESTABLISHED: %+v", est)
	}
	if ssub, _ := findEvent(sevs, mptcp.EventSubEstablished, s.Info.Token); ssub.Saddr != l.s1 || ssub.Daddr != l.c2 {
		t.Errorf("server SUB_ESTABLISHED: %+v", ssub)
	}

	// The counters saw it.
	cc, sc := readCounters(t, l.client), readCounters(t, l.server)
	if cc.MPCapableSYNTX() < 1 || cc.MPJoinSynAckRx() < 1 || cc.MPCurrEstab() != 1 || cc.Fallbacks() != 0 {
		t.Errorf("client counters: SYNTX %d JoinSynAckRx %d CurrEstab %d fallbacks %d",
			cc.MPCapableSYNTX(), cc.MPJoinSynAckRx(), cc.MPCurrEstab(), cc.Fallbacks())
	}
	if sc.MPCapableSYNRX() < 1 || sc.MPJoinSynRx() < 1 || sc.MPJoinAckRx() < 1 || sc.Fallbacks() != 0 {
		t.Errorf("server counters: SYNRX %d JoinSynRx %d JoinAckRx %d fallbacks %d",
			sc.MPCapableSYNRX(), sc.MPJoinSynRx(), sc.MPJoinAckRx(), sc.Fallbacks())
	}

	// Deleting the endpoint closes the subflow that uses it.
	if err := l.clientPM.DeleteEndpoint(endp.ID); err != nil {
		t.Fatal(err)
	}
	evs = waitEvents(t, clientEv, "SUB_CLOSED", func(evs []mptcp.Event) bool { _, ok := findEvent(evs, mptcp.EventSubClosed, token); return ok })
	if sc, _ := findEvent(evs, mptcp.EventSubClosed, token); sc.Saddr != l.c2 || sc.LocID != endp.ID {
		t.Errorf("SUB_CLOSED: %+v", sc)
	}
	waitConnection(t, l.clientPM, local, "1 subflow", func(c mptcp.Connection) bool { return c.Info.Subflows == 0 })

	// The data path still works on the first subflow, then the connection
	// closes.
	if _, err := conn.Write(payload); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(conn, make([]byte, len(payload))); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	waitEvents(t, clientEv, "CLOSED", func(evs []mptcp.Event) bool { _, ok := findEvent(evs, mptcp.EventClosed, token); return ok })
	if sconn, ok := <-accepted; ok {
		sconn.Close()
	}
}
