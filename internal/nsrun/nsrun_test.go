package nsrun_test

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/mpfleet/mpfleet/internal/nsrun"
	"github.com/mpfleet/mpfleet/internal/nstest"
	"github.com/vishvananda/netns"
)

// In runs fn inside the namespace and returns its error; the caller's
// thread stays where it was.
func TestIntegrationIn(t *testing.T) {
	ns := nstest.New(t)
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	want := errors.New("from inside")
	var inside netns.NsHandle = -1
	err = nsrun.In(ns.Handle, func() error {
		h, err := netns.Get()
		if err != nil {
			return err
		}
		inside = h
		return want
	})
	if !errors.Is(err, want) {
		t.Fatalf("In returned %v, want fn's error", err)
	}
	defer inside.Close()
	if !inside.Equal(ns.Handle) {
		t.Fatal("fn did not run in the namespace")
	}
	// The calling goroutine's namespace is unchanged.
	now, _ := netns.Get()
	defer now.Close()
	if !now.Equal(orig) {
		t.Fatal("the caller's namespace changed")
	}
}

// threadNamespaces returns, for every OS thread of the process, the inode of
// its network namespace (from /proc/self/task/*/ns/net).
func threadNamespaces(t *testing.T) map[string]string {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, task := range tasks {
		link, err := os.Readlink(filepath.Join("/proc/self/task", task.Name(), "ns/net"))
		if err != nil {
			continue // the thread ended while we looked
		}
		out[task.Name()] = link
	}
	return out
}

// The invariant that matters: no thread the Go runtime may reuse for other
// goroutines is ever left in the namespace. After many concurrent calls, some
// of which move the thread on to yet another namespace inside fn, every live
// thread of the process is back in the original namespace (a worker thread
// that could not be restored would have ended with its goroutine, locked).
// An In that unlocked its thread without restoring it fails this test: the
// runtime keeps idle threads, and one would still be in ns.
func TestIntegrationInRestoresEveryThread(t *testing.T) {
	ns := nstest.New(t)
	other := nstest.New(t)
	orig, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	const calls = 64
	var wg sync.WaitGroup
	errs := make(chan error, calls)
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- nsrun.In(ns.Handle, func() error {
				if i%4 == 0 {
					// fn itself moves the thread on: In still restores it.
					return netns.Set(other.Handle)
				}
				runtime.Gosched()
				return nil
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("In: %v", err)
		}
	}
	for task, link := range threadNamespaces(t) {
		if link != orig {
			t.Errorf("thread %s is in %s after In returned, want %s", task, link, orig)
		}
	}
}
