//go:build !linux

package probe

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"time"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// errOS is what every probe operation returns off Linux.
var errOS = fmt.Errorf("%w: MPTCP probes need Linux, not %s", mptcp.ErrUnsupported, runtime.GOOS)

func dial(context.Context, netns.NsHandle, netip.Addr, netip.AddrPort, time.Duration) (*net.TCPConn, time.Duration, error) {
	return nil, 0, errOS
}

func routeLink(*netlink.Handle, netip.Addr, netip.Addr) (int, error) { return 0, errOS }

func listen(context.Context, netns.NsHandle, string) (net.Listener, error) { return nil, errOS }
