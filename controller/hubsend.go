package controller

// The senders of the agent streams. A stream's handler goroutine receives
// (the hello, then the reports and events); what goes to the agent — its
// desired configuration whenever it changes, confirm echoes, event
// acknowledgements — is sent by a few goroutines the streams share,
// started when there is something to send and gone when there is nothing.
// A connected agent costs grpc-go's three goroutines and its handler, not
// one more that only waits to send (at fleet size a goroutine's stack is a
// good part of what an agent costs the controller), and a policy change
// goes out to the fleet from a few goroutines, not from one woken per host.
//
// Per stream the rules are those of a sender of its own: one send at a
// time, the latest desired configuration only (a slow agent gets what is
// current when its turn comes, not every revision in between), confirms in
// order. A send that cannot go out for sendTimeout (the agent does not read
// its stream) ends that stream, so that no agent holds a shared sender.
//
// The hub ends a stream by ending its context — the one agentStreamTap
// gave it, on which grpc-go's Recv and flow control wait — with a cause
// saying why (endReason).

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
)

// A send on an agent stream that has not returned after slowSend (the
// agent does not read its stream: gRPC flow control holds a send once
// ≈ 64 KiB wait unread) gives its sender's place to another, so that slow
// agents do not hold up the others; after sendTimeout it ends that stream.
const (
	slowSend    = time.Second
	sendTimeout = 30 * time.Second
)

// maxConfirms is how many confirm echoes a stream queues; past it the agent
// is flooding confirms, and those are dropped (it retries).
const maxConfirms = 16

// sendError is the cause of a stream's end by a failed send.
type sendError struct{ err error }

func (e *sendError) Error() string { return "send: " + e.err.Error() }

// statusWriter is grpc-go's transport stream (the ServerTransportStream in
// a handler's context), which writes a stream's final status.
type statusWriter interface {
	WriteStatus(st *status.Status) error
}

// streamEnder ends one agent stream with a cause. A cause that is a gRPC
// status is written first, as the stream's final status: grpc-go ends a
// stream whose Recv was unblocked by its context with CANCELED, before the
// handler returns what it would say. Then the stream's context ends, which
// unblocks the handler's Recv and any send held by flow control.
type streamEnder struct {
	w      statusWriter // nil: the status is what the handler returns
	cancel context.CancelCauseFunc
	why    atomic.Pointer[error] // the first cause given
}

// newStreamEnder returns the ender of the agent stream whose handler has
// ctx, or false if its context is not the one agentStreamTap made.
func newStreamEnder(ctx context.Context) (*streamEnder, bool) {
	cancel, ok := ctx.Value(streamEndKey{}).(context.CancelCauseFunc)
	if !ok {
		return nil, false
	}
	w, _ := grpc.ServerTransportStreamFromContext(ctx).(statusWriter)
	return &streamEnder{w: w, cancel: cancel}, true
}

// end ends the stream with cause; only the first cause counts.
func (e *streamEnder) end(cause error) {
	if cause == nil {
		cause = context.Canceled
	}
	if !e.why.CompareAndSwap(nil, &cause) {
		return
	}
	if isStatus(cause) && e.w != nil {
		_ = e.w.WriteStatus(status.Convert(cause)) // fails only when the stream has ended already
	}
	e.cancel(cause)
}

// isStatus says whether err is a gRPC status (what a stream can end with).
func isStatus(err error) bool {
	_, ok := status.FromError(err)
	return ok && err != nil
}

// cause returns the cause the stream was ended with, nil if none.
func (e *streamEnder) cause() error {
	if p := e.why.Load(); p != nil {
		return *p
	}
	return nil
}

// streamEndKey is the context key of an agent stream's end function.
type streamEndKey struct{}

// agentStreamTap gives every AgentService.Connect stream a context the hub
// can end: grpc-go's receive waits on the stream's own context, so ending
// it is what unblocks the handler's Recv (and a send held by flow control)
// when the hub ends the stream. It runs in the connection's reader, before
// the handler.
func agentStreamTap(ctx context.Context, info *tap.Info) (context.Context, error) {
	if info.FullMethodName != pb.AgentService_Connect_FullMethodName {
		return ctx, nil
	}
	ctx, end := context.WithCancelCause(ctx)
	return context.WithValue(ctx, streamEndKey{}, end), nil
}

// sendPool is the hub's shared senders.
type sendPool struct {
	h       *hub
	max     int           // senders at most, besides those held by slow sends
	timeout time.Duration // a send longer than this ends its stream

	mu       sync.Mutex
	queue    []*session // with something to send, each at most once (session.queued)
	senders  int        // running and counted toward max
	running  map[*sender]struct{}
	watching bool // the watchdog runs
}

// sender is one of the pool's goroutines; its fields are under the pool's
// lock.
type sender struct {
	s     *session  // sending now (nil: between sends)
	since time.Time // the send's start
	slow  bool      // its send is slow: not counted toward max
	ended bool      // its stream was ended for it
}

func newSendPool(h *hub) *sendPool {
	return &sendPool{h: h, max: max(8, 4*runtime.GOMAXPROCS(0)), timeout: sendTimeout, running: map[*sender]struct{}{}}
}

// kick queues s for a sender: its desired configuration changed, a confirm
// or an acknowledgement is to be sent, or it is served.
func (p *sendPool) kick(s *session) {
	s.mu.Lock()
	if s.queued || s.stopped || !s.served {
		s.mu.Unlock()
		return
	}
	s.queued = true
	s.mu.Unlock()
	p.mu.Lock()
	p.queue = append(p.queue, s)
	p.startLocked()
	p.mu.Unlock()
}

// startLocked starts a sender if one may start and there is work, and the
// watchdog with the first sender.
func (p *sendPool) startLocked() {
	if len(p.queue) == 0 || p.senders >= p.max {
		return
	}
	p.senders++
	w := &sender{}
	p.running[w] = struct{}{}
	go p.run(w)
	if !p.watching {
		p.watching = true
		go p.watch()
	}
}

// run sends for the queued sessions until none is left, or until its
// slow send made it one too many.
func (p *sendPool) run(w *sender) {
	for {
		p.mu.Lock()
		if w.slow { // its slow send returned: back in the count, or gone
			if p.senders >= p.max {
				delete(p.running, w)
				p.mu.Unlock()
				return
			}
			w.slow = false
			p.senders++
		}
		if len(p.queue) == 0 {
			p.senders--
			delete(p.running, w)
			p.queue = nil // do not keep a fleet-sized array while idle
			p.mu.Unlock()
			return
		}
		s := p.queue[0]
		p.queue[0] = nil
		p.queue = p.queue[1:]
		p.mu.Unlock()
		p.h.flush(s, func(send func() error) error {
			p.mu.Lock()
			w.s, w.since, w.ended = s, time.Now(), false
			p.mu.Unlock()
			err := send()
			p.mu.Lock()
			w.s = nil
			p.mu.Unlock()
			return err
		})
	}
}

// watch looks at the senders' sends while any sender runs: a slow send
// gives its place to another sender, and one past the timeout ends its
// stream (which ends the send).
func (p *sendPool) watch() {
	tick := time.NewTicker(slowSend / 4)
	defer tick.Stop()
	for range tick.C {
		p.mu.Lock()
		if len(p.running) == 0 {
			p.watching = false
			p.mu.Unlock()
			return
		}
		now := time.Now()
		var end []*session
		for w := range p.running {
			switch d := now.Sub(w.since); {
			case w.s == nil:
			case d >= p.timeout && !w.ended:
				w.ended = true
				end = append(end, w.s)
			case d >= slowSend && !w.slow:
				w.slow = true
				p.senders--
				p.startLocked()
			}
		}
		p.mu.Unlock()
		for _, s := range end {
			p.h.log.Warn("agent does not read its stream; ending it", "host", s.id, "send held for", p.timeout)
			s.end(status.Errorf(codes.DeadlineExceeded, "agent %q did not read its stream for %v", s.id, p.timeout))
		}
	}
}

// serve starts the sends of s: what it has to send now goes out.
func (p *sendPool) serve(s *session) {
	s.mu.Lock()
	s.served = true
	s.mu.Unlock()
	p.kick(s)
}

// flush sends what s has to send — its desired configuration if it is not
// the one sent last, the confirms queued, an acknowledgement due — until
// nothing is left or its sends are stopped. Each send goes through timed.
func (h *hub) flush(s *session, timed func(send func() error) error) {
	for {
		s.mu.Lock()
		if s.stopped {
			s.queued = false
			s.mu.Unlock()
			return
		}
		stream := s.stream
		var send func() error
		switch key, d := s.desiredKey, s.desired; {
		case key != s.sentKey:
			s.sentKey = key
			send = func() error {
				pm, err := h.prepare(stream, key, d)
				if err != nil {
					return err
				}
				return stream.SendMsg(pm)
			}
		case len(s.confirms) > 0:
			n := s.confirms[0]
			s.confirms = s.confirms[1:]
			if len(s.confirms) == 0 {
				s.confirms = nil
			}
			send = func() error {
				return stream.Send(&pb.ConnectResponse{Kind: &pb.ConnectResponse_Confirmed{Confirmed: &pb.Confirm{Nonce: n}}})
			}
		default:
			if n, ok := s.acks.due(); ok { // hubaudit.go
				send = func() error { return sendAck(stream, n) }
				break
			}
			s.queued = false
			s.mu.Unlock()
			return
		}
		s.sending = true
		s.mu.Unlock()
		err := timed(send)
		s.mu.Lock()
		s.sending = false
		if err != nil {
			s.stopped = true
		}
		if s.stopped {
			s.queued = false
			if s.idle != nil {
				close(s.idle)
				s.idle = nil
			}
			s.mu.Unlock()
			if err != nil {
				s.end(&sendError{err})
			}
			return
		}
		s.mu.Unlock()
	}
}

// stopSends stops the sends of s: none starts after it. The channel
// returned is closed once none is under way. (A send that failed ended the
// stream with its error.)
func (s *session) stopSends() <-chan struct{} {
	done := make(chan struct{})
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	if s.sending {
		s.idle = done
	} else {
		close(done)
	}
	return done
}

// queueConfirm queues the echo of a confirm nonce, and reports whether it
// was queued (false: the agent is flooding confirms).
func (s *session) queueConfirm(n uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.confirms) >= maxConfirms {
		return false
	}
	s.confirms = append(s.confirms, n)
	return true
}
