package traffic

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
)

// Stream is the deterministic pseudo-random byte stream of a seed: the same
// seed gives the same bytes on the sender and the receiver.
type Stream struct {
	rng *rand.ChaCha8
}

// NewStream returns the stream of seed.
func NewStream(seed uint64) *Stream {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	copy(s[8:], "mpfleet traffic stream")
	return &Stream{rng: rand.NewChaCha8(s)}
}

// Read fills p with the next len(p) bytes of the stream; it never fails.
func (s *Stream) Read(p []byte) (int, error) {
	return s.rng.Read(p)
}

var _ io.Reader = (*Stream)(nil)

// MismatchError says where a received stream first differs from the
// expected one.
type MismatchError struct {
	Offset    int64 // of the first wrong byte, from the start of the data
	Got, Want byte
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("stream differs at byte %d: got %#02x, want %#02x", e.Offset, e.Got, e.Want)
}

// Verifier compares the bytes written to it with the stream of a seed.
// Writes never fail: after the first mismatch it only counts bytes, and
// Err reports the mismatch.
type Verifier struct {
	want     *Stream
	buf      []byte
	n        int64
	mismatch *MismatchError
}

// NewVerifier returns a Verifier of the stream of seed.
func NewVerifier(seed uint64) *Verifier {
	return &Verifier{want: NewStream(seed)}
}

// Write compares p with the next len(p) bytes of the stream.
func (v *Verifier) Write(p []byte) (int, error) {
	if v.mismatch == nil {
		if cap(v.buf) < len(p) {
			v.buf = make([]byte, len(p))
		}
		want := v.buf[:len(p)]
		_, _ = v.want.Read(want)
		if !bytes.Equal(p, want) {
			i := 0
			for p[i] == want[i] {
				i++
			}
			v.mismatch = &MismatchError{Offset: v.n + int64(i), Got: p[i], Want: want[i]}
		}
	}
	v.n += int64(len(p))
	return len(p), nil
}

// Bytes returns how many bytes were written.
func (v *Verifier) Bytes() int64 { return v.n }

// Err returns the first mismatch as a *MismatchError, or nil.
func (v *Verifier) Err() error {
	if v.mismatch == nil {
		return nil
	}
	return v.mismatch
}
