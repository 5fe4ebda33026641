package traffic

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/goleak"

	"github.com/mpfleet/mpfleet/internal/nstest"
)

// TestIntegrationServeSend runs a transfer over real MPTCP sockets in a
// throwaway namespace, on an address of 198.18.0.0/15 on its loopback.
func TestIntegrationServeSend(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: skipped with -short")
	}
	defer goleak.VerifyNone(t)
	ns := nstest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const addr = "198.18.0.1"
	err := ns.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(addr), Mask: net.CIDRMask(32, 32)}})
	})
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = Listen(ctx, addr+":0"); return err }); err != nil {
		t.Fatal(err)
	}
	reports := make(chan Report, 1)
	serveCtx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- Serve(serveCtx, ln, func(r Report) { reports <- r }) }()

	var conn net.Conn
	if err := ns.Do(func() (err error) { conn, err = Dial(ctx, ln.Addr().String(), DialOptions{Bind: addr}); return err }); err != nil {
		t.Fatal(err)
	}
	const n = 20_000_000
	r, err := Send(ctx, conn, SendOptions{Bytes: n})
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if !r.Verified || r.Bytes != n || !r.MPTCP {
		t.Errorf("sender's report = %+v, want %d bytes verified over MPTCP", r, n)
	}
	sr := <-reports
	if !sr.Verified || sr.Bytes != n || !sr.MPTCP || sr.Seed != r.Seed {
		t.Errorf("receiver's report = %+v, want %d bytes of seed %d verified over MPTCP", sr, n, r.Seed)
	}
	t.Logf("loopback: %s", r)
	stop()
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
}
