package controller_test

// High availability against a 3-member etcd cluster of separate processes
// (issue #12): replicas crash and come back, etcd members are killed with
// SIGKILL, the leader replica dies mid-rollout, and the replicas' watch
// goes through an etcd leader change and a compaction. The figures logged
// (failover times) are in docs/operations.md, "What was tested".

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/etcdtest"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// TestHAClusterReplicaCrash: the replica holding an agent crashes; within
// the session TTL another serves the agent, which applies the next revision
// from there. The crashed replica starts again (same name, same address)
// and, once the other stops, serves the agent itself.
func TestHAClusterReplicaCrash(t *testing.T) {
	ec := etcdCluster(t)
	cli := etcdtest.Client(t, ec.Endpoints())
	rs := map[string]*clusterReplica{
		"ra": startReplica(t, "ra", ec.Endpoints(), clusterTTL),
		"rb": startReplica(t, "rb", ec.Endpoints(), clusterTTL),
	}
	if _, err := rs["ra"].groups().CreateGroup(ctxT(t), &pb.CreateGroupRequest{GroupId: "web", Group: clusterGroup()}); err != nil {
		t.Fatal(err)
	}
	a := startClusterAgent(t, "web-1", rs["ra"], rs["rb"])
	a.waitSubflows(t, 3, 20*time.Second)
	from := waitKey(t, cli, "/mpfleet/v1/sessions/web-1", 10*time.Second, func(v string) bool { return v != "" })
	to := map[string]string{"ra": "rb", "rb": "ra"}[from]
	if to == "" {
		t.Fatalf("web-1 held by %q, want ra or rb", from)
	}

	crashed := time.Now()
	rs[from].crash()
	waitHolder(t, cli, "web-1", to, 15*time.Second)
	moved := time.Since(crashed)
	if _, calls := setSubflows(t, rs[to], 4); calls != 1 {
		t.Errorf("UpdateGroup took %d calls with every etcd member up, want 1", calls)
	}
	a.waitSubflows(t, 4, 15*time.Second)
	t.Logf("replica %s crashed: web-1 served by %s after %v (session TTL %v); revision 2 applied %v after the crash",
		from, to, moved.Round(time.Millisecond), clusterTTL, time.Since(crashed).Round(time.Millisecond))
	if moved < clusterTTL/2 {
		t.Errorf("web-1 moved %v after the crash, before the crashed replica's lease (TTL %v) can have expired", moved, clusterTTL)
	}

	// The crashed replica starts again and serves once the other stops.
	rs[from].start()
	waitReplicas(t, cli, 2)
	stopped := time.Now()
	rs[to].stop()
	waitHolder(t, cli, "web-1", from, 15*time.Second)
	t.Logf("replica %s restarted; web-1 back on it %v after %s stopped", from, time.Since(stopped).Round(time.Millisecond), to)
	setSubflows(t, rs[from], 5)
	a.waitSubflows(t, 5, 15*time.Second)
}

// TestHAClusterEtcdMemberKilled: the etcd leader is killed (SIGKILL); writes
// go on through the two members left and reach the agent. The member starts
// again and rejoins: once a second member is killed, the writes need it for
// their quorum, and still go on.
func TestHAClusterEtcdMemberKilled(t *testing.T) {
	ec := etcdCluster(t)
	ra := startReplica(t, "ra", ec.Endpoints(), clusterTTL)
	rb := startReplica(t, "rb", ec.Endpoints(), clusterTTL)
	if _, err := ra.groups().CreateGroup(ctxT(t), &pb.CreateGroupRequest{GroupId: "web", Group: clusterGroup()}); err != nil {
		t.Fatal(err)
	}
	a := startClusterAgent(t, "web-1", ra, rb)
	a.waitSubflows(t, 3, 20*time.Second)

	lead := ec.Leader(10 * time.Second)
	killed := time.Now()
	ec.Member(lead).Kill()
	_, calls := setSubflows(t, ra, 4)
	written := time.Since(killed)
	a.waitSubflows(t, 4, 15*time.Second)
	t.Logf("etcd leader m%d killed: UpdateGroup done %v after (%d calls), revision 2 applied by the agent %v after",
		lead, written.Round(time.Millisecond), calls, time.Since(killed).Round(time.Millisecond))
	next := ec.Leader(10 * time.Second)
	if next == lead {
		t.Fatalf("killed member m%d still leads", lead)
	}

	restarted := time.Now()
	ec.Member(lead).Start() // returns once it answers a linearizable read
	t.Logf("m%d restarted and serving after %v", lead, time.Since(restarted).Round(time.Millisecond))
	// Kill the other follower: the restarted member and the leader are the
	// quorum now; a write that succeeds has been taken by the restarted
	// member.
	other := 3 - lead - next
	ec.Member(other).Kill()
	setSubflows(t, rb, 5)
	a.waitSubflows(t, 5, 15*time.Second)
}

// TestHAClusterLeaderCrashMidRollout: the leader replica crashes while a
// rollout runs; another replica leads and finishes it, and every host is
// sent the target revision exactly once.
func TestHAClusterLeaderCrashMidRollout(t *testing.T) {
	ec := etcdCluster(t)
	cli := etcdtest.Client(t, ec.Endpoints())
	rs := map[string]*clusterReplica{}
	for _, n := range []string{"ra", "rb", "rc"} {
		rs[n] = startReplica(t, n, ec.Endpoints(), clusterTTL)
	}
	waitReplicas(t, cli, 3)
	leader := leaderReplica(t, cli, "", 10*time.Second)
	var others []*clusterReplica // the agents' replicas, and the test's
	for n, r := range rs {
		if n != leader {
			others = append(others, r)
		}
	}
	g := clusterGroup()
	g.RolloutStrategy = &pb.RolloutStrategy{CanaryCount: 1, BatchSize: 1, BakeTime: durationpb.New(500 * time.Millisecond),
		StepTimeout: durationpb.New(30 * time.Second)}
	g, err := others[0].groups().CreateGroup(ctxT(t), &pb.CreateGroupRequest{GroupId: "web", Group: g})
	if err != nil {
		t.Fatal(err)
	}
	hosts := []string{"web-1", "web-2", "web-3"}
	var as []*reportingAgent
	for i, id := range hosts {
		as = append(as, connectReporting(t, others[i%2].env(), id, healthyAt))
	}
	for _, id := range hosts {
		waitHost(t, others[0].env(), "hosts/"+id, func(h *pb.Host) bool {
			return h.GetSyncState() == pb.SyncState_SYNC_STATE_IN_SYNC && h.GetAppliedRevision() == 1
		})
	}

	g = changePolicy(t, others[0].env(), g, 4)
	ctx := ctxT(t)
	watch, err := pb.NewRolloutServiceClient(others[0].conn).WatchRollout(ctx, &pb.WatchRolloutRequest{Name: g.GetActiveRollout()})
	if err != nil {
		t.Fatal(err)
	}
	next := func(what string) *pb.Rollout {
		t.Helper()
		r, err := watch.Recv()
		if err != nil {
			t.Fatalf("rollout watch ended waiting for %s: %v", what, err)
		}
		return r
	}
	var r *pb.Rollout
	for r = next("the canary"); len(r.GetMovedHosts()) < 1; r = next("the canary") {
	}
	if r.GetState() != pb.Rollout_STATE_RUNNING || len(r.GetMovedHosts()) != 1 {
		t.Fatalf("rollout when the canary moved: %s, moved %v", r.GetState(), r.GetMovedHosts())
	}
	crashed := time.Now()
	rs[leader].crash()
	for r = next("a host moved after the crash"); len(r.GetMovedHosts()) < 2 && r.GetState() == pb.Rollout_STATE_RUNNING; r = next("a host moved after the crash") {
	}
	resumed := time.Since(crashed)
	for ; activeState(r.GetState()); r = next("the end of the rollout") {
	}
	if r.GetState() != pb.Rollout_STATE_SUCCEEDED {
		t.Fatalf("rollout %s after the leader crashed: %s", r.GetState(), r.GetMessage())
	}
	newLeader := leaderReplica(t, cli, leader, 10*time.Second)
	t.Logf("leader %s crashed after the canary: %s leads; the next host moved %v after the crash (session TTL %v, bake %v); rollout SUCCEEDED %v after",
		leader, newLeader, resumed.Round(time.Millisecond), clusterTTL, g.GetRolloutStrategy().GetBakeTime().AsDuration(), time.Since(crashed).Round(time.Millisecond))
	if resumed < clusterTTL/2 {
		t.Errorf("the rollout moved on %v after the crash, before the crashed leader's lease (TTL %v) can have expired", resumed, clusterTTL)
	}

	for _, a := range as {
		if revs := a.revisions(); !slices.Equal(revs, []int64{1, 2}) {
			t.Errorf("%s was sent revisions %v, want [1 2]", a.id, revs)
		}
	}
	evs, err := others[0].env().audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	movedBy := map[string]int{}
	for _, ev := range evs.GetEvents() {
		if ev.GetAction() == "rollouts.host_moved" {
			movedBy[strings.TrimPrefix(ev.GetHost(), "hosts/")]++
		}
	}
	for _, id := range hosts {
		if movedBy[id] != 1 {
			t.Errorf("%s moved %d times in the audit log, want once: %v", id, movedBy[id], movedBy)
		}
	}
}

// TestHAClusterWatchSurvivesLeaderChangeAndCompaction: a replica whose etcd
// client reaches one member only follows changes through an etcd leader
// change to that member, and through that member's death, a compaction past
// everything its watch saw, and its restart: the watch resumes at a
// compacted revision, the cache re-lists, and the agent gets the revision
// written meanwhile, and the ones after.
func TestHAClusterWatchSurvivesLeaderChangeAndCompaction(t *testing.T) {
	ec := etcdCluster(t)
	x := (ec.Leader(10*time.Second) + 1) % 3
	var rest []string
	for i, ep := range ec.Endpoints() {
		if i != x {
			rest = append(rest, ep)
		}
	}
	admin := etcdtest.Client(t, rest)
	ra := startReplica(t, "ra", rest, clusterTTL)
	rx := startReplica(t, "rx", []string{ec.Member(x).Endpoint()}, 5*time.Second)
	if _, err := ra.groups().CreateGroup(ctxT(t), &pb.CreateGroupRequest{GroupId: "web", Group: clusterGroup()}); err != nil {
		t.Fatal(err)
	}
	a := startClusterAgent(t, "web-1", rx)
	a.waitSubflows(t, 3, 20*time.Second)

	// A leader change, to the member rx's watch is on.
	ec.MoveLeader(x)
	setSubflows(t, ra, 4)
	a.waitSubflows(t, 4, 15*time.Second)

	// That member dies; a write and a compaction past it; it comes back.
	killed := time.Now()
	ec.Member(x).Kill()
	setSubflows(t, ra, 5)
	// One more revision, so that the compaction is past the revision rx's
	// watch resumes from (at most the one after the write above).
	put, err := admin.Put(ctxT(t), "/etcdtest/compact-marker", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Compact(ctxT(t), put.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	ec.Member(x).Start()
	a.waitSubflows(t, 5, 20*time.Second)
	t.Logf("etcd member m%d (rx's only endpoint, the leader) killed; compacted at %d; restarted; revision 3 reached the agent through rx %v after the kill",
		x, put.Header.Revision, time.Since(killed).Round(time.Millisecond))
	if log := rx.log.String(); !strings.Contains(log, "required revision has been compacted") {
		t.Errorf("rx's cache did not re-list after the compaction; its log:\n%s", log)
	}
	// The watch goes on from the re-list.
	setSubflows(t, ra, 6)
	a.waitSubflows(t, 6, 15*time.Second)
}

// clusterGroup is group web at its first revision: the subflows limit 3
// (a fresh kernel has 2); the tests give each later revision its own.
func clusterGroup() *pb.Group {
	g := webGroup()
	g.Policy.Limits.Subflows = proto.Uint32(3)
	return g
}
