package controller

// Host status writes, coalesced per host. A report only updates the host's
// status in memory and wakes the host's writer; the writer has at most one
// write in flight and always writes the newest status. So a burst of reports
// makes at most two writes (the one in flight, then the newest), an agent's
// stream never waits for etcd, and one host's flood never delays another
// host. A change of anything but health counters and the last-seen time (a
// path's state, the sync state, a problem, labels) is written as soon as the
// write in flight is done; a change of counters only, at most every
// HealthWriteInterval; a status equal to the last one written, never.
//
// A status write that fails ends the agent's stream with UNAVAILABLE: the
// agent reconnects and reports again, rather than the controller keeping a
// stale status as if it were stored.

import (
	"context"
	"time"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// statusWriteTimeout bounds one status write (the store's guard bounds it
// more tightly, to --etcd-request-timeout).
const statusWriteTimeout = 10 * time.Second

// AgentReports reports how many agent reports the hub has taken in (valid
// or not), however many status writes they made.
func (c *Controller) AgentReports() int64 { return c.hub.reports.Load() }

// setStatus makes st the newest status of s and wakes its writer.
func (s *session) setStatus(st *pb.Host) {
	s.mu.Lock()
	s.status = st
	s.mu.Unlock()
	s.markDirty()
}

// markDirty wakes the status writer of s.
func (s *session) markDirty() {
	select {
	case s.dirty <- struct{}{}:
	default: // already woken: it reads the newest status
	}
}

// nextWrite decides what to write of a host whose newest status is st, and
// whose status last written (at lastWrite) is last: st, or nil and how long
// until a change of counters only is due (0: nothing to write).
func nextWrite(st, last *pb.Host, lastWrite time.Time, every time.Duration, now time.Time) (*pb.Host, time.Duration) {
	if st == nil || st == last || proto.Equal(st, last) {
		return nil, 0
	}
	if last == nil {
		return st, 0
	}
	a := proto.Clone(st).(*pb.Host)
	b := proto.Clone(last).(*pb.Host)
	// Path states are not counters: a change is written at once.
	a.Health, b.Health = pathStates(a.Health), pathStates(b.Health)
	a.LastSeenTime, b.LastSeenTime = nil, nil
	if !proto.Equal(a, b) {
		return st, 0
	}
	if wait := every - now.Sub(lastWrite); wait > 0 {
		return nil, wait
	}
	return st, 0
}

// statusWriter writes the status of s whenever it changes, until ctx ends
// (then it returns nil) or a write fails (then it returns the UNAVAILABLE
// status that ends the stream).
func (h *hub) statusWriter(ctx context.Context, s *session) error {
	due := time.NewTimer(time.Hour)
	due.Stop()
	defer due.Stop()
	armed := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.dirty:
		case <-due.C:
			armed = false
		}
		s.mu.Lock()
		st, last, at := s.status, s.lastWritten, s.lastWrite
		s.mu.Unlock()
		w, wait := nextWrite(st, last, at, h.opts.HealthWriteInterval, time.Now())
		if w == nil {
			if wait > 0 && !armed {
				due.Reset(wait)
				armed = true
			}
			continue
		}
		if err := h.putStatus(ctx, s, w); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			h.log.Warn("write host status failed; ending the agent's stream", "host", s.id, "err", err)
			return status.Errorf(codes.Unavailable, "the controller could not store the status of host %q: %v; reconnect", s.id, err)
		}
	}
}

// putStatus writes st as the status of s, if it is within the size of a
// status (what the hello and reports add was checked before; a status over
// it is a bug, logged and not written).
func (h *hub) putStatus(ctx context.Context, s *session, st *pb.Host) error {
	if n := proto.Size(st); n > maxHostStatusSize {
		h.log.Error("host status over its size limit; not written", "host", s.id, "bytes", n, "limit", maxHostStatusSize)
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, statusWriteTimeout)
	defer cancel()
	if _, err := h.c.store.PutHost(wctx, s.id, st); err != nil {
		return err
	}
	s.mu.Lock()
	s.lastWritten, s.lastWrite = st, time.Now()
	s.mu.Unlock()
	return nil
}
