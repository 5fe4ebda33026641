package traffic

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

func TestStreamDeterministic(t *testing.T) {
	a, b := make([]byte, 100_000), make([]byte, 100_000)
	_, _ = NewStream(42).Read(a)
	// The same stream read in odd pieces.
	s := NewStream(42)
	for off := 0; off < len(b); off += 777 {
		_, _ = s.Read(b[off:min(off+777, len(b))])
	}
	if !bytes.Equal(a, b) {
		t.Fatal("stream of seed 42 differs between reads")
	}
	c := make([]byte, len(a))
	_, _ = NewStream(43).Read(c)
	if bytes.Equal(a, c) {
		t.Fatal("seeds 42 and 43 give the same stream")
	}
}

func TestVerifier(t *testing.T) {
	data := make([]byte, 1<<20)
	_, _ = NewStream(7).Read(data)
	for _, tc := range []struct {
		name    string
		corrupt int // offset to flip, or -1
	}{
		{"intact", -1},
		{"first byte", 0},
		{"middle", 500_000},
		{"last byte", len(data) - 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := bytes.Clone(data)
			if tc.corrupt >= 0 {
				d[tc.corrupt] ^= 0x01
			}
			v := NewVerifier(7)
			for off := 0; off < len(d); off += 4096 {
				if _, err := v.Write(d[off:min(off+4096, len(d))]); err != nil {
					t.Fatal(err)
				}
			}
			if v.Bytes() != int64(len(d)) {
				t.Errorf("Bytes() = %d, want %d", v.Bytes(), len(d))
			}
			var mm *MismatchError
			switch {
			case tc.corrupt < 0 && v.Err() != nil:
				t.Errorf("intact stream: Err() = %v", v.Err())
			case tc.corrupt >= 0 && !errors.As(v.Err(), &mm):
				t.Errorf("corrupt at %d: Err() = %v, want a *MismatchError", tc.corrupt, v.Err())
			case tc.corrupt >= 0 && mm.Offset != int64(tc.corrupt):
				t.Errorf("corrupt at %d: mismatch reported at %d", tc.corrupt, mm.Offset)
			}
		})
	}
}

// corruptConn flips one bit of the byte at offset at (counted after the
// header) of what is written through it.
type corruptConn struct {
	net.Conn
	at      int64
	written int64
}

func (c *corruptConn) Write(p []byte) (int, error) {
	q := p
	if lo := c.written - headerSize; c.at >= lo && c.at < lo+int64(len(p)) {
		q = bytes.Clone(p)
		q[c.at-lo] ^= 0x80
	}
	c.written += int64(len(p))
	return c.Conn.Write(q)
}

// pipeTransfer runs Send on one end of a pipe and Receive (as Serve would:
// then the JSON report back) on the other.
func pipeTransfer(t *testing.T, wrap func(net.Conn) net.Conn, n int64) (sent, received Report, sendErr error) {
	t.Helper()
	a, b := net.Pipe()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		defer b.Close()
		received = Receive(ctx, b)
		_, _ = b.Write(append(mustJSON(t, received), '\n'))
	})
	sent, sendErr = Send(ctx, wrap(a), SendOptions{Bytes: n, Seed: 99})
	wg.Wait()
	return sent, received, sendErr
}

func TestSendReceiveIntact(t *testing.T) {
	const n = 3_000_000
	sent, got, err := pipeTransfer(t, func(c net.Conn) net.Conn { return c }, n)
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if !sent.Verified || !got.Verified || sent.Bytes != n || sent.MismatchOffset != -1 || sent.Seed != 99 {
		t.Errorf("report = %+v, want %d bytes verified", sent, n)
	}
	if sent.Duration <= 0 || sent.Mbps <= 0 || sent.LongestStall <= 0 {
		t.Errorf("report = %+v, want positive duration, rate and stall", sent)
	}
}

func TestSendReceiveCorrupt(t *testing.T) {
	const n, at = 3_000_000, 1_234_567
	sent, got, err := pipeTransfer(t, func(c net.Conn) net.Conn { return &corruptConn{Conn: c, at: at} }, n)
	if !errors.Is(err, ErrNotVerified) {
		t.Fatalf("Send error = %v, want ErrNotVerified", err)
	}
	if sent.Verified || got.Verified {
		t.Errorf("corrupted transfer verified: %+v", sent)
	}
	if sent.MismatchOffset != at {
		t.Errorf("mismatch at %d, want %d", sent.MismatchOffset, at)
	}
	if sent.Bytes != n {
		t.Errorf("receiver got %d bytes, want all %d (it keeps reading after a mismatch)", sent.Bytes, n)
	}
}

func TestReceiveShort(t *testing.T) {
	a, b := net.Pipe()
	go func() {
		_, _ = a.Write(header{seed: 5, length: 1000}.marshal())
		p := make([]byte, 400)
		_, _ = NewStream(5).Read(p)
		_, _ = a.Write(p)
		a.Close()
	}()
	r := Receive(context.Background(), b)
	if r.Verified || r.Bytes != 400 || r.Expected != 1000 || r.MismatchOffset != -1 || r.Error == "" {
		t.Errorf("short transfer report = %+v, want 400 of 1000 bytes, not verified, an error", r)
	}
}

func TestReceiveBadHeader(t *testing.T) {
	a, b := net.Pipe()
	go func() {
		_, _ = io.WriteString(a, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		a.Close()
	}()
	if r := Receive(context.Background(), b); r.Verified || r.Error == "" {
		t.Errorf("report = %+v, want an error", r)
	}
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "1500": 1500, "100M": 100e6, "64Mi": 64 << 20, "2G": 2e9, "10kB": 10e3, "1Ki": 1024} {
		if got, err := ParseBytes(in); err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1", "1.5M", "9999999999G"} {
		if _, err := ParseBytes(in); err == nil {
			t.Errorf("ParseBytes(%q) succeeded", in)
		}
	}
}

func mustJSON(t *testing.T, r Report) []byte {
	t.Helper()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
