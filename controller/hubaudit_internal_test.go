package controller

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/audit"
	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// auditRecorder passes appends to a real store, counting them, failing the
// first fails.
type auditRecorder struct {
	st *store.Store

	mu    sync.Mutex
	calls []int // events per call
	fails int
}

func (r *auditRecorder) AppendAgentEvents(ctx context.Context, evs []store.AgentEvent) (int, error) {
	r.mu.Lock()
	r.calls = append(r.calls, len(evs))
	fail := len(r.calls) <= r.fails
	r.mu.Unlock()
	if fail {
		return 0, fmt.Errorf("append: %w", store.ErrUnavailable)
	}
	return r.st.AppendAgentEvents(ctx, evs)
}

// TestAuditAppender: agents' events are appended many to a transaction,
// each host's in its order, the chain verifying; a failed append is tried
// again, and nothing is appended twice.
func TestAuditAppender(t *testing.T) {
	const hosts, each = 5, 100
	_, cli := etcdtest.Embedded(t)
	key, err := audit.NewKey(make([]byte, audit.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	st := store.New(cli, "/mpfleet/v1/", store.WithAuditKey(key))
	rec := &auditRecorder{st: st, fails: 2}
	a := newAuditAppender(rec, slog.New(slog.DiscardHandler))
	for i := range each {
		for h := range hosts {
			ev := &pb.AuditEvent{Actor: fmt.Sprintf("agent:h%d", h), Action: "agent.applied", Host: fmt.Sprintf("hosts/h%d", h), Reason: strconv.Itoa(i)}
			// h0 numbers no events (an older agent); the others do.
			if err := a.add(context.Background(), queuedEvent{ev: store.AgentEvent{Host: fmt.Sprintf("h%d", h), Epoch: uint64(h), Seq: uint64(i + 1), Event: ev}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.run(ctx) }()
	defer func() { cancel(); <-done }()

	deadline := time.Now().Add(30 * time.Second)
	for {
		head, err := st.AuditHead(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if head == hosts*each {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d events appended", head, hosts*each)
		}
		time.Sleep(10 * time.Millisecond)
	}
	v, err := st.VerifyAudit(ctx)
	if err != nil || !v.GetOk() || v.GetEventsChecked() != hosts*each {
		t.Fatalf("verify: %v, %v", v, err)
	}
	evs, _, err := st.ListAudit(ctx, store.AuditQuery{Limit: 10 * hosts * each})
	if err != nil {
		t.Fatal(err)
	}
	next := map[string]int{}
	for _, ev := range evs {
		if want := strconv.Itoa(next[ev.GetHost()]); ev.GetReason() != want {
			t.Fatalf("%s: event %s where %s was due (order or a duplicate)", ev.GetHost(), ev.GetReason(), want)
		}
		next[ev.GetHost()]++
	}
	rec.mu.Lock()
	calls := rec.calls
	rec.mu.Unlock()
	for _, n := range calls {
		if store.AgentEventsCost(n, hosts-1) > store.MaxAuditBatch {
			t.Errorf("an append of %d events of %d numbered hosts; at most %d with the marks", n, hosts-1, store.MaxAuditBatch)
		}
	}
	// 500 events: 5 batches of at most 116 (and 4 marks) once they all
	// wait, plus the two failed attempts.
	if len(calls) > rec.fails+hosts*each/(store.MaxAuditBatch-hosts+1)+1 {
		t.Errorf("%d appends for %d events: %v", len(calls), hosts*each, calls)
	}
}
