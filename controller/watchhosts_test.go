package controller_test

import (
	"testing"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
)

// TestWatchHostsSendsOnlyWhatChanged: a policy change of one group sends
// the hosts of that group (APPLYING at the new revision, then IN_SYNC), each
// once per change of its view, and nothing of the hosts of another group.
func TestWatchHostsSendsOnlyWhatChanged(t *testing.T) {
	e := start(t)
	ctx := ctxT(t)
	web := webGroup()
	db := webGroup()
	db.Selector = &pb.Selector{MatchLabels: map[string]string{"role": "db"}}
	for id, g := range map[string]*pb.Group{"web": web, "db": db} {
		if _, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: id, Group: g}); err != nil {
			t.Fatal(err)
		}
	}
	connectAgent(t, e.agents, "web-0", map[string]string{"role": "web"}, true)
	connectAgent(t, e.agents, "db-0", map[string]string{"role": "db"}, true)
	inSyncAt := func(rev int64) func(*pb.Host) bool {
		return func(h *pb.Host) bool {
			return h.SyncState == pb.SyncState_SYNC_STATE_IN_SYNC && h.AppliedRevision == rev && h.DesiredRevision == rev
		}
	}
	waitHost(t, e, "hosts/web-0", inSyncAt(1))
	waitHost(t, e, "hosts/db-0", inSyncAt(1))

	w, err := e.hosts.WatchHosts(ctx, &pb.WatchHostsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for synced := false; !synced; {
		ev, err := w.Recv()
		if err != nil {
			t.Fatal(err)
		}
		synced = ev.Type == pb.HostEvent_TYPE_SYNCED
	}
	g, err := e.groups.GetGroup(ctx, &pb.GetGroupRequest{Name: "groups/db"})
	if err != nil {
		t.Fatal(err)
	}
	g.Policy.Limits.Subflows = proto.Uint32(4)
	if _, err := e.groups.UpdateGroup(ctx, &pb.UpdateGroupRequest{Group: g}); err != nil {
		t.Fatal(err)
	}
	// Until db-0 is IN_SYNC at revision 2: only db-0, each view once.
	var prev *pb.Host
	for {
		ev, err := w.Recv()
		if err != nil {
			t.Fatal(err)
		}
		h := ev.GetHost()
		if ev.Type != pb.HostEvent_TYPE_UPSERT || h.GetName() != "hosts/db-0" {
			t.Fatalf("a policy change of groups/db sent %v %s (%v)", ev.Type, h.GetName(), h)
		}
		if prev != nil && proto.Equal(prev, h) {
			t.Fatalf("db-0 sent twice unchanged: %v", h)
		}
		prev = h
		if inSyncAt(2)(h) {
			break
		}
		if h.DesiredRevision != 2 {
			t.Fatalf("db-0 sent at desired revision %d, want 2: %v", h.DesiredRevision, h)
		}
	}
}
