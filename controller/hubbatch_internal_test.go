package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// recorder passes the writer's batches to a real store, and records them.
// A test may hold the next call until it says so, or fail calls (then
// nothing is written).
type recorder struct {
	st *store.Store

	mu     sync.Mutex
	calls  []call
	held   chan struct{} // not nil: the next call waits until it is closed
	holds  int           // calls waiting now
	fail   func(n int) error
	called chan struct{} // cap 1: a call was made
}

type call struct {
	at  time.Time
	ids []string
	err error
}

func (r *recorder) WriteHosts(ctx context.Context, replica string, ws []store.HostWrite) ([]store.HostResult, error) {
	ids := make([]string, len(ws))
	for i, w := range ws {
		ids[i] = w.ID
	}
	r.mu.Lock()
	n := len(r.calls)
	r.calls = append(r.calls, call{at: time.Now(), ids: ids})
	held := r.held
	r.held = nil
	if held != nil {
		r.holds++
	}
	var err error
	if r.fail != nil {
		err = r.fail(n)
	}
	r.mu.Unlock()
	select {
	case r.called <- struct{}{}:
	default:
	}
	if held != nil {
		<-held
		r.mu.Lock()
		r.holds--
		r.mu.Unlock()
	}
	var res []store.HostResult
	if err == nil {
		res, err = r.st.WriteHosts(ctx, replica, ws)
	}
	r.mu.Lock()
	r.calls[n].err = err
	r.mu.Unlock()
	return res, err
}

// hold makes the next call wait until the returned func is called.
func (r *recorder) hold() (release func()) {
	c := make(chan struct{})
	r.mu.Lock()
	r.held = c
	r.mu.Unlock()
	return func() { close(c) }
}

func (r *recorder) snapshot() []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]call(nil), r.calls...)
}

func (r *recorder) waiting() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.holds
}

// startWriter runs a hostWriter over a real etcd (embedded) through a
// recorder, until the test ends.
func startWriter(t *testing.T, opts writerOptions) (*hostWriter, *recorder, *clientv3.Client) {
	t.Helper()
	_, cli := etcdtest.Embedded(t)
	rec := &recorder{st: store.New(cli, "/mpfleet/v1/"), called: make(chan struct{}, 1)}
	if opts.replica == "" {
		opts.replica = "r1"
	}
	if opts.every == 0 {
		opts.every = time.Hour
	}
	if opts.failAfter == 0 {
		opts.failAfter = time.Hour
	}
	w := newHostWriter(rec, slog.New(slog.DiscardHandler), opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return w, rec, cli
}

// testSession is a session of host id whose stream's end the test sees in
// the returned context.
func testSession(id string) (*session, context.Context) {
	ctx, end := context.WithCancelCause(context.Background())
	return &session{id: id, end: end}, ctx
}

// setPrompt makes st the newest status of s, a change to write at once.
func setPrompt(s *session, st *pb.Host) {
	s.mu.Lock()
	s.status = st
	s.gen++
	s.promptGen = s.gen
	s.mu.Unlock()
}

// hostStatus is a status of host id that reports revision rev.
func hostStatus(id string, rev int64) *pb.Host {
	return &pb.Host{Name: store.HostName(id), SyncState: pb.SyncState_SYNC_STATE_IN_SYNC, AppliedRevision: rev}
}

// stored reads host id's status from etcd and how many times it was
// written (0: never).
func stored(t *testing.T, cli *clientv3.Client, id string) (*pb.Host, int64) {
	t.Helper()
	resp, err := cli.Get(context.Background(), "/mpfleet/v1/hosts/"+id)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0
	}
	h := &pb.Host{}
	if err := proto.Unmarshal(resp.Kvs[0].Value, h); err != nil {
		t.Fatal(err)
	}
	return h, resp.Kvs[0].Version
}

// eventually polls cond (a state the writer reaches by itself) until it
// holds, or fails the test after d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestHostWriterBatches: the statuses of many hosts go in transactions of
// at most maxHosts hosts, each host's once, all stored.
func TestHostWriterBatches(t *testing.T) {
	const n, max = 300, 50
	w, rec, cli := startWriter(t, writerOptions{maxHosts: max})
	release := rec.hold() // the first transaction waits: the rest queue up
	sessions := make([]*session, n)
	for i := range sessions {
		s, _ := testSession(fmt.Sprintf("h%d", i))
		sessions[i] = s
		setPrompt(s, hostStatus(s.id, 1))
		w.mark(s)
	}
	eventually(t, 10*time.Second, "the first transaction held", func() bool { return rec.waiting() == 1 })
	release()
	eventually(t, 20*time.Second, "every status stored", func() bool {
		for _, s := range sessions {
			if h, _ := stored(t, cli, s.id); h == nil {
				return false
			}
		}
		return true
	})
	calls := rec.snapshot()
	hosts := 0
	for _, c := range calls {
		if len(c.ids) > max {
			t.Errorf("a transaction of %d hosts; at most %d", len(c.ids), max)
		}
		hosts += len(c.ids)
	}
	if hosts != n {
		t.Errorf("%d host writes in %d transactions, want %d (each host's once)", hosts, len(calls), n)
	}
	if len(calls) > n/max+batchesInFlight+2 {
		t.Errorf("%d transactions for %d hosts of at most %d", len(calls), n, max)
	}
	t.Logf("%d hosts in %d transactions", n, len(calls))
	for _, s := range sessions {
		if s.pending().changed {
			t.Fatalf("host %s: the status written is not recorded as written", s.id)
		}
	}
}

// TestHostWriterCoalesces: statuses set while the host's write is in flight
// make one more write, of the newest.
func TestHostWriterCoalesces(t *testing.T) {
	w, rec, cli := startWriter(t, writerOptions{})
	s, _ := testSession("burst")
	release := rec.hold()
	setPrompt(s, hostStatus(s.id, 1))
	w.mark(s)
	eventually(t, 10*time.Second, "the first write held", func() bool { return rec.waiting() == 1 })
	for i := 2; i <= 100; i++ {
		setPrompt(s, hostStatus(s.id, int64(i)))
		w.mark(s)
	}
	release()
	eventually(t, 10*time.Second, "the newest status stored", func() bool {
		h, _ := stored(t, cli, s.id)
		return h.GetAppliedRevision() == 100
	})
	if _, v := stored(t, cli, s.id); v != 2 {
		t.Errorf("100 statuses made %d writes, want 2 (the one in flight, then the newest)", v)
	}
}

// TestHostWriterFallsBackPerHost: a transaction etcd refuses for what it is
// (here: more bytes than its request limit) is written host by host.
func TestHostWriterFallsBackPerHost(t *testing.T) {
	const n = 30 // of 60 KiB: over etcd's 1.5 MiB together
	w, rec, cli := startWriter(t, writerOptions{inFlight: 1, maxBytes: 8 << 20})
	first, _ := testSession("first")
	setPrompt(first, hostStatus(first.id, 1))
	release := rec.hold()
	w.mark(first)
	eventually(t, 10*time.Second, "the first write held", func() bool { return rec.waiting() == 1 })
	var big []*session
	for i := range n {
		s, _ := testSession(fmt.Sprintf("big%d", i))
		st := hostStatus(s.id, 1)
		st.LastError = strings.Repeat("x", 60<<10)
		setPrompt(s, st)
		big = append(big, s)
		w.mark(s)
	}
	release()
	eventually(t, 30*time.Second, "every big status stored", func() bool {
		for _, s := range big {
			if h, _ := stored(t, cli, s.id); h == nil {
				return false
			}
		}
		return true
	})
	calls := rec.snapshot()
	refused, single := false, 0
	for _, c := range calls[1:] {
		switch {
		case len(c.ids) > 1 && c.err != nil && !transient(c.err):
			refused = true
		case len(c.ids) == 1 && c.err == nil && refused:
			single++
		}
	}
	if !refused || single != n {
		for _, c := range calls {
			t.Logf("%d hosts: %v", len(c.ids), c.err)
		}
		t.Fatalf("refused batch: %v, then %d single writes; want a refused batch, then %d", refused, single, n)
	}
}

// TestHostWriterRetries: failed transactions are retried with growing
// backoff, without ending the streams, until the statuses are stored.
func TestHostWriterRetries(t *testing.T) {
	const failures = 4
	w, rec, cli := startWriter(t, writerOptions{})
	rec.fail = func(n int) error {
		if n < failures {
			return fmt.Errorf("write: %w", store.ErrUnavailable)
		}
		return nil
	}
	s, ended := testSession("h1")
	setPrompt(s, hostStatus(s.id, 7))
	w.mark(s)
	eventually(t, 30*time.Second, "the status stored", func() bool {
		h, _ := stored(t, cli, s.id)
		return h.GetAppliedRevision() == 7
	})
	if ended.Err() != nil {
		t.Fatalf("the stream ended: %v", context.Cause(ended))
	}
	calls := rec.snapshot()
	if len(calls) != failures+1 {
		t.Fatalf("%d attempts, want %d", len(calls), failures+1)
	}
	// Each wait at least half the backoff of its place (the jitter's
	// floor): 50 ms, 100 ms, 200 ms, 400 ms.
	for i := 1; i < len(calls); i++ {
		if gap, least := calls[i].at.Sub(calls[i-1].at), (retryBase<<(i-1))/2; gap < least {
			t.Errorf("attempt %d came %v after the one before; the backoff is at least %v", i+1, gap, least)
		}
	}
}

// TestHostWriterEndsStream: a status that cannot be stored ends its
// agent's stream with UNAVAILABLE once it has failed for failAfter — not
// before — or at the first failure while the store is known unhealthy.
func TestHostWriterEndsStream(t *testing.T) {
	unavailable := func(int) error { return fmt.Errorf("write: %w", store.ErrUnavailable) }
	check := func(t *testing.T, s *session, ended context.Context) {
		t.Helper()
		select {
		case <-ended.Done():
		case <-time.After(30 * time.Second):
			t.Fatal("the stream did not end")
		}
		cause := context.Cause(ended)
		if status.Code(cause) != codes.Unavailable || !strings.Contains(status.Convert(cause).Message(), `could not store the status of host "`+s.id+`"`) {
			t.Errorf("the stream ended with %v; want UNAVAILABLE saying the status could not be stored", cause)
		}
		if !s.writeFailed.Load() {
			t.Error("the session is not marked as failed (its pending status would be written at its end)")
		}
	}

	t.Run("after the bound", func(t *testing.T) {
		const bound = 1500 * time.Millisecond
		w, rec, _ := startWriter(t, writerOptions{failAfter: bound})
		rec.fail = unavailable
		s, ended := testSession("h1")
		setPrompt(s, hostStatus(s.id, 1))
		w.mark(s)
		check(t, s, ended)
		calls := rec.snapshot()
		if len(calls) < 2 {
			t.Fatalf("%d attempts before the stream ended; want retries", len(calls))
		}
		if span := calls[len(calls)-1].at.Sub(calls[0].at); span < bound {
			t.Errorf("the stream ended after failing for %v; the bound is %v", span, bound)
		}
	})
	t.Run("store unhealthy", func(t *testing.T) {
		w, rec, _ := startWriter(t, writerOptions{unhealthy: func() bool { return true }})
		rec.fail = unavailable
		s, ended := testSession("h2")
		setPrompt(s, hostStatus(s.id, 1))
		w.mark(s)
		check(t, s, ended)
		if n := len(rec.snapshot()); n != 1 {
			t.Errorf("%d attempts; want the stream ended at the first failure", n)
		}
	})
}

// TestHostWriterClaimAndRelease: a claim carries the hello's status in its
// transaction and counts it as written; a claim of a host another replica
// holds is refused naming it, and writes nothing; a release writes what is
// pending and frees the host.
func TestHostWriterClaimAndRelease(t *testing.T) {
	w, _, cli := startWriter(t, writerOptions{})
	ctx := context.Background()
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := testSession("h1")
	setPrompt(s, hostStatus(s.id, 3))
	if _, err := w.claim(ctx, s, lease.ID, true); err != nil {
		t.Fatal(err)
	}
	if h, _ := stored(t, cli, s.id); h.GetAppliedRevision() != 3 {
		t.Errorf("the claim did not write the status: %v", h)
	}
	if s.pending().changed {
		t.Error("the status the claim wrote is not recorded as written")
	}

	other := newHostWriter(store.New(cli, "/mpfleet/v1/"), slog.New(slog.DiscardHandler), writerOptions{replica: "r2"})
	octx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); other.run(octx) }()
	defer func() { cancel(); <-done }()
	o, _ := testSession("h1")
	setPrompt(o, hostStatus(o.id, 99))
	holder, err := other.claim(ctx, o, lease.ID, true)
	if !errors.Is(err, store.ErrAlreadyExists) || holder != "r1" {
		t.Errorf("claim of a held host: holder %q, %v; want r1 and ErrAlreadyExists", holder, err)
	}
	if h, _ := stored(t, cli, s.id); h.GetAppliedRevision() != 3 {
		t.Errorf("the refused claim wrote the status: %v", h)
	}

	setPrompt(s, hostStatus(s.id, 4))
	if err := w.release(ctx, s, true); err != nil {
		t.Fatal(err)
	}
	if h, _ := stored(t, cli, s.id); h.GetAppliedRevision() != 4 {
		t.Errorf("the release did not write the pending status: %v", h)
	}
	resp, err := cli.Get(ctx, "/mpfleet/v1/sessions/h1")
	if err != nil || len(resp.Kvs) != 0 {
		t.Errorf("sessions/h1 after the release: %v, %v", resp.Kvs, err)
	}
	// Released: nothing more is written of it.
	setPrompt(s, hostStatus(s.id, 5))
	w.mark(s)
	w.mu.Lock()
	queued := s.ws.queued
	w.mu.Unlock()
	if queued {
		t.Error("a released session was queued for a write")
	}
	if _, err := other.claim(ctx, o, lease.ID, false); err != nil {
		t.Fatalf("claim after the release: %v", err)
	}
}
