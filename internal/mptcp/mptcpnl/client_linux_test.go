//go:build linux

package mptcpnl

import (
	"errors"
	"io"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/genetlink/genltest"
	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nlenc"
	"github.com/mdlayher/netlink/nltest"
	"github.com/mpfleet/mpfleet/internal/mptcp"
	"golang.org/x/sys/unix"
)

var testFamily = genetlink.Family{
	ID:      0x1d,
	Version: 1,
	Name:    "mptcp_pm",
	Groups: []genetlink.MulticastGroup{
		{ID: 7, Name: "mptcp_pm_cmds"},
		{ID: 8, Name: "mptcp_pm_events"},
	},
}

// exchange is one request the fake kernel expects and what it answers.
type exchange struct {
	cmd   uint8
	flags netlink.HeaderFlags
	attrs []byte // the exact request payload after the genetlink header
	reply []genetlink.Message
	errno syscall.Errno // answered instead of reply when non-zero
}

// script returns a genltest.Func that checks each request against the next
// exchange, and a check that every exchange happened.
func script(t *testing.T, steps ...exchange) genltest.Func {
	t.Helper()
	var n int
	t.Cleanup(func() {
		if n != len(steps) {
			t.Errorf("kernel saw %d requests, want %d", n, len(steps))
		}
	})
	return func(greq genetlink.Message, nreq netlink.Message) ([]genetlink.Message, error) {
		if n >= len(steps) {
			t.Errorf("unexpected request %d: command %d flags %s", n, greq.Header.Command, nreq.Header.Flags)
			return nil, genltest.Error(int(unix.EIO))
		}
		s := steps[n]
		n++
		if got := nreq.Header.Type; got != netlink.HeaderType(testFamily.ID) {
			t.Errorf("request %d: netlink type %d, want family %d", n, got, testFamily.ID)
		}
		if got := greq.Header.Command; got != s.cmd {
			t.Errorf("request %d: command %d, want %d", n, got, s.cmd)
		}
		if got := greq.Header.Version; got != testFamily.Version {
			t.Errorf("request %d: version %d, want %d", n, got, testFamily.Version)
		}
		if got := nreq.Header.Flags; got != s.flags {
			t.Errorf("request %d (command %d): flags %s, want %s", n, s.cmd, got, s.flags)
		}
		if diff := cmp.Diff(s.attrs, greq.Data, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("request %d (command %d) attributes (-want +got):\n%s", n, s.cmd, diff)
		}
		if s.errno != 0 {
			return nil, genltest.Error(int(s.errno))
		}
		if len(s.reply) == 0 {
			return nil, io.EOF // nothing but the acknowledgement
		}
		return s.reply, nil
	}
}

func testClient(t *testing.T, fn genltest.Func) *Client {
	t.Helper()
	c, err := initClient(genltest.Dial(genltest.ServeFamily(testFamily, fn)))
	if err != nil {
		t.Fatalf("initClient: %v", err)
	}
	t.Cleanup(func() { _ = c.close() })
	return &Client{c: c}
}

// attrs marshals attributes; nested builds an MPTCP_PM_ATTR_ADDR (with
// NLA_F_NESTED, as iproute2 sends it). They spell the wire format out by
// hand so that the tests do not trust the encoder they check.
func attrs(as ...netlink.Attribute) []byte { return nltest.MustMarshalAttributes(as) }

func nestedAddr(as ...netlink.Attribute) netlink.Attribute {
	return netlink.Attribute{Type: attrAddr | netlink.Nested, Data: attrs(as...)}
}

func u8(typ uint16, v uint8) netlink.Attribute { return netlink.Attribute{Type: typ, Data: []byte{v}} }
func u16(typ uint16, v uint16) netlink.Attribute {
	return netlink.Attribute{Type: typ, Data: nlenc.Uint16Bytes(v)}
}
func u32(typ uint16, v uint32) netlink.Attribute {
	return netlink.Attribute{Type: typ, Data: nlenc.Uint32Bytes(v)}
}
func raw(typ uint16, b ...byte) netlink.Attribute { return netlink.Attribute{Type: typ, Data: b} }

var (
	v4a = netip.MustParseAddr("198.18.1.2")
	v6a = netip.MustParseAddr("2001:db8:1::2")
	v6b = v6a.As16()
)

func reply(cmd uint8, data []byte) []genetlink.Message {
	return []genetlink.Message{{Header: genetlink.Header{Command: cmd, Version: 1}, Data: data}}
}

func TestClientRequests(t *testing.T) {
	tests := []struct {
		name  string
		steps []exchange
		call  func(c *Client) (any, error)
		want  any
	}{
		{
			name: "add IPv4 endpoint with id",
			steps: []exchange{{
				cmd: cmdAddAddr, flags: netlink.Request | netlink.Acknowledge,
				attrs: attrs(nestedAddr(
					u16(addrAttrFamily, afInet), raw(addrAttrAddr4, 198, 18, 1, 2),
					u8(addrAttrID, 3), u32(addrAttrFlags, uint32(mptcp.FlagSubflow|mptcp.FlagBackup)),
					netlink.Attribute{Type: addrAttrIfIdx, Data: nlenc.Int32Bytes(4)},
				)),
			}},
			call: func(c *Client) (any, error) {
				return nil, c.AddEndpoint(mptcp.Endpoint{ID: 3, Addr: v4a, Flags: mptcp.FlagSubflow | mptcp.FlagBackup, IfIndex: 4})
			},
		},
		{
			name: "add IPv6 signal endpoint with port, kernel chooses id",
			steps: []exchange{{
				cmd: cmdAddAddr, flags: netlink.Request | netlink.Acknowledge,
				attrs: attrs(nestedAddr(
					u16(addrAttrFamily, afInet6), raw(addrAttrAddr6, v6b[:]...),
					// The endpoint port travels in host order.
					u16(addrAttrPort, 8080), u32(addrAttrFlags, uint32(mptcp.FlagSignal)),
				)),
			}},
			call: func(c *Client) (any, error) {
				return nil, c.AddEndpoint(mptcp.Endpoint{Addr: v6a, Port: 8080, Flags: mptcp.FlagSignal})
			},
		},
		{
			name: "dump endpoints sorted by id",
			steps: []exchange{{
				cmd: cmdGetAddr, flags: netlink.Request | netlink.Dump,
				reply: []genetlink.Message{
					{Header: genetlink.Header{Command: cmdGetAddr, Version: 1}, Data: attrs(nestedAddr(
						u16(addrAttrFamily, afInet6), u16(addrAttrPort, 0), u8(addrAttrID, 9),
						u32(addrAttrFlags, uint32(mptcp.FlagSignal)), raw(addrAttrAddr6, v6b[:]...),
					))},
					{Header: genetlink.Header{Command: cmdGetAddr, Version: 1}, Data: attrs(nestedAddr(
						u16(addrAttrFamily, afInet), u16(addrAttrPort, 0), u8(addrAttrID, 1),
						u32(addrAttrFlags, uint32(mptcp.FlagSubflow|mptcp.FlagFullmesh)),
						netlink.Attribute{Type: addrAttrIfIdx, Data: nlenc.Int32Bytes(2)},
						raw(addrAttrAddr4, 198, 18, 1, 2),
					))},
				},
			}},
			call: func(c *Client) (any, error) { return c.Endpoints() },
			want: []mptcp.Endpoint{
				{ID: 1, Addr: v4a, Flags: mptcp.FlagSubflow | mptcp.FlagFullmesh, IfIndex: 2},
				{ID: 9, Addr: v6a, Flags: mptcp.FlagSignal},
			},
		},
		{
			name:  "dump no endpoints",
			steps: []exchange{{cmd: cmdGetAddr, flags: netlink.Request | netlink.Dump}},
			call:  func(c *Client) (any, error) { return c.Endpoints() },
			want:  []mptcp.Endpoint{},
		},
		{
			name: "get endpoint",
			steps: []exchange{{
				cmd: cmdGetAddr, flags: netlink.Request,
				attrs: attrs(nestedAddr(u8(addrAttrID, 5))),
				reply: reply(cmdGetAddr, attrs(nestedAddr(
					u16(addrAttrFamily, afInet), u16(addrAttrPort, 0), u8(addrAttrID, 5),
					u32(addrAttrFlags, uint32(mptcp.FlagSignal|mptcp.FlagImplicit)), raw(addrAttrAddr4, 198, 18, 1, 2),
				))),
			}},
			call: func(c *Client) (any, error) { return c.c.endpoint(5) },
			want: mptcp.Endpoint{ID: 5, Addr: v4a, Flags: mptcp.FlagSignal | mptcp.FlagImplicit},
		},
		{
			name: "delete endpoint",
			steps: []exchange{{
				cmd: cmdDelAddr, flags: netlink.Request | netlink.Acknowledge,
				attrs: attrs(nestedAddr(u8(addrAttrID, 7))),
			}},
			call: func(c *Client) (any, error) { return nil, c.DeleteEndpoint(7) },
		},
		{
			name:  "flush endpoints",
			steps: []exchange{{cmd: cmdFlushAddrs, flags: netlink.Request | netlink.Acknowledge}},
			call:  func(c *Client) (any, error) { return nil, c.FlushEndpoints() },
		},
		{
			name: "get limits",
			steps: []exchange{{
				cmd: cmdGetLimits, flags: netlink.Request,
				reply: reply(cmdGetLimits, attrs(u32(attrRcvAddAddrs, 1), u32(attrSubflows, 2))),
			}},
			call: func(c *Client) (any, error) { return c.Limits() },
			want: mptcp.Limits{Subflows: 2, AddAddrAccepted: 1},
		},
		{
			name: "set limits",
			steps: []exchange{{
				cmd: cmdSetLimits, flags: netlink.Request | netlink.Acknowledge,
				attrs: attrs(u32(attrRcvAddAddrs, 8), u32(attrSubflows, 0)),
			}},
			call: func(c *Client) (any, error) { return nil, c.SetLimits(mptcp.Limits{Subflows: 0, AddAddrAccepted: 8}) },
		},
		{
			name: "set flags reads the endpoint then changes backup",
			steps: []exchange{
				{
					cmd: cmdGetAddr, flags: netlink.Request,
					attrs: attrs(nestedAddr(u8(addrAttrID, 2))),
					reply: reply(cmdGetAddr, attrs(nestedAddr(
						u16(addrAttrFamily, afInet), u8(addrAttrID, 2),
						u32(addrAttrFlags, uint32(mptcp.FlagSubflow)), raw(addrAttrAddr4, 198, 18, 1, 2),
					))),
				},
				{
					cmd: cmdSetFlags, flags: netlink.Request | netlink.Acknowledge,
					attrs: attrs(nestedAddr(u8(addrAttrID, 2), u32(addrAttrFlags, uint32(mptcp.FlagSubflow|mptcp.FlagBackup|mptcp.FlagFullmesh)))),
				},
			},
			call: func(c *Client) (any, error) {
				return nil, c.SetEndpointFlags(2, mptcp.FlagSubflow|mptcp.FlagBackup|mptcp.FlagFullmesh)
			},
		},
		{
			name: "set flags with nothing to change sends only the read",
			steps: []exchange{{
				cmd: cmdGetAddr, flags: netlink.Request,
				attrs: attrs(nestedAddr(u8(addrAttrID, 2))),
				reply: reply(cmdGetAddr, attrs(nestedAddr(
					u16(addrAttrFamily, afInet), u8(addrAttrID, 2),
					u32(addrAttrFlags, uint32(mptcp.FlagSubflow|mptcp.FlagBackup)), raw(addrAttrAddr4, 198, 18, 1, 2),
				))),
			}},
			call: func(c *Client) (any, error) { return nil, c.SetEndpointFlags(2, mptcp.FlagSubflow|mptcp.FlagBackup) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := testClient(t, script(t, tt.steps...))
			got, err := tt.call(c)
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if diff := cmp.Diff(tt.want, got, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
				t.Errorf("result (-want +got):\n%s", diff)
			}
		})
	}
}

func TestClientErrors(t *testing.T) {
	subflowEndpoint := exchange{
		cmd: cmdGetAddr, flags: netlink.Request,
		attrs: attrs(nestedAddr(u8(addrAttrID, 2))),
		reply: reply(cmdGetAddr, attrs(nestedAddr(
			u16(addrAttrFamily, afInet), u8(addrAttrID, 2),
			u32(addrAttrFlags, uint32(mptcp.FlagSubflow)), raw(addrAttrAddr4, 198, 18, 1, 2),
		))),
	}
	signalEndpoint := subflowEndpoint
	signalEndpoint.reply = reply(cmdGetAddr, attrs(nestedAddr(
		u16(addrAttrFamily, afInet), u8(addrAttrID, 2),
		u32(addrAttrFlags, uint32(mptcp.FlagSignal)), raw(addrAttrAddr4, 198, 18, 1, 2),
	)))
	add := func(errno syscall.Errno) exchange {
		return exchange{
			cmd: cmdAddAddr, flags: netlink.Request | netlink.Acknowledge, errno: errno,
			attrs: attrs(nestedAddr(
				u16(addrAttrFamily, afInet), raw(addrAttrAddr4, 198, 18, 1, 2),
				u8(addrAttrID, 3), u32(addrAttrFlags, uint32(mptcp.FlagSubflow)),
			)),
		}
	}
	addCall := func(c *Client) error {
		return c.AddEndpoint(mptcp.Endpoint{ID: 3, Addr: v4a, Flags: mptcp.FlagSubflow})
	}

	tests := []struct {
		name  string
		steps []exchange // no steps: the request must not reach the kernel
		call  func(c *Client) error
		is    []error
		msg   string // the whole error text
	}{
		{
			name: "duplicate address", steps: []exchange{add(unix.EEXIST)}, call: addCall,
			is:  []error{os.ErrExist, mptcp.ErrEndpointExists, unix.EEXIST},
			msg: "mptcp add endpoint 198.18.1.2 id 3: file exists",
		},
		{
			name: "duplicate id", steps: []exchange{add(unix.EBUSY)}, call: addCall,
			is:  []error{os.ErrExist, mptcp.ErrEndpointExists, unix.EBUSY},
			msg: "mptcp add endpoint 198.18.1.2 id 3: id 3 in use: device or resource busy",
		},
		{
			name: "ninth endpoint", steps: []exchange{add(unix.ERANGE)}, call: addCall,
			is:  []error{mptcp.ErrTooManyEndpoints, unix.ERANGE},
			msg: "mptcp add endpoint 198.18.1.2 id 3: too many endpoints (at most 8): numerical result out of range",
		},
		{
			name: "kernel refuses the endpoint", steps: []exchange{add(unix.EINVAL)}, call: addCall,
			is:  []error{mptcp.ErrInvalid, unix.EINVAL},
			msg: "mptcp add endpoint 198.18.1.2 id 3: invalid argument",
		},
		{
			name: "no permission", steps: []exchange{add(unix.EPERM)}, call: addCall,
			is:  []error{os.ErrPermission},
			msg: "mptcp add endpoint 198.18.1.2 id 3: operation not permitted",
		},
		{
			name: "signal with fullmesh is refused before sending",
			call: func(c *Client) error {
				return c.AddEndpoint(mptcp.Endpoint{Addr: v4a, Flags: mptcp.FlagSignal | mptcp.FlagFullmesh})
			},
			is:  []error{mptcp.ErrInvalid},
			msg: "mptcp add endpoint 198.18.1.2: invalid argument: endpoint 198.18.1.2: flags signal and fullmesh cannot be combined",
		},
		{
			name: "implicit is refused before sending",
			call: func(c *Client) error { return c.AddEndpoint(mptcp.Endpoint{Addr: v4a, Flags: mptcp.FlagImplicit}) },
			is:   []error{mptcp.ErrInvalid},
		},
		{
			name: "port without signal is refused before sending",
			call: func(c *Client) error {
				return c.AddEndpoint(mptcp.Endpoint{Addr: v4a, Port: 99, Flags: mptcp.FlagSubflow})
			},
			is: []error{mptcp.ErrInvalid},
		},
		{
			name: "no address is refused before sending",
			call: func(c *Client) error { return c.AddEndpoint(mptcp.Endpoint{Flags: mptcp.FlagSubflow}) },
			is:   []error{mptcp.ErrInvalid},
		},
		{
			name: "get missing endpoint",
			steps: []exchange{{
				cmd: cmdGetAddr, flags: netlink.Request, errno: unix.EINVAL,
				attrs: attrs(nestedAddr(u8(addrAttrID, 9))),
			}},
			call: func(c *Client) error { _, err := c.c.endpoint(9); return err },
			is:   []error{os.ErrNotExist, mptcp.ErrEndpointNotFound, unix.EINVAL},
			msg:  "mptcp get endpoint id 9: endpoint not found: invalid argument",
		},
		{
			name: "delete missing endpoint",
			steps: []exchange{{
				cmd: cmdDelAddr, flags: netlink.Request | netlink.Acknowledge, errno: unix.EINVAL,
				attrs: attrs(nestedAddr(u8(addrAttrID, 9))),
			}},
			call: func(c *Client) error { return c.DeleteEndpoint(9) },
			is:   []error{os.ErrNotExist, mptcp.ErrEndpointNotFound},
			msg:  "mptcp delete endpoint id 9: endpoint not found: invalid argument",
		},
		{
			name: "delete id 0 is refused before sending",
			call: func(c *Client) error { return c.DeleteEndpoint(0) },
			is:   []error{mptcp.ErrInvalid},
		},
		{
			name: "set flags of a missing endpoint",
			steps: []exchange{{
				cmd: cmdGetAddr, flags: netlink.Request, errno: unix.EINVAL,
				attrs: attrs(nestedAddr(u8(addrAttrID, 9))),
			}},
			call: func(c *Client) error { return c.SetEndpointFlags(9, mptcp.FlagBackup) },
			is:   []error{os.ErrNotExist, mptcp.ErrEndpointNotFound},
			msg:  "mptcp set endpoint id 9 flags backup: endpoint not found: invalid argument",
		},
		{
			name:  "set flags cannot turn subflow into signal",
			steps: []exchange{subflowEndpoint},
			call:  func(c *Client) error { return c.SetEndpointFlags(2, mptcp.FlagSignal) },
			is:    []error{mptcp.ErrFlagsImmutable, mptcp.ErrInvalid},
			msg:   `mptcp set endpoint id 2 flags signal: flags cannot change in place (delete and re-add the endpoint): signal subflow (endpoint has "subflow")`,
		},
		{
			name:  "set flags cannot add laminar",
			steps: []exchange{subflowEndpoint},
			call:  func(c *Client) error { return c.SetEndpointFlags(2, mptcp.FlagSubflow|mptcp.FlagLaminar) },
			is:    []error{mptcp.ErrFlagsImmutable},
			msg:   `mptcp set endpoint id 2 flags subflow laminar: flags cannot change in place (delete and re-add the endpoint): laminar (endpoint has "subflow")`,
		},
		{
			name:  "set flags cannot make a signal endpoint fullmesh",
			steps: []exchange{signalEndpoint},
			call:  func(c *Client) error { return c.SetEndpointFlags(2, mptcp.FlagSignal|mptcp.FlagFullmesh) },
			is:    []error{mptcp.ErrInvalid},
		},
		{
			name: "set limits above the maximum is refused before sending",
			call: func(c *Client) error { return c.SetLimits(mptcp.Limits{Subflows: 9}) },
			is:   []error{mptcp.ErrInvalid},
			msg:  "mptcp set limits subflows 9 add_addr_accepted 0: invalid argument: subflows 9 above the kernel maximum 8",
		},
		{
			name: "set add_addr_accepted above the maximum is refused before sending",
			call: func(c *Client) error { return c.SetLimits(mptcp.Limits{Subflows: 2, AddAddrAccepted: 100}) },
			is:   []error{mptcp.ErrInvalid},
		},
		{
			name: "kernel refuses limits",
			steps: []exchange{{
				cmd: cmdSetLimits, flags: netlink.Request | netlink.Acknowledge, errno: unix.EINVAL,
				attrs: attrs(u32(attrRcvAddAddrs, 1), u32(attrSubflows, 1)),
			}},
			call: func(c *Client) error { return c.SetLimits(mptcp.Limits{Subflows: 1, AddAddrAccepted: 1}) },
			is:   []error{mptcp.ErrInvalid},
			msg:  "mptcp set limits subflows 1 add_addr_accepted 1: invalid argument",
		},
		{
			name: "garbled dump",
			steps: []exchange{{
				cmd: cmdGetAddr, flags: netlink.Request | netlink.Dump,
				reply: reply(cmdGetAddr, attrs(nestedAddr(u16(addrAttrFamily, 99)))),
			}},
			call: func(c *Client) error { _, err := c.Endpoints(); return err },
			msg:  "mptcp list endpoints: decode: endpoint of unknown address family 99",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := testClient(t, script(t, tt.steps...))
			err := tt.call(c)
			if err == nil {
				t.Fatal("no error")
			}
			var oe *mptcp.OpError
			if !errors.As(err, &oe) {
				t.Errorf("error %v (%T) is not an *OpError", err, err)
			}
			for _, target := range tt.is {
				if !errors.Is(err, target) {
					t.Errorf("error %q does not match %v", err, target)
				}
			}
			if tt.msg != "" && err.Error() != tt.msg {
				t.Errorf("error text\n got: %s\nwant: %s", err, tt.msg)
			}
		})
	}
}

func TestDialWithoutMPTCP(t *testing.T) {
	// A kernel without MPTCP has no mptcp_pm family: nlctrl answers ENOENT.
	conn := genltest.Dial(func(greq genetlink.Message, nreq netlink.Message) ([]genetlink.Message, error) {
		if nreq.Header.Type != unix.GENL_ID_CTRL || greq.Header.Command != unix.CTRL_CMD_GETFAMILY {
			t.Errorf("unexpected request type %d command %d", nreq.Header.Type, greq.Header.Command)
		}
		return nil, genltest.Error(int(unix.ENOENT))
	})
	defer conn.Close()
	for name, init := range map[string]func() error{
		"client": func() error { _, err := initClient(conn); return err },
		"events": func() error { _, err := initEventConn(conn); return err },
	} {
		err := init()
		for _, target := range []error{mptcp.ErrUnsupported, errors.ErrUnsupported, os.ErrNotExist} {
			if !errors.Is(err, target) {
				t.Errorf("%s: error %v does not match %v", name, err, target)
			}
		}
		if err != nil && !strings.Contains(err.Error(), `no generic netlink family "mptcp_pm"`) {
			t.Errorf("%s: error %q does not name the family", name, err)
		}
	}
}

// diagKernel fakes NETLINK_SOCK_DIAG: it checks each dump request and
// answers from replies, one entry per address family asked.
func diagKernel(t *testing.T, replies map[uint8][][]byte, errno syscall.Errno) *netlink.Conn {
	return nltest.Dial(func(reqs []netlink.Message) ([]netlink.Message, error) {
		if len(reqs) != 1 {
			t.Fatalf("got %d requests, want 1", len(reqs))
		}
		req := reqs[0]
		if req.Header.Type != 20 || req.Header.Flags != netlink.Request|netlink.Dump {
			t.Errorf("request type %d flags %s, want 20 (SOCK_DIAG_BY_FAMILY) request|dump", req.Header.Type, req.Header.Flags)
		}
		family := req.Data[0]
		// struct inet_diag_req_v2, spelled out: family, protocol TCP (the
		// real one follows in an attribute), ext = 1<<(INET_DIAG_INFO-1),
		// pad, states = all but LISTEN, a zero socket id.
		want := make([]byte, 56)
		want[0], want[1], want[2] = family, unix.IPPROTO_TCP, 1<<(2-1) /* INET_DIAG_INFO */
		copy(want[4:], nlenc.Uint32Bytes(0xffffffff&^(1<<10)))
		// INET_DIAG_REQ_PROTOCOL (3) = IPPROTO_MPTCP (262), u32.
		want = append(want, attrs(u32(3, 262))...)
		if diff := cmp.Diff(want, req.Data); diff != "" {
			t.Errorf("inet_diag_req_v2 for family %d (-want +got):\n%s", family, diff)
		}
		if errno != 0 {
			// nltest.Error would copy the request's flags, and DUMP shares
			// its bit with NLM_F_ACK_TLVS: build the error by hand.
			return []netlink.Message{{
				Header: netlink.Header{Type: netlink.Error, Sequence: req.Header.Sequence, PID: req.Header.PID},
				Data:   append(nlenc.Int32Bytes(-int32(errno)), make([]byte, 16)...),
			}}, nil
		}
		var msgs []netlink.Message
		for _, b := range replies[family] {
			msgs = append(msgs, netlink.Message{
				Header: netlink.Header{Type: 20, Flags: netlink.Multi, Sequence: req.Header.Sequence, PID: req.Header.PID},
				Data:   b,
			})
		}
		msgs = append(msgs, netlink.Message{
			Header: netlink.Header{Type: netlink.Done, Flags: netlink.Multi, Sequence: req.Header.Sequence, PID: req.Header.PID},
			Data:   make([]byte, 4),
		})
		return msgs, nil
	})
}

// diagMsg builds a struct inet_diag_msg by hand, then the INET_DIAG_INFO
// attribute holding info (whole or cut to infoLen bytes).
func diagMsg(family, state uint8, src, dst netip.AddrPort, info mptcp.Info, infoLen int) []byte {
	b := make([]byte, 72)
	b[0], b[1] = family, state
	b[4], b[5] = byte(src.Port()>>8), byte(src.Port())
	b[6], b[7] = byte(dst.Port()>>8), byte(dst.Port())
	s, d := src.Addr().As16(), dst.Addr().As16()
	if family == unix.AF_INET {
		s4, d4 := src.Addr().As4(), dst.Addr().As4()
		copy(b[8:], s4[:])
		copy(b[24:], d4[:])
	} else {
		copy(b[8:], s[:])
		copy(b[24:], d[:])
	}
	copy(b[40:], nlenc.Uint32Bytes(3))          // idiag_if
	copy(b[44:], nlenc.Uint32Bytes(0x11223344)) // cookie[0]
	copy(b[48:], nlenc.Uint32Bytes(0x55667788)) // cookie[1]
	copy(b[56:], nlenc.Uint32Bytes(10))         // rqueue
	copy(b[60:], nlenc.Uint32Bytes(20))         // wqueue
	copy(b[64:], nlenc.Uint32Bytes(1000))       // uid
	copy(b[68:], nlenc.Uint32Bytes(4242))       // inode
	ib := encodeMPTCPInfo(info)[:infoLen]
	return append(b, attrs(netlink.Attribute{Type: 1 /* INET_DIAG_MEMINFO */, Data: make([]byte, 16)}, netlink.Attribute{Type: 2 /* INET_DIAG_INFO */, Data: ib})...)
}

func TestConnections(t *testing.T) {
	info := mptcp.Info{
		Subflows: 1, SubflowsMax: 2, AddAddrAcceptedMax: 1, Flags: 1<<0 | 1<<1, Token: 0xdeadbeef,
		WriteSeq: 1 << 40, SndUna: 1<<40 - 1, RcvNxt: 7, LocalAddrUsed: 1, LocalAddrMax: 1,
		BytesSent: 1000, BytesReceived: 2000, BytesAcked: 999, SubflowsTotal: 2, LastAckRecv: 5,
	}
	// An older kernel (6.1) sends a shorter mptcp_info, ending at csum_enabled.
	const oldLen = 43
	v4l, v4r := netip.MustParseAddrPort("198.18.1.1:40000"), netip.MustParseAddrPort("198.18.1.2:5201")
	v6l, v6r := netip.MustParseAddrPort("[2001:db8:1::1]:40001"), netip.MustParseAddrPort("[2001:db8:1::2]:5201")
	mapped := netip.AddrPortFrom(netip.AddrFrom16(v4l.Addr().As16()), 40002)
	c := &Client{c: &client{diag: diagKernel(t, map[uint8][][]byte{
		unix.AF_INET:  {diagMsg(unix.AF_INET, 1, v4l, v4r, info, mptcpInfoLen)},
		unix.AF_INET6: {diagMsg(unix.AF_INET6, 8, v6l, v6r, info, oldLen), diagMsg(unix.AF_INET6, 1, mapped, v4r, mptcp.Info{}, mptcpInfoLen)},
	}, 0)}}
	got, err := c.Connections()
	if err != nil {
		t.Fatal(err)
	}
	wantInfo := info
	wantInfo.Fallback, wantInfo.RemoteKeyReceived = true, true
	oldInfo := mptcp.Info{
		Subflows: 1, SubflowsMax: 2, AddAddrAcceptedMax: 1, Flags: 3, Fallback: true, RemoteKeyReceived: true,
		Token: 0xdeadbeef, WriteSeq: 1 << 40, SndUna: 1<<40 - 1, RcvNxt: 7, LocalAddrUsed: 1, LocalAddrMax: 1,
	}
	base := mptcp.Connection{IfIndex: 3, Cookie: 0x5566778811223344, RecvQueue: 10, SendQueue: 20, UID: 1000, Inode: 4242}
	want := []mptcp.Connection{base, base, base}
	want[0].Family, want[0].State, want[0].Local, want[0].Remote, want[0].Info = unix.AF_INET, mptcp.StateEstablished, v4l, v4r, wantInfo
	// The v4-mapped address comes back unmapped, sorted among the IPv4 ones.
	want[1].Family, want[1].State, want[1].Local, want[1].Remote = unix.AF_INET6, mptcp.StateEstablished, netip.AddrPortFrom(v4l.Addr(), 40002), v4r
	want[2].Family, want[2].State, want[2].Local, want[2].Remote, want[2].Info = unix.AF_INET6, mptcp.StateCloseWait, v6l, v6r, oldInfo
	if diff := cmp.Diff(want, got, cmpopts.EquateComparable(netip.AddrPort{})); diff != "" {
		t.Errorf("connections (-want +got):\n%s", diff)
	}
}

func TestConnectionsWithoutMPTCPDiag(t *testing.T) {
	c := &Client{c: &client{diag: diagKernel(t, nil, unix.ENOENT)}}
	_, err := c.Connections()
	for _, target := range []error{mptcp.ErrUnsupported, os.ErrNotExist} {
		if !errors.Is(err, target) {
			t.Errorf("error %v does not match %v", err, target)
		}
	}
}

func TestEventReceive(t *testing.T) {
	created := mptcp.Event{
		Type: mptcp.EventCreated, Token: 0x01020304, Family: unix.AF_INET,
		Saddr: netip.MustParseAddr("198.18.1.1"), Daddr: netip.MustParseAddr("198.18.1.2"),
		Sport: 40000, Dport: 5201, ServerSide: false,
	}
	sub := mptcp.Event{
		Type: mptcp.EventSubEstablished, Token: 0x01020304, Family: unix.AF_INET6, LocID: 2, RemID: 0,
		Saddr: netip.MustParseAddr("2001:db8:2::1"), Daddr: netip.MustParseAddr("2001:db8:1::2"),
		Sport: 0x1234, Dport: 443, Backup: true, IfIndex: 5,
	}
	// The kernel's bytes for created, spelled out: ports in network order.
	createdWire := attrs(
		u32(evAttrToken, 0x01020304), u8(evAttrServerSide, 0), u16(evAttrFamily, unix.AF_INET),
		raw(evAttrSaddr4, 198, 18, 1, 1), raw(evAttrDaddr4, 198, 18, 1, 2),
		raw(evAttrSport, 0x9c, 0x40), raw(evAttrDport, 0x14, 0x51),
	)
	subWire, err := encodeEvent(sub)
	if err != nil {
		t.Fatal(err)
	}
	var calls int
	conn := genltest.Dial(genltest.ServeFamily(testFamily, func(greq genetlink.Message, nreq netlink.Message) ([]genetlink.Message, error) {
		calls++
		if calls > 1 {
			return nil, io.EOF
		}
		return []genetlink.Message{
			{Header: genetlink.Header{Command: uint8(mptcp.EventCreated), Version: 1}, Data: createdWire},
			{Header: genetlink.Header{Command: uint8(mptcp.EventSubEstablished), Version: 1}, Data: subWire},
		}, nil
	}))
	ec, err := initEventConn(conn)
	if err != nil {
		t.Fatal(err)
	}
	defer ec.close()
	if ec.group != 8 {
		t.Errorf("events group id %d, want 8", ec.group)
	}
	e := &EventConn{c: ec}
	got, err := e.Receive()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]mptcp.Event{created, sub}, got, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}

func TestEventReceiveOverrun(t *testing.T) {
	conn := genltest.Dial(genltest.ServeFamily(testFamily, func(genetlink.Message, netlink.Message) ([]genetlink.Message, error) {
		return nil, unix.ENOBUFS
	}))
	ec, err := initEventConn(conn)
	if err != nil {
		t.Fatal(err)
	}
	defer ec.close()
	_, err = (&EventConn{c: ec}).Receive()
	if !errors.Is(err, mptcp.ErrEventsLost) || !errors.Is(err, unix.ENOBUFS) {
		t.Errorf("overrun: %v, want ErrEventsLost", err)
	}
}
