package probe

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Source and target of different families, or no address at all, fail
// before anything touches the kernel.
func TestAddressFamilies(t *testing.T) {
	for _, tt := range []struct {
		src, dst string
	}{
		{"198.18.0.1", "2001:db8::1"},
		{"2001:db8::1", "198.18.0.2"},
		{"", "198.18.0.2"},
	} {
		var src netip.Addr
		if tt.src != "" {
			src = netip.MustParseAddr(tt.src)
		}
		dst := netip.MustParseAddr(tt.dst)
		r := Dial(context.Background(), netns.None(), src, netip.AddrPortFrom(dst, 7), time.Second)
		if r.Err == nil || !strings.Contains(r.Err.Error(), dst.String()) {
			t.Errorf("Dial(%v, %v) = %+v, want an error naming the target", src, dst, r)
		}
		if _, err := RouteLink(&netlink.Handle{}, src, dst); err == nil {
			t.Errorf("RouteLink(%v, %v) succeeded", src, dst)
		}
	}
}
