package controller

// Agent events, audited in batches. Every agent reports an APPLIED event
// per change: one audit append each — a transaction that compares and puts
// the chain head, so that concurrent ones fail and retry — cost the
// controller more than the change itself at 1,000 agents. The receivers
// queue the events; one appender takes up to store.MaxAuditBatch of them (and
// maxEventBatchBytes) at a time and appends them in one transaction, the
// hash chain running through them in memory (store.AppendAudits). One
// appender, first come first served, keeps each host's events in order; an
// agent's stream never waits for etcd.
//
// A batch that fails is tried again, with backoff, for eventRetryFor; then
// it is dropped, logged. Events over the queue's bounds are dropped, logged.
// What is queued when the hub stops is appended within eventFlushTimeout.

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/mpfleet/mpfleet/internal/store"
	"github.com/mpfleet/mpfleet/internal/wait"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
)

const (
	// Bounds of the queue: events beyond them are dropped (each host's
	// events are rate-limited before, agentlimits.go).
	maxQueuedEvents     = 100_000
	maxQueuedEventBytes = 64 << 20
	// maxEventBatchBytes bounds one append (etcd's default
	// --max-request-bytes is 1.5 MiB).
	maxEventBatchBytes = 1 << 20
	// eventRetryFor is how long a failing batch is tried again.
	eventRetryFor = 30 * time.Second
	// eventFlushTimeout bounds the appends of what is queued at the end.
	eventFlushTimeout = 3 * time.Second
)

// auditStore is what the appender appends to (a *store.Store).
type auditStore interface {
	AppendAudits(ctx context.Context, evs []*pb.AuditEvent) ([]*pb.AuditEvent, error)
}

// auditAppender appends the agents' events to the audit log, in batches.
type auditAppender struct {
	st  auditStore
	log *slog.Logger

	mu      sync.Mutex
	queue   []queuedEvent
	bytes   int
	dropped int // since the last log of drops
	wake    chan struct{}
}

type queuedEvent struct {
	ev   *pb.AuditEvent
	size int
}

func newAuditAppender(st auditStore, log *slog.Logger) *auditAppender {
	return &auditAppender{st: st, log: log, wake: make(chan struct{}, 1)}
}

// add queues ev; it reports false when the queue is full (ev is dropped).
func (a *auditAppender) add(ev *pb.AuditEvent) bool {
	n := proto.Size(ev)
	a.mu.Lock()
	if len(a.queue) >= maxQueuedEvents || a.bytes+n > maxQueuedEventBytes {
		if a.dropped == 0 {
			a.log.Error("audit: the queue of agent events is full; dropping events until it drains", "events", len(a.queue), "bytes", a.bytes)
		}
		a.dropped++
		a.mu.Unlock()
		return false
	}
	a.queue = append(a.queue, queuedEvent{ev: ev, size: n})
	a.bytes += n
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
	return true
}

// next returns the next batch, without taking it off the queue.
func (a *auditAppender) next() []*pb.AuditEvent {
	a.mu.Lock()
	defer a.mu.Unlock()
	var b []*pb.AuditEvent
	bytes := 0
	for _, q := range a.queue {
		if len(b) == store.MaxAuditBatch || (len(b) > 0 && bytes+q.size > maxEventBatchBytes) {
			break
		}
		b = append(b, q.ev)
		bytes += q.size
	}
	return b
}

// done takes the first n events off the queue.
func (a *auditAppender) done(n int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := range n {
		a.bytes -= a.queue[i].size
		a.queue[i] = queuedEvent{}
	}
	a.queue = a.queue[n:]
	if len(a.queue) == 0 {
		a.queue = nil // let the backing array go
	}
	if a.dropped > 0 {
		a.log.Error("audit: agent events dropped: the queue was full", "events", a.dropped)
		a.dropped = 0
	}
}

// run appends what is queued until ctx ends, then what is still queued,
// for at most eventFlushTimeout.
func (a *auditAppender) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), eventFlushTimeout)
			defer cancel()
			for a.appendNext(fctx) {
			}
			a.mu.Lock()
			left := len(a.queue)
			a.mu.Unlock()
			if left > 0 {
				a.log.Error("audit: agent events not recorded: the controller stopped before they were", "events", left)
			}
			return
		case <-a.wake:
			for a.appendNext(ctx) {
			}
		}
	}
}

// appendNext appends the next batch, trying again with backoff for
// eventRetryFor. It reports whether it took a batch off the queue and ctx
// has not ended.
func (a *auditAppender) appendNext(ctx context.Context) bool {
	b := a.next()
	if len(b) == 0 {
		return false
	}
	start := time.Now()
	d := retryBase
	for {
		_, err := a.st.AppendAudits(ctx, b)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return false
		}
		if time.Since(start) >= eventRetryFor {
			a.log.Error("audit: cannot record agent events; dropped", "events", len(b), "err", err)
			break
		}
		if !wait.Sleep(ctx, d/2+rand.N(d/2+1)) {
			return false
		}
		d = min(2*d, retryMax)
	}
	a.done(len(b))
	return ctx.Err() == nil
}
