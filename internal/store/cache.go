package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/mpfleet/mpfleet/internal/wait"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Errors that end a Subscription.
var (
	// ErrLagged: the subscriber did not keep up and was dropped.
	ErrLagged = errors.New("subscriber fell behind and was dropped")
	// ErrResync: the cache re-listed after a watch broke (e.g. compaction);
	// subscribers must take a new snapshot.
	ErrResync = errors.New("cache re-listed; take a new snapshot")
	// ErrClosed: the cache stopped.
	ErrClosed = errors.New("cache stopped")
)

// Event is one change seen by the cache's watch.
type Event struct {
	// Rev is the etcd revision of the change.
	Rev int64
	// GroupID is set for group changes; Group is nil when it was deleted.
	GroupID string
	Group   *pb.Group
	// Audit is set for a new audit event.
	Audit *pb.AuditEvent
	// HostID is set for host status changes; Host is nil when it was deleted.
	HostID string
	Host   *pb.Host
	// SessionID is set when a host's session appears (Replica set) or ends.
	SessionID string
	Replica   string
	// RolloutID is set for rollout changes.
	RolloutID string
	Rollout   *pb.Rollout
	// TargetsGroup is set when a group's host targets change; Targets is nil
	// when they were removed.
	TargetsGroup string
	Targets      *pb.HostTargets
	// LabelsHost is set when the labels an operator gave a host change.
	LabelsHost string
	Labels     map[string]string
	// Last is set on the last event of one watch response: the changes of
	// one etcd transaction (a group, its targets and its rollout) come
	// together, and a subscriber that acts on state waits for Last so that
	// it never acts on half of one.
	Last bool
}

// Cache keeps ONE etcd watch on the store's prefix and an in-memory copy of
// groups and host status, and fans changes out to subscribers. A watch broken
// by compaction re-lists at the current revision and re-watches from there.
type Cache struct {
	s   *Store
	log *slog.Logger

	mu    sync.RWMutex
	rev   int64
	ready bool
	cacheState
	subs    map[*Subscription]struct{}
	changed chan struct{} // closed and replaced on every revision change
	stopped bool
}

// NewCache returns a cache of s; call Run to fill it.
func NewCache(s *Store, log *slog.Logger) *Cache {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Cache{
		s: s, log: log,
		cacheState: newCacheState(),
		subs:       map[*Subscription]struct{}{},
		changed:    make(chan struct{}),
	}
}

// Run lists and watches until ctx ends.
func (c *Cache) Run(ctx context.Context) error {
	defer c.stop()
	for {
		rev, err := c.list(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			c.log.Warn("cache list failed; retrying", "err", err)
			if !wait.Sleep(ctx, time.Second) {
				return nil
			}
			continue
		}
		err = c.watch(ctx, rev+1)
		if ctx.Err() != nil {
			return nil
		}
		c.log.Warn("cache watch ended; re-listing", "err", err)
		if !wait.Sleep(ctx, 100*time.Millisecond) {
			return nil
		}
	}
}

func (c *Cache) list(ctx context.Context) (int64, error) {
	st := newCacheState()
	var rev int64 // of the first read; the others read at it
	for _, k := range cacheKinds {
		prefix := k.prefix(c.s)
		opts := []clientv3.OpOption{clientv3.WithPrefix()}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := c.s.c.Get(ctx, prefix, opts...)
		if err != nil {
			return 0, fmt.Errorf("list %s: %w", strings.TrimPrefix(prefix, c.s.prefix), err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			if _, err := k.apply(c.s, &st, strings.TrimPrefix(string(kv.Key), prefix), kv, false); err != nil {
				c.log.Error("skipping corrupt "+k.what, "key", string(kv.Key), "err", err)
			}
		}
	}
	c.mu.Lock()
	c.cacheState, c.rev, c.ready = st, rev, true
	// Subscribers took their snapshot before this list (or subscribed before
	// the first one, with an empty snapshot): make them take a new one.
	for s := range c.subs {
		s.end(ErrResync)
		delete(c.subs, s)
	}
	c.bumpLocked()
	c.mu.Unlock()
	return rev, nil
}

func (c *Cache) watch(ctx context.Context, from int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := c.s.c.Watch(wctx, c.s.prefix, clientv3.WithPrefix(), clientv3.WithRev(from),
		clientv3.WithProgressNotify())
	for resp := range wch {
		if err := resp.Err(); err != nil {
			if errors.Is(err, rpctypes.ErrCompacted) {
				// Never resume from the compact revision: that silently skips
				// events. Re-list at the current revision instead.
				return fmt.Errorf("watch compacted at %d: %w", resp.CompactRevision, err)
			}
			return err
		}
		if resp.IsProgressNotify() {
			c.mu.Lock()
			if resp.Header.Revision > c.rev {
				c.rev = resp.Header.Revision
				c.bumpLocked()
			}
			c.mu.Unlock()
			continue
		}
		c.apply(resp.Events, resp.Header.Revision)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return errors.New("watch channel closed")
}

func (c *Cache) apply(evs []*clientv3.Event, rev int64) {
	var out []Event
	c.mu.Lock()
	for _, e := range evs {
		if ev, ok := c.change(e); ok {
			out = append(out, ev)
		}
	}
	if rev > c.rev {
		c.rev = rev
	}
	if len(out) > 0 {
		out[len(out)-1].Last = true
	}
	for s := range c.subs {
		for _, ev := range out {
			if !s.offer(ev) {
				delete(c.subs, s)
				break
			}
		}
	}
	c.bumpLocked()
	c.mu.Unlock()
}

// change applies one change the watch saw to the cache and returns its
// Event; ok is false for a key the cache does not keep and for a record that
// does not decode (logged, skipped). c.mu is held.
func (c *Cache) change(e *clientv3.Event) (ev Event, ok bool) {
	key := string(e.Kv.Key)
	del := e.Type == mvccpb.DELETE
	if strings.HasPrefix(key, c.s.auditPrefix()) {
		if del {
			return Event{}, false
		}
		a, err := decodeAudit(e.Kv)
		if err != nil {
			c.log.Error("skipping corrupt audit event", "key", key, "err", err)
			return Event{}, false
		}
		return Event{Rev: e.Kv.ModRevision, Audit: a}, true
	}
	for _, k := range cacheKinds {
		if id, ok := strings.CutPrefix(key, k.prefix(c.s)); ok {
			ev, err := k.apply(c.s, &c.cacheState, id, e.Kv, del)
			if err != nil {
				c.log.Error("skipping corrupt "+k.what, "key", key, "err", err)
			}
			return ev, err == nil
		}
	}
	return Event{}, false
}

func (c *Cache) bumpLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *Cache) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopped = true
	for s := range c.subs {
		s.end(ErrClosed)
		delete(c.subs, s)
	}
	c.bumpLocked()
}

// Revision returns the etcd revision the cache reflects.
func (c *Cache) Revision() int64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.rev
}

// WaitRevision waits until the cache reflects etcd revision rev, so that a
// caller reads its own writes.
func (c *Cache) WaitRevision(ctx context.Context, rev int64) error {
	for {
		c.mu.RLock()
		ok, stopped, ch := c.ready && c.rev >= rev, c.stopped, c.changed
		c.mu.RUnlock()
		if ok {
			return nil
		}
		if stopped {
			return ErrClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Groups returns the cached groups by id. The values must not be modified.
func (c *Cache) Groups() map[string]*pb.Group { return cloneLocked(c, &c.groups) }

// Hosts returns the cached host status by id. The values must not be modified.
func (c *Cache) Hosts() map[string]*pb.Host { return cloneLocked(c, &c.hosts) }

// Host returns one cached host and the replica holding its session ("" when
// disconnected).
func (c *Cache) Host(id string) (*pb.Host, string, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	h, ok := c.hosts[id]
	return h, c.sess[id], ok
}

// HostLabels returns the labels an operator gave host id, and whether any
// were given.
func (c *Cache) HostLabels(id string) (map[string]string, bool) {
	return lookupLocked(c, &c.labels, id)
}

// Rollouts returns the cached rollouts by id. The values must not be
// modified.
func (c *Cache) Rollouts() map[string]*pb.Rollout { return cloneLocked(c, &c.rolls) }

// Rollout returns one cached rollout.
func (c *Cache) Rollout(id string) (*pb.Rollout, bool) { return lookupLocked(c, &c.rolls, id) }

// cloneLocked returns a copy of the cache's map *m, read under c.mu.
func cloneLocked[V any](c *Cache, m *map[string]V) map[string]V {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return maps.Clone(*m)
}

// lookupLocked returns the value of id in the cache's map *m, read under
// c.mu, and whether there is one.
func lookupLocked[V any](c *Cache, m *map[string]V, id string) (V, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	v, ok := (*m)[id]
	return v, ok
}

// Targets returns the cached host targets by group id. The values must not
// be modified.
func (c *Cache) Targets() map[string]*pb.HostTargets { return cloneLocked(c, &c.targets) }

// Changed returns a channel closed at the cache's next change.
func (c *Cache) Changed() <-chan struct{} {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.changed
}

// Sessions returns host id → replica for every connected host.
func (c *Cache) Sessions() map[string]string { return cloneLocked(c, &c.sess) }

// Subscribe returns a subscription to changes after the cache's current
// state, together with snapshots of groups and hosts taken at the same
// revision. buf bounds the events queued for a slow subscriber.
func (c *Cache) Subscribe(buf int) (*Subscription, map[string]*pb.Group, map[string]*pb.Host, int64) {
	s := &Subscription{ch: make(chan Event, buf), done: make(chan struct{})}
	c.mu.Lock()
	defer c.mu.Unlock()
	groups, hosts := maps.Clone(c.groups), maps.Clone(c.hosts)
	if c.stopped {
		s.end(ErrClosed)
	} else {
		c.subs[s] = struct{}{}
	}
	s.cancel = func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if _, ok := c.subs[s]; ok {
			delete(c.subs, s)
			s.end(context.Canceled)
		}
	}
	return s, groups, hosts, c.rev
}

// Subscription receives cache events until it ends.
type Subscription struct {
	ch     chan Event
	done   chan struct{}
	err    error
	cancel func()
}

// C delivers events.
func (s *Subscription) C() <-chan Event { return s.ch }

// Done is closed when the subscription ends; Err then says why.
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Err says why the subscription ended.
func (s *Subscription) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// Close ends the subscription.
func (s *Subscription) Close() { s.cancel() }

func (s *Subscription) offer(ev Event) bool {
	select {
	case s.ch <- ev:
		return true
	default:
		s.end(ErrLagged)
		return false
	}
}

func (s *Subscription) end(err error) {
	s.err = err
	close(s.done)
}
