package agent

import (
	"context"
	"errors"
	"fmt"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/mptcp/mptcpnl"
)

// PathEvents implements PathEventer with the kernel's mptcp_pm_events
// multicast group in the system's namespace. Events lost to a full socket
// buffer are skipped (the probes' intervals still check every path).
func (s *NetlinkSystem) PathEvents(ctx context.Context, notify func(mptcp.Event)) error {
	if s.mp == nil {
		return fmt.Errorf("agent: MPTCP events: %w", mptcp.ErrUnsupported)
	}
	fd := 0
	if s.ns >= 0 {
		fd = int(s.ns)
	}
	ec, err := mptcpnl.DialEvents(&mptcpnl.DialOptions{NetNS: fd})
	if err != nil {
		return fmt.Errorf("agent: subscribe to MPTCP events: %w", err)
	}
	// Closing ends a Receive that blocks; the connection is closed once.
	stop := context.AfterFunc(ctx, func() { _ = ec.Close() })
	defer func() {
		if stop() {
			_ = ec.Close()
		}
	}()
	for {
		evs, err := ec.Receive()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch {
		case errors.Is(err, mptcp.ErrEventsLost):
			continue
		case err != nil:
			return fmt.Errorf("agent: MPTCP events: %w", err)
		}
		for _, e := range evs {
			notify(e)
		}
	}
}

var _ PathEventer = (*NetlinkSystem)(nil)
