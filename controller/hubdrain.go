package controller

// Graceful drain. A replica being stopped moves its agents to the other
// replicas, paced, rather than dropping them all at once: it refuses new
// streams (its health is already NOT_SERVING, so load balancers move away),
// then tells its agents to move, DrainRate per second. For each, it stops
// the stream's sends, writes what is pending, releases the host's
// session key — so that another replica accepts the agent at once — and
// only then sends Drain and ends the stream. It returns once every agent
// has gone, or DrainTimeout has passed (the streams still open are ended
// then, as without a drain). A replica with no other replica alive (none
// campaigns in the leader election) does not drain: its agents have nowhere
// to go, and their streams end at once.

import (
	"context"
	"fmt"
	"math"
	"time"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// drainJitter is the window within which a drained agent reconnects, at a
// random moment, to spread each batch.
const drainJitter = 100 * time.Millisecond

// drain refuses new agent streams and moves the agents of this replica to
// others, paced at DrainRate, until all have gone or DrainTimeout passed.
// It returns how many agents it told to move, and how many streams were
// still open at its end. With a DrainRate of 0 it only refuses new streams.
func (h *hub) drain() (moved, left int) {
	h.mu.Lock()
	h.closing = true
	list := make([]*session, 0, len(h.sessions))
	for _, s := range h.sessions {
		list = append(list, s)
	}
	h.mu.Unlock()
	rate := h.opts.DrainRate
	if rate <= 0 || len(list) == 0 {
		return 0, len(list)
	}
	if others, err := h.otherReplicas(); others == 0 {
		// Nowhere to move to: the agents come back when this one does.
		h.log.Info("no other controller replica to drain the agents to; ending their streams", "agents", len(list), "err", err)
		return 0, len(list)
	}
	h.log.Info("draining agents to the other replicas", "agents", len(list), "rate", rate, "timeout", h.opts.DrainTimeout)
	start := time.Now()
	deadline := time.NewTimer(h.opts.DrainTimeout)
	defer deadline.Stop()
	pace := time.NewTimer(time.Hour)
	defer pace.Stop()
	timedOut := false
	// Agent i is told at start + i/rate, those that are due together in a
	// batch.
	for moved < len(list) && !timedOut {
		due := len(list)
		if f := time.Since(start).Seconds()*rate + 1; f < float64(due) {
			due = int(f)
		}
		for ; moved < due; moved++ {
			go h.handOff(list[moved])
		}
		if moved == len(list) {
			break
		}
		pace.Reset(time.Until(start.Add(time.Duration(float64(moved) / rate * float64(time.Second)))))
		select {
		case <-pace.C:
		case <-deadline.C:
			timedOut = true
		}
	}
	if timedOut {
		h.mu.Lock()
		left = len(h.sessions)
		h.mu.Unlock()
	} else {
		left = h.awaitLeft(deadline.C)
	}
	if left > 0 {
		h.log.Warn("drain timed out; ending the streams still open", "moved", moved, "left", left, "after", time.Since(start).Round(time.Millisecond))
	} else {
		h.log.Info("drained every agent", "moved", moved, "after", time.Since(start).Round(time.Millisecond))
	}
	return moved, left
}

// otherReplicas counts the other replicas alive: those campaigning in the
// leader election (every replica does, on its session lease).
func (h *hub) otherReplicas() (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := h.c.store.Client().Get(ctx, h.c.store.ElectionPrefix()+"/", clientv3.WithPrefix())
	if err != nil {
		return 0, err
	}
	n := 0
	for _, kv := range resp.Kvs {
		if string(kv.Value) != h.opts.Replica {
			n++
		}
	}
	return n, nil
}

// handOff moves the agent of session s to another replica, unless its
// stream has ended already: it stops the sends on the stream, writes what
// is pending (unless the status could not be stored), releases the host,
// then sends Drain and ends the stream with UNAVAILABLE. The stream's
// handler waits for it (leave).
func (h *hub) handOff(s *session) {
	done := make(chan struct{})
	if !s.startLeaving(done) {
		return
	}
	defer close(done)
	h.letGo(context.Background(), s)
	d := &pb.Drain{
		Reason:          fmt.Sprintf("controller replica %q is shutting down", h.opts.Replica),
		ReconnectWithin: durationpb.New(drainJitter),
	}
	if err := s.stream.Send(&pb.ConnectResponse{Kind: &pb.ConnectResponse_Drain{Drain: d}}); err != nil {
		s.end(&sendError{err})
		return
	}
	s.end(status.Errorf(codes.Unavailable, "controller replica %q is shutting down; connect to another replica", h.opts.Replica))
}

// checkDrainFlags refuses a drain that cannot be done, by flag name.
func checkDrainFlags(f Flags) error {
	switch {
	case f.DrainRate < 0 || math.IsNaN(f.DrainRate) || math.IsInf(f.DrainRate, 0):
		return fmt.Errorf("--drain-rate %v: must be 0 (no drain) or a positive number of agents per second", f.DrainRate)
	case f.DrainTimeout <= 0:
		return fmt.Errorf("--drain-timeout %v: must be positive", f.DrainTimeout)
	}
	return nil
}
