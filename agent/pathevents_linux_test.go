package agent

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/probe"
)

// TestIntegrationPathEvents: NetlinkSystem.PathEvents delivers the MPTCP
// events of its namespace: an MPTCP connection made there is seen created
// and established from both ends; and it returns when its context ends.
func TestIntegrationPathEvents(t *testing.T) {
	l := newLab(t, 1)
	sys, err := OpenNetlinkSystem(int(l.ns.Handle))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sys.Close() }()
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan mptcp.Event, 64)
	done := make(chan error, 1)
	go func() {
		done <- sys.PathEvents(ctx, func(e mptcp.Event) {
			select {
			case events <- e:
			default:
			}
		})
	}()
	defer func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("PathEvents returned %v after its context ended, want context.Canceled", err)
		}
	}()

	ln, err := probe.Listen(ctx, l.ns.Handle, l.links[0].v4.Addr().String()+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	target := addrPort(ln.Addr())
	src := l.links[0].v4.Addr()
	// The subscription may not be made yet when the first probe dials:
	// dial until the events come.
	var client, server bool
	deadline := time.Now().Add(waitFor)
	for !client || !server {
		if time.Now().After(deadline) {
			t.Fatalf("no ESTABLISHED events for %v → %v (client %v, server %v)", src, target, client, server)
		}
		if r := probe.Dial(ctx, l.ns.Handle, src, target, time.Second); r.Err != nil || !r.MPTCP {
			t.Fatalf("probe %v → %v: %+v", src, target, r)
		}
		timeout := time.After(100 * time.Millisecond)
	drain:
		for {
			select {
			case e := <-events:
				if e.Type != mptcp.EventEstablished {
					continue
				}
				switch {
				case !e.ServerSide && e.Saddr == src && netip.AddrPortFrom(e.Daddr, e.Dport) == target:
					client = true
				case e.ServerSide && netip.AddrPortFrom(e.Saddr, e.Sport) == target && e.Daddr == src:
					server = true
				}
			case <-timeout:
				break drain
			}
		}
	}
}
