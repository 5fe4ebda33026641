// Package nstest gives tests throwaway network namespaces and enforces the rule
// that a test needing root or a kernel feature skips elsewhere but fails when
// CI=true.
package nstest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"runtime"
	"testing"

	"github.com/mpfleet/mpfleet/internal/nsrun"
	"github.com/vishvananda/netns"
)

// InCI reports whether the tests run under CI (CI=true), where skipping a test
// for a missing privilege or kernel feature is a failure.
func InCI() bool { return os.Getenv("CI") == "true" }

// Skip skips the test with reason, or fails it when running under CI.
func Skip(t testing.TB, reason string) {
	t.Helper()
	if InCI() {
		t.Fatalf("cannot skip under CI=true: %s", reason)
	}
	t.Skip(reason)
}

// RequireRoot skips (or, under CI, fails) the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "needs root (CAP_NET_ADMIN) to create network namespaces")
	}
}

// NS is a named network namespace owned by one test.
type NS struct {
	Name   string
	Handle netns.NsHandle
}

// UniqueName returns prefix followed by a random suffix, short enough for
// interface and namespace names.
func UniqueName(prefix string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// New creates a named network namespace ("mpft" + random suffix) with loopback
// up, and removes it when the test ends, also on failure. The calling
// goroutine's namespace is unchanged.
func New(t testing.TB) *NS {
	t.Helper()
	RequireRoot(t)
	ns, err := Create(UniqueName("mpft"))
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() {
		if err := ns.Close(); err != nil {
			t.Errorf("remove netns %s: %v", ns.Name, err)
		}
	})
	if err := ns.Do(func() error { return setLoopbackUp() }); err != nil {
		t.Fatalf("netns %s: bring up lo: %v", ns.Name, err)
	}
	return ns
}

// Create makes a named network namespace without changing the caller's.
func Create(name string) (*NS, error) {
	if err := PrepareRunDir(); err != nil {
		return nil, fmt.Errorf("prepare %s: %w", runDir, err)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	h, err := netns.NewNamed(name)
	if err != nil {
		return nil, fmt.Errorf("new netns %q: %w", name, err)
	}
	if err := netns.Set(orig); err != nil {
		// The thread is stuck in the new namespace; let it die with the goroutine.
		h.Close()
		_ = netns.DeleteNamed(name)
		panic(fmt.Sprintf("nstest: restore netns: %v", err))
	}
	return &NS{Name: name, Handle: h}, nil
}

// Close removes the namespace.
func (n *NS) Close() error {
	n.Handle.Close()
	return netns.DeleteNamed(n.Name)
}

// Do runs fn on a locked OS thread inside the namespace and restores the
// thread's original namespace before unlocking it.
func (n *NS) Do(fn func() error) error {
	return Do(n.Handle, fn)
}

// Do runs fn on a locked OS thread inside the namespace h.
func Do(h netns.NsHandle, fn func() error) error {
	return nsrun.In(h, fn)
}
