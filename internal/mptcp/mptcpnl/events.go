package mptcpnl

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/mpfleet/mpfleet/internal/mptcp"
)

// MPTCP_ATTR_* (enum mptcp_event_attr: 1, 2, ...), with their wire types.
const (
	evAttrToken       = iota + 1 // u32
	evAttrFamily                 // u16
	evAttrLocID                  // u8
	evAttrRemID                  // u8
	evAttrSaddr4                 // be32
	evAttrSaddr6                 // in6_addr
	evAttrDaddr4                 // be32
	evAttrDaddr6                 // in6_addr
	evAttrSport                  // be16: NETWORK order, unlike the endpoint port
	evAttrDport                  // be16
	evAttrBackup                 // u8
	evAttrError                  // u8
	evAttrFlags                  // u16
	evAttrTimeout                // u32
	evAttrIfIdx                  // s32
	evAttrResetReason            // u32
	evAttrResetFlags             // u32
	evAttrServerSide             // u8
)

// eventAttrs are the MPTCP_ATTR_* of an event, in the order they are
// encoded (zero fields are left out).
var eventAttrs = []attr[mptcp.Event]{
	u32Attr(evAttrToken, func(e *mptcp.Event) *uint32 { return &e.Token }),
	u16Attr(evAttrFamily, func(e *mptcp.Event) *uint16 { return &e.Family }),
	u8Attr(evAttrLocID, func(e *mptcp.Event) *uint8 { return &e.LocID }),
	u8Attr(evAttrRemID, func(e *mptcp.Event) *uint8 { return &e.RemID }),
	addr4Attr(evAttrSaddr4, func(e *mptcp.Event) *netip.Addr { return &e.Saddr }),
	addr6Attr(evAttrSaddr6, func(e *mptcp.Event) *netip.Addr { return &e.Saddr }),
	addr4Attr(evAttrDaddr4, func(e *mptcp.Event) *netip.Addr { return &e.Daddr }),
	addr6Attr(evAttrDaddr6, func(e *mptcp.Event) *netip.Addr { return &e.Daddr }),
	portAttr(evAttrSport, func(e *mptcp.Event) *uint16 { return &e.Sport }),
	portAttr(evAttrDport, func(e *mptcp.Event) *uint16 { return &e.Dport }),
	flagAttr(evAttrBackup, func(e *mptcp.Event) *bool { return &e.Backup }),
	u8Attr(evAttrError, func(e *mptcp.Event) *uint8 { return &e.Error }),
	u16Attr(evAttrFlags, func(e *mptcp.Event) *uint16 { return &e.Flags }),
	u32Attr(evAttrTimeout, func(e *mptcp.Event) *uint32 { return &e.Timeout }),
	s32Attr(evAttrIfIdx, func(e *mptcp.Event) *int { return &e.IfIndex }),
	u32Attr(evAttrResetReason, func(e *mptcp.Event) *uint32 { return &e.ResetReason }),
	u32Attr(evAttrResetFlags, func(e *mptcp.Event) *uint32 { return &e.ResetFlags }),
	flagAttr(evAttrServerSide, func(e *mptcp.Event) *bool { return &e.ServerSide }),
}

// decodeEvent decodes the attributes of one event of type t. It never panics
// on malformed input.
func decodeEvent(t mptcp.EventType, b []byte) (mptcp.Event, error) {
	e, err := decodeAttrs(b, eventAttrs)
	if err != nil {
		return mptcp.Event{}, fmt.Errorf("event %s: %w", t, err)
	}
	e.Type = t
	// Kernels since 6.18 say it with a flag, older ones with the attribute.
	e.ServerSide = e.ServerSide || e.Flags&mptcp.EventFlagServerSide != 0
	return e, nil
}

// encodeEvent is the inverse of decodeEvent.
func encodeEvent(e mptcp.Event) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	encodeAttrs(ae, eventAttrs, &e)
	return ae.Encode()
}

// EventConn receives the MPTCP path manager's events of one network
// namespace (the mptcp_pm_events multicast group, which needs
// CAP_NET_ADMIN). Receive must not be called concurrently with itself.
type EventConn struct {
	c *eventConn
}

// DialEvents subscribes to MPTCP events.
func DialEvents(opts *DialOptions) (*EventConn, error) {
	return open(opts, dialEvents, func(c *eventConn) *EventConn { return &EventConn{c: c} })
}

// Receive blocks until the kernel sends one or more events and returns them.
// Messages that are not MPTCP events are skipped. If the kernel dropped
// events because the socket buffer overflowed, Receive returns an error
// matching ErrEventsLost; the connection stays usable.
func (e *EventConn) Receive() ([]mptcp.Event, error) { return e.c.receive() }

// SetReadDeadline makes Receive give up at t (an error matching
// os.ErrDeadlineExceeded); the zero time means no deadline.
func (e *EventConn) SetReadDeadline(t time.Time) error { return e.c.setReadDeadline(t) }

// Close ends the subscription; a blocked Receive returns.
func (e *EventConn) Close() error { return e.c.close() }
