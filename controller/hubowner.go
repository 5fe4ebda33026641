package controller

// One stream per host across the fleet. A replica that takes an agent's
// stream claims the host's sessions/{host} key, bound to its session lease,
// in a transaction that succeeds only while no other replica holds the key;
// it releases the key when the stream ends. A second stream for the host on
// another replica is refused (ALREADY_EXISTS, naming the holder) while the
// first lives; a dead replica's keys go with its lease, within SessionTTL.
// On this replica a host's attach and detach are serialized, so that the end
// of an old stream never releases the key a newer stream holds.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"time"

	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// replicaName is the name a controller program runs under: the one given,
// else host name and listen port, which two replicas never share and a
// restarted replica keeps (so it takes its hosts' session keys back at once,
// rather than refusing its agents until the dead process's lease expires).
func replicaName(given string, listen net.Addr) string {
	if given != "" {
		return given
	}
	tcp, ok := listen.(*net.TCPAddr)
	if !ok || tcp.Port == 0 {
		return defaultReplica()
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "controller"
	}
	return fmt.Sprintf("%s:%d", host, tcp.Port)
}

// defaultReplica names a controller made without a name (tests, embedding):
// host name, process id, and a random part.
func defaultReplica() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "controller"
	}
	return fmt.Sprintf("%s-%d-%06x", host, os.Getpid(), rand.Uint32()&0xffffff)
}

// hostLock serializes what this replica does to one host's session.
type hostLock struct {
	mu   sync.Mutex
	refs int
}

// lockHost locks host id's session against other attaches and detaches of
// it, and returns the unlock.
func (h *hub) lockHost(id string) (unlock func()) {
	h.mu.Lock()
	if h.hostLocks == nil {
		h.hostLocks = map[string]*hostLock{}
	}
	l := h.hostLocks[id]
	if l == nil {
		l = &hostLock{}
		h.hostLocks[id] = l
	}
	l.refs++
	h.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		h.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(h.hostLocks, id)
		}
		h.mu.Unlock()
	}
}

// unavailable is the status of a stream that cannot go on because etcd
// failed: UNAVAILABLE, so that the agent reconnects (never
// RESOURCE_EXHAUSTED, which an agent takes for an oversized message).
func unavailable(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return toStatus(ctx.Err())
	}
	return status.Errorf(codes.Unavailable, "%s: %v; reconnect", what, err)
}

// attach makes s the stream of its host: it claims the host across the
// fleet — writing its status in the same transaction when the hello
// changed more than counters of the status stored — and registers s here (a
// stream of the same host's credential that it replaces ends). What the
// claim does not write, the writer writes when due: after a controller
// restart, the hello's status and the first report become one write.
func (h *hub) attach(ctx context.Context, s *session, caller Caller, hello *pb.AgentHello) error {
	unlock := h.lockHost(s.id)
	defer unlock()
	h.mu.Lock()
	closing, old, lease := h.closing, h.sessions[s.id], h.lease
	h.mu.Unlock()
	if closing {
		return status.Error(codes.Unavailable, "controller shutting down")
	}
	if old != nil && caller.Anonymous {
		// Nobody is authenticated: anyone could claim the host id, so
		// nobody evicts a stream that is alive.
		return status.Errorf(codes.AlreadyExists, "host %q is connected (from %s); a second stream is refused while the first lives", s.id, old.peer)
	}
	h.restoreStatus(s, hello)
	if err := h.claim(ctx, s, lease, s.pending().prompt); err != nil {
		return err
	}
	h.mu.Lock()
	if h.closing {
		h.mu.Unlock()
		h.release(ctx, s, false)
		return status.Error(codes.Unavailable, "controller shutting down")
	}
	old = h.sessions[s.id]
	h.sessions[s.id] = s
	key, d := desiredFor(h.groups, h.targets, s.id, s.labels)
	s.setDesired(key, d)
	renewed := h.lease
	h.mu.Unlock()
	if old != nil {
		h.writes.forget(old)
		old.end(errReplaced) // the host's own credential reconnects: the newest wins
	}
	if renewed != lease {
		// The lease was replaced since the claim, and the sessions to
		// claim again listed without s: claim under the new one.
		if err := h.claim(ctx, s, renewed, false); err != nil {
			h.detachLocked(ctx, s, false)
			return err
		}
	}
	h.writes.mark(s) // what the claim did not write, when it is due
	return nil
}

// claim claims host s.id for this replica under lease, writing (with
// withStatus) its newest status in the same transaction.
func (h *hub) claim(ctx context.Context, s *session, lease clientv3.LeaseID, withStatus bool) error {
	holder, err := h.writes.claim(ctx, s, lease, withStatus)
	switch {
	case errors.Is(err, store.ErrAlreadyExists):
		return status.Errorf(codes.AlreadyExists, "host %q is connected to controller replica %q; a second stream is refused while the first lives (a dead replica's hold ends within %s)", s.id, holder, h.opts.SessionTTL)
	case err != nil:
		return unavailable(ctx, "cannot record the host's session", err)
	}
	return nil
}

// restoreStatus keeps the last reported state the agent had (a restart of
// the controller changes nothing on the hosts) but takes the new facts,
// unless the two together are over the size of a status. The status stored
// (as the cache has it: no read of etcd per connecting agent) counts as
// written now, so that a hello that changes only counters and the last-seen
// time is not written at once.
func (h *hub) restoreStatus(s *session, hello *pb.AgentHello) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen, s.promptGen = 1, 1 // a host not stored: its hello's status, at once
	prev, _, ok := h.c.cache.Host(s.id)
	if !ok || prev == nil {
		return
	}
	st := shallowHost(prev) // the cache's statuses are never changed
	st.Labels, st.Facts, st.AgentVersion, st.DryRun = s.status.Labels, s.status.Facts, s.status.AgentVersion, s.status.DryRun
	st.ReportedLabels = s.status.ReportedLabels
	st.LastSeenTime = s.status.LastSeenTime
	if st.AppliedRevision == 0 {
		st.AppliedRevision = hello.GetAppliedRevision()
	}
	if n := proto.Size(st); n > maxHostStatusSize {
		h.log.Warn("the stored status with the new facts is over the size of a status; starting afresh", "host", s.id, "bytes", n, "limit", maxHostStatusSize)
		return
	}
	write, wait := nextWrite(st, prev, now, h.opts.HealthWriteInterval, now)
	s.status, s.lastWrite = st, now
	switch {
	case write != nil:
	case wait > 0:
		s.promptGen = 0 // counters only: written when due
	default:
		s.gen, s.promptGen = 0, 0 // as stored
	}
}

// detach ends s's hold of its host, unless a newer stream of the host
// holds it now: with flush, the status not yet written is written, and the
// host's session key released, in one write.
func (h *hub) detach(ctx context.Context, s *session, flush bool) {
	unlock := h.lockHost(s.id)
	defer unlock()
	h.detachLocked(ctx, s, flush)
}

func (h *hub) detachLocked(ctx context.Context, s *session, flush bool) {
	h.mu.Lock()
	current := h.sessions[s.id] == s
	h.mu.Unlock()
	if !current {
		h.writes.forget(s)
		return
	}
	// Released before it leaves the map: once the map is empty, every
	// release is done (awaitLeft).
	h.release(ctx, s, flush)
	h.mu.Lock()
	if h.sessions[s.id] == s {
		delete(h.sessions, s.id)
	}
	h.mu.Unlock()
	select {
	case h.left <- struct{}{}:
	default:
	}
}

// release releases the host of s if this replica holds it, writing first
// (with flush) what is pending of its status.
func (h *hub) release(ctx context.Context, s *session, flush bool) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := h.writes.release(dctx, s, flush); err != nil {
		h.log.Warn("end session", "host", s.id, "err", err)
	}
}

// reclaim claims a host this replica serves again under a new lease (the
// old one was lost). If another replica took the host in the meantime, or
// the claim fails, the stream here ends: two replicas never both serve one
// host.
func (h *hub) reclaim(ctx context.Context, id string, lease clientv3.LeaseID) {
	unlock := h.lockHost(id)
	defer unlock()
	h.mu.Lock()
	s := h.sessions[id]
	h.mu.Unlock()
	if s == nil {
		return
	}
	if err := h.claim(ctx, s, lease, false); err != nil && ctx.Err() == nil {
		h.log.Warn("re-announce session; ending the stream", "host", id, "err", err)
		s.end(err)
	}
}
