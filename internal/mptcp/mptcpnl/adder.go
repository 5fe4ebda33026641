package mptcpnl

import (
	"encoding/binary"

	"github.com/mpfleet/mpfleet/internal/mptcp"
)

// EndpointAdder adds endpoints on a generic netlink socket of its own, each
// request written into a buffer it keeps and sent with one system call, its
// acknowledgement read with another: no allocation and no goroutine between
// the caller and the kernel. It is for a caller that turns an event into an
// endpoint and counts the microseconds (the agent's fast path for a new
// address); Client.AddEndpoint is the general way, and sends the same
// request. An EndpointAdder is not safe for concurrent use.
type EndpointAdder struct {
	a *adder
}

// DialEndpointAdder opens an EndpointAdder in the namespace opts names. On a
// kernel without MPTCP it returns one error that matches ErrUnsupported and
// os.ErrNotExist, as Dial does.
func DialEndpointAdder(opts *DialOptions) (*EndpointAdder, error) {
	if opts == nil {
		opts = &DialOptions{}
	}
	a, err := dialAdder(opts)
	if err != nil {
		return nil, err
	}
	return &EndpointAdder{a: a}, nil
}

// AddEndpoint adds e as Client.AddEndpoint does: the same checks, the same
// request, the same errors (ErrEndpointExists for a duplicate address or
// ID, ErrTooManyEndpoints, ErrInvalid), but without the kernel's extended
// acknowledgement message in them.
func (a *EndpointAdder) AddEndpoint(e mptcp.Endpoint) error {
	if err := e.Validate(); err != nil {
		return &mptcp.OpError{Op: addOp(e), Err: err}
	}
	return a.a.add(e)
}

// Close releases the socket.
func (a *EndpointAdder) Close() error { return a.a.close() }

// Netlink wire constants the adder's requests and acknowledgements use
// (include/uapi/linux/netlink.h, genetlink.h).
const (
	nlmsgHdrLen   = 16     // sizeof(struct nlmsghdr)
	genlHdrLen    = 4      // sizeof(struct genlmsghdr)
	nlaHdrLen     = 4      // sizeof(struct nlattr)
	nlaFNested    = 0x8000 // NLA_F_NESTED
	nlmsgError    = 2      // NLMSG_ERROR
	nlmFRequest   = 0x1    // NLM_F_REQUEST
	nlmFAck       = 0x4    // NLM_F_ACK
	addReqMaxSize = 96     // the largest request appendAddRequest writes
)

// appendAddRequest appends to b the whole netlink message of a request
// about endpoint e, command cmd (MPTCP_PM_CMD_ADD_ADDR), to the mptcp_pm
// family (its ID and version), with sequence number seq, asking for an
// acknowledgement: the request Client.AddEndpoint sends, byte for byte.
func appendAddRequest(b []byte, family uint16, cmd, version uint8, seq uint32, e mptcp.Endpoint) []byte {
	ne := binary.NativeEndian
	start := len(b)
	b = ne.AppendUint32(b, 0) // nlmsg_len, set at the end
	b = ne.AppendUint16(b, family)
	b = ne.AppendUint16(b, nlmFRequest|nlmFAck)
	b = ne.AppendUint32(b, seq)
	b = ne.AppendUint32(b, 0) // nlmsg_pid: the kernel's
	b = append(b, cmd, version, 0, 0)
	nest := len(b)
	b = ne.AppendUint16(b, 0) // nla_len, set below
	b = ne.AppendUint16(b, attrAddr|nlaFNested)
	// In the order of addrAttrs, zero fields left out.
	if e.Addr.Is4() {
		b = appendU16Attr(b, addrAttrFamily, afInet)
		a := e.Addr.As4()
		b = appendAttr(b, addrAttrAddr4, a[:])
	} else {
		b = appendU16Attr(b, addrAttrFamily, afInet6)
		a := e.Addr.As16()
		b = appendAttr(b, addrAttrAddr6, a[:])
	}
	if e.ID != 0 {
		b = appendAttr(b, addrAttrID, []byte{e.ID})
	}
	if e.Port != 0 {
		b = appendU16Attr(b, addrAttrPort, e.Port)
	}
	if e.Flags != 0 {
		var v [4]byte
		ne.PutUint32(v[:], uint32(e.Flags))
		b = appendAttr(b, addrAttrFlags, v[:])
	}
	if e.IfIndex != 0 {
		var v [4]byte
		ne.PutUint32(v[:], uint32(int32(e.IfIndex)))
		b = appendAttr(b, addrAttrIfIdx, v[:])
	}
	ne.PutUint16(b[nest:], uint16(len(b)-nest))
	ne.PutUint32(b[start:], uint32(len(b)-start))
	return b
}

func appendU16Attr(b []byte, typ, v uint16) []byte {
	var x [2]byte
	binary.NativeEndian.PutUint16(x[:], v)
	return appendAttr(b, typ, x[:])
}

// appendAttr appends one attribute, padded to 4 bytes (the padding is not
// counted in its length).
func appendAttr(b []byte, typ uint16, v []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(nlaHdrLen+len(v)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, v...)
	for n := len(v); n%4 != 0; n++ {
		b = append(b, 0)
	}
	return b
}

// ackOf looks through the netlink messages of one datagram b for the
// acknowledgement of request seq, and returns its error code (0, or a
// negative errno) and whether it found it. Malformed input ends the search.
func ackOf(b []byte, seq uint32) (code int32, ok bool) {
	ne := binary.NativeEndian
	for len(b) >= nlmsgHdrLen {
		n := int(ne.Uint32(b))
		if n < nlmsgHdrLen || n > len(b) {
			return 0, false
		}
		if ne.Uint16(b[4:]) == nlmsgError && ne.Uint32(b[8:]) == seq && n >= nlmsgHdrLen+4 {
			return int32(ne.Uint32(b[nlmsgHdrLen:])), true
		}
		b = b[min(len(b), (n+3)&^3):]
	}
	return 0, false
}
