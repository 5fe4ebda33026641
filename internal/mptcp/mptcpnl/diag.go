package mptcpnl

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"github.com/mpfleet/mpfleet/internal/mptcp"
)

// sizes of the sock_diag structures.
const (
	inetDiagInfo   = 2  // INET_DIAG_INFO: request bit and reply attribute
	inetDiagMsgLen = 72 // sizeof(struct inet_diag_msg)
)

// mptcp_info flags.
const (
	infoFlagFallback          = 1 << 0
	infoFlagRemoteKeyReceived = 1 << 1
)

// mptcpInfoLen is the size of struct mptcp_info this package knows.
const mptcpInfoLen = 96

// decodeMPTCPInfo decodes a struct mptcp_info of any length: a short one (an
// older kernel) is zero-filled, a longer one (a newer kernel) truncated.
func decodeMPTCPInfo(b []byte) mptcp.Info {
	var buf [mptcpInfoLen]byte
	copy(buf[:], b)
	ne := binary.NativeEndian
	i := mptcp.Info{
		Subflows:           buf[0],
		AddAddrSignal:      buf[1],
		AddAddrAccepted:    buf[2],
		SubflowsMax:        buf[3],
		AddAddrSignalMax:   buf[4],
		AddAddrAcceptedMax: buf[5],
		Flags:              ne.Uint32(buf[8:]),
		Token:              ne.Uint32(buf[12:]),
		WriteSeq:           ne.Uint64(buf[16:]),
		SndUna:             ne.Uint64(buf[24:]),
		RcvNxt:             ne.Uint64(buf[32:]),
		LocalAddrUsed:      buf[40],
		LocalAddrMax:       buf[41],
		CsumEnabled:        buf[42] != 0,
		Retransmits:        ne.Uint32(buf[44:]),
		BytesRetrans:       ne.Uint64(buf[48:]),
		BytesSent:          ne.Uint64(buf[56:]),
		BytesReceived:      ne.Uint64(buf[64:]),
		BytesAcked:         ne.Uint64(buf[72:]),
		SubflowsTotal:      buf[80],
		EndpLaminarMax:     buf[81],
		EndpFullmeshMax:    buf[82],
		LastDataSent:       ne.Uint32(buf[84:]),
		LastDataRecv:       ne.Uint32(buf[88:]),
		LastAckRecv:        ne.Uint32(buf[92:]),
	}
	i.Fallback = i.Flags&infoFlagFallback != 0
	i.RemoteKeyReceived = i.Flags&infoFlagRemoteKeyReceived != 0
	return i
}

// encodeMPTCPInfo is the inverse of decodeMPTCPInfo (Fallback and
// RemoteKeyReceived are taken from Flags).
func encodeMPTCPInfo(i mptcp.Info) []byte {
	b := make([]byte, mptcpInfoLen)
	ne := binary.NativeEndian
	b[0], b[1], b[2], b[3], b[4], b[5] = i.Subflows, i.AddAddrSignal, i.AddAddrAccepted, i.SubflowsMax, i.AddAddrSignalMax, i.AddAddrAcceptedMax
	ne.PutUint32(b[8:], i.Flags)
	ne.PutUint32(b[12:], i.Token)
	ne.PutUint64(b[16:], i.WriteSeq)
	ne.PutUint64(b[24:], i.SndUna)
	ne.PutUint64(b[32:], i.RcvNxt)
	b[40], b[41] = i.LocalAddrUsed, i.LocalAddrMax
	if i.CsumEnabled {
		b[42] = 1
	}
	ne.PutUint32(b[44:], i.Retransmits)
	ne.PutUint64(b[48:], i.BytesRetrans)
	ne.PutUint64(b[56:], i.BytesSent)
	ne.PutUint64(b[64:], i.BytesReceived)
	ne.PutUint64(b[72:], i.BytesAcked)
	b[80], b[81], b[82] = i.SubflowsTotal, i.EndpLaminarMax, i.EndpFullmeshMax
	ne.PutUint32(b[84:], i.LastDataSent)
	ne.PutUint32(b[88:], i.LastDataRecv)
	ne.PutUint32(b[92:], i.LastAckRecv)
	return b
}

// decodeDiagMsg decodes one struct inet_diag_msg and its attributes.
func decodeDiagMsg(b []byte) (mptcp.Connection, error) {
	if len(b) < inetDiagMsgLen {
		return mptcp.Connection{}, fmt.Errorf("inet_diag_msg of %d bytes, want at least %d", len(b), inetDiagMsgLen)
	}
	ne := binary.NativeEndian
	c := mptcp.Connection{
		Family:    b[0],
		State:     mptcp.State(b[1]),
		IfIndex:   int(ne.Uint32(b[40:])),
		Cookie:    uint64(ne.Uint32(b[44:])) | uint64(ne.Uint32(b[48:]))<<32,
		RecvQueue: ne.Uint32(b[56:]),
		SendQueue: ne.Uint32(b[60:]),
		UID:       ne.Uint32(b[64:]),
		Inode:     ne.Uint32(b[68:]),
	}
	sport := binary.BigEndian.Uint16(b[4:])
	dport := binary.BigEndian.Uint16(b[6:])
	var src, dst netip.Addr
	switch c.Family {
	case afInet:
		src = netip.AddrFrom4([4]byte(b[8:12]))
		dst = netip.AddrFrom4([4]byte(b[24:28]))
	case afInet6:
		src = netip.AddrFrom16([16]byte(b[8:24])).Unmap()
		dst = netip.AddrFrom16([16]byte(b[24:40])).Unmap()
	default:
		return mptcp.Connection{}, fmt.Errorf("inet_diag_msg of unknown family %d", c.Family)
	}
	c.Local = netip.AddrPortFrom(src, sport)
	c.Remote = netip.AddrPortFrom(dst, dport)

	ad, err := netlink.NewAttributeDecoder(b[inetDiagMsgLen:])
	if err != nil {
		return mptcp.Connection{}, err
	}
	for ad.Next() {
		if ad.Type() == inetDiagInfo {
			c.Info = decodeMPTCPInfo(ad.Bytes())
		}
	}
	if err := ad.Err(); err != nil {
		return mptcp.Connection{}, err
	}
	return c, nil
}
