package mptcpnl

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mpfleet/mpfleet/internal/mptcp"
)

// checkAddRequest checks that appendAddRequest wrote, after prefix, one
// well-formed netlink message whose attributes are encodeEndpoint's.
func checkAddRequest(t *testing.T, prefix []byte, e mptcp.Endpoint) {
	t.Helper()
	b := appendAddRequest(prefix, 0x1d, cmdAddAddrWire, 1, 77, e)
	if string(b[:len(prefix)]) != string(prefix) {
		t.Fatalf("%+v: the bytes before the message changed", e)
	}
	m := b[len(prefix):]
	ne := binary.NativeEndian
	if len(m) < nlmsgHdrLen+genlHdrLen || int(ne.Uint32(m)) != len(m) || len(m)%4 != 0 || len(m) > addReqMaxSize {
		t.Fatalf("%+v: message of %d bytes, nlmsg_len %d, at most %d", e, len(m), ne.Uint32(m), addReqMaxSize)
	}
	if typ, flags, seq, pid := ne.Uint16(m[4:]), ne.Uint16(m[6:]), ne.Uint32(m[8:]), ne.Uint32(m[12:]); typ != 0x1d || flags != uint16(flagsMutateWire) || seq != 77 || pid != 0 {
		t.Errorf("%+v: header type %#x flags %#x seq %d pid %d, want 0x1d %#x 77 0", e, typ, flags, seq, pid, flagsMutateWire)
	}
	if got := m[nlmsgHdrLen : nlmsgHdrLen+genlHdrLen]; string(got) != string([]byte{cmdAddAddrWire, 1, 0, 0}) {
		t.Errorf("%+v: genetlink header % x", e, got)
	}
	want, err := encodeEndpoint(e)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, m[nlmsgHdrLen+genlHdrLen:]); diff != "" {
		t.Errorf("%+v: attributes differ from encodeEndpoint's (-want +got):\n%s", e, diff)
	}
}

// The wire values of the request, as Client.AddEndpoint's (client_linux.go)
// on every platform.
const (
	cmdAddAddrWire  = 1                     // MPTCP_PM_CMD_ADD_ADDR
	flagsMutateWire = nlmFRequest | nlmFAck // netlink.Request | netlink.Acknowledge
)

// TestAppendAddRequest: the adder's request is the client's, byte for byte.
func TestAppendAddRequest(t *testing.T) {
	for _, e := range []mptcp.Endpoint{
		{Addr: netip.MustParseAddr("198.18.1.2")},
		{ID: 3, Addr: netip.MustParseAddr("198.18.1.2"), Flags: mptcp.FlagSubflow, IfIndex: 7},
		{ID: 255, Addr: netip.MustParseAddr("2001:db8::1"), Port: 443, Flags: mptcp.FlagSignal | mptcp.FlagBackup, IfIndex: 1<<31 - 1},
		{Addr: netip.MustParseAddr("2001:db8::2"), Flags: mptcp.FlagFullmesh | mptcp.FlagSubflow},
	} {
		checkAddRequest(t, nil, e)
		checkAddRequest(t, []byte{1, 2, 3}, e)
	}
}

func FuzzAppendAddRequest(f *testing.F) {
	f.Add([]byte{198, 18, 1, 2}, uint8(0), uint16(0), uint32(0), int32(0))
	f.Add([]byte{0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, uint8(9), uint16(8080), uint32(mptcp.FlagSignal), int32(-1))
	f.Fuzz(func(t *testing.T, a []byte, id uint8, port uint16, flags uint32, ifindex int32) {
		addr, ok := netip.AddrFromSlice(a)
		if !ok {
			return
		}
		checkAddRequest(t, nil, mptcp.Endpoint{ID: id, Addr: addr, Port: port, Flags: mptcp.Flags(flags), IfIndex: int(ifindex)})
	})
}

// TestAppendAddRequestAllocs: into a buffer with room, nothing is
// allocated.
func TestAppendAddRequestAllocs(t *testing.T) {
	buf := make([]byte, 0, addReqMaxSize)
	e := mptcp.Endpoint{ID: 255, Addr: netip.MustParseAddr("2001:db8::1"), Port: 443, Flags: mptcp.FlagSignal, IfIndex: 9}
	if n := testing.AllocsPerRun(100, func() { buf = appendAddRequest(buf[:0], 0x1d, cmdAddAddrWire, 1, 1, e) }); n != 0 {
		t.Errorf("%v allocations per request", n)
	}
}

// nlmsg is one netlink message: type, sequence number, payload.
func nlmsg(typ uint16, seq uint32, payload ...byte) []byte {
	ne := binary.NativeEndian
	b := ne.AppendUint32(nil, uint32(nlmsgHdrLen+len(payload)))
	b = ne.AppendUint16(b, typ)
	b = ne.AppendUint16(b, 0)
	b = ne.AppendUint32(b, seq)
	b = ne.AppendUint32(b, 0)
	b = append(b, payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func errPayload(code int32) []byte {
	return binary.NativeEndian.AppendUint32(nil, uint32(code))
}

func TestAckOf(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
		code int32
		ok   bool
	}{
		{"ack", nlmsg(nlmsgError, 5, errPayload(0)...), 0, true},
		{"error", nlmsg(nlmsgError, 5, errPayload(-17)...), -17, true},
		{"another request's", nlmsg(nlmsgError, 4, errPayload(-17)...), 0, false},
		{"after another message", append(nlmsg(0x1d, 5, 1, 2, 3), nlmsg(nlmsgError, 5, errPayload(-34)...)...), -34, true},
		{"short error", nlmsg(nlmsgError, 5, 1, 2), 0, false},
		{"empty", nil, 0, false},
		{"length past the end", append(binary.NativeEndian.AppendUint32(nil, 64), make([]byte, 20)...), 0, false},
		{"length below the header", append(binary.NativeEndian.AppendUint32(nil, 3), make([]byte, 20)...), 0, false},
	} {
		code, ok := ackOf(tc.b, 5)
		if code != tc.code || ok != tc.ok {
			t.Errorf("%s: %d, %v; want %d, %v", tc.name, code, ok, tc.code, tc.ok)
		}
	}
}

func FuzzAckOf(f *testing.F) {
	f.Add(nlmsg(nlmsgError, 5, errPayload(-17)...))
	f.Add(append(nlmsg(0x1d, 5, 1, 2, 3), nlmsg(nlmsgError, 5, errPayload(0)...)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		ackOf(b, 5) // must not panic
	})
}
