package controller

// Agent events, audited in batches, each recorded exactly once. Every agent
// reports an APPLIED event per change: one audit append each — a
// transaction that compares and puts the chain head, so that concurrent
// ones fail and retry — cost the controller more than the change itself at
// 1,000 agents. The receivers queue the events; one appender takes up to
// store.MaxAuditBatch of them (events and host marks, maxEventBatchBytes)
// at a time and appends them in one transaction, the hash chain running
// through them in memory (store.AppendAgentEvents). One appender, first
// come first served, keeps each host's events in order.
//
// Nothing acknowledged is lost. An agent numbers its events (the hello's
// event_epoch, then AgentEvent.sequence) and keeps each until the stream
// says it is recorded (ConnectResponse.events_recorded, sent once the
// append is done); what is not acknowledged when the stream ends it sends
// again on its next stream, to whichever replica, and the append leaves out
// what its host's mark shows recorded already. So a batch that fails is
// tried again, with backoff, for as long as the controller runs; a full
// queue, or a host over its event rate, stops the receiver reading that
// agent's stream until there is room (backpressure, never a drop); and what
// is still queued when the hub stops is appended within eventFlushTimeout,
// the rest left to the agents to send again. Events an agent sends that
// are invalid or of an unknown kind are logged and acknowledged: they will
// never be recorded.

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/mpfleet/mpfleet/internal/store"
	"github.com/mpfleet/mpfleet/internal/wait"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"golang.org/x/time/rate"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	// Bounds of the queue: a receiver waits for room beyond them (each
	// host's events are rate-limited before, agentlimits.go).
	maxQueuedEvents     = 100_000
	maxQueuedEventBytes = 64 << 20
	// maxEventBatchBytes bounds one append (etcd's default
	// --max-request-bytes is 1.5 MiB).
	maxEventBatchBytes = 1 << 20
	// eventRetryLog is how often an append that keeps failing is logged.
	eventRetryLog = 30 * time.Second
	// eventFlushTimeout bounds the appends of what is queued at the end.
	eventFlushTimeout = 3 * time.Second
)

// auditStore is what the appender appends to (a *store.Store).
type auditStore interface {
	AppendAgentEvents(ctx context.Context, evs []store.AgentEvent) (int, error)
}

// auditAppender appends the agents' events to the audit log, in batches.
type auditAppender struct {
	st  auditStore
	log *slog.Logger

	// Bounds of the queue (maxQueuedEvents, maxQueuedEventBytes; tests
	// set others).
	maxEvents, maxBytes int

	mu    sync.Mutex
	queue []queuedEvent
	bytes int
	full  bool          // a receiver waits for room
	room  chan struct{} // closed when events leave the queue
	wake  chan struct{}
}

// queuedEvent is an event to append, and the acknowledgements of the stream
// it came on (nil: nobody waits for it).
type queuedEvent struct {
	ev   store.AgentEvent
	size int
	acks *eventAcks
}

func newAuditAppender(st auditStore, log *slog.Logger) *auditAppender {
	return &auditAppender{st: st, log: log, maxEvents: maxQueuedEvents, maxBytes: maxQueuedEventBytes,
		wake: make(chan struct{}, 1), room: make(chan struct{})}
}

// add queues q, waiting while the queue is full; it fails only when ctx
// ends first (q is not queued).
func (a *auditAppender) add(ctx context.Context, q queuedEvent) error {
	q.size = proto.Size(q.ev.Event)
	for {
		a.mu.Lock()
		if len(a.queue) == 0 || (len(a.queue) < a.maxEvents && a.bytes+q.size <= a.maxBytes) {
			a.queue = append(a.queue, q)
			a.bytes += q.size
			a.mu.Unlock()
			select {
			case a.wake <- struct{}{}:
			default:
			}
			return nil
		}
		if !a.full {
			a.full = true
			a.log.Warn("audit: the queue of agent events is full; their streams wait until it drains", "events", len(a.queue), "bytes", a.bytes)
		}
		room := a.room
		a.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// next returns the next batch, without taking it off the queue: at most
// store.MaxAuditBatch events and host marks, and maxEventBatchBytes.
func (a *auditAppender) next() []store.AgentEvent {
	a.mu.Lock()
	defer a.mu.Unlock()
	var b []store.AgentEvent
	hosts := map[string]bool{}
	bytes := 0
	for _, q := range a.queue {
		numbered := 0
		if q.ev.Epoch != 0 && !hosts[q.ev.Host] {
			numbered = 1
		}
		if store.AgentEventsCost(len(b)+1, len(hosts)+numbered) > store.MaxAuditBatch || (len(b) > 0 && bytes+q.size > maxEventBatchBytes) {
			break
		}
		if numbered == 1 {
			hosts[q.ev.Host] = true
		}
		b = append(b, q.ev)
		bytes += q.size
	}
	return b
}

// done takes the first n events off the queue, recorded: their streams
// acknowledge them.
func (a *auditAppender) done(n int) {
	a.mu.Lock()
	taken := a.queue[:n]
	for i := range n {
		a.bytes -= a.queue[i].size
	}
	a.queue = a.queue[n:]
	if len(a.queue) == 0 {
		a.queue = nil // let the backing array go
	}
	if n > 0 {
		close(a.room)
		a.room = make(chan struct{})
	}
	if a.full {
		a.full = false
		a.log.Info("audit: the queue of agent events has room again", "events", len(a.queue))
	}
	a.mu.Unlock()
	for i := range taken {
		if q := taken[i]; q.acks != nil {
			q.acks.recorded(q.ev.Seq)
		}
		taken[i] = queuedEvent{}
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
			numbered, other := 0, 0
			for _, q := range a.queue {
				if q.ev.Epoch != 0 {
					numbered++
				} else {
					other++
				}
			}
			a.mu.Unlock()
			if numbered > 0 {
				a.log.Warn("audit: agent events not recorded before the controller stopped; their agents send them again to the next replica", "events", numbered)
			}
			if other > 0 {
				a.log.Error("audit: agent events lost: the controller stopped before they were recorded, and their agents (older than event acknowledgements) do not send them again", "events", other)
			}
			return
		case <-a.wake:
			for a.appendNext(ctx) {
			}
		}
	}
}

// appendNext appends the next batch, trying again with backoff until it
// is recorded or ctx ends. It reports whether it took a batch off the queue
// and ctx has not ended.
func (a *auditAppender) appendNext(ctx context.Context) bool {
	b := a.next()
	if len(b) == 0 {
		return false
	}
	d := retryBase
	var logged time.Time
	for {
		actx, cancel := context.WithTimeout(ctx, batchTimeout)
		_, err := a.st.AppendAgentEvents(actx, b)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return false
		}
		if time.Since(logged) >= eventRetryLog {
			a.log.Error("audit: cannot record agent events yet; retrying (their agents keep them until recorded)", "events", len(b), "err", err)
			logged = time.Now()
		}
		if !wait.Sleep(ctx, d/2+rand.N(d/2+1)) {
			return false
		}
		d = min(2*d, retryMax)
	}
	a.done(len(b))
	return ctx.Err() == nil
}

// eventAcks is what one stream acknowledges of its agent's events: the
// highest sequence queued, recorded and passed over (invalid), and sent.
type eventAcks struct {
	epoch uint64 // the hello's event_epoch; 0: nothing is acknowledged
	// throttled: the stream's events went over its rate, which is logged
	// once a stream (the receiving goroutine's alone).
	throttled bool

	mu                     sync.Mutex
	queued, stored, passed uint64
	sent                   uint64
	announced              bool
	wake                   func() // something to send: queues the stream for a sender
}

// newEventAcks returns the acknowledgements of a stream whose hello gave
// epoch: a first one, sequence 0, tells the agent that this controller
// acknowledges. wake is called whenever there is something to send.
func newEventAcks(epoch uint64, wake func()) *eventAcks {
	e := &eventAcks{epoch: epoch, wake: wake}
	if epoch != 0 {
		e.signal()
	}
	return e
}

func (e *eventAcks) signal() {
	if e.wake != nil {
		e.wake()
	}
}

// queue notes event seq queued.
func (e *eventAcks) queue(seq uint64) {
	e.mu.Lock()
	e.queued = max(e.queued, seq)
	e.mu.Unlock()
}

// pass notes event seq passed over: never to be recorded.
func (e *eventAcks) pass(seq uint64) {
	if e.epoch == 0 || seq == 0 {
		return
	}
	e.mu.Lock()
	e.passed = max(e.passed, seq)
	e.mu.Unlock()
	e.signal()
}

// recorded notes event seq in the audit log.
func (e *eventAcks) recorded(seq uint64) {
	e.mu.Lock()
	e.stored = max(e.stored, seq)
	e.mu.Unlock()
	if e.epoch != 0 && seq != 0 {
		e.signal()
	}
}

// due returns the sequence to acknowledge now, if any: every event up to
// it recorded or passed over. Passed-over events are acknowledged only once
// every queued one before them is recorded.
func (e *eventAcks) due() (uint64, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.epoch == 0 {
		return 0, false
	}
	n := e.stored
	if e.stored >= e.queued {
		n = max(e.stored, e.passed)
	}
	if n > e.sent || !e.announced {
		e.sent, e.announced = max(n, e.sent), true
		return e.sent, true
	}
	return 0, false
}

// sendAck acknowledges the agent's events up to sequence n.
func sendAck(stream pb.AgentService_ConnectServer, n uint64) error {
	return stream.Send(&pb.ConnectResponse{Kind: &pb.ConnectResponse_EventsRecorded{EventsRecorded: &pb.EventsRecorded{Sequence: n}}})
}

// takeEvent takes an agent's event on stream s into the audit queue: it
// waits while the host is over its event rate (lim) or the queue is full,
// so that the agent's stream is not read meanwhile. It fails only when ctx
// ends. An event of an unknown kind, or invalid, is logged and passed over.
func (h *hub) takeEvent(ctx context.Context, s *session, caller Caller, ev *pb.AgentEvent, lim *rate.Limiter) error {
	epoch, seq := s.acks.epoch, ev.GetSequence()
	if epoch == 0 || seq == 0 {
		epoch, seq = 0, 0 // not numbered: appended however often it comes
	}
	a, ok := eventActions[ev.GetKind()]
	if !ok {
		h.log.Warn("agent sent an event of unknown kind; not recorded", "host", s.id, "kind", ev.GetKind(), "sequence", seq)
		s.acks.pass(seq)
		return nil
	}
	if err := validateEvent(ev); err != nil {
		h.log.Warn("agent sent an invalid event; not recorded", "host", s.id, "sequence", seq, "err", err)
		s.acks.pass(seq)
		return nil
	}
	if !lim.Allow() {
		if !s.acks.throttled {
			s.acks.throttled = true
			h.log.Warn("agent event rate exceeded; reading its stream slower (logged once a stream)", "host", s.id, "kind", ev.GetKind())
		}
		if err := lim.Wait(ctx); err != nil {
			return err
		}
	}
	s.acks.queue(seq)
	return h.events.add(ctx, queuedEvent{
		ev:   store.AgentEvent{Host: s.id, Epoch: epoch, Seq: seq, Event: auditEventOf(s, caller, a.action, a.result, ev)},
		acks: s.acks,
	})
}

// auditEventOf is the audit event of an agent's event.
func auditEventOf(s *session, caller Caller, action string, result pb.AuditResult, ev *pb.AgentEvent) *pb.AuditEvent {
	after, _ := anypb.New(ev)
	resource := ev.GetGroup()
	if resource == "" {
		resource = store.HostName(s.id)
	}
	actor := caller.Actor // the authenticated identity, never a name the agent gives
	if caller.Anonymous {
		actor = "agent:" + s.id
	}
	a := &pb.AuditEvent{
		Actor: actor, Action: action, Resource: resource, Host: store.HostName(s.id),
		After: after, Result: result, PeerAddress: caller.Peer, RequestId: caller.RequestID,
		Reason: ev.GetMessage(), StatusCode: "OK", Time: timestamppb.Now(),
	}
	if result == pb.AuditResult_AUDIT_RESULT_FAILURE {
		a.StatusCode, a.Error = "FAILED", ev.GetMessage()
	}
	return a
}
