package mptcpnl

import (
	"fmt"

	"github.com/mpfleet/mpfleet/internal/mptcp"
)

// invalidf returns an mptcp.ErrInvalid with a description.
func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", mptcp.ErrInvalid, fmt.Sprintf(format, args...))
}
