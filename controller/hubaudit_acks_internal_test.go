package controller

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// TestEventAcksDue: a stream acknowledges the highest sequence up to which
// every event is recorded or passed over, announcing itself first; a
// passed-over event is not acknowledged while one queued before it waits.
func TestEventAcksDue(t *testing.T) {
	type step struct {
		op   string // queue, record, pass
		seq  uint64
		want int64 // -1: nothing due
	}
	for _, tc := range []struct {
		name  string
		epoch uint64
		steps []step
	}{
		{"in order", 7, []step{{"queue", 1, 0}, {"queue", 2, -1}, {"record", 1, 1}, {"record", 2, 2}, {"record", 2, -1}}},
		{"passed behind queued", 7, []step{{"queue", 1, 0}, {"pass", 2, -1}, {"queue", 3, -1}, {"record", 1, 1}, {"record", 3, 3}}},
		{"passed alone", 7, []step{{"pass", 1, 1}, {"pass", 2, 2}}},
		{"passed after recorded", 7, []step{{"queue", 4, 0}, {"record", 4, 4}, {"pass", 5, 5}}},
		{"no epoch: nothing", 0, []step{{"queue", 0, -1}, {"record", 0, -1}, {"pass", 0, -1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEventAcks(tc.epoch, nil)
			for i, s := range tc.steps {
				switch s.op {
				case "queue":
					e.queue(s.seq)
				case "record":
					e.recorded(s.seq)
				case "pass":
					e.pass(s.seq)
				}
				n, ok := e.due()
				got := int64(-1)
				if ok {
					got = int64(n)
				}
				if got != s.want {
					t.Fatalf("step %d (%s %d): due %d, want %d", i, s.op, s.seq, got, s.want)
				}
			}
		})
	}
}

// gatedStore appends to a real store once its gate opens.
type gatedStore struct {
	st   *store.Store
	gate chan struct{}
}

func (g *gatedStore) AppendAgentEvents(ctx context.Context, evs []store.AgentEvent) (int, error) {
	select {
	case <-g.gate:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return g.st.AppendAgentEvents(ctx, evs)
}

// TestAuditAppenderBackpressure: with the queue full, add waits (the
// receiver stops reading the agent's stream) rather than dropping, and
// gives up only when its stream ends; once appends go through, the waiting
// event is queued and every event is recorded and acknowledged.
func TestAuditAppenderBackpressure(t *testing.T) {
	_, cli := etcdtest.Embedded(t)
	st := store.New(cli, "/mpfleet/v1/")
	g := &gatedStore{st: st, gate: make(chan struct{})}
	a := newAuditAppender(g, slog.New(slog.DiscardHandler))
	a.maxEvents = 2
	ready := make(chan struct{}, 1) // what the stream's sender would be woken by
	acks := newEventAcks(9, func() {
		select {
		case ready <- struct{}{}:
		default:
		}
	})
	ev := func(seq uint64) queuedEvent {
		return queuedEvent{ev: store.AgentEvent{Host: "h1", Epoch: 9, Seq: seq, Event: &pb.AuditEvent{Actor: "agent:h1", Action: "agent.applied", Host: "hosts/h1"}}, acks: acks}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.run(ctx) }()
	defer func() { cancel(); <-done }()

	for seq := range uint64(2) {
		acks.queue(seq + 1)
		if err := a.add(ctx, ev(seq+1)); err != nil {
			t.Fatal(err)
		}
	}
	// A stream that ends while it waits: its event is not queued.
	sctx, scancel := context.WithCancel(ctx)
	gaveUp := make(chan error, 1)
	go func() { gaveUp <- a.add(sctx, ev(3)) }()
	scancel()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) {
		t.Fatalf("add on an ended stream with the queue full: %v, want context.Canceled", err)
	}
	// A live stream waits until there is room.
	added := make(chan error, 1)
	go func() { acks.queue(3); added <- a.add(ctx, ev(3)) }()
	select {
	case err := <-added:
		t.Fatalf("add returned (%v) with the queue full", err)
	case <-ready: // the announcement, sequence 0
		if n, ok := acks.due(); !ok || n != 0 {
			t.Fatalf("first acknowledgement %d, %v; want the announcement, 0", n, ok)
		}
	}
	close(g.gate)
	if err := <-added; err != nil {
		t.Fatal(err)
	}
	deadline := time.After(20 * time.Second)
	for {
		select {
		case <-ready:
		case <-deadline:
			t.Fatal("events 1-3 not acknowledged within 20s")
		}
		if n, ok := acks.due(); ok && n == 3 {
			break
		}
	}
	evs, _, err := st.ListAudit(ctx, store.AuditQuery{Limit: 10})
	if err != nil || len(evs) != 3 {
		t.Fatalf("%d events recorded (%v), want 3", len(evs), err)
	}
}
