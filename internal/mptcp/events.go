package mptcp

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/mdlayher/netlink"
)

// EventType is an MPTCP path-manager event (enum mptcp_event_type).
type EventType uint8

// Event types.
const (
	EventCreated         EventType = 1
	EventEstablished     EventType = 2
	EventClosed          EventType = 3
	EventAnnounced       EventType = 6
	EventRemoved         EventType = 7
	EventSubEstablished  EventType = 10
	EventSubClosed       EventType = 11
	EventSubPriority     EventType = 13
	EventListenerCreated EventType = 15
	EventListenerClosed  EventType = 16
)

var eventNames = map[EventType]string{
	EventCreated:         "CREATED",
	EventEstablished:     "ESTABLISHED",
	EventClosed:          "CLOSED",
	EventAnnounced:       "ANNOUNCED",
	EventRemoved:         "REMOVED",
	EventSubEstablished:  "SUB_ESTABLISHED",
	EventSubClosed:       "SUB_CLOSED",
	EventSubPriority:     "SUB_PRIORITY",
	EventListenerCreated: "LISTENER_CREATED",
	EventListenerClosed:  "LISTENER_CLOSED",
}

// String returns the kernel's name of the event type without its
// MPTCP_EVENT_ prefix.
func (t EventType) String() string {
	if s, ok := eventNames[t]; ok {
		return s
	}
	return "EVENT(" + strconv.Itoa(int(t)) + ")"
}

// Event flags (MPTCP_PM_EV_FLAG_*), in Event.Flags of CREATED and
// ESTABLISHED.
const (
	// EventFlagDenyJoinID0: the peer refuses MP_JOINs to its initial address.
	EventFlagDenyJoinID0 uint16 = 1 << 0
	// EventFlagServerSide: the connection was accepted here (6.18+; older
	// kernels send only the deprecated server-side attribute).
	EventFlagServerSide uint16 = 1 << 1
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

// Event is one MPTCP path-manager event. Which fields are set depends on
// Type (see the kernel's mptcp_pm.yaml): CREATED and ESTABLISHED carry the
// token, family, addresses, ports and ServerSide; SUB_* add LocID, RemID,
// Backup, IfIndex and Error; ANNOUNCED carries RemID, Daddr and Dport;
// LISTENER_* carry family, Saddr and Sport; CLOSED only the token.
type Event struct {
	Type   EventType
	Token  uint32
	Family uint16 // 2 (AF_INET) or 10 (AF_INET6)
	LocID  uint8
	RemID  uint8
	// Saddr and Daddr are the local and remote addresses; IPv4-mapped IPv6
	// addresses are unmapped.
	Saddr netip.Addr
	Daddr netip.Addr
	Sport uint16 // host order (the kernel sends network order)
	Dport uint16
	// Backup is set for a backup subflow.
	Backup bool
	// Error is the subflow's socket error (an errno), if any.
	Error uint8
	// Flags are the EventFlag* bits.
	Flags uint16
	// Timeout is the add_addr timeout, in seconds, when the kernel gives one.
	Timeout uint32
	IfIndex int
	// ResetReason and ResetFlags come from the peer's MP_RST (SUB_CLOSED).
	ResetReason uint32
	ResetFlags  uint32
	// ServerSide tells whether the connection was accepted rather than
	// initiated here (CREATED, ESTABLISHED), from the deprecated attribute
	// or from EventFlagServerSide, whichever the kernel sent.
	ServerSide bool
}

// decodeEvent decodes the attributes of one event of type t. It never panics
// on malformed input.
func decodeEvent(t EventType, b []byte) (Event, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return Event{}, err
	}
	e := Event{Type: t}
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
				return Event{}, fmt.Errorf("event %s: IPv4 address of %d bytes", t, len(v))
			}
			setEventAddr(&e, ad.Type() == evAttrSaddr4, netip.AddrFrom4([4]byte(v)))
		case evAttrSaddr6, evAttrDaddr6:
			v := ad.Bytes()
			if len(v) < 16 {
				return Event{}, fmt.Errorf("event %s: IPv6 address of %d bytes", t, len(v))
			}
			setEventAddr(&e, ad.Type() == evAttrSaddr6, netip.AddrFrom16([16]byte(v[:16])).Unmap())
		case evAttrSport, evAttrDport:
			v := ad.Bytes()
			if len(v) != 2 {
				return Event{}, fmt.Errorf("event %s: port of %d bytes", t, len(v))
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
			if e.Flags&EventFlagServerSide != 0 {
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
		return Event{}, fmt.Errorf("event %s: %w", t, err)
	}
	return e, nil
}

func setEventAddr(e *Event, src bool, a netip.Addr) {
	if src {
		e.Saddr = a
	} else {
		e.Daddr = a
	}
}

// encodeEvent is the inverse of decodeEvent; zero fields are left out.
func encodeEvent(e Event) ([]byte, error) {
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
func (e *EventConn) Receive() ([]Event, error) { return e.c.receive() }

// SetReadDeadline makes Receive give up at t (an error matching
// os.ErrDeadlineExceeded); the zero time means no deadline.
func (e *EventConn) SetReadDeadline(t time.Time) error { return e.c.setReadDeadline(t) }

// Close ends the subscription; a blocked Receive returns.
func (e *EventConn) Close() error { return e.c.close() }
