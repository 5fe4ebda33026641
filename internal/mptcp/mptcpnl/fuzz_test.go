package mptcpnl

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/mpfleet/mpfleet/internal/mptcp"
)

// The decoders read bytes the kernel (or anyone who can send to the socket)
// wrote. They must never panic, and what they decode must survive an
// encode→decode round trip unchanged.

func FuzzDecodeEndpoint(f *testing.F) {
	for _, e := range []mptcp.Endpoint{
		{ID: 1, Addr: netip.MustParseAddr("198.18.1.2"), Flags: mptcp.FlagSubflow | mptcp.FlagBackup, IfIndex: 3},
		{ID: 255, Addr: netip.MustParseAddr("2001:db8::1"), Port: 443, Flags: mptcp.FlagSignal},
		{Addr: netip.MustParseAddr("::ffff:198.18.0.1"), Flags: mptcp.FlagImplicit | mptcp.FlagLaminar, IfIndex: -1},
	} {
		b, err := encodeEndpoint(e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{4, 0, 1, 0})
	f.Add([]byte{8, 0, 1, 0x80, 5, 0, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decodeEndpoint(b)
		if err != nil {
			return
		}
		if !e.Addr.IsValid() {
			t.Fatalf("decoded endpoint without address: %+v", e)
		}
		b2, err := encodeEndpoint(e)
		if err != nil {
			t.Fatalf("encode %+v: %v", e, err)
		}
		e2, err := decodeEndpoint(b2)
		if err != nil {
			t.Fatalf("decode of encoded %+v: %v", e, err)
		}
		if e != e2 {
			t.Fatalf("round trip changed the endpoint:\n got %+v\nwant %+v", e2, e)
		}
	})
}

func FuzzDecodeEvent(f *testing.F) {
	for _, e := range []mptcp.Event{
		{Type: mptcp.EventCreated, Token: 7, Family: afInet, Saddr: netip.MustParseAddr("198.18.1.1"),
			Daddr: netip.MustParseAddr("198.18.1.2"), Sport: 40000, Dport: 5201, ServerSide: true},
		{Type: mptcp.EventSubClosed, Token: 9, Family: afInet6, LocID: 2, RemID: 1, Saddr: netip.MustParseAddr("2001:db8::1"),
			Daddr: netip.MustParseAddr("2001:db8::2"), Sport: 1, Dport: 65535, Backup: true, Error: 104,
			IfIndex: 4, ResetReason: 1, ResetFlags: 1},
		{Type: mptcp.EventAnnounced, Token: 1, RemID: 3, Daddr: netip.MustParseAddr("198.18.2.2"), Dport: 80, Timeout: 120, Flags: 1},
	} {
		b, err := encodeEvent(e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(e.Type), b)
	}
	f.Add(uint8(0), []byte{})
	f.Add(uint8(3), []byte{5, 0, 9, 0, 1})
	f.Fuzz(func(t *testing.T, typ uint8, b []byte) {
		e, err := decodeEvent(mptcp.EventType(typ), b)
		if err != nil {
			return
		}
		_ = e.Type.String()
		b2, err := encodeEvent(e)
		if err != nil {
			t.Fatalf("encode %+v: %v", e, err)
		}
		e2, err := decodeEvent(mptcp.EventType(typ), b2)
		if err != nil {
			t.Fatalf("decode of encoded %+v: %v", e, err)
		}
		if diff := cmp.Diff(e, e2, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
			t.Fatalf("round trip changed the event (-first +second):\n%s", diff)
		}
	})
}

func FuzzDecodeMPTCPInfo(f *testing.F) {
	f.Add([]byte{})
	f.Add(make([]byte, 43))
	f.Add(bytes.Repeat([]byte{0xff}, mptcpInfoLen+8))
	f.Add(encodeMPTCPInfo(mptcp.Info{Subflows: 1, Flags: 1, Token: 5, BytesSent: 1 << 50, LastAckRecv: 3}))
	f.Fuzz(func(t *testing.T, b []byte) {
		i := decodeMPTCPInfo(b)
		if i.Fallback != (i.Flags&1 != 0) {
			t.Fatalf("Fallback %v disagrees with flags %#x", i.Fallback, i.Flags)
		}
		enc := encodeMPTCPInfo(i)
		// Every byte the kernel gave (up to what we know) survives, but the
		// padding holes and csum_enabled, which decodes to a bool.
		for off := 0; off < len(b) && off < mptcpInfoLen; off++ {
			if off == 6 || off == 7 || off == 43 || off == 83 || off == 42 {
				continue
			}
			if enc[off] != b[off] {
				t.Fatalf("byte %d: encoded %#x, kernel gave %#x", off, enc[off], b[off])
			}
		}
		if i2 := decodeMPTCPInfo(enc); i2 != i {
			t.Fatalf("round trip changed the info:\n got %+v\nwant %+v", i2, i)
		}
	})
}

func FuzzDecodeDiagMsg(f *testing.F) {
	f.Add(make([]byte, 72))
	b := make([]byte, 72)
	b[0] = afInet6
	f.Add(append(b, 8, 0, 2, 0, 1, 2, 3, 4))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeDiagMsg(b)
		if err != nil {
			return
		}
		if !c.Local.IsValid() || !c.Remote.IsValid() {
			t.Fatalf("decoded connection without addresses: %+v", c)
		}
		_ = c.State.String()
	})
}
