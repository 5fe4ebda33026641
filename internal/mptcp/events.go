package mptcp

import (
	"net/netip"
	"strconv"
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
