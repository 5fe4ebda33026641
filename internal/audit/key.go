package audit

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// KeySize is the least number of secret bytes of an audit key (and the size
// of a generated one).
const KeySize = 32

// Key is the secret that keys the audit chain: each event's hash is an
// HMAC-SHA256 under it. It is kept outside etcd, so that write access to
// etcd is not enough to rewrite the log and its head without detection.
type Key struct {
	secret []byte
	id     string
}

// NewKey returns a key of secret, which must hold at least KeySize bytes.
func NewKey(secret []byte) (*Key, error) {
	if len(secret) < KeySize {
		return nil, fmt.Errorf("audit key: %d bytes, want at least %d", len(secret), KeySize)
	}
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("mpfleet audit key id v1"))
	return &Key{secret: bytes.Clone(secret), id: hex.EncodeToString(m.Sum(nil)[:8])}, nil
}

// GenerateKey returns a new random key.
func GenerateKey() (*Key, error) {
	b := make([]byte, KeySize)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	return NewKey(b)
}

// ID is the key's public fingerprint, recorded on every event it keys: 16
// hex digits derived from the key with HMAC, which reveal nothing of it.
func (k *Key) ID() string { return k.id }

// sum returns the HMAC-SHA256 of b under k.
func (k *Key) sum(b []byte) []byte {
	m := hmac.New(sha256.New, k.secret)
	m.Write(b)
	return m.Sum(nil)
}

// MarshalText renders the secret as hex, the key file format.
func (k *Key) MarshalText() ([]byte, error) {
	return []byte(hex.EncodeToString(k.secret)), nil
}

// ParseKey parses the contents of a key file: the secret in hex (at least
// 2*KeySize digits), surrounding white space ignored.
func ParseKey(b []byte) (*Key, error) {
	b = bytes.TrimSpace(b)
	secret := make([]byte, hex.DecodedLen(len(b)))
	if _, err := hex.Decode(secret, b); err != nil {
		return nil, fmt.Errorf("audit key: want %d or more hex digits (as `openssl rand -hex %d` writes): %w", 2*KeySize, KeySize, err)
	}
	if len(secret) < KeySize {
		return nil, fmt.Errorf("audit key: %d hex digits, want at least %d (%d bytes)", len(b), 2*KeySize, KeySize)
	}
	return NewKey(secret)
}

// LoadKeyFile reads a key file written by WriteKeyFile or
// `openssl rand -hex 32`.
func LoadKeyFile(path string) (*Key, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	k, err := ParseKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// LoadOrCreateKeyFile reads the key file at path or, if there is none,
// writes a new random key there (mode 0600, its directory made 0700 if
// missing). It reports whether it created the file.
func LoadOrCreateKeyFile(path string) (*Key, bool, error) {
	k, err := LoadKeyFile(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return k, false, err
	}
	k, err = GenerateKey()
	if err != nil {
		return nil, false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, false, err
	}
	if err := writeNew(path, k); err != nil {
		if errors.Is(err, fs.ErrExist) { // another process was first
			k, err := LoadKeyFile(path)
			return k, false, err
		}
		return nil, false, fmt.Errorf("write audit key %s: %w", path, err)
	}
	return k, true, nil
}

// writeNew writes k to path, which must not exist, all at once: a temporary
// file in the same directory is linked to path, so that a reader never sees
// a partial key and of two writers exactly one wins (fs.ErrExist).
func writeNew(path string, k *Key) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".audit-key-*") // mode 0600
	if err != nil {
		return err
	}
	defer func() { _ = os.Remove(f.Name()) }()
	text, _ := k.MarshalText()
	_, err = f.Write(append(text, '\n'))
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Link(f.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
