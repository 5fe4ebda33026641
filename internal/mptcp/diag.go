package mptcp

import (
	"net/netip"
	"strconv"
)

// State is a socket state as the kernel reports it (TCP_ESTABLISHED ...).
type State uint8

// Socket states (include/net/tcp_states.h).
const (
	StateEstablished State = 1
	StateSynSent     State = 2
	StateSynRecv     State = 3
	StateFinWait1    State = 4
	StateFinWait2    State = 5
	StateTimeWait    State = 6
	StateClose       State = 7
	StateCloseWait   State = 8
	StateLastAck     State = 9
	StateListen      State = 10
	StateClosing     State = 11
	StateNewSynRecv  State = 12
)

var stateNames = [...]string{
	StateEstablished: "ESTAB",
	StateSynSent:     "SYN-SENT",
	StateSynRecv:     "SYN-RECV",
	StateFinWait1:    "FIN-WAIT-1",
	StateFinWait2:    "FIN-WAIT-2",
	StateTimeWait:    "TIME-WAIT",
	StateClose:       "UNCONN",
	StateCloseWait:   "CLOSE-WAIT",
	StateLastAck:     "LAST-ACK",
	StateListen:      "LISTEN",
	StateClosing:     "CLOSING",
	StateNewSynRecv:  "NEW-SYN-RECV",
}

// String returns the state as ss(8) prints it.
func (s State) String() string {
	if int(s) < len(stateNames) && stateNames[s] != "" {
		return stateNames[s]
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// Connection is one MPTCP connection (the MPTCP-level socket, not a subflow)
// as sock_diag reports it.
type Connection struct {
	// Family is the socket's address family: 2 (AF_INET) or 10 (AF_INET6).
	// An AF_INET6 socket may carry IPv4 traffic; its addresses are then
	// reported unmapped (198.18.1.1, not ::ffff:198.18.1.1).
	Family uint8
	State  State
	Local  netip.AddrPort
	Remote netip.AddrPort
	// IfIndex is the device the socket is bound to, 0 for none.
	IfIndex int
	// Cookie is the kernel's socket cookie.
	Cookie uint64
	// RecvQueue and SendQueue are the bytes queued (rmem and wmem in use).
	RecvQueue uint32
	SendQueue uint32
	UID       uint32
	Inode     uint32
	// Info is the kernel's struct mptcp_info for the connection.
	Info Info
}

// Info is struct mptcp_info (include/uapi/linux/mptcp.h). It grows with
// kernel versions; the fields a kernel does not send are zero.
type Info struct {
	// Subflows counts the subflows beyond the initial one
	// (mptcpi_subflows; SubflowsTotal includes the initial one).
	Subflows           uint8
	AddAddrSignal      uint8 // ADD_ADDRs sent
	AddAddrAccepted    uint8 // ADD_ADDRs accepted
	SubflowsMax        uint8 // the subflows limit in force
	AddAddrSignalMax   uint8 // signal endpoints
	AddAddrAcceptedMax uint8 // the add_addr_accepted limit in force
	// Flags is mptcpi_flags; Fallback and RemoteKeyReceived decode it.
	Flags             uint32
	Fallback          bool // the connection fell back to plain TCP
	RemoteKeyReceived bool
	Token             uint32
	WriteSeq          uint64
	SndUna            uint64
	RcvNxt            uint64
	LocalAddrUsed     uint8
	LocalAddrMax      uint8 // subflow endpoints
	CsumEnabled       bool
	Retransmits       uint32
	BytesRetrans      uint64
	BytesSent         uint64
	BytesReceived     uint64
	BytesAcked        uint64
	SubflowsTotal     uint8  // all subflows, the initial one included (6.10+)
	EndpLaminarMax    uint8  // laminar endpoints (6.18+)
	EndpFullmeshMax   uint8  // fullmesh endpoints (6.19+)
	LastDataSent      uint32 // ms since data was last sent (6.11+)
	LastDataRecv      uint32 // ms since data was last received
	LastAckRecv       uint32 // ms since an ACK was last received
}
