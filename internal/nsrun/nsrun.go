// Package nsrun runs code inside a network namespace on a locked OS thread:
// what reads the calling thread's namespace (/proc/sys/net, /proc/thread-self,
// sockets being created) then sees that namespace.
package nsrun

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// In runs fn on a fresh goroutine whose OS thread is locked inside the
// namespace h, and restores the thread's namespace before unlocking it. A
// thread that cannot be restored stays locked and ends with its goroutine, so
// no other code ever runs in the wrong namespace.
func In(h netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer func() { _ = orig.Close() }()
		if err := netns.Set(h); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("restore netns: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
