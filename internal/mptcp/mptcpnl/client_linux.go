//go:build linux

package mptcpnl

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"github.com/mpfleet/mpfleet/internal/mptcp"
	"golang.org/x/sys/unix"
)

// The mptcp_pm generic netlink family (include/uapi/linux/mptcp_pm.h,
// Documentation/netlink/specs/mptcp_pm.yaml).
const (
	familyName  = "mptcp_pm"
	eventsGroup = "mptcp_pm_events"
)

// MPTCP_PM_CMD_*.
const (
	cmdAddAddr    = 1
	cmdDelAddr    = 2
	cmdGetAddr    = 3
	cmdFlushAddrs = 4
	cmdSetLimits  = 5
	cmdGetLimits  = 6
	cmdSetFlags   = 7
)

// sock_diag request values (include/uapi/linux/sock_diag.h, inet_diag.h).
const (
	sockDiagByFamily    = 20  // SOCK_DIAG_BY_FAMILY
	ipprotoTCP          = 6   // IPPROTO_TCP: what fits the u8 protocol field
	ipprotoMPTCP        = 262 // IPPROTO_MPTCP, sent in INET_DIAG_REQ_PROTOCOL
	inetDiagReqProtocol = 3   // INET_DIAG_REQ_PROTOCOL (u32)
	inetDiagReqLen      = 56  // sizeof(struct inet_diag_req_v2)
)

// Netlink flags of the requests: mutations ask for an acknowledgement; the
// GET do-requests do not, because the kernel would queue the ACK after the
// reply, where the next request would find it.
const (
	flagsMutate = netlink.Request | netlink.Acknowledge
	flagsGet    = netlink.Request
	flagsDump   = netlink.Request | netlink.Dump
)

// client is the Linux implementation of Client.
type client struct {
	c      *genetlink.Conn
	family genetlink.Family

	// diag is a NETLINK_SOCK_DIAG socket opened with c, in the same
	// namespace; diagErr is why it could not be opened.
	diag    *netlink.Conn
	diagErr error
}

func dial(opts *DialOptions) (*client, error) {
	cfg := &netlink.Config{NetNS: opts.NetNS}
	c, err := genetlink.Dial(cfg)
	if err != nil {
		return nil, &mptcp.OpError{Op: "mptcp dial generic netlink", Err: err}
	}
	// Best effort: the kernel's extended acknowledgements explain errors.
	_ = c.SetOption(netlink.ExtendedAcknowledge, true)
	cl, err := initClient(c)
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	// Open the sock_diag socket now, while we are in the namespace the
	// caller meant: a later Connections call may run on another thread.
	cl.diag, cl.diagErr = netlink.Dial(unix.NETLINK_SOCK_DIAG, cfg)
	if cl.diagErr == nil {
		_ = cl.diag.SetOption(netlink.ExtendedAcknowledge, true)
	}
	return cl, nil
}

// initClient finishes a client on an open generic netlink connection: it
// looks the mptcp_pm family up. Tests pass a genltest connection.
func initClient(c *genetlink.Conn) (*client, error) {
	f, err := getFamily(c)
	if err != nil {
		return nil, err
	}
	return &client{c: c, family: f}, nil
}

func getFamily(c *genetlink.Conn) (genetlink.Family, error) {
	f, err := c.GetFamily(familyName)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return genetlink.Family{}, &mptcp.OpError{
				Op:  "mptcp dial",
				Err: fmt.Errorf("%w: no generic netlink family %q (kernel without CONFIG_MPTCP?): %w", mptcp.ErrUnsupported, familyName, err),
			}
		}
		return genetlink.Family{}, kernelError("mptcp dial: get family "+familyName, err, nil)
	}
	return f, nil
}

func (c *client) close() error {
	err := c.c.Close()
	if c.diag != nil {
		if derr := c.diag.Close(); err == nil {
			err = derr
		}
	}
	return err
}

// execute sends one mptcp_pm request and maps a kernel error with classify
// (which may return nil to keep the default mapping).
func (c *client) execute(op string, cmd uint8, flags netlink.HeaderFlags, attrs []byte, classify func(unix.Errno) error) ([]genetlink.Message, error) {
	msgs, err := c.c.Execute(genetlink.Message{
		Header: genetlink.Header{Command: cmd, Version: c.family.Version},
		Data:   attrs,
	}, c.family.ID, flags)
	if err != nil {
		return nil, kernelError(op, err, classify)
	}
	return msgs, nil
}

// kernelError turns an error of the netlink package into an *OpError whose
// Err is the bare errno, joined with this package's class of it.
func kernelError(op string, err error, classify func(unix.Errno) error) error {
	oe := &mptcp.OpError{Op: op, Err: err}
	var ne *netlink.OpError
	if errors.As(err, &ne) {
		oe.Message = ne.Message
		oe.Err = ne.Err
	}
	var errno unix.Errno
	if !errors.As(oe.Err, &errno) {
		return oe
	}
	if classify != nil {
		if e := classify(errno); e != nil {
			oe.Err = e
			return oe
		}
	}
	switch errno {
	case unix.EINVAL:
		oe.Err = classed(errno.Error(), errno, mptcp.ErrInvalid)
	default:
		oe.Err = errno
	}
	return oe
}

// classedError is an error with a message of its own that matches several
// errors (an errno and one of this package's classes).
type classedError struct {
	msg  string
	errs []error
}

func classed(msg string, errs ...error) error { return &classedError{msg: msg, errs: errs} }

func (e *classedError) Error() string   { return e.msg }
func (e *classedError) Unwrap() []error { return e.errs }

// notFoundOnEINVAL maps EINVAL to ErrEndpointNotFound: for the by-ID requests
// this package sends (always well formed), "address not found" is the only
// way the kernel answers EINVAL.
func notFoundOnEINVAL(errno unix.Errno) error {
	if errno == unix.EINVAL {
		return classed(mptcp.ErrEndpointNotFound.Error()+": "+errno.Error(), errno, mptcp.ErrEndpointNotFound)
	}
	return nil
}

func (c *client) endpoints() ([]mptcp.Endpoint, error) {
	const op = "mptcp list endpoints"
	msgs, err := c.execute(op, cmdGetAddr, flagsDump, nil, nil)
	if err != nil {
		return nil, err
	}
	eps := make([]mptcp.Endpoint, 0, len(msgs))
	for _, m := range msgs {
		e, err := decodeEndpoint(m.Data)
		if err != nil {
			return nil, &mptcp.OpError{Op: op, Err: fmt.Errorf("decode: %w", err)}
		}
		eps = append(eps, e)
	}
	slices.SortFunc(eps, func(a, b mptcp.Endpoint) int { return cmp.Compare(a.ID, b.ID) })
	return eps, nil
}

func (c *client) endpoint(id uint8) (mptcp.Endpoint, error) {
	op := fmt.Sprintf("mptcp get endpoint id %d", id)
	if id == 0 {
		return mptcp.Endpoint{}, &mptcp.OpError{Op: op, Err: invalidf("id 0 is not an endpoint ID")}
	}
	attrs, err := encodeEndpoint(mptcp.Endpoint{ID: id})
	if err != nil {
		return mptcp.Endpoint{}, &mptcp.OpError{Op: op, Err: err}
	}
	return get(c, op, cmdGetAddr, attrs, notFoundOnEINVAL, decodeEndpoint)
}

// get sends a request whose reply is one message, and decodes it.
func get[T any](c *client, op string, cmd uint8, attrs []byte, classify func(unix.Errno) error, decode func([]byte) (T, error)) (T, error) {
	var zero T
	msgs, err := c.execute(op, cmd, flagsGet, attrs, classify)
	if err != nil {
		return zero, err
	}
	if len(msgs) != 1 {
		return zero, &mptcp.OpError{Op: op, Err: fmt.Errorf("kernel sent %d replies, want 1", len(msgs))}
	}
	v, err := decode(msgs[0].Data)
	if err != nil {
		return zero, &mptcp.OpError{Op: op, Err: fmt.Errorf("decode: %w", err)}
	}
	return v, nil
}

func (c *client) addEndpoint(e mptcp.Endpoint) error {
	op := addOp(e)
	attrs, err := encodeEndpoint(e)
	if err != nil {
		return &mptcp.OpError{Op: op, Err: err}
	}
	_, err = c.execute(op, cmdAddAddr, flagsMutate, attrs, addErrors(e))
	return err
}

// addErrors classes the kernel's errors for an ADD_ADDR request for e.
func addErrors(e mptcp.Endpoint) func(unix.Errno) error {
	return func(errno unix.Errno) error {
		switch errno {
		case unix.ERANGE:
			return classed(fmt.Sprintf("%v (at most %d): %v", mptcp.ErrTooManyEndpoints, mptcp.MaxEndpoints, errno), errno, mptcp.ErrTooManyEndpoints)
		case unix.EEXIST:
			return classed(errno.Error(), errno, mptcp.ErrEndpointExists)
		case unix.EBUSY: // the ID is taken
			return classed(fmt.Sprintf("id %d in use: %v", e.ID, errno), errno, mptcp.ErrEndpointExists)
		}
		return nil
	}
}

func (c *client) deleteEndpoint(id uint8) error {
	op := fmt.Sprintf("mptcp delete endpoint id %d", id)
	attrs, err := encodeEndpoint(mptcp.Endpoint{ID: id})
	if err != nil {
		return &mptcp.OpError{Op: op, Err: err}
	}
	_, err = c.execute(op, cmdDelAddr, flagsMutate, attrs, notFoundOnEINVAL)
	return err
}

func (c *client) flushEndpoints() error {
	_, err := c.execute("mptcp flush endpoints", cmdFlushAddrs, flagsMutate, nil, nil)
	return err
}

func (c *client) setEndpointFlags(id uint8, f mptcp.Flags) error {
	op := setFlagsOp(id, f)
	cur, err := c.endpoint(id)
	if err != nil {
		var oe *mptcp.OpError
		if errors.As(err, &oe) {
			oe.Op = op
		}
		return err
	}
	if f&^mptcp.KnownFlags != 0 {
		return &mptcp.OpError{Op: op, Err: invalidf("unknown flags %s", f&^mptcp.KnownFlags)}
	}
	if changed := (cur.Flags ^ f) &^ (mptcp.MutableFlags | mptcp.FlagImplicit); changed != 0 {
		return &mptcp.OpError{Op: op, Err: fmt.Errorf("%w: %s (endpoint has %q)", mptcp.ErrFlagsImmutable, changed, cur.Flags.String())}
	}
	if f&mptcp.FlagFullmesh != 0 && cur.Flags&(mptcp.FlagSignal|mptcp.FlagImplicit) != 0 {
		return &mptcp.OpError{Op: op, Err: invalidf("fullmesh cannot be set on a signal or implicit endpoint (endpoint has %q)", cur.Flags.String())}
	}
	if (cur.Flags^f)&mptcp.MutableFlags == 0 {
		return nil // nothing to change
	}
	attrs, err := encodeEndpoint(mptcp.Endpoint{ID: id, Flags: f &^ mptcp.FlagImplicit})
	if err != nil {
		return &mptcp.OpError{Op: op, Err: err}
	}
	_, err = c.execute(op, cmdSetFlags, flagsMutate, attrs, notFoundOnEINVAL)
	return err
}

func (c *client) limits() (mptcp.Limits, error) {
	return get(c, "mptcp get limits", cmdGetLimits, nil, nil, decodeLimits)
}

func (c *client) setLimits(l mptcp.Limits, op string) error {
	attrs, err := encodeLimits(l)
	if err != nil {
		return &mptcp.OpError{Op: op, Err: err}
	}
	_, err = c.execute(op, cmdSetLimits, flagsMutate, attrs, nil)
	return err
}

func (c *client) connections() ([]mptcp.Connection, error) {
	const op = "mptcp list connections"
	if c.diag == nil {
		err := c.diagErr
		if err == nil {
			err = errors.New("no sock_diag socket")
		}
		return nil, &mptcp.OpError{Op: op, Err: err}
	}
	var conns []mptcp.Connection
	for _, family := range []uint8{afInet, afInet6} {
		msgs, err := c.diag.Execute(netlink.Message{
			Header: netlink.Header{Type: sockDiagByFamily, Flags: flagsDump},
			Data:   encodeDiagRequest(family),
		})
		if err != nil {
			return nil, kernelError(op, err, func(errno unix.Errno) error {
				if errno == unix.ENOENT { // no MPTCP inet_diag handler
					return classed(fmt.Sprintf("%v: no MPTCP sock_diag handler (CONFIG_INET_MPTCP_DIAG): %v", mptcp.ErrUnsupported, errno), errno, mptcp.ErrUnsupported)
				}
				return nil
			})
		}
		for _, m := range msgs {
			if m.Header.Type != sockDiagByFamily {
				continue
			}
			conn, err := decodeDiagMsg(m.Data)
			if err != nil {
				return nil, &mptcp.OpError{Op: op, Err: fmt.Errorf("decode: %w", err)}
			}
			conns = append(conns, conn)
		}
	}
	slices.SortFunc(conns, func(a, b mptcp.Connection) int {
		if n := a.Local.Compare(b.Local); n != 0 {
			return n
		}
		return a.Remote.Compare(b.Remote)
	})
	return conns, nil
}

// eventConn is the Linux implementation of EventConn.
type eventConn struct {
	c      *genetlink.Conn
	family genetlink.Family
	group  uint32
}

func dialEvents(opts *DialOptions) (*eventConn, error) {
	return dialWith(opts, "mptcp dial events", func(c *genetlink.Conn) (*eventConn, error) {
		ec, err := initEventConn(c)
		if err != nil {
			return nil, err
		}
		// A burst of connections makes a burst of events: give them room.
		_ = c.SetReadBuffer(1 << 20)
		if err := c.JoinGroup(ec.group); err != nil {
			return nil, kernelError("mptcp join multicast group "+eventsGroup, err, nil)
		}
		return ec, nil
	})
}

// dialWith opens a generic netlink socket in the namespace opts names and
// finishes with init what is made on it; the socket is closed when init
// fails. op names a failure to open it.
func dialWith[T any](opts *DialOptions, op string, init func(*genetlink.Conn) (T, error)) (T, error) {
	c, err := genetlink.Dial(&netlink.Config{NetNS: opts.NetNS})
	if err != nil {
		var zero T
		return zero, &mptcp.OpError{Op: op, Err: err}
	}
	v, err := init(c)
	if err != nil {
		_ = c.Close()
		var zero T
		return zero, err
	}
	return v, nil
}

// initEventConn looks the family and its events group up on c, without
// joining the group (tests pass a genltest connection, which cannot).
func initEventConn(c *genetlink.Conn) (*eventConn, error) {
	f, err := getFamily(c)
	if err != nil {
		return nil, err
	}
	for _, g := range f.Groups {
		if g.Name == eventsGroup {
			return &eventConn{c: c, family: f, group: g.ID}, nil
		}
	}
	return nil, &mptcp.OpError{Op: "mptcp dial events", Err: fmt.Errorf("%w: family %s has no multicast group %q", mptcp.ErrUnsupported, familyName, eventsGroup)}
}

func (e *eventConn) receive() ([]mptcp.Event, error) {
	const op = "mptcp receive events"
	gmsgs, _, err := e.c.Receive()
	if err != nil {
		if errors.Is(err, unix.ENOBUFS) {
			return nil, &mptcp.OpError{Op: op, Err: classed(mptcp.ErrEventsLost.Error(), mptcp.ErrEventsLost, unix.ENOBUFS)}
		}
		return nil, kernelError(op, err, nil)
	}
	evs := make([]mptcp.Event, 0, len(gmsgs))
	// Only the group this socket joined reaches it: every message is an
	// mptcp_pm event.
	for _, m := range gmsgs {
		ev, err := decodeEvent(mptcp.EventType(m.Header.Command), m.Data)
		if err != nil {
			return nil, &mptcp.OpError{Op: op, Err: fmt.Errorf("decode: %w", err)}
		}
		evs = append(evs, ev)
	}
	return evs, nil
}

func (e *eventConn) setReadDeadline(t time.Time) error { return e.c.SetReadDeadline(t) }

func (e *eventConn) close() error { return e.c.Close() }

// encodeDiagRequest returns the body of a SOCK_DIAG_BY_FAMILY dump request
// for the MPTCP sockets of one address family: struct inet_diag_req_v2 asking
// for INET_DIAG_INFO in every state but LISTEN, then the
// INET_DIAG_REQ_PROTOCOL attribute carrying IPPROTO_MPTCP (262 does not fit
// the u8 protocol field).
func encodeDiagRequest(family uint8) []byte {
	ne := binary.NativeEndian
	b := make([]byte, inetDiagReqLen, inetDiagReqLen+8)
	b[0] = family
	b[1] = ipprotoTCP
	b[2] = 1 << (inetDiagInfo - 1)
	ne.PutUint32(b[4:], ^uint32(0)&^(1<<uint32(mptcp.StateListen)))
	// The socket id (b[8:56]) stays zero: no filter; INET_DIAG_NOCOOKIE is not
	// needed for dumps.
	attr := make([]byte, 8)
	ne.PutUint16(attr[0:], 8)
	ne.PutUint16(attr[2:], inetDiagReqProtocol)
	ne.PutUint32(attr[4:], ipprotoMPTCP)
	return append(b, attr...)
}
