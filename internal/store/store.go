// Package store keeps mpfleet's state in etcd under one key prefix: groups,
// their immutable policy revisions, host status and the hash-chained audit log.
//
// Values are binary protobuf: compact, fast to decode on every watch event,
// forward compatible when fields are added, and deterministic to encode, which
// the audit hash chain relies on. (protojson would be readable with etcdctl,
// but is several times larger and slower and not canonical.)
//
// A change, its policy revision and its audit event are written in one etcd
// transaction. The audit chain head (its last sequence and hash) is one key
// that every audited write compares, so events get gap-free sequences in
// commit order. With an audit key (WithAuditKey) every event's hash is keyed
// (see package audit), and retention checkpoints what it prunes.
package store

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/mpfleet/mpfleet/internal/audit"
	"github.com/mpfleet/mpfleet/internal/wait"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
)

// DefaultPrefix is the etcd key prefix of everything mpfleet stores.
const DefaultPrefix = "/mpfleet/v1/"

// Store reads and writes mpfleet state in etcd.
type Store struct {
	c      *clientv3.Client
	prefix string
	now    func() time.Time
	key    *audit.Key

	written hostIntern // statuses written, for the cache (hostintern.go)
}

// Option configures a Store.
type Option func(*Store)

// WithAuditKey keys the hash of every audit event the store writes with k,
// and verifies the chain with it. Without it events are unkeyed (plain
// SHA-256), and a keyed chain does not verify.
func WithAuditKey(k *audit.Key) Option { return func(s *Store) { s.key = k } }

// New returns a Store using prefix (DefaultPrefix if empty; a trailing "/" is
// added if missing).
func New(c *clientv3.Client, prefix string, opts ...Option) *Store {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	s := &Store{c: c, prefix: prefix, now: time.Now}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Client returns the etcd client.
func (s *Store) Client() *clientv3.Client { return s.c }

// Meta describes who makes a change, for the audit log.
type Meta struct {
	Actor     string
	Reason    string
	RequestID string
	Peer      string
}

// Etag renders an etcd mod revision as an etag.
func Etag(modRev int64) string { return strconv.FormatInt(modRev, 10) }

func decode[T proto.Message](key string, b []byte, m T) (T, error) {
	if err := proto.Unmarshal(b, m); err != nil {
		return m, fmt.Errorf("%s: %w: %w", key, ErrCorrupt, err)
	}
	return m, nil
}

func encode(m proto.Message) string {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		// Only invalid UTF-8 in a string field can fail; validation keeps it out.
		panic(fmt.Sprintf("store: encode %T: %v", m, err))
	}
	return string(b)
}

func backoff(ctx context.Context, attempt int) error {
	d := time.Duration(1+rand.IntN(1<<min(attempt, 6))) * time.Millisecond
	if !wait.Sleep(ctx, d) {
		return ctx.Err()
	}
	return nil
}

// LeaderFence is the compare that fences a leader-only write: the leader key
// still exists with the create revision it had when this replica won.
func LeaderFence(key string, createRev int64) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(key), "=", createRev)
}

// ElectionPrefix is where controller replicas campaign for leadership.
func (s *Store) ElectionPrefix() string { return s.prefix + "leader" }
