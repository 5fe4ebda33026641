package nstest

import (
	"os"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

func TestIntegrationNew(t *testing.T) {
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns := New(t)
	if _, err := os.Stat("/run/netns/" + ns.Name); err != nil {
		t.Fatalf("namespace file missing: %v", err)
	}
	err = ns.Do(func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		if len(links) != 1 || links[0].Attrs().Name != "lo" {
			t.Errorf("new namespace links = %v, want only lo", links)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	now, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer now.Close()
	if !now.Equal(orig) {
		t.Fatal("caller's namespace changed")
	}
}
