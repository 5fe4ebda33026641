package traffic

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// IdleTimeout is how long either side waits for progress before it gives
// up on a transfer.
const IdleTimeout = 30 * time.Second

// Report is the outcome of one transfer. The receiver measures and verifies;
// the sender adds its own view of the connection.
type Report struct {
	// From and To are the sender's and the receiver's addresses of the
	// connection's first subflow.
	From string `json:"from"`
	To   string `json:"to"`
	// Expected is the number of bytes the sender announced, Bytes the
	// number the receiver got.
	Expected int64 `json:"expected_bytes"`
	Bytes    int64 `json:"bytes"`
	// Duration runs from the receiver reading the header to it reading
	// the last byte.
	Duration time.Duration `json:"duration_ns"`
	// Mbps is Bytes over Duration in Mbit/s (10^6 bit/s) of payload.
	Mbps float64 `json:"mbps"`
	// LongestStall is the longest time between two reads that returned
	// data (or from the header to the first data) at the receiver, and
	// LongestStallAt when it began, from the start of Duration.
	LongestStall   time.Duration `json:"longest_stall_ns"`
	LongestStallAt time.Duration `json:"longest_stall_at_ns"`
	// Verified is true when all Expected bytes arrived and equal the
	// stream of the seed. Otherwise MismatchOffset is the offset of the
	// first wrong byte, or -1 if none was wrong.
	Verified       bool  `json:"verified"`
	MismatchOffset int64 `json:"mismatch_offset"`
	// MPTCP is whether the connection used Multipath TCP:
	// (*net.TCPConn).MultipathTCP on the sender (in a Report from Send)
	// or on the receiver (in one from Receive).
	MPTCP bool `json:"mptcp"`
	// Seed is the seed of the stream.
	Seed uint64 `json:"seed"`
	// Error says why the transfer failed, if it did.
	Error string `json:"error,omitempty"`
}

// String formats the report on one line for people.
func (r Report) String() string {
	s := fmt.Sprintf("%d bytes in %v: %.2f Mbit/s, longest stall %v, MPTCP %v, ",
		r.Bytes, r.Duration.Round(time.Millisecond), r.Mbps, r.LongestStall.Round(100*time.Microsecond), r.MPTCP)
	switch {
	case r.Verified:
		s += "verified OK"
	case r.MismatchOffset >= 0:
		s += fmt.Sprintf("CORRUPT at byte %d", r.MismatchOffset)
	default:
		s += fmt.Sprintf("INCOMPLETE (%d of %d bytes)", r.Bytes, r.Expected)
	}
	if r.Error != "" {
		s += ": " + r.Error
	}
	return s
}

// The header the sender writes before the data.
const (
	magic      = "MPFT"
	version    = 1
	headerSize = 4 + 1 + 8 + 8
)

type header struct {
	seed   uint64
	length int64
}

func (h header) marshal() []byte {
	b := make([]byte, 0, headerSize)
	b = append(b, magic...)
	b = append(b, version)
	b = binary.BigEndian.AppendUint64(b, h.seed)
	return binary.BigEndian.AppendUint64(b, uint64(h.length))
}

func readHeader(r io.Reader) (header, error) {
	b := make([]byte, headerSize)
	if _, err := io.ReadFull(r, b); err != nil {
		return header{}, fmt.Errorf("read header: %w", err)
	}
	if string(b[:4]) != magic || b[4] != version {
		return header{}, fmt.Errorf("bad header %q", b[:5])
	}
	h := header{seed: binary.BigEndian.Uint64(b[5:]), length: int64(binary.BigEndian.Uint64(b[13:]))}
	if h.length < 0 {
		return header{}, fmt.Errorf("bad length %d", h.length)
	}
	return h, nil
}

// Listen returns a Multipath TCP listener on addr ("198.18.11.2:5201").
// Called inside a namespace (see nstest.Do), the listener stays there.
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(true)
	return lc.Listen(ctx, "tcp", addr)
}

// DialOptions change how Dial connects.
type DialOptions struct {
	// Bind is the local address ("198.18.2.2" or "198.18.2.2:0") of the
	// first subflow; by default the kernel chooses.
	Bind string
	// PlainTCP dials plain TCP instead of Multipath TCP.
	PlainTCP bool
}

// Dial connects to addr with Multipath TCP (unless opts.PlainTCP). Called
// inside a namespace (see nstest.Do), the connection stays there.
func Dial(ctx context.Context, addr string, opts DialOptions) (net.Conn, error) {
	var d net.Dialer
	d.SetMultipathTCP(!opts.PlainTCP)
	if opts.Bind != "" {
		host, port, err := net.SplitHostPort(opts.Bind)
		if err != nil {
			host, port = opts.Bind, "0"
		}
		la, err := net.ResolveTCPAddr("tcp", net.JoinHostPort(host, port))
		if err != nil {
			return nil, fmt.Errorf("bind %q: %w", opts.Bind, err)
		}
		d.LocalAddr = la
	}
	return d.DialContext(ctx, "tcp", addr)
}

func isMPTCP(c net.Conn) bool {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return false
	}
	m, err := tc.MultipathTCP()
	return err == nil && m
}

// Receive reads one transfer from conn, verifies it and returns the report;
// it does not write to or close conn. It gives up when ctx ends or nothing
// arrives for IdleTimeout.
func Receive(ctx context.Context, conn net.Conn) Report {
	defer context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Now()) })()
	r := Report{From: conn.RemoteAddr().String(), To: conn.LocalAddr().String(), MismatchOffset: -1, MPTCP: isMPTCP(conn)}
	_ = conn.SetReadDeadline(time.Now().Add(IdleTimeout))
	h, err := readHeader(conn)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	r.Expected, r.Seed = h.length, h.seed
	v := NewVerifier(h.seed)
	buf := make([]byte, 256<<10)
	start := time.Now()
	last := start
	for r.Bytes < h.length {
		if ctx.Err() != nil {
			err = ctx.Err()
			break
		}
		_ = conn.SetReadDeadline(time.Now().Add(IdleTimeout))
		n, rerr := conn.Read(buf[:min(int64(len(buf)), h.length-r.Bytes)])
		if n > 0 {
			now := time.Now()
			if gap := now.Sub(last); gap > r.LongestStall {
				r.LongestStall, r.LongestStallAt = gap, last.Sub(start)
			}
			last = now
			_, _ = v.Write(buf[:n])
			r.Bytes += int64(n)
		}
		if rerr != nil {
			err = rerr
			break
		}
	}
	r.Duration = last.Sub(start)
	if r.Duration > 0 {
		r.Mbps = float64(r.Bytes) * 8 / r.Duration.Seconds() / 1e6
	}
	var mm *MismatchError
	switch {
	case errors.As(v.Err(), &mm):
		r.MismatchOffset = mm.Offset
		r.Error = mm.Error()
	case err != nil:
		r.Error = fmt.Sprintf("after %d of %d bytes: %v", r.Bytes, h.length, err)
	default:
		r.Verified = true
	}
	return r
}

// Serve accepts transfers on ln until ctx ends, then closes ln and the
// connections it serves and returns nil; it returns an accept error
// otherwise. For each transfer it receives and verifies the data, sends the
// report back to the sender as one line of JSON and, if onReport is not
// nil, calls it (from the connection's goroutine) with the report.
func Serve(ctx context.Context, ln net.Listener, onReport func(Report)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stop()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			_ = ln.Close()
			return fmt.Errorf("accept: %w", err)
		}
		wg.Go(func() {
			defer conn.Close()
			defer context.AfterFunc(ctx, func() { _ = conn.Close() })()
			r := Receive(ctx, conn)
			b, _ := json.Marshal(r)
			_ = conn.SetWriteDeadline(time.Now().Add(IdleTimeout))
			_, _ = conn.Write(append(b, '\n'))
			if onReport != nil {
				onReport(r)
			}
		})
	}
}

// SendOptions say what Send sends.
type SendOptions struct {
	// Bytes is the number of bytes of data to send.
	Bytes int64
	// Seed selects the stream; by default a random one.
	Seed uint64
}

// ErrNotVerified is wrapped by Send's error when the receiver did not get
// the whole stream intact.
var ErrNotVerified = errors.New("transfer not verified")

// Send sends opts.Bytes bytes of the stream of opts.Seed on conn, then
// half-closes it and waits for the receiver's report, which it returns with
// MPTCP set to the sender's view. The error wraps ErrNotVerified if the
// receiver reports missing or wrong data. Send closes conn.
func Send(ctx context.Context, conn net.Conn, opts SendOptions) (Report, error) {
	defer conn.Close()
	defer context.AfterFunc(ctx, func() { _ = conn.Close() })()
	seed := opts.Seed
	if seed == 0 {
		var b [8]byte
		_, _ = rand.Read(b[:])
		seed = binary.LittleEndian.Uint64(b[:])
	}
	local := Report{From: conn.LocalAddr().String(), To: conn.RemoteAddr().String(), Expected: opts.Bytes, Seed: seed, MismatchOffset: -1, MPTCP: isMPTCP(conn)}
	fail := func(err error) (Report, error) {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		local.Error = err.Error()
		return local, fmt.Errorf("send to %s: %w", local.To, err)
	}
	w := bufio.NewWriterSize(conn, 256<<10)
	if _, err := w.Write(header{seed: seed, length: opts.Bytes}.marshal()); err != nil {
		return fail(err)
	}
	src := NewStream(seed)
	buf := make([]byte, 256<<10)
	for left := opts.Bytes; left > 0; {
		p := buf[:min(int64(len(buf)), left)]
		_, _ = src.Read(p)
		_ = conn.SetWriteDeadline(time.Now().Add(IdleTimeout))
		if _, err := w.Write(p); err != nil {
			return fail(err)
		}
		left -= int64(len(p))
	}
	if err := w.Flush(); err != nil {
		return fail(err)
	}
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		if err := cw.CloseWrite(); err != nil {
			return fail(err)
		}
	}
	_ = conn.SetReadDeadline(time.Now().Add(IdleTimeout))
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		return fail(fmt.Errorf("read report: %w", err))
	}
	var r Report
	if err := json.Unmarshal(line, &r); err != nil {
		return fail(fmt.Errorf("bad report %q: %w", line, err))
	}
	r.From, r.To, r.MPTCP = local.From, local.To, local.MPTCP
	if !r.Verified {
		return r, fmt.Errorf("send to %s: %w: %s", r.To, ErrNotVerified, r.Error)
	}
	return r, nil
}
