//go:build linux

package mptcpnl

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"

	"github.com/mdlayher/genetlink"
	"github.com/mpfleet/mpfleet/internal/mptcp"
	"golang.org/x/sys/unix"
)

// adder is the Linux implementation of EndpointAdder: a generic netlink
// socket (non-blocking, on the runtime's poller) written and read through
// its raw connection, with buffers and callbacks made once.
type adder struct {
	c      *genetlink.Conn
	raw    syscall.RawConn
	family genetlink.Family
	seq    uint32

	req, resp []byte
	n         int   // bytes the last read returned
	err       error // of the last write or read
	// write and read are a.writeFD and a.readFD, bound once: a method
	// value made per call would be allocated per call.
	write, read func(fd uintptr) bool
}

func dialAdder(opts *DialOptions) (*adder, error) {
	return dialWith(opts, "mptcp dial generic netlink", func(c *genetlink.Conn) (*adder, error) {
		f, err := getFamily(c)
		if err != nil {
			return nil, err
		}
		raw, err := c.SyscallConn()
		if err != nil {
			return nil, &mptcp.OpError{Op: "mptcp dial generic netlink", Err: err}
		}
		a := &adder{c: c, raw: raw, family: f, req: make([]byte, 0, addReqMaxSize), resp: make([]byte, 4096)}
		a.write, a.read = a.writeFD, a.readFD
		return a, nil
	})
}

func (a *adder) add(e mptcp.Endpoint) error {
	a.seq++
	a.req = appendAddRequest(a.req[:0], a.family.ID, cmdAddAddr, a.family.Version, a.seq, e)
	if err := a.raw.Write(a.write); err != nil {
		return kernelError(addOp(e), err, nil)
	}
	if a.err != nil {
		return kernelError(addOp(e), a.err, nil)
	}
	// The kernel handles a generic netlink request in the sender's system
	// call: the acknowledgement is queued by the time the write returns.
	for {
		if err := a.raw.Read(a.read); err != nil {
			return kernelError(addOp(e), err, nil)
		}
		if a.err != nil {
			return kernelError(addOp(e), a.err, nil)
		}
		if a.n >= len(a.resp) {
			return &mptcp.OpError{Op: addOp(e), Err: errors.New("acknowledgement larger than the buffer")}
		}
		code, ok := ackOf(a.resp[:a.n], a.seq)
		if !ok {
			continue // not ours: an acknowledgement of an earlier request that failed halfway
		}
		if code == 0 {
			return nil
		}
		if code > 0 {
			return &mptcp.OpError{Op: addOp(e), Err: fmt.Errorf("acknowledgement with error code %d", code)}
		}
		return kernelError(addOp(e), unix.Errno(-code), addErrors(e))
	}
}

// writeFD and readFD make their system calls raw: the socket never
// blocks (it is non-blocking, and the kernel handles the request within
// the write), and a raw call does not wake the runtime's monitor from its
// idle sleep as an ordinary one does, a wake-up the caller would otherwise
// pay for.
func (a *adder) writeFD(fd uintptr) bool {
	_, _, errno := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&a.req[0])), uintptr(len(a.req)))
	a.err = errnoErr(errno)
	return errno != unix.EAGAIN
}

func (a *adder) readFD(fd uintptr) bool {
	n, _, errno := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&a.resp[0])), uintptr(len(a.resp)))
	a.n, a.err = int(n), errnoErr(errno)
	return errno != unix.EAGAIN
}

// errnoErr is errno as an error, nil for 0.
func errnoErr(errno unix.Errno) error {
	if errno == 0 {
		return nil
	}
	return errno
}

func (a *adder) close() error { return a.c.Close() }
