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
// fleet, registers s here (a stream of the same host's credential that it
// replaces ends), and writes the host's status.
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
	if err := h.claim(ctx, s.id, lease); err != nil {
		return err
	}
	h.restoreStatus(ctx, s, hello)
	h.mu.Lock()
	if h.closing {
		h.mu.Unlock()
		h.release(ctx, s.id)
		return status.Error(codes.Unavailable, "controller shutting down")
	}
	if old := h.sessions[s.id]; old != nil {
		old.cancel() // the host's own credential reconnects: the newest wins
	}
	h.sessions[s.id] = s
	key, d := desiredFor(h.groups, h.targets, s.id, s.labels)
	s.setDesired(key, d)
	renewed := h.lease
	h.mu.Unlock()
	if renewed != lease {
		// The lease was replaced since the claim, and the sessions to
		// claim again listed without s: claim under the new one.
		if err := h.claim(ctx, s.id, renewed); err != nil {
			h.detachLocked(ctx, s, false)
			return err
		}
	}
	if err := h.putStatus(ctx, s, s.currentStatus()); err != nil {
		h.detachLocked(ctx, s, false)
		return unavailable(ctx, "cannot store the host's status", err)
	}
	return nil
}

// claim claims host id for this replica under lease.
func (h *hub) claim(ctx context.Context, id string, lease clientv3.LeaseID) error {
	holder, err := h.c.store.ClaimSession(ctx, id, h.opts.Replica, lease)
	switch {
	case errors.Is(err, store.ErrAlreadyExists):
		return status.Errorf(codes.AlreadyExists, "host %q is connected to controller replica %q; a second stream is refused while the first lives (a dead replica's hold ends within %s)", id, holder, h.opts.SessionTTL)
	case err != nil:
		return unavailable(ctx, "cannot record the host's session", err)
	}
	return nil
}

// restoreStatus keeps the last reported state the agent had (a restart of
// the controller changes nothing on the hosts) but takes the new facts,
// unless the two together are over the size of a status.
func (h *hub) restoreStatus(ctx context.Context, s *session, hello *pb.AgentHello) {
	prev, err := h.c.store.GetHost(ctx, s.id)
	if err != nil {
		return
	}
	st := proto.Clone(prev).(*pb.Host)
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
	s.status = st
}

// detach ends s's hold of its host, unless a newer stream of the host
// holds it now: with flush, the status not yet written is written, then
// the host's session key is released.
func (h *hub) detach(ctx context.Context, s *session, flush bool) {
	unlock := h.lockHost(s.id)
	defer unlock()
	h.detachLocked(ctx, s, flush)
}

func (h *hub) detachLocked(ctx context.Context, s *session, flush bool) {
	h.mu.Lock()
	current := h.sessions[s.id] == s
	if current {
		delete(h.sessions, s.id)
	}
	h.mu.Unlock()
	if !current {
		return
	}
	defer func() {
		select {
		case h.left <- struct{}{}:
		default:
		}
	}()
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if flush {
		s.mu.Lock()
		st, last := s.status, s.lastWritten
		s.mu.Unlock()
		if st != last && !proto.Equal(st, last) {
			if err := h.putStatus(dctx, s, st); err != nil {
				h.log.Warn("write host status at the end of its stream", "host", s.id, "err", err)
			}
		}
	}
	h.release(dctx, s.id)
}

// release deletes host id's session key if this replica holds it.
func (h *hub) release(ctx context.Context, id string) {
	if err := h.c.store.DeleteSession(ctx, id, h.opts.Replica); err != nil {
		h.log.Warn("end session", "host", id, "err", err)
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
	if err := h.claim(ctx, id, lease); err != nil && ctx.Err() == nil {
		h.log.Warn("re-announce session; ending the stream", "host", id, "err", err)
		s.end(err)
	}
}

// currentStatus returns the newest status of s.
func (s *session) currentStatus() *pb.Host {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}
