package nsrun_test

import (
	"errors"
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
