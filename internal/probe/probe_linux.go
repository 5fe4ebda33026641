package probe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/nsrun"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// inNS runs fn on a thread inside ns, or on the caller's when ns < 0.
func inNS(ns netns.NsHandle, fn func() error) error {
	if ns < 0 {
		return fn()
	}
	return nsrun.In(ns, fn)
}

func dial(ctx context.Context, ns netns.NsHandle, src netip.Addr, target netip.AddrPort, timeout time.Duration) (*net.TCPConn, time.Duration, error) {
	network := "tcp4"
	if target.Addr().Is6() {
		network = "tcp6"
	}
	d := net.Dialer{
		Timeout:        timeout,
		LocalAddr:      net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)),
		ControlContext: noLateRetry,
	}
	d.SetMultipathTCP(true)
	var c net.Conn
	var latency time.Duration
	err := inNS(ns, func() error {
		start := time.Now()
		var err error
		c, err = d.DialContext(ctx, network, target.String())
		latency = time.Since(start)
		return err
	})
	if err != nil {
		return nil, 0, err
	}
	return c.(*net.TCPConn), latency, nil
}

// noLateRetry stops the plain TCP retry of Go's dialer when the MPTCP
// attempt ran out of time: the retry would only send a SYN after the
// deadline and fail the same way. The deadline is checked on the clock, as
// the poller's timer that ended the MPTCP attempt can fire before the
// context's.
func noLateRetry(ctx context.Context, _, _ string, c syscall.RawConn) error {
	late := ctx.Err()
	if d, ok := ctx.Deadline(); ok && late == nil && !time.Now().Before(d) {
		late = context.DeadlineExceeded
	}
	if late == nil {
		return nil
	}
	proto, err := protocol(c)
	if err != nil || proto == unix.IPPROTO_MPTCP {
		return err
	}
	if errors.Is(late, context.DeadlineExceeded) {
		return os.ErrDeadlineExceeded
	}
	return late
}

// protocol returns the socket's protocol (SO_PROTOCOL).
func protocol(c syscall.RawConn) (int, error) {
	var proto int
	var serr error
	if err := c.Control(func(fd uintptr) {
		proto, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL)
	}); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, os.NewSyscallError("getsockopt SO_PROTOCOL", serr)
	}
	return proto, nil
}

func routeLink(h *netlink.Handle, src, dst netip.Addr) (int, error) {
	routes, err := h.RouteGetWithOptions(dst.AsSlice(), &netlink.RouteGetOptions{SrcAddr: src.AsSlice()})
	if err != nil {
		return 0, err
	}
	if len(routes) == 0 || routes[0].LinkIndex == 0 {
		return 0, errors.New("the kernel's route names no output interface")
	}
	return routes[0].LinkIndex, nil
}

func listen(ctx context.Context, ns netns.NsHandle, addr string) (net.Listener, error) {
	var ln net.Listener
	if err := inNS(ns, func() error {
		var lc net.ListenConfig
		lc.SetMultipathTCP(true)
		var err error
		ln, err = lc.Listen(ctx, "tcp", addr)
		return err
	}); err != nil {
		return nil, err
	}
	// Go's ListenConfig falls back to plain TCP when it cannot make an MPTCP
	// socket; a probe target that is not MPTCP would make every probe look
	// like a fallback.
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		_ = ln.Close()
		return nil, err
	}
	proto, err := protocol(rc)
	if err == nil && proto != unix.IPPROTO_MPTCP {
		err = fmt.Errorf("%w: got a plain TCP socket (is net.mptcp.enabled 0?)", mptcp.ErrUnsupported)
	}
	if err != nil {
		_ = ln.Close()
		return nil, err
	}
	return ln, nil
}
