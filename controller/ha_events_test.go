package controller_test

// Agent events through etcd failures and a replica crash (issue #12): an
// event an agent sent is in the audit log exactly once, or the agent sends
// it again to the next replica. The agent here is a raw stream, so that the
// test chooses what is sent again.

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// eventAgent is one stream of an agent that numbers its events.
type eventAgent struct {
	st     pb.AgentService_ConnectClient
	cancel context.CancelFunc

	mu        sync.Mutex
	acked     uint64
	announced bool
	confirmed map[uint64]bool
	changed   chan struct{} // cap 1
	ended     error
	done      chan struct{}
}

// connectEvents opens a stream as host id with event epoch on conn; it
// returns the refusal if the replica refuses the hello.
func connectEvents(conn *grpc.ClientConn, id string, epoch uint64) (*eventAgent, error) {
	ctx, cancel := context.WithCancel(context.Background())
	st, err := pb.NewAgentServiceClient(conn).Connect(ctx)
	if err == nil {
		err = st.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Hello{Hello: &pb.AgentHello{
			HostId: id, Labels: map[string]string{"role": "web"}, AgentVersion: "test", EventEpoch: epoch,
		}}})
	}
	var first *pb.ConnectResponse
	if err == nil {
		first, err = st.Recv()
	}
	if err != nil {
		cancel()
		return nil, err
	}
	a := &eventAgent{st: st, cancel: cancel, confirmed: map[uint64]bool{}, changed: make(chan struct{}, 1), done: make(chan struct{})}
	a.take(first)
	go func() {
		defer close(a.done)
		for {
			m, err := st.Recv()
			if err != nil {
				a.mu.Lock()
				a.ended = err
				a.mu.Unlock()
				a.signal()
				return
			}
			a.take(m)
		}
	}()
	return a, nil
}

func (a *eventAgent) signal() {
	select {
	case a.changed <- struct{}{}:
	default:
	}
}

func (a *eventAgent) take(m *pb.ConnectResponse) {
	a.mu.Lock()
	if r := m.GetEventsRecorded(); r != nil {
		a.announced = true
		a.acked = max(a.acked, r.GetSequence())
	}
	if c := m.GetConfirmed(); c != nil {
		a.confirmed[c.GetNonce()] = true
	}
	a.mu.Unlock()
	a.signal()
}

func (a *eventAgent) close() {
	a.cancel()
	<-a.done
}

// send sends events from..to (APPLIED, revision = sequence).
func (a *eventAgent) send(t *testing.T, from, to uint64) {
	t.Helper()
	for seq := from; seq <= to; seq++ {
		ev := &pb.AgentEvent{Kind: pb.AgentEvent_KIND_APPLIED, Group: "groups/web", Revision: int64(seq), Sequence: seq,
			Message: fmt.Sprintf("event %d", seq)}
		if err := a.st.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Event{Event: ev}}); err != nil {
			t.Fatalf("send event %d: %v", seq, err)
		}
	}
}

// waitFor waits until cond holds of the stream's state.
func (a *eventAgent) waitFor(t *testing.T, what string, within time.Duration, cond func(acked uint64, announced bool, confirmed map[uint64]bool) bool) {
	t.Helper()
	deadline := time.After(within)
	for {
		a.mu.Lock()
		ok, ended := cond(a.acked, a.announced, a.confirmed), a.ended
		acked := a.acked
		a.mu.Unlock()
		if ok {
			return
		}
		if ended != nil {
			t.Fatalf("%s: the stream ended: %v (acknowledged up to %d)", what, ended, acked)
		}
		select {
		case <-a.changed:
		case <-deadline:
			t.Fatalf("%s: not within %v (acknowledged up to %d)", what, within, acked)
		}
	}
}

func (a *eventAgent) waitAcked(t *testing.T, seq uint64, within time.Duration) {
	t.Helper()
	a.waitFor(t, fmt.Sprintf("events up to %d acknowledged", seq), within, func(acked uint64, _ bool, _ map[uint64]bool) bool { return acked >= seq })
}

// appliedSequences returns the sequences of host's agent.applied events in
// the audit log, in order.
func appliedSequences(t *testing.T, r *clusterReplica, host string) []uint64 {
	t.Helper()
	resp, err := pb.NewAuditServiceClient(r.conn).ListAuditEvents(ctxT(t), &pb.ListAuditEventsRequest{Host: store.HostName(host), Action: "agent.applied", PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for _, ev := range resp.GetEvents() {
		var ae pb.AgentEvent
		if err := ev.GetAfter().UnmarshalTo(&ae); err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, ae.GetSequence())
	}
	return seqs
}

// wantOnceEach fails unless seqs is 1..n, each once.
func wantOnceEach(t *testing.T, seqs []uint64, n uint64) {
	t.Helper()
	if uint64(len(seqs)) != n {
		t.Fatalf("audit log has %d events %v, want 1..%d once each", len(seqs), seqs, n)
	}
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Fatalf("audit log events %v, want 1..%d once each, in order", seqs, n)
		}
	}
}

func verifyAudit(t *testing.T, r *clusterReplica) {
	t.Helper()
	v, err := pb.NewAuditServiceClient(r.conn).VerifyAuditLog(ctxT(t), &pb.VerifyAuditLogRequest{})
	if err != nil || !v.GetOk() {
		t.Fatalf("verify audit log: %v, %v", v, err)
	}
}

// TestHAClusterEventsThroughEtcdLeaderChange: an agent's events sent while
// the etcd leader is killed (SIGKILL) are all recorded, once each, and
// acknowledged; the host is over its event rate, so the replica also reads
// its stream slower rather than dropping any.
func TestHAClusterEventsThroughEtcdLeaderChange(t *testing.T) {
	const n = 40
	ec := etcdCluster(t)
	ra := startReplica(t, "ra", ec.Endpoints(), clusterTTL)
	a, err := connectEvents(ra.conn, "web-1", 0xe1)
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	a.waitFor(t, "the announcement", 10*time.Second, func(_ uint64, announced bool, _ map[uint64]bool) bool { return announced })
	a.send(t, 1, 10)
	a.waitAcked(t, 5, 20*time.Second)

	lead := ec.Leader(10 * time.Second)
	killed := time.Now()
	ec.Member(lead).Kill()
	a.send(t, 11, n)
	a.waitAcked(t, n, 60*time.Second)
	t.Logf("etcd leader m%d killed: all %d events recorded %v after", lead, n, time.Since(killed).Round(time.Millisecond))
	ec.Member(lead).Start()

	wantOnceEach(t, appliedSequences(t, ra, "web-1"), n)
	verifyAudit(t, ra)
}

// TestHAClusterEventsResentAfterReplicaCrash: etcd loses its quorum while
// a replica holds events it took (their echo of a later confirm came, so
// they were queued); the replica crashes. Its events were never
// acknowledged: the agent sends them again to another replica, which
// accepts the host once the crashed one's hold ends and records each once,
// also those the agent sends again though they were recorded (an
// acknowledgement lost). (That ALREADY_EXISTS refusals on the way cost no
// reconnect budget: TestAlreadyExistsCostsNoReconnect.)
func TestHAClusterEventsResentAfterReplicaCrash(t *testing.T) {
	ec := etcdCluster(t)
	cli := etcdtest.Client(t, ec.Endpoints())
	ra := startReplica(t, "ra", ec.Endpoints(), clusterTTL)
	rb := startReplica(t, "rb", ec.Endpoints(), clusterTTL)
	const epoch = 0xe2
	a, err := connectEvents(ra.conn, "web-1", epoch)
	if err != nil {
		t.Fatal(err)
	}
	a.send(t, 1, 3)
	a.waitAcked(t, 3, 20*time.Second)
	waitHolder(t, cli, "web-1", "ra", 10*time.Second)

	// etcd loses its quorum: nothing can be recorded.
	lead := ec.Leader(10 * time.Second)
	var down []int
	for i := range 3 {
		if i != lead {
			ec.Member(i).Kill()
			down = append(down, i)
		}
	}
	a.send(t, 4, 6)
	const nonce = 77
	if err := a.st.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Confirm{Confirm: &pb.Confirm{Nonce: nonce}}}); err != nil {
		t.Fatal(err)
	}
	a.waitFor(t, "the confirm echoed after events 4-6", 10*time.Second, func(_ uint64, _ bool, c map[uint64]bool) bool { return c[nonce] })
	a.mu.Lock()
	acked := a.acked
	a.mu.Unlock()
	if acked != 3 {
		t.Fatalf("acknowledged up to %d with etcd's quorum lost, want 3", acked)
	}
	ra.crash()
	a.close()
	for _, i := range down {
		ec.Member(i).Start()
	}

	// The agent moves to rb: refused while ra's lease lives, more often
	// than its reconnect burst.
	var b *eventAgent
	refusals := 0
	deadline := time.Now().Add(30 * time.Second)
	for b == nil {
		b, err = connectEvents(rb.conn, "web-1", epoch)
		switch status.Code(err) {
		case codes.OK:
		case codes.AlreadyExists:
			refusals++
			if time.Now().After(deadline) {
				t.Fatalf("rb still refuses web-1 after 30s: %v", err)
			}
			time.Sleep(50 * time.Millisecond) // an agent's backoff, not a wait for an event
		default:
			t.Fatalf("connect to rb after %d ALREADY_EXISTS refusals: %v", refusals, err)
		}
	}
	defer b.close()
	t.Logf("web-1 accepted by rb after %d ALREADY_EXISTS refusals", refusals)
	// 1-3 again as if their acknowledgement had been lost, and 4-6, never
	// acknowledged.
	b.send(t, 1, 6)
	b.waitAcked(t, 6, 30*time.Second)
	wantOnceEach(t, appliedSequences(t, rb, "web-1"), 6)
	verifyAudit(t, rb)
}
