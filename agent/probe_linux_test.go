package agent

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/probe"
	"github.com/vishvananda/netlink"
)

// NetlinkSystem.Probe on a namespace pair (newPair: client a0 198.18.20.1
// and a1 198.18.21.1, server b0 198.18.20.2 and b1 198.18.21.2): it dials
// only when the kernel's route from the path's address leaves by the path's
// own link, from a socket inside the client namespace.
func TestIntegrationProbe(t *testing.T) {
	p := newPair(t)
	ctx := context.Background()
	l, err := probe.Listen(ctx, p.server.Handle, "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := l.Close(); err != nil {
			t.Errorf("close the probe target: %v", err)
		}
	}()
	port := addrPort(l.Addr()).Port()
	// A port nothing listens on.
	gone, err := probe.Listen(ctx, p.server.Handle, "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := addrPort(gone.Addr()).Port()
	if err := gone.Close(); err != nil {
		t.Fatal(err)
	}
	// The path of a1 reaches 198.18.20.2 through a1 by a policy rule, as
	// the agent's source routing does.
	rule := netlink.NewRule()
	rule.Src = &net.IPNet{IP: net.ParseIP("198.18.21.1").To4(), Mask: net.CIDRMask(32, 32)}
	rule.Table, rule.Priority = 100, 100
	if err := p.ch.RuleAdd(rule); err != nil {
		t.Fatal(err)
	}
	if err := p.ch.RouteAdd(&netlink.Route{
		Dst: &net.IPNet{IP: net.ParseIP("198.18.20.2").To4(), Mask: net.CIDRMask(32, 32)}, LinkIndex: p.a[1],
		Table: 100, Scope: netlink.SCOPE_LINK,
	}); err != nil {
		t.Fatal(err)
	}

	sys, err := OpenNetlinkSystem(int(p.client.Handle))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sys.Close() }()

	a0, a1 := netip.MustParseAddr("198.18.20.1"), netip.MustParseAddr("198.18.21.1")
	target := netip.AddrPortFrom(netip.MustParseAddr("198.18.20.2"), port)
	dialed := uint64(0)
	for _, tt := range []struct {
		name     string
		src      netip.Addr
		wantLink int
		target   netip.AddrPort
		// want: RouteLink, Dialed and MPTCP; the errors by class.
		want     ProbeResult
		routeErr bool
		dialErr  error
	}{
		{name: "MPTCP over its own link", src: a0, wantLink: p.a[0], target: target,
			want: ProbeResult{RouteLink: p.a[0], Dialed: true, MPTCP: true}},
		{name: "by a policy rule over its own link", src: a1, wantLink: p.a[1], target: target,
			want: ProbeResult{RouteLink: p.a[1], Dialed: true, MPTCP: true}},
		{name: "the route leaves by another link", src: a0, wantLink: p.a[1], target: target,
			want: ProbeResult{RouteLink: p.a[0]}},
		{name: "refused", src: a0, wantLink: p.a[0], target: netip.AddrPortFrom(target.Addr(), closed),
			want: ProbeResult{RouteLink: p.a[0], Dialed: true}, dialErr: syscall.ECONNREFUSED},
		{name: "no route", src: a0, wantLink: p.a[0], target: netip.MustParseAddrPort("198.19.99.1:9"),
			routeErr: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := sys.Probe(ctx, tt.src, tt.wantLink, tt.target, 5*time.Second)
			if got.RouteLink != tt.want.RouteLink || got.Dialed != tt.want.Dialed || got.MPTCP != tt.want.MPTCP ||
				(got.RouteErr != nil) != tt.routeErr || !errors.Is(got.DialErr, tt.dialErr) {
				t.Fatalf("Probe(%v, link %d, %v) = %+v\nwant %+v (route error %v, dial error %v)",
					tt.src, tt.wantLink, tt.target, got, tt.want, tt.routeErr, tt.dialErr)
			}
			if got.MPTCP {
				if got.Latency <= 0 {
					t.Errorf("latency %v", got.Latency)
				}
				t.Logf("probe from %v over link %d: %v", tt.src, got.RouteLink, got.Latency)
				dialed++
				waitUntilTB(t, "the probe target to drain the probe", func() bool {
					s := l.Stats()
					return s.Served == dialed && s.Bytes == dialed*uint64(len(probe.Payload))
				})
			}
		})
	}
}
