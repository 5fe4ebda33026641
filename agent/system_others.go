//go:build !linux

package agent

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"time"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// NetlinkSystem is the real System; it needs Linux.
type NetlinkSystem struct{}

var errOS = fmt.Errorf("agent: %w: the agent needs Linux, not %s", mptcp.ErrUnsupported, runtime.GOOS)

// OpenNetlinkSystem fails: the agent needs Linux.
func OpenNetlinkSystem(int) (*NetlinkSystem, error) { return nil, errOS }

// Close does nothing.
func (*NetlinkSystem) Close() error { return nil }

// Facts fails: the agent needs Linux.
func (*NetlinkSystem) Facts(context.Context) (*pb.HostFacts, error) { return nil, errOS }

// Health fails: the agent needs Linux.
func (*NetlinkSystem) Health(context.Context) (*pb.MptcpHealth, error) { return nil, errOS }

// Watch fails: the agent needs Linux.
func (*NetlinkSystem) Watch(context.Context, func(Change)) error { return errOS }

// Probe fails: the agent needs Linux.
func (*NetlinkSystem) Probe(context.Context, netip.Addr, int, netip.AddrPort, time.Duration) ProbeResult {
	return ProbeResult{RouteErr: errOS}
}
