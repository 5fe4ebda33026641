package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

func agentEvent(host string, epoch, seq uint64) store.AgentEvent {
	return store.AgentEvent{Host: host, Epoch: epoch, Seq: seq, Event: &pb.AuditEvent{
		Actor: "agent:" + host, Action: "agent.applied", Host: "hosts/" + host, Reason: fmt.Sprintf("%d/%d", epoch, seq),
	}}
}

// reasons lists the reasons of every audit event, in order.
func reasons(t *testing.T, s *store.Store) []string {
	t.Helper()
	evs, _, err := s.ListAudit(context.Background(), store.AuditQuery{Limit: 10000})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ev := range evs {
		out = append(out, ev.GetHost()+" "+ev.GetReason())
	}
	return out
}

// TestAppendAgentEventsOnce: a numbered event sent again is recorded once,
// in the same batch or a later one; events of a new epoch are new, and an
// older epoch's, appended late, do not reopen the newer one; unnumbered
// events are always appended; the chain verifies.
func TestAppendAgentEventsOnce(t *testing.T) {
	_, cli := etcdtest.Embedded(t)
	s := store.New(cli, prefix, store.WithAuditKey(auditKey(t, 7)))
	ctx := context.Background()
	steps := []struct {
		evs  []store.AgentEvent
		want int
	}{
		{[]store.AgentEvent{agentEvent("h1", 10, 1), agentEvent("h1", 10, 2), agentEvent("h2", 20, 1)}, 3},
		// h1's 2 again (its ack was lost), then 3; h2's 1 twice in one batch.
		{[]store.AgentEvent{agentEvent("h1", 10, 2), agentEvent("h1", 10, 3), agentEvent("h2", 20, 1), agentEvent("h2", 20, 1)}, 1},
		// All recorded: nothing appended.
		{[]store.AgentEvent{agentEvent("h1", 10, 1), agentEvent("h1", 10, 3)}, 0},
		// h1 restarted (epoch 11); then epoch 10's 4, appended late by
		// another replica, is new; epoch 11's 1 sent again is not.
		{[]store.AgentEvent{agentEvent("h1", 11, 1)}, 1},
		{[]store.AgentEvent{agentEvent("h1", 10, 4), agentEvent("h1", 11, 1)}, 1},
		// Unnumbered (an old agent): always.
		{[]store.AgentEvent{agentEvent("h3", 0, 0), agentEvent("h3", 0, 0)}, 2},
	}
	for i, st := range steps {
		n, err := s.AppendAgentEvents(ctx, st.evs)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if n != st.want {
			t.Errorf("step %d: appended %d, want %d", i, n, st.want)
		}
	}
	want := []string{"hosts/h1 10/1", "hosts/h1 10/2", "hosts/h2 20/1", "hosts/h1 10/3", "hosts/h1 11/1", "hosts/h1 10/4", "hosts/h3 0/0", "hosts/h3 0/0"}
	if got := reasons(t, s); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("audit log:\n got %q\nwant %q", got, want)
	}
	v, err := s.VerifyAudit(ctx)
	if err != nil || !v.GetOk() {
		t.Fatalf("verify: %v %v", v, err)
	}
}

// TestAppendAgentEventsRace: two replicas append the same events at once
// (one had them queued when the agent moved to the other): each is
// recorded once.
func TestAppendAgentEventsRace(t *testing.T) {
	_, cli := etcdtest.Embedded(t)
	s1 := store.New(cli, prefix)
	s2 := store.New(cli, prefix)
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for _, s := range []*store.Store{s1, s2} {
		wg.Go(func() {
			for i := range n {
				if _, err := s.AppendAgentEvents(context.Background(), []store.AgentEvent{agentEvent("h1", 5, uint64(i+1))}); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got := reasons(t, s1)
	if len(got) != n {
		t.Fatalf("%d events recorded, want %d: %q", len(got), n, got)
	}
	for i, r := range got {
		if want := fmt.Sprintf("hosts/h1 5/%d", i+1); r != want {
			t.Fatalf("event %d is %q, want %q", i, r, want)
		}
	}
}

// TestAppendAgentEventsBound: a batch at the bound (events and marks)
// fits one etcd transaction; one over it is refused, and nothing appended.
func TestAppendAgentEventsBound(t *testing.T) {
	_, cli := etcdtest.Embedded(t)
	s := store.New(cli, prefix)
	var evs []store.AgentEvent
	for i := range store.MaxAuditBatch / 2 {
		evs = append(evs, agentEvent(fmt.Sprintf("h%d", i), 1, 1))
	}
	if n, err := s.AppendAgentEvents(context.Background(), evs); err != nil || n != len(evs) {
		t.Fatalf("append %d events of as many hosts: %d, %v", len(evs), n, err)
	}
	evs = append(evs, agentEvent("one-more", 1, 1))
	if _, err := s.AppendAgentEvents(context.Background(), evs); !errors.Is(err, store.ErrFailedPrecondition) {
		t.Fatalf("append over the bound: %v, want ErrFailedPrecondition", err)
	}
	if got := len(reasons(t, s)); got != store.MaxAuditBatch/2 {
		t.Errorf("%d events recorded, want %d", got, store.MaxAuditBatch/2)
	}
}
