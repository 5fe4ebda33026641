// Package probe checks that an MPTCP connection from one local address reaches a target, and serves as a probe target.
package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Payload is what Dial writes on a connection before closing it.
const Payload = "mpfleet-probe\n"

// Result is what one Dial found.
type Result struct {
	// Err is why no connection was established (refused, timed out,
	// unreachable, ...), naming the source and the target. Errors of the
	// kernel stay matchable: errors.Is(r.Err, syscall.ECONNREFUSED),
	// errors.Is(r.Err, os.ErrDeadlineExceeded).
	Err error
	// MPTCP is true when the connection was established as MPTCP; false
	// with a nil Err means it fell back to plain TCP.
	MPTCP bool
	// Latency is how long the connection took to establish.
	Latency time.Duration
}

// Dial opens one MPTCP connection from src (port chosen by the kernel) to
// target, on a socket created inside the network namespace ns (ns < 0: the
// caller's), within timeout (0: only ctx bounds it); once established it
// writes Payload and closes it.
//
// Go's dialer retries with plain TCP whenever the MPTCP attempt fails,
// whatever the reason; that retry reaches the same target the same way, so
// a refused, unreachable or black-holed target still comes back as Err
// (Dial stops the retry when the time is up, so that it sends no SYN after
// the deadline). A retry that succeeds means MPTCP was refused on the way
// (or the namespace cannot make MPTCP sockets) while plain TCP works: that
// is reported as a fallback, MPTCP false with a nil Err, as is a connection
// the peer answered without MPTCP.
func Dial(ctx context.Context, ns netns.NsHandle, src netip.Addr, target netip.AddrPort, timeout time.Duration) Result {
	src = src.Unmap()
	target = netip.AddrPortFrom(target.Addr().Unmap(), target.Port())
	fail := func(err error) Result {
		return Result{Err: fmt.Errorf("probe: MPTCP connection from %s to %s: %w", src, target, err)}
	}
	if err := sameFamily(src, target.Addr()); err != nil {
		return fail(err)
	}
	start := time.Now()
	c, latency, err := dial(ctx, ns, src, target, timeout)
	if err != nil {
		return fail(err)
	}
	defer func() { _ = c.Close() }()
	r := Result{Latency: latency}
	if r.MPTCP, err = c.MultipathTCP(); err != nil {
		return fail(err)
	}
	if timeout > 0 {
		_ = c.SetWriteDeadline(start.Add(timeout))
	}
	if _, err := io.WriteString(c, Payload); err != nil {
		r.Err = fmt.Errorf("probe: MPTCP connection from %s to %s: established, then: %w", src, target, err)
	}
	return r
}

// RouteLink returns the index of the interface the kernel's route lookup
// from src to dst leaves by (RTM_GETROUTE, as `ip route get DST from SRC`),
// policy rules included. h is an rtnetlink handle in the namespace to look
// in; it must not be nil. No packet is sent.
//
// The kernel answers a route with no interface with an error: a blackhole
// route EINVAL, an unreachable one EHOSTUNREACH, a prohibit one EACCES, no
// route ENETUNREACH. For IPv4 src must be a local address (ENETUNREACH
// otherwise); the IPv6 lookup does not check that.
func RouteLink(h *netlink.Handle, src, dst netip.Addr) (int, error) {
	src, dst = src.Unmap(), dst.Unmap()
	if err := sameFamily(src, dst); err != nil {
		return 0, fmt.Errorf("probe: route from %s to %s: %w", src, dst, err)
	}
	link, err := routeLink(h, src, dst)
	if err != nil {
		return 0, fmt.Errorf("probe: route from %s to %s: %w", src, dst, err)
	}
	return link, nil
}

// Listen starts a Listener on addr (host:port; port 0 picks one, see Addr)
// whose socket is created inside the network namespace ns (ns < 0: the
// caller's). It fails rather than serve plain TCP when the kernel gives no
// MPTCP socket.
func Listen(ctx context.Context, ns netns.NsHandle, addr string) (*Listener, error) {
	return listenLimits(ctx, ns, addr, MaxConns, DrainTimeout)
}

func listenLimits(ctx context.Context, ns netns.NsHandle, addr string, maxConns int, drain time.Duration) (*Listener, error) {
	ln, err := listen(ctx, ns, addr)
	if err != nil {
		return nil, fmt.Errorf("probe: listen on %s: %w", addr, err)
	}
	return serve(ln, maxConns, drain), nil
}

// errFamily means the source and the target are not both IPv4 or both
// IPv6.
var errFamily = errors.New("source and target are of different address families")

func sameFamily(src, dst netip.Addr) error {
	if !src.IsValid() || !dst.IsValid() {
		return errors.New("invalid address")
	}
	if src.Is4() != dst.Is4() {
		return errFamily
	}
	return nil
}

// Limits of a Listener.
const (
	// MaxConns is how many connections a Listener drains at once; it closes
	// the ones beyond at once.
	MaxConns = 256
	// DrainTimeout is how long a Listener reads from one connection before
	// closing it.
	DrainTimeout = 10 * time.Second
)

// Listener is a probe target: an MPTCP listener that accepts connections,
// reads and discards what they send for at most DrainTimeout, then closes
// them. It serves from Listen until Close.
type Listener struct {
	ln    net.Listener
	max   int
	drain time.Duration

	done      chan struct{} // closed by Close
	closeOnce sync.Once
	closeErr  error
	wg        sync.WaitGroup // the accept loop and the connections

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	stats  Stats
}

// Stats counts what a Listener did.
type Stats struct {
	// Active is the number of connections being drained now.
	Active int
	// Served is the number of connections drained and closed.
	Served uint64
	// Rejected is the number of connections closed at once because
	// MaxConns were being drained.
	Rejected uint64
	// Bytes is the number of bytes drained.
	Bytes uint64
}

func serve(ln net.Listener, maxConns int, drain time.Duration) *Listener {
	l := &Listener{ln: ln, max: maxConns, drain: drain, done: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	l.wg.Add(1)
	go l.accept()
	return l
}

// Addr returns the address the listener is bound to.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Stats returns the counters so far.
func (l *Listener) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stats
}

// Close stops accepting, closes the connections being drained and returns
// once every goroutine of the listener has ended.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() {
		close(l.done)
		l.closeErr = l.ln.Close()
		l.mu.Lock()
		l.closed = true
		for c := range l.conns {
			_ = c.Close()
		}
		l.mu.Unlock()
	})
	l.wg.Wait()
	return l.closeErr
}

func (l *Listener) accept() {
	defer l.wg.Done()
	var pause time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors, or a connection aborted before it
			// was accepted: try again after a pause, as net/http does.
			pause = min(max(2*pause, 5*time.Millisecond), time.Second)
			t := time.NewTimer(pause)
			select {
			case <-l.done:
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		pause = 0
		if !l.track(c) {
			_ = c.Close()
			continue
		}
		l.wg.Add(1)
		go l.drainConn(c)
	}
}

// track registers c for draining, unless the listener is closed or full.
func (l *Listener) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	if len(l.conns) >= l.max {
		l.stats.Rejected++
		return false
	}
	l.conns[c] = struct{}{}
	l.stats.Active++
	return true
}

func (l *Listener) drainConn(c net.Conn) {
	defer l.wg.Done()
	_ = c.SetReadDeadline(time.Now().Add(l.drain))
	n, _ := io.Copy(io.Discard, c)
	_ = c.Close()
	l.mu.Lock()
	delete(l.conns, c)
	l.stats.Active--
	l.stats.Served++
	l.stats.Bytes += uint64(n)
	l.mu.Unlock()
}
