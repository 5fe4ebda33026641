package nlkernel

import (
	"fmt"

	"github.com/mpfleet/mpfleet/internal/nsrun"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netNS runs functions that act on "the calling thread's namespace" (sysctl
// files) inside the managed namespace.
type netNS struct{ h netns.NsHandle } // -1: the caller's namespace

func openNetNS(fd int) (netNS, error) {
	if fd == 0 {
		return netNS{h: -1}, nil
	}
	d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return netNS{}, fmt.Errorf("reconcile: netns fd %d: %w", fd, err)
	}
	return netNS{h: netns.NsHandle(d)}, nil
}

func (n netNS) close() {
	if n.h >= 0 {
		_ = n.h.Close()
	}
}

// do runs fn on a locked OS thread inside the namespace and restores the
// thread's namespace before unlocking it; a thread that cannot be restored
// stays locked and ends with its goroutine.
func (n netNS) do(fn func() error) error {
	if n.h < 0 {
		return fn()
	}
	return nsrun.In(n.h, fn)
}
