package mptcpnl

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/mpfleet/mpfleet/internal/mptcp"
)

// MPTCP_ATTR_* (enum mptcp_event_attr).
const (
	evAttrToken       = 1  // u32
	evAttrFamily      = 2  // u16
	evAttrLocID       = 3  // u8
	evAttrRemID       = 4  // u8
	evAttrSaddr4      = 5  // be32
	evAttrSaddr6      = 6  // in6_addr
	evAttrDaddr4      = 7  // be32
	evAttrDaddr6      = 8  // in6_addr
	evAttrSport       = 9  // be16: NETWORK order, unlike the endpoint port
	evAttrDport       = 10 // be16
	evAttrBackup      = 11 // u8
	evAttrError       = 12 // u8
	evAttrFlags       = 13 // u16
	evAttrTimeout     = 14 // u32
	evAttrIfIdx       = 15 // s32
	evAttrResetReason = 16 // u32
	evAttrResetFlags  = 17 // u32
	evAttrServerSide  = 18 // u8
)

// decodeEvent decodes the attributes of one event of type t. It never panics
// on malformed input.
func decodeEvent(t mptcp.EventType, b []byte) (mptcp.Event, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return mptcp.Event{}, err
	}
	e := mptcp.Event{Type: t}
	for ad.Next() {
		switch ad.Type() {
		case evAttrToken:
			e.Token = ad.Uint32()
		case evAttrFamily:
			e.Family = ad.Uint16()
		case evAttrLocID:
			e.LocID = ad.Uint8()
		case evAttrRemID:
			e.RemID = ad.Uint8()
		case evAttrSaddr4, evAttrDaddr4:
			v := ad.Bytes()
			if len(v) != 4 {
				return mptcp.Event{}, fmt.Errorf("event %s: IPv4 address of %d bytes", t, len(v))
			}
			setEventAddr(&e, ad.Type() == evAttrSaddr4, netip.AddrFrom4([4]byte(v)))
		case evAttrSaddr6, evAttrDaddr6:
			v := ad.Bytes()
			if len(v) < 16 {
				return mptcp.Event{}, fmt.Errorf("event %s: IPv6 address of %d bytes", t, len(v))
			}
			setEventAddr(&e, ad.Type() == evAttrSaddr6, netip.AddrFrom16([16]byte(v[:16])).Unmap())
		case evAttrSport, evAttrDport:
			v := ad.Bytes()
			if len(v) != 2 {
				return mptcp.Event{}, fmt.Errorf("event %s: port of %d bytes", t, len(v))
			}
			if ad.Type() == evAttrSport {
				e.Sport = binary.BigEndian.Uint16(v)
			} else {
				e.Dport = binary.BigEndian.Uint16(v)
			}
		case evAttrBackup:
			e.Backup = ad.Uint8() != 0
		case evAttrError:
			e.Error = ad.Uint8()
		case evAttrFlags:
			e.Flags = ad.Uint16()
			if e.Flags&mptcp.EventFlagServerSide != 0 {
				e.ServerSide = true
			}
		case evAttrTimeout:
			e.Timeout = ad.Uint32()
		case evAttrIfIdx:
			e.IfIndex = int(ad.Int32())
		case evAttrResetReason:
			e.ResetReason = ad.Uint32()
		case evAttrResetFlags:
			e.ResetFlags = ad.Uint32()
		case evAttrServerSide:
			if ad.Uint8() != 0 {
				e.ServerSide = true
			}
		}
	}
	if err := ad.Err(); err != nil {
		return mptcp.Event{}, fmt.Errorf("event %s: %w", t, err)
	}
	return e, nil
}

func setEventAddr(e *mptcp.Event, src bool, a netip.Addr) {
	if src {
		e.Saddr = a
	} else {
		e.Daddr = a
	}
}

// encodeEvent is the inverse of decodeEvent; zero fields are left out.
func encodeEvent(e mptcp.Event) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	if e.Token != 0 {
		ae.Uint32(evAttrToken, e.Token)
	}
	if e.Family != 0 {
		ae.Uint16(evAttrFamily, e.Family)
	}
	if e.LocID != 0 {
		ae.Uint8(evAttrLocID, e.LocID)
	}
	if e.RemID != 0 {
		ae.Uint8(evAttrRemID, e.RemID)
	}
	putAddr := func(t4, t6 uint16, a netip.Addr) {
		switch {
		case a.Is4():
			b := a.As4()
			ae.Bytes(t4, b[:])
		case a.Is6():
			b := a.As16()
			ae.Bytes(t6, b[:])
		}
	}
	putAddr(evAttrSaddr4, evAttrSaddr6, e.Saddr)
	putAddr(evAttrDaddr4, evAttrDaddr6, e.Daddr)
	putPort := func(t uint16, p uint16) {
		if p != 0 {
			ae.Bytes(t, binary.BigEndian.AppendUint16(nil, p))
		}
	}
	putPort(evAttrSport, e.Sport)
	putPort(evAttrDport, e.Dport)
	if e.Backup {
		ae.Uint8(evAttrBackup, 1)
	}
	if e.Error != 0 {
		ae.Uint8(evAttrError, e.Error)
	}
	if e.Flags != 0 {
		ae.Uint16(evAttrFlags, e.Flags)
	}
	if e.Timeout != 0 {
		ae.Uint32(evAttrTimeout, e.Timeout)
	}
	if e.IfIndex != 0 {
		ae.Int32(evAttrIfIdx, int32(e.IfIndex))
	}
	if e.ResetReason != 0 {
		ae.Uint32(evAttrResetReason, e.ResetReason)
	}
	if e.ResetFlags != 0 {
		ae.Uint32(evAttrResetFlags, e.ResetFlags)
	}
	if e.ServerSide {
		ae.Uint8(evAttrServerSide, 1)
	}
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
	if opts == nil {
		opts = &DialOptions{}
	}
	c, err := dialEvents(opts)
	if err != nil {
		return nil, err
	}
	return &EventConn{c: c}, nil
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
