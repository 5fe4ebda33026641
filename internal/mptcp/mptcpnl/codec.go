package mptcpnl

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
)

// The attributes of the mptcp_pm messages are decoded and encoded by
// table: an attr for each attribute type, which reads its value into a field
// of the decoded value and writes it from there. Attributes a table does
// not list are skipped; a field that is unset (zero) is not encoded.

// attr is one netlink attribute of a message decoded into, and encoded
// from, a T.
type attr[T any] struct {
	typ uint16
	// get decodes the attribute's value into v; an error ends the decoding.
	get func(ad *netlink.AttributeDecoder, v *T) error
	// put encodes the attribute from v, unless its field is unset.
	put func(ae *netlink.AttributeEncoder, v *T)
}

// decodeAttrs decodes the attributes of b into a T by table; the attribute
// types in required must be there. It never panics on malformed input.
func decodeAttrs[T any](b []byte, table []attr[T], required ...uint16) (T, error) {
	var v, zero T
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return zero, err
	}
	seen, err := decodeNext(ad, table, &v)
	if err != nil {
		return zero, err
	}
	for _, t := range required {
		if !seen[t] {
			return zero, fmt.Errorf("no attribute of type %d", t)
		}
	}
	return v, nil
}

// decodeNext decodes the attributes ad has left into v by table, and
// returns the types it saw.
func decodeNext[T any](ad *netlink.AttributeDecoder, table []attr[T], v *T) (map[uint16]bool, error) {
	seen := map[uint16]bool{}
	for ad.Next() {
		for _, a := range table {
			if a.typ != ad.Type() {
				continue
			}
			seen[a.typ] = true
			if err := a.get(ad, v); err != nil {
				return seen, err
			}
		}
	}
	return seen, ad.Err()
}

// encodeAttrs encodes v's attributes by table, in the table's order.
func encodeAttrs[T any](ae *netlink.AttributeEncoder, table []attr[T], v *T) {
	for _, a := range table {
		a.put(ae, v)
	}
}

// integer is what an integer attribute is decoded into.
type integer interface {
	~uint8 | ~uint16 | ~uint32 | ~int32 | ~int
}

// numAttr is an integer attribute in field of T, of the wire type W that get
// and put read and write.
func numAttr[T any, V, W integer](typ uint16, field func(*T) *V,
	get func(*netlink.AttributeDecoder) W, put func(*netlink.AttributeEncoder, uint16, W)) attr[T] {
	return attr[T]{
		typ: typ,
		get: func(ad *netlink.AttributeDecoder, v *T) error {
			*field(v) = V(get(ad))
			return nil
		},
		put: func(ae *netlink.AttributeEncoder, v *T) {
			if x := *field(v); x != 0 {
				put(ae, typ, W(x))
			}
		},
	}
}

func u8Attr[T any, V ~uint8](typ uint16, field func(*T) *V) attr[T] {
	return numAttr(typ, field, (*netlink.AttributeDecoder).Uint8, (*netlink.AttributeEncoder).Uint8)
}

func u16Attr[T any, V ~uint16](typ uint16, field func(*T) *V) attr[T] {
	return numAttr(typ, field, (*netlink.AttributeDecoder).Uint16, (*netlink.AttributeEncoder).Uint16)
}

func u32Attr[T any, V ~uint32](typ uint16, field func(*T) *V) attr[T] {
	return numAttr(typ, field, (*netlink.AttributeDecoder).Uint32, (*netlink.AttributeEncoder).Uint32)
}

// s32Attr is a signed 32-bit attribute held in an int (an interface index).
func s32Attr[T any](typ uint16, field func(*T) *int) attr[T] {
	return numAttr(typ, field, (*netlink.AttributeDecoder).Int32, (*netlink.AttributeEncoder).Int32)
}

// flagAttr is a u8 attribute held as a bool: any value but 0 is true, true is
// encoded as 1.
func flagAttr[T any](typ uint16, field func(*T) *bool) attr[T] {
	return attr[T]{
		typ: typ,
		get: func(ad *netlink.AttributeDecoder, v *T) error {
			*field(v) = ad.Uint8() != 0
			return nil
		},
		put: func(ae *netlink.AttributeEncoder, v *T) {
			if *field(v) {
				ae.Uint8(typ, 1)
			}
		},
	}
}

// fixedAttr is an attribute of raw bytes that must be size long (at least
// size, when atLeast), what names it in the error, converted by from and
// to. to returns nil for a value that is not encoded as this attribute.
func fixedAttr[T, V any](typ uint16, field func(*T) *V, what string, size int, atLeast bool,
	from func([]byte) V, to func(V) []byte) attr[T] {
	return attr[T]{
		typ: typ,
		get: func(ad *netlink.AttributeDecoder, v *T) error {
			b := ad.Bytes()
			if len(b) != size && (!atLeast || len(b) < size) {
				return fmt.Errorf("%s of %d bytes", what, len(b))
			}
			*field(v) = from(b[:size])
			return nil
		},
		put: func(ae *netlink.AttributeEncoder, v *T) {
			if b := to(*field(v)); b != nil {
				ae.Bytes(typ, b)
			}
		},
	}
}

// addr4Attr is an IPv4 address (4 bytes, network order); a field that holds an
// IPv6 address is left to its addr6Attr.
func addr4Attr[T any](typ uint16, field func(*T) *netip.Addr) attr[T] {
	return fixedAttr(typ, field, "IPv4 address", 4, false,
		func(b []byte) netip.Addr { return netip.AddrFrom4([4]byte(b)) },
		func(a netip.Addr) []byte {
			if !a.Is4() {
				return nil
			}
			b := a.As4()
			return b[:]
		})
}

// addr6Attr is an IPv6 address (an in6_addr: 16 bytes, or more, of which the
// first 16 count); an IPv4-mapped one is decoded as IPv4.
func addr6Attr[T any](typ uint16, field func(*T) *netip.Addr) attr[T] {
	return fixedAttr(typ, field, "IPv6 address", 16, true,
		func(b []byte) netip.Addr { return netip.AddrFrom16([16]byte(b)).Unmap() },
		func(a netip.Addr) []byte {
			if !a.Is6() {
				return nil
			}
			b := a.As16()
			return b[:]
		})
}

// portAttr is a port in network order (the events' be16), held in host order.
func portAttr[T any](typ uint16, field func(*T) *uint16) attr[T] {
	return fixedAttr(typ, field, "port", 2, false, binary.BigEndian.Uint16, func(p uint16) []byte {
		if p == 0 {
			return nil
		}
		return binary.BigEndian.AppendUint16(nil, p)
	})
}

// rawAttr is an attribute of raw bytes, checked by the caller.
func rawAttr[T any](typ uint16, field func(*T) *[]byte) attr[T] {
	return attr[T]{
		typ: typ,
		get: func(ad *netlink.AttributeDecoder, v *T) error {
			*field(v) = ad.Bytes()
			return nil
		},
		put: func(ae *netlink.AttributeEncoder, v *T) {
			if b := *field(v); len(b) > 0 {
				ae.Bytes(typ, b)
			}
		},
	}
}
