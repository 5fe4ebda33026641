package controller

// The hub's etcd writes, batched across hosts. One transaction per host
// write does not hold a fleet: at 10,000 agents the status writes took
// longer than etcd's request timeout, and when each failed write ended its
// agent's stream the reconnects added writes to an etcd already too slow.
//
// One writer per hub takes what its hosts need written — the newest status
// of each host whose status changed, the claims of hosts connecting, the
// releases of hosts leaving — and writes those of up to store.MaxHostBatch
// hosts (and maxBatchBytes) in one etcd transaction (store.WriteHosts), at
// most batchesInFlight transactions at once. A host is in one transaction
// at a time, so its writes land in order. Claims and releases have a waiter
// (the stream attaching or leaving) and go ahead of statuses.
//
// What of a host's status is written, and when, is nextWrite's (hubwriter.go).
//
// A transaction that fails is retried with backoff, rather than ending the
// streams of its hosts: a host's stream ends (UNAVAILABLE; its agent
// reconnects and reports again) only when its status could not be stored
// for HubOptions.StatusFailTimeout, or could not while the store is known
// unhealthy (storehealth.go). A batch that etcd refuses for what it is,
// rather than for being unavailable (more operations or bytes than a
// member's limits), is written host by host.

import (
	"container/heap"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

const (
	// batchesInFlight is how many transactions the writer has in flight.
	batchesInFlight = 4
	// maxBatchBytes bounds the statuses of one transaction (etcd's default
	// --max-request-bytes is 1.5 MiB).
	maxBatchBytes = 1 << 20
	// batchTimeout bounds one transaction (the store's guard bounds it more
	// tightly, to --etcd-request-timeout).
	batchTimeout = 10 * time.Second
	// After a failed transaction the next waits retryBase, doubling with
	// each failure in a row up to retryMax, with jitter.
	retryBase = 100 * time.Millisecond
	retryMax  = 5 * time.Second
)

// hostStore is what the writer writes to (a *store.Store).
type hostStore interface {
	WriteHosts(ctx context.Context, replica string, ws []store.HostWrite) ([]store.HostResult, error)
}

// writerOptions configure a hostWriter.
type writerOptions struct {
	replica   string
	every     time.Duration // HealthWriteInterval
	failAfter time.Duration // StatusFailTimeout
	inFlight  int
	maxHosts  int
	maxBytes  int
	unhealthy func() bool // the store is known unhealthy
}

// hostWriter batches the hub's per-host etcd writes.
type hostWriter struct {
	st   hostStore
	opts writerOptions
	log  *slog.Logger

	mu       sync.Mutex
	ops      []*hostOp       // claims and releases, first come first
	queue    []*session      // sessions whose status may need a write
	later    laterHeap       // sessions with a counters-only change due later
	busy     map[string]bool // hosts in a transaction now
	inflight int
	fails    int       // transactions failed in a row
	retryAt  time.Time // no transaction before
	closed   bool
	wake     chan struct{} // cap 1
	commits  sync.WaitGroup
}

// writeState is what the writer keeps of a session, under hostWriter.mu.
type writeState struct {
	queued    bool
	laterAt   time.Time // its entry in later (zero: none)
	failSince time.Time // its status could not be stored since (zero: it could)
	gone      bool      // released or replaced: write nothing more of it
}

// hostOp is a claim or a release, with its waiter.
type hostOp struct {
	ctx     context.Context // the waiter's: dropped if it ends before its turn
	id      string
	claim   bool
	lease   clientv3.LeaseID
	release bool
	s       *session // its status rides along (claim: status; release: what is pending)
	status  *pb.Host // claim: the status written with it (nil: none)
	gen     uint64   // claim: the change of status it is

	done   chan struct{}
	holder string
	err    error
}

// item is one host's write in a batch.
type item struct {
	op     *hostOp  // nil: a status write of s
	s      *session // whose status is written (nil: none)
	status *pb.Host
	gen    uint64 // the change of the status of s it is
	id     string
}

func newHostWriter(st hostStore, log *slog.Logger, opts writerOptions) *hostWriter {
	if opts.inFlight <= 0 {
		opts.inFlight = batchesInFlight
	}
	if opts.maxHosts <= 0 {
		opts.maxHosts = store.MaxHostBatch
	}
	if opts.maxBytes <= 0 {
		opts.maxBytes = maxBatchBytes
	}
	if opts.unhealthy == nil {
		opts.unhealthy = func() bool { return false }
	}
	return &hostWriter{st: st, opts: opts, log: log, busy: map[string]bool{}, wake: make(chan struct{}, 1)}
}

func (w *hostWriter) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// mark queues s: its status may need a write.
func (w *hostWriter) mark(s *session) {
	w.mu.Lock()
	if !s.ws.queued && !s.ws.gone && !w.closed {
		s.ws.queued = true
		w.queue = append(w.queue, s)
	}
	w.mu.Unlock()
	w.signal()
}

// forget stops writing the status of s (another stream of its host
// replaced it).
func (w *hostWriter) forget(s *session) {
	w.mu.Lock()
	s.ws.gone = true
	w.mu.Unlock()
}

// claim claims host s.id for this replica under lease, writing (with
// status) the newest status of s in the same transaction. It returns the
// holder and an error wrapping store.ErrAlreadyExists when another replica
// holds the host.
func (w *hostWriter) claim(ctx context.Context, s *session, lease clientv3.LeaseID, status bool) (string, error) {
	op := &hostOp{ctx: ctx, id: s.id, claim: true, lease: lease}
	if status {
		p := s.pending()
		op.s, op.status, op.gen = s, p.status, p.gen
	}
	err := w.do(op)
	return op.holder, err
}

// release writes what is pending of the status of s (with flush), and
// releases its host's session key if this replica holds it; nothing more of
// s is written afterwards.
func (w *hostWriter) release(ctx context.Context, s *session, flush bool) error {
	op := &hostOp{ctx: ctx, id: s.id, release: true}
	if flush {
		op.s = s
	}
	w.mu.Lock()
	s.ws.gone = true
	w.mu.Unlock()
	return w.do(op)
}

// do queues op and waits until it is done.
func (w *hostWriter) do(op *hostOp) error {
	op.done = make(chan struct{})
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return store.ErrUnavailable // the hub is stopping
	}
	w.ops = append(w.ops, op)
	w.mu.Unlock()
	w.signal()
	<-op.done
	return op.err
}

// run writes until ctx ends, then waits for the transactions in flight
// (which ctx does not cut short) and fails the claims and releases still
// queued.
func (w *hostWriter) run(ctx context.Context) {
	cctx := context.WithoutCancel(ctx)
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		w.mu.Lock()
		now := time.Now()
		w.dueLocked(now)
		for w.inflight < w.opts.inFlight && !now.Before(w.retryAt) {
			b := w.takeLocked(now)
			if len(b) == 0 {
				break
			}
			w.inflight++
			w.commits.Add(1)
			go w.commit(cctx, b)
		}
		next := w.nextLocked(now)
		w.mu.Unlock()
		if next > 0 {
			t.Reset(next)
		}
		select {
		case <-ctx.Done():
			w.commits.Wait()
			w.mu.Lock()
			w.closed = true
			ops := w.ops
			w.ops, w.queue = nil, nil
			w.mu.Unlock()
			for _, op := range ops {
				op.err = store.ErrUnavailable
				close(op.done)
			}
			return
		case <-w.wake:
		case <-t.C:
		}
	}
}

// nextLocked returns how long until the writer has something to do that
// no signal announces: a counters-only write due, or the end of a backoff
// with work waiting (0: nothing).
func (w *hostWriter) nextLocked(now time.Time) time.Duration {
	var at time.Time
	if len(w.later) > 0 {
		at = w.later[0].at
	}
	if (len(w.ops) > 0 || len(w.queue) > 0) && w.retryAt.After(now) && (at.IsZero() || w.retryAt.Before(at)) {
		at = w.retryAt
	}
	if at.IsZero() {
		return 0
	}
	return max(at.Sub(now), time.Millisecond)
}

// dueLocked queues the sessions whose counters-only write is due.
func (w *hostWriter) dueLocked(now time.Time) {
	for len(w.later) > 0 && !w.later[0].at.After(now) {
		e := heap.Pop(&w.later).(laterEntry)
		s := e.s
		if !s.ws.laterAt.Equal(e.at) {
			continue // rescheduled
		}
		s.ws.laterAt = time.Time{}
		if !s.ws.queued && !s.ws.gone {
			s.ws.queued = true
			w.queue = append(w.queue, s)
		}
	}
}

// takeLocked takes the next batch: claims and releases first, then the
// newest statuses that are due, skipping hosts in a transaction now.
func (w *hostWriter) takeLocked(now time.Time) []item {
	var b []item
	bytes := 0
	full := func() bool { return len(b) >= w.opts.maxHosts || bytes >= w.opts.maxBytes }
	var keepOps []*hostOp
	for i, op := range w.ops {
		if full() {
			keepOps = append(keepOps, w.ops[i:]...)
			break
		}
		if op.ctx.Err() != nil {
			op.err = op.ctx.Err()
			close(op.done)
			continue
		}
		if w.busy[op.id] {
			keepOps = append(keepOps, op)
			continue
		}
		it := item{op: op, id: op.id, s: op.s, status: op.status, gen: op.gen}
		if op.release && op.s != nil {
			if p := op.s.pending(); p.changed {
				it.status, it.gen = p.status, p.gen
			} else {
				it.s = nil
			}
		}
		w.busy[op.id] = true
		bytes += proto.Size(it.status)
		b = append(b, it)
	}
	w.ops = keepOps
	var keep []*session
	i := 0
	for ; i < len(w.queue) && !full(); i++ {
		s := w.queue[i]
		w.queue[i] = nil
		if w.busy[s.id] {
			keep = append(keep, s)
			continue
		}
		s.ws.queued = false
		if s.ws.gone {
			continue
		}
		p := s.pending()
		write, wait := p.due(w.opts.every, now)
		if !write {
			if wait > 0 {
				w.laterLocked(s, now.Add(wait))
			}
			continue
		}
		n := proto.Size(p.status)
		if n > maxHostStatusSize {
			// What the hello and reports add was checked before: a bug.
			w.log.Error("host status over its size limit; not written", "host", s.id, "bytes", n, "limit", maxHostStatusSize)
			continue
		}
		if len(b) > 0 && bytes+n > w.opts.maxBytes {
			s.ws.queued = true
			keep = append(keep, s)
			i++
			break
		}
		w.busy[s.id] = true
		bytes += n
		b = append(b, item{s: s, status: p.status, gen: p.gen, id: s.id})
	}
	if len(keep) > 0 {
		w.queue = append(keep, w.queue[i:]...)
	} else {
		w.queue = w.queue[i:]
	}
	return b
}

// laterLocked schedules a look at the status of s at at.
func (w *hostWriter) laterLocked(s *session, at time.Time) {
	if !s.ws.laterAt.IsZero() && !s.ws.laterAt.After(at) {
		return
	}
	s.ws.laterAt = at
	heap.Push(&w.later, laterEntry{at: at, s: s})
}

// commit writes batch b and takes in the outcome.
func (w *hostWriter) commit(ctx context.Context, b []item) {
	defer w.commits.Done()
	ws := make([]store.HostWrite, len(b))
	for i, it := range b {
		ws[i] = store.HostWrite{ID: it.id, Status: it.status}
		if it.op != nil {
			ws[i].Claim, ws[i].Lease, ws[i].Release = it.op.claim, it.op.lease, it.op.release
		}
	}
	errs := make([]error, len(b))
	res, err := w.write(ctx, ws)
	switch {
	case err == nil:
	case len(ws) > 1 && !transient(err):
		// Refused for what it is: host by host.
		w.log.Warn("a batch of host writes was refused; writing its hosts one by one", "hosts", len(ws), "err", err)
		res = make([]store.HostResult, len(ws))
		for i := range ws {
			r, err := w.write(ctx, ws[i:i+1])
			if err != nil {
				errs[i] = err
				continue
			}
			res[i] = r[0]
		}
	default:
		for i := range errs {
			errs[i] = err
		}
	}
	w.finish(b, res, errs)
}

func (w *hostWriter) write(ctx context.Context, ws []store.HostWrite) ([]store.HostResult, error) {
	tctx, cancel := context.WithTimeout(ctx, batchTimeout)
	defer cancel()
	return w.st.WriteHosts(tctx, w.opts.replica, ws)
}

// finish takes in the outcome of batch b: res (for those written) and errs.
func (w *hostWriter) finish(b []item, res []store.HostResult, errs []error) {
	now := time.Now()
	var unhealthy *bool
	w.mu.Lock()
	defer w.signal()
	defer w.mu.Unlock()
	w.inflight--
	failed := false
	var again []*session // to write again, ahead of the rest
	for i, it := range b {
		delete(w.busy, it.id)
		err := errs[i]
		if err == nil && res != nil {
			err = res[i].Err
		}
		if err == nil && it.s != nil && it.status != nil {
			it.s.wrote(it.gen, now)
			it.s.ws.failSince = time.Time{}
		}
		if it.op != nil {
			it.op.err = err
			if res != nil && errs[i] == nil {
				it.op.holder = res[i].Holder
			}
			close(it.op.done)
			if errs[i] != nil {
				failed = true
			}
			continue
		}
		if err == nil {
			continue
		}
		failed = true
		s := it.s
		if s.ws.failSince.IsZero() {
			s.ws.failSince = now
		}
		if unhealthy == nil {
			u := w.opts.unhealthy()
			unhealthy = &u
		}
		if now.Sub(s.ws.failSince) >= w.opts.failAfter || *unhealthy {
			w.log.Warn("host status not stored; ending the agent's stream", "host", s.id, "failing for", now.Sub(s.ws.failSince).Round(time.Millisecond), "err", err)
			s.ws.gone = true
			s.writeFailed.Store(true)
			s.end(status.Errorf(codes.Unavailable, "the controller could not store the status of host %q: %v; reconnect", s.id, err))
			continue
		}
		if !s.ws.queued && !s.ws.gone {
			s.ws.queued = true
			again = append(again, s)
		}
	}
	if len(again) > 0 {
		w.queue = append(again, w.queue...)
	}
	if failed {
		w.fails++
		d := min(retryBase<<min(w.fails-1, 10), retryMax)
		d = d/2 + rand.N(d/2+1)
		w.retryAt = now.Add(d)
	} else {
		w.fails = 0
	}
}

// transient says err is etcd being unavailable, slow or out of space — a
// batch to try again — rather than a refusal of the batch itself.
func transient(err error) bool {
	err = store.Classify(err)
	switch {
	case errors.Is(err, store.ErrUnavailable), errors.Is(err, store.ErrNoSpace),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return true
	}
	switch status.Code(err) {
	case codes.DeadlineExceeded, codes.Canceled, codes.Unavailable:
		return true
	}
	return false
}

// laterHeap orders sessions by when their counters-only write is due.
type laterHeap []laterEntry

type laterEntry struct {
	at time.Time
	s  *session
}

func (h laterHeap) Len() int           { return len(h) }
func (h laterHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h laterHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *laterHeap) Push(x any)        { *h = append(*h, x.(laterEntry)) }
func (h *laterHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = laterEntry{}
	*h = old[:len(old)-1]
	return e
}

// writersGrace bounds how long the hub's writers outlive it, for the
// streams still open to leave.
const writersGrace = 5 * time.Second

// awaitLeft waits until no stream is registered, or until done fires, and
// returns how many streams are still registered.
func (h *hub) awaitLeft(done <-chan time.Time) int {
	for {
		h.mu.Lock()
		n := len(h.sessions)
		h.mu.Unlock()
		if n == 0 {
			return 0
		}
		select {
		case <-h.left:
		case <-done:
			h.mu.Lock()
			defer h.mu.Unlock()
			return len(h.sessions)
		}
	}
}
