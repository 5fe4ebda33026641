package mptcpnl

import (
	"errors"
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

// encodeAddr writes the MPTCP_PM_ADDR_ATTR_* of e (zero fields are left out:
// an ID attribute, even 0, tells the kernel not to choose one).
func encodeAddr(ae *netlink.AttributeEncoder, e mptcp.Endpoint) {
	if e.Addr.IsValid() {
		if e.Addr.Is4() {
			ae.Uint16(addrAttrFamily, afInet)
			b := e.Addr.As4()
			ae.Bytes(addrAttrAddr4, b[:])
		} else {
			ae.Uint16(addrAttrFamily, afInet6)
			b := e.Addr.As16()
			ae.Bytes(addrAttrAddr6, b[:])
		}
	}
	if e.ID != 0 {
		ae.Uint8(addrAttrID, e.ID)
	}
	if e.Port != 0 {
		ae.Uint16(addrAttrPort, e.Port)
	}
	if e.Flags != 0 {
		ae.Uint32(addrAttrFlags, uint32(e.Flags))
	}
	if e.IfIndex != 0 {
		ae.Int32(addrAttrIfIdx, int32(e.IfIndex))
	}
}

// encodeEndpoint returns the attributes of a request about e: one nested
// MPTCP_PM_ATTR_ADDR.
func encodeEndpoint(e mptcp.Endpoint) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	ae.Nested(attrAddr, func(nae *netlink.AttributeEncoder) error {
		encodeAddr(nae, e)
		return nil
	})
	return ae.Encode()
}

// decodeEndpoint decodes the attributes of a GET_ADDR reply. It never panics
// on malformed input.
func decodeEndpoint(b []byte) (mptcp.Endpoint, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return mptcp.Endpoint{}, err
	}
	var (
		e     mptcp.Endpoint
		found bool
	)
	for ad.Next() {
		if ad.Type() != attrAddr {
			continue
		}
		found = true
		ad.Nested(func(nad *netlink.AttributeDecoder) error {
			var err error
			e, err = decodeAddr(nad)
			return err
		})
	}
	if err := ad.Err(); err != nil {
		return mptcp.Endpoint{}, err
	}
	if !found {
		return mptcp.Endpoint{}, errors.New("no address attribute")
	}
	return e, nil
}

func decodeAddr(ad *netlink.AttributeDecoder) (mptcp.Endpoint, error) {
	var (
		e      mptcp.Endpoint
		family uint16
		a4, a6 []byte
	)
	for ad.Next() {
		switch ad.Type() {
		case addrAttrFamily:
			family = ad.Uint16()
		case addrAttrID:
			e.ID = ad.Uint8()
		case addrAttrAddr4:
			a4 = ad.Bytes()
		case addrAttrAddr6:
			a6 = ad.Bytes()
		case addrAttrPort:
			e.Port = ad.Uint16()
		case addrAttrFlags:
			e.Flags = mptcp.Flags(ad.Uint32())
		case addrAttrIfIdx:
			e.IfIndex = int(ad.Int32())
		}
	}
	if err := ad.Err(); err != nil {
		return mptcp.Endpoint{}, err
	}
	switch family {
	case afInet:
		if len(a4) != 4 {
			return mptcp.Endpoint{}, fmt.Errorf("IPv4 endpoint with %d address bytes", len(a4))
		}
		e.Addr = netip.AddrFrom4([4]byte(a4))
	case afInet6:
		if len(a6) != 16 {
			return mptcp.Endpoint{}, fmt.Errorf("IPv6 endpoint with %d address bytes", len(a6))
		}
		e.Addr = netip.AddrFrom16([16]byte(a6))
	default:
		return mptcp.Endpoint{}, fmt.Errorf("endpoint of unknown address family %d", family)
	}
	return e, nil
}

// encodeLimits returns the attributes of a SET_LIMITS request.
func encodeLimits(l mptcp.Limits) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(attrRcvAddAddrs, l.AddAddrAccepted)
	ae.Uint32(attrSubflows, l.Subflows)
	return ae.Encode()
}

// decodeLimits decodes a GET_LIMITS reply.
func decodeLimits(b []byte) (mptcp.Limits, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return mptcp.Limits{}, err
	}
	var (
		l          mptcp.Limits
		gotA, gotS bool
	)
	for ad.Next() {
		switch ad.Type() {
		case attrRcvAddAddrs:
			l.AddAddrAccepted = ad.Uint32()
			gotA = true
		case attrSubflows:
			l.Subflows = ad.Uint32()
			gotS = true
		}
	}
	if err := ad.Err(); err != nil {
		return mptcp.Limits{}, err
	}
	if !gotA || !gotS {
		return mptcp.Limits{}, errors.New("limits reply lacks an attribute")
	}
	return l, nil
}
