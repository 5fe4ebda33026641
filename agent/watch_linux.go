package agent

// NetlinkSystem's watch: one rtnetlink socket of its own for link and
// address changes, read on one goroutine that hands each change to the
// agent as soon as it has parsed it, with no goroutine or channel in
// between; the fast path for an added address (hotplug.go) runs right
// there.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// watchBufferSize is the watch socket's receive buffer: room for the
// messages of a burst of changes while the agent acts on the first.
const watchBufferSize = 4 << 20

// Operational states of IFLA_OPERSTATE (RFC 2863; include/uapi/linux/if.h).
const (
	ifOperUnknown = 0 // IF_OPER_UNKNOWN
	ifOperUp      = 6 // IF_OPER_UP
)

// Watch implements System with one rtnetlink socket of the namespace's,
// joined to the link and IPv4 and IPv6 address groups, read by the
// runtime's network poller, that calls notify for every change as it
// parses it, in the kernel's order. After joining, it dumps the links and
// addresses that exist, so that a caller that watches again after a break
// hears of what changed in between. Messages lost to a full receive buffer
// end it with an error: changes were missed.
//
// The goroutine waits parked on the poller, not in a blocking system call:
// a thread blocked in one has its P taken by the runtime's monitor after
// 10 ms, which then wakes every 20 µs for a while, and every wake-up is a
// context switch that the reaction to the next event may have to wait for.
func (s *NetlinkSystem) Watch(ctx context.Context, notify func(Change)) error {
	w, err := s.openWatch()
	if err != nil {
		return err
	}
	defer w.close()
	stop := context.AfterFunc(ctx, w.wake)
	defer stop()
	for _, typ := range []uint16{unix.RTM_GETLINK, unix.RTM_GETADDR} {
		if err := w.dump(typ, notify); err != nil {
			return w.ended(ctx, err)
		}
	}
	for {
		n, err := w.read()
		if err == nil {
			_, err = w.handle(w.buf[:n], notify)
		}
		if err != nil {
			return w.ended(ctx, err)
		}
	}
}

// rtWatch is the watch's socket, on the runtime's poller.
type rtWatch struct {
	f   *os.File
	rc  syscall.RawConn
	seq uint32 // of the last dump request
	buf []byte
	// The outcome of the last readFD, and readFD itself bound once: a
	// closure made per read would be allocated per read.
	n      int
	errno  unix.Errno
	from   unix.RawSockaddrNetlink
	readFn func(fd uintptr) bool
}

func (s *NetlinkSystem) openWatch() (*rtWatch, error) {
	fd := -1
	err := s.inNS(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
		return err
	})
	if err == nil {
		err = unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK,
			Groups: unix.RTMGRP_LINK | unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR})
	}
	if err == nil {
		// Past net.core.rmem_max if the agent may (CAP_NET_ADMIN).
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, watchBufferSize) != nil {
			err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, watchBufferSize)
		}
	}
	if err != nil {
		if fd >= 0 {
			_ = unix.Close(fd)
		}
		return nil, fmt.Errorf("agent: open the rtnetlink watch: %w", err)
	}
	w := &rtWatch{f: os.NewFile(uintptr(fd), "rtnetlink"), buf: make([]byte, 64<<10)}
	if w.rc, err = w.f.SyscallConn(); err != nil {
		_ = w.f.Close()
		return nil, fmt.Errorf("agent: open the rtnetlink watch: %w", err)
	}
	w.readFn = w.readFD
	return w, nil
}

func (w *rtWatch) close() { _ = w.f.Close() }

// wake makes read return, now or at its next call.
func (w *rtWatch) wake() { _ = w.f.SetReadDeadline(time.Unix(1, 0)) }

// ended is Watch's error for err.
func (w *rtWatch) ended(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, unix.ENOBUFS) {
		return fmt.Errorf("agent: rtnetlink watch: changes lost (receive buffer full): %w", err)
	}
	return fmt.Errorf("agent: rtnetlink watch: %w", err)
}

// dump asks for every object of a kind (RTM_GETLINK, RTM_GETADDR) and
// hands the answers to notify, with the changes that come meanwhile, until
// the dump ends.
func (w *rtWatch) dump(typ uint16, notify func(Change)) error {
	w.seq++
	body := unix.SizeofIfInfomsg
	if typ == unix.RTM_GETADDR {
		body = unix.SizeofIfAddrmsg
	}
	req := make([]byte, unix.SizeofNlMsghdr+body)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], typ)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], w.seq)
	var serr error
	if err := w.rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return !errors.Is(serr, unix.EAGAIN)
	}); err != nil {
		return fmt.Errorf("dump request: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("dump request: %w", serr)
	}
	for {
		n, err := w.read()
		if err != nil {
			return err
		}
		if done, err := w.handle(w.buf[:n], notify); err != nil || done {
			return err
		}
	}
}

// read returns the length of the next datagram from the kernel in w.buf,
// waiting for one. It allocates nothing.
func (w *rtWatch) read() (int, error) {
	for {
		if err := w.rc.Read(w.readFn); err != nil {
			return 0, err
		}
		switch {
		case w.errno == unix.EINTR:
		case w.errno != 0:
			return 0, w.errno
		case w.n > len(w.buf):
			return 0, fmt.Errorf("a message of %d bytes, past the buffer's %d", w.n, len(w.buf))
		case w.from.Pid == 0: // from the kernel
			return w.n, nil
		}
	}
}

// readFD receives one datagram on fd, and reports whether it is done (not
// "try again when there is one"). The system call is raw: the socket never
// blocks, and an ordinary call would wake the runtime's monitor from its
// idle sleep, a context switch in the event's way.
func (w *rtWatch) readFD(fd uintptr) bool {
	fromLen := uint32(unix.SizeofSockaddrNetlink)
	n, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, fd,
		uintptr(unsafe.Pointer(&w.buf[0])), uintptr(len(w.buf)), unix.MSG_TRUNC,
		uintptr(unsafe.Pointer(&w.from)), uintptr(unsafe.Pointer(&fromLen)))
	w.n, w.errno = int(n), errno
	return errno != unix.EAGAIN
}

// handle hands the changes in the datagram b to notify, and reports
// whether it ends the dump that w asked for last.
func (w *rtWatch) handle(b []byte, notify func(Change)) (done bool, err error) {
	ne := binary.NativeEndian
	for len(b) >= unix.SizeofNlMsghdr {
		n := int(ne.Uint32(b))
		if n < unix.SizeofNlMsghdr || n > len(b) {
			return done, fmt.Errorf("malformed message: length %d of %d bytes", n, len(b))
		}
		typ, seq, body := ne.Uint16(b[4:]), ne.Uint32(b[8:]), b[unix.SizeofNlMsghdr:n]
		switch typ {
		case unix.NLMSG_DONE:
			done = done || seq == w.seq
		case unix.NLMSG_ERROR:
			if seq == w.seq && len(body) >= 4 {
				if code := int32(ne.Uint32(body)); code < 0 {
					return done, fmt.Errorf("dump: %w", unix.Errno(-code))
				}
			}
		case unix.RTM_NEWLINK, unix.RTM_DELLINK:
			if c, ok := linkChangeOf(typ, body); ok {
				notify(c)
			}
		case unix.RTM_NEWADDR, unix.RTM_DELADDR:
			if c, ok := addrChangeOf(typ, body); ok {
				notify(c)
			}
		}
		b = b[min(len(b), (n+3)&^3):]
	}
	return done, nil
}

// linkChangeOf is the Change of an RTM_NEWLINK or RTM_DELLINK message body;
// false if it is malformed. A link is up when it is administratively up and
// its operational state is up or unknown (tunnels, loopback), as linkUp.
func linkChangeOf(typ uint16, body []byte) (Change, bool) {
	if len(body) < unix.SizeofIfInfomsg {
		return Change{}, false
	}
	ne := binary.NativeEndian
	c := Change{Link: int(int32(ne.Uint32(body[4:])))}
	flags := ne.Uint32(body[8:])
	oper := uint8(ifOperUnknown)
	for typ, v := range rtAttrs(body[unix.SizeofIfInfomsg:]) {
		if typ == unix.IFLA_OPERSTATE && len(v) >= 1 {
			oper = v[0]
		}
	}
	up := flags&unix.IFF_UP != 0 && (oper == ifOperUp || oper == ifOperUnknown)
	c.Down = !up || typ == unix.RTM_DELLINK
	return c, true
}

// addrChangeOf is the Change of an RTM_NEWADDR or RTM_DELADDR message
// body; false if it is malformed. Added is set for an address that is new
// (or updated) and usable, not tentative: its local address (IFA_LOCAL;
// IFA_ADDRESS is the peer's on a point-to-point link, and the only one
// IPv6 sends) with its prefix length.
func addrChangeOf(typ uint16, body []byte) (Change, bool) {
	if len(body) < unix.SizeofIfAddrmsg {
		return Change{}, false
	}
	bits, flags := int(body[1]), uint32(body[2])
	c := Change{Link: int(binary.NativeEndian.Uint32(body[4:])), Addr: true}
	var local, addr []byte
	for t, v := range rtAttrs(body[unix.SizeofIfAddrmsg:]) {
		switch t {
		case unix.IFA_LOCAL:
			local = v
		case unix.IFA_ADDRESS:
			addr = v
		case unix.IFA_FLAGS:
			if len(v) >= 4 {
				flags = binary.NativeEndian.Uint32(v)
			}
		}
	}
	if local == nil {
		local = addr
	}
	if typ != unix.RTM_NEWADDR || flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
		return c, true
	}
	if a, ok := netip.AddrFromSlice(local); ok && bits <= a.BitLen() {
		c.Added = netip.PrefixFrom(a.Unmap(), bits)
	}
	return c, true
}

// rtAttrs iterates over the routing attributes in b, type and value, until
// the end or a malformed one.
func rtAttrs(b []byte) func(yield func(uint16, []byte) bool) {
	return func(yield func(uint16, []byte) bool) {
		for len(b) >= unix.SizeofRtAttr {
			n := int(binary.NativeEndian.Uint16(b))
			if n < unix.SizeofRtAttr || n > len(b) {
				return
			}
			if !yield(binary.NativeEndian.Uint16(b[2:])&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER), b[unix.SizeofRtAttr:n]) {
				return
			}
			b = b[min(len(b), (n+3)&^3):]
		}
	}
}
