package mptcpnl

import (
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"github.com/mpfleet/mpfleet/internal/mptcp"
)

// Address families on the wire (Linux values, kept here rather than taken
// from x/sys/unix so that encoding and decoding build and are tested on every
// platform).
const (
	afInet  = 2  // AF_INET
	afInet6 = 10 // AF_INET6
)

// MPTCP_PM_ATTR_* (top level; MPTCP_PM_ENDPOINT_ADDR is the same number as
// MPTCP_PM_ATTR_ADDR).
const (
	attrAddr        = 1 // nested MPTCP_PM_ADDR_ATTR_*
	attrRcvAddAddrs = 2 // u32
	attrSubflows    = 3 // u32
)

// MPTCP_PM_ADDR_ATTR_* (inside attrAddr).
const (
	addrAttrFamily = 1 // u16
	addrAttrID     = 2 // u8
	addrAttrAddr4  = 3 // 4 bytes, network order
	addrAttrAddr6  = 4 // 16 bytes
	addrAttrPort   = 5 // u16, HOST order (the kernel does htons(nla_get_u16()))
	addrAttrFlags  = 6 // u32
	addrAttrIfIdx  = 7 // s32
)

// wireAddr is an endpoint as MPTCP_PM_ADDR_ATTR_* carry it: the address
// as a family and the bytes of one of two attributes.
type wireAddr struct {
	e      mptcp.Endpoint
	family uint16
	a4, a6 []byte
}

// addrAttrs are the MPTCP_PM_ADDR_ATTR_*, in the order they are encoded
// (zero fields are left out: an ID attribute, even 0, tells the kernel not
// to choose one).
var addrAttrs = []attr[wireAddr]{
	u16Attr(addrAttrFamily, func(w *wireAddr) *uint16 { return &w.family }),
	rawAttr(addrAttrAddr4, func(w *wireAddr) *[]byte { return &w.a4 }),
	rawAttr(addrAttrAddr6, func(w *wireAddr) *[]byte { return &w.a6 }),
	u8Attr(addrAttrID, func(w *wireAddr) *uint8 { return &w.e.ID }),
	u16Attr(addrAttrPort, func(w *wireAddr) *uint16 { return &w.e.Port }),
	u32Attr(addrAttrFlags, func(w *wireAddr) *mptcp.Flags { return &w.e.Flags }),
	s32Attr(addrAttrIfIdx, func(w *wireAddr) *int { return &w.e.IfIndex }),
}

// encodeAddr writes the MPTCP_PM_ADDR_ATTR_* of e.
func encodeAddr(ae *netlink.AttributeEncoder, e mptcp.Endpoint) {
	w := wireAddr{e: e}
	switch {
	case e.Addr.Is4():
		b := e.Addr.As4()
		w.family, w.a4 = afInet, b[:]
	case e.Addr.IsValid():
		b := e.Addr.As16()
		w.family, w.a6 = afInet6, b[:]
	}
	encodeAttrs(ae, addrAttrs, &w)
}

// endpointAttrs are the attributes of a request about an endpoint, and of a
// GET_ADDR reply: one nested MPTCP_PM_ATTR_ADDR.
var endpointAttrs = []attr[mptcp.Endpoint]{{
	typ: attrAddr,
	get: func(ad *netlink.AttributeDecoder, e *mptcp.Endpoint) error {
		ad.Nested(func(nad *netlink.AttributeDecoder) error {
			var err error
			*e, err = decodeAddr(nad)
			return err
		})
		return nil
	},
	put: func(ae *netlink.AttributeEncoder, e *mptcp.Endpoint) {
		ae.Nested(attrAddr, func(nae *netlink.AttributeEncoder) error {
			encodeAddr(nae, *e)
			return nil
		})
	},
}}

// encodeEndpoint returns the attributes of a request about e.
func encodeEndpoint(e mptcp.Endpoint) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	encodeAttrs(ae, endpointAttrs, &e)
	return ae.Encode()
}

// decodeEndpoint decodes the attributes of a GET_ADDR reply. It never panics
// on malformed input.
func decodeEndpoint(b []byte) (mptcp.Endpoint, error) { return decodeAttrs(b, endpointAttrs, attrAddr) }

func decodeAddr(ad *netlink.AttributeDecoder) (mptcp.Endpoint, error) {
	var w wireAddr
	if _, err := decodeNext(ad, addrAttrs, &w); err != nil {
		return mptcp.Endpoint{}, err
	}
	switch w.family {
	case afInet:
		if len(w.a4) != 4 {
			return mptcp.Endpoint{}, fmt.Errorf("IPv4 endpoint with %d address bytes", len(w.a4))
		}
		w.e.Addr = netip.AddrFrom4([4]byte(w.a4))
	case afInet6:
		if len(w.a6) != 16 {
			return mptcp.Endpoint{}, fmt.Errorf("IPv6 endpoint with %d address bytes", len(w.a6))
		}
		w.e.Addr = netip.AddrFrom16([16]byte(w.a6))
	default:
		return mptcp.Endpoint{}, fmt.Errorf("endpoint of unknown address family %d", w.family)
	}
	return w.e, nil
}

// encodeLimits returns the attributes of a SET_LIMITS request.
func encodeLimits(l mptcp.Limits) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(attrRcvAddAddrs, l.AddAddrAccepted)
	ae.Uint32(attrSubflows, l.Subflows)
	return ae.Encode()
}

// limitsAttrs are the attributes of a GET_LIMITS reply. (A SET_LIMITS
// request carries both, zero too: encodeLimits.)
var limitsAttrs = []attr[mptcp.Limits]{
	u32Attr(attrRcvAddAddrs, func(l *mptcp.Limits) *uint32 { return &l.AddAddrAccepted }),
	u32Attr(attrSubflows, func(l *mptcp.Limits) *uint32 { return &l.Subflows }),
}

// decodeLimits decodes a GET_LIMITS reply.
func decodeLimits(b []byte) (mptcp.Limits, error) {
	return decodeAttrs(b, limitsAttrs, attrRcvAddAddrs, attrSubflows)
}
