package store_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
)

// storedHostStatus reads hosts/{id} as stored (nil: none).
func storedHostStatus(t *testing.T, c *clientv3.Client, id string) *pb.Host {
	t.Helper()
	resp, err := c.Get(context.Background(), prefix+"hosts/"+id)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	h := &pb.Host{}
	if err := proto.Unmarshal(resp.Kvs[0].Value, h); err != nil {
		t.Fatal(err)
	}
	return h
}

// sessionHolder reads sessions/{id} ("": none).
func sessionHolder(t *testing.T, c *clientv3.Client, id string) string {
	t.Helper()
	resp, err := c.Get(context.Background(), prefix+"sessions/"+id)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return ""
	}
	return string(resp.Kvs[0].Value)
}

// TestWriteHostsBatch: the claims, statuses and releases of many hosts are
// one transaction — one revision — and one host's refused claim changes
// nothing of the others' writes, nor writes its own status.
func TestWriteHostsBatch(t *testing.T) {
	s, c := newStore(t)
	ctx := context.Background()
	lease, err := c.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ClaimSession(ctx, "held", "b", lease.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ClaimSession(ctx, "leaving", "a", lease.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ClaimSession(ctx, "moved", "b", lease.ID); err != nil {
		t.Fatal(err)
	}
	st := func(id string) *pb.Host { return &pb.Host{Name: store.HostName(id), AgentVersion: "v-" + id} }
	ws := []store.HostWrite{
		{ID: "new", Claim: true, Lease: lease.ID, Status: st("new")},
		{ID: "held", Claim: true, Lease: lease.ID, Status: st("held")},
		{ID: "bare", Claim: true, Lease: lease.ID},
		{ID: "plain", Status: st("plain")},
		{ID: "leaving", Release: true, Status: st("leaving")},
		{ID: "moved", Release: true, Status: st("moved")},
	}
	before, err := c.Get(ctx, "rev")
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.WriteHosts(ctx, "a", ws)
	if err != nil {
		t.Fatal(err)
	}
	after, err := c.Get(ctx, "rev")
	if err != nil {
		t.Fatal(err)
	}
	if n := after.Header.Revision - before.Header.Revision; n != 1 {
		t.Errorf("the batch took %d revisions, want 1 (one transaction)", n)
	}
	for i, w := range ws {
		wantErr := w.ID == "held"
		if gotErr := res[i].Err != nil; gotErr != wantErr {
			t.Errorf("%s: error %v, want an error: %v", w.ID, res[i].Err, wantErr)
		}
	}
	if !errors.Is(res[1].Err, store.ErrAlreadyExists) || res[1].Holder != "b" || !strings.Contains(res[1].Err.Error(), `"b"`) {
		t.Errorf("refused claim: holder %q, %v; want holder b and ErrAlreadyExists naming it", res[1].Holder, res[1].Err)
	}
	for id, want := range map[string]string{"new": "a", "held": "b", "bare": "a", "plain": "", "leaving": "", "moved": "b"} {
		if got := sessionHolder(t, c, id); got != want {
			t.Errorf("sessions/%s held by %q, want %q", id, got, want)
		}
	}
	for id, want := range map[string]bool{"new": true, "held": false, "bare": false, "plain": true, "leaving": true, "moved": true} {
		h := storedHostStatus(t, c, id)
		if (h != nil) != want || (h != nil && h.GetAgentVersion() != "v-"+id) {
			t.Errorf("hosts/%s = %v, want stored: %v", id, h, want)
		}
	}

	if _, err := s.WriteHosts(ctx, "a", []store.HostWrite{{ID: "x", Claim: true, Release: true}}); !errors.Is(err, store.ErrFailedPrecondition) {
		t.Errorf("claim and release at once: %v, want ErrFailedPrecondition", err)
	}
	if _, err := s.WriteHosts(ctx, "a", []store.HostWrite{{ID: "x"}}); !errors.Is(err, store.ErrFailedPrecondition) {
		t.Errorf("nothing to write: %v, want ErrFailedPrecondition", err)
	}
}

// TestWriteHostsMaxBatch: MaxHostBatch claims with statuses, the deepest
// writes, fit in one transaction within etcd's default limit of operations
// (counted along nested transactions); one more host does not — so the limit
// is the real one.
func TestWriteHostsMaxBatch(t *testing.T) {
	s, c := newStore(t)
	ctx := context.Background()
	lease, err := c.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	batch := func(n int, tag string) []store.HostWrite {
		ws := make([]store.HostWrite, n)
		for i := range ws {
			id := fmt.Sprintf("%s-%d", tag, i)
			ws[i] = store.HostWrite{ID: id, Claim: true, Lease: lease.ID, Status: &pb.Host{Name: store.HostName(id)}}
		}
		return ws
	}
	res, err := s.WriteHosts(ctx, "a", batch(store.MaxHostBatch, "h"))
	if err != nil {
		t.Fatalf("%d hosts: %v", store.MaxHostBatch, err)
	}
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("host %d: %v", i, r.Err)
		}
	}
	if h := storedHostStatus(t, c, fmt.Sprintf("h-%d", store.MaxHostBatch-1)); h == nil {
		t.Error("the last host of the batch was not written")
	}
	// etcd counts 3 levels of nesting: 128 - 2 - 2 hosts fit, 125 do not.
	if _, err := s.WriteHosts(ctx, "a", batch(125, "over")); err == nil {
		t.Error("125 claims in one transaction were taken; etcd's limit is not what MaxHostBatch assumes")
	}
}

// TestAppendAudits: a batch of events is appended in order in one
// transaction, chained through them; batches and single appends racing for
// the chain head leave a chain that verifies, with every event once.
func TestAppendAudits(t *testing.T) {
	_, c := etcdtest.Embedded(t)
	s := store.New(c, prefix, store.WithAuditKey(auditKey(t, 1)))
	ctx := context.Background()
	mk := func(host string, i int) *pb.AuditEvent {
		return &pb.AuditEvent{Actor: "agent:" + host, Action: "agent.applied", Host: store.HostName(host), Reason: fmt.Sprint(i)}
	}
	batch := make([]*pb.AuditEvent, store.MaxAuditBatch)
	for i := range batch {
		batch[i] = mk("b", i)
	}
	out, err := s.AppendAudits(ctx, batch)
	if err != nil {
		t.Fatal(err)
	}
	for i, ev := range out {
		if ev.GetSequence() != uint64(i+1) || ev.GetReason() != fmt.Sprint(i) || ev.GetTime() == nil {
			t.Fatalf("event %d appended as %v", i, ev)
		}
	}
	if batch[0].GetSequence() != 0 {
		t.Error("AppendAudits changed the caller's events")
	}
	if _, err := s.AppendAudits(ctx, append(batch, mk("b", -1))); !errors.Is(err, store.ErrFailedPrecondition) {
		t.Errorf("%d events at once: %v, want ErrFailedPrecondition", store.MaxAuditBatch+1, err)
	}

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				var err error
				if w%2 == 0 {
					_, err = s.AppendAudits(ctx, []*pb.AuditEvent{mk(fmt.Sprint(w), 2*i), mk(fmt.Sprint(w), 2*i+1)})
				} else {
					_, err = s.AppendAudit(ctx, mk(fmt.Sprint(w), i))
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if v := verifyAudit(t, s); !v.GetOk() || v.GetEventsChecked() != uint64(store.MaxAuditBatch+2*20+2*10) {
		t.Fatalf("verify: %v", v)
	}
	// Each writer's events in its order.
	last := map[string]int{}
	for _, ev := range events(t, c) {
		i, err := strconv.Atoi(ev.GetReason())
		if err != nil {
			t.Fatal(err)
		}
		if prev, ok := last[ev.GetActor()]; ok && i <= prev {
			t.Fatalf("%s: event %d after %d", ev.GetActor(), i, prev)
		}
		last[ev.GetActor()] = i
	}
}
