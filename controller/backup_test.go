package controller_test

// Backup and restore of the embedded etcd, as docs/operations.md ("Backup
// and restore") tells an operator to do it: `etcdctl snapshot save` against
// the member's unix socket while the controller runs, and `etcdutl snapshot
// restore` into a new data dir — here the libraries behind those two
// commands.

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	etcdsnapshot "go.etcd.io/etcd/client/v3/snapshot"
	etcdutl "go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
)

// The embedded member's name and (unlistened) peer URL, as
// store.StartEmbedded configures it without --etcd-peer-url: a restore must
// give the same (docs/operations.md).
const (
	restoreName = "mpfleet"
	restorePeer = "http://127.0.0.1:0"
)

// A snapshot of the embedded etcd, taken while the controller serves, is
// restored into a new data dir after the old one is lost; a controller on it
// has the groups, their revisions, the hosts and the audit log of the
// snapshot, the chain verifies (the events after the snapshot are gone, the
// head is the snapshot's), agents get the snapshot's policy, and new writes
// continue the chain. Without the audit key backed up beside it the restored
// data is refused.
func TestBackupRestore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	backup := t.TempDir()
	dir := filepath.Join(t.TempDir(), "data")

	// A controller as packaged: embedded etcd on its default unix socket,
	// and a replica name that stays the same across restarts (the default,
	// host name and listen port, does; the test's ports do not).
	r := runController(t, "--data-dir", dir, "--replica-name", "ctl-a")
	gc := pb.NewGroupServiceClient(r.conn)
	web := createGroup(ctx, t, gc, "web", webGroup())
	for _, subflows := range []uint32{3, 4} {
		web = updatePolicy(ctx, t, gc, web, subflows)
	}
	db := webGroup()
	db.Selector.MatchLabels = map[string]string{"role": "db"}
	createGroup(ctx, t, gc, "db", db)
	a := connectAgent(t, pb.NewAgentServiceClient(r.conn), "h1", map[string]string{"role": "web"}, true)
	a.waitFor(t, "web revision 3", managedAt("groups/web", 3))
	hc := pb.NewHostServiceClient(r.conn)
	waitHostState(ctx, t, hc, "hosts/h1", 3)

	// Back up, while the controller serves its agent: the snapshot (etcdctl
	// snapshot save) and the audit key.
	snap := filepath.Join(backup, "mpfleet.db")
	if _, err := etcdsnapshot.SaveWithVersion(ctx, zap.NewNop(), clientv3.Config{
		Endpoints: []string{"unix://" + filepath.Join(dir, store.EmbedSocket)}, DialTimeout: 10 * time.Second,
	}, snap); err != nil {
		t.Fatalf("snapshot save: %v", err)
	}
	copyFile(t, filepath.Join(dir, "audit.key"), filepath.Join(backup, "audit.key"))
	atSnapshot := auditState(ctx, t, r)
	groupsAtSnapshot := listGroups(ctx, t, gc)

	// Changes after the snapshot, which the restore loses.
	updatePolicy(ctx, t, gc, web, 5)
	a.waitFor(t, "web revision 4", managedAt("groups/web", 4))
	if _, err := gc.DeleteGroup(ctx, &pb.DeleteGroupRequest{Name: "groups/db"}); err != nil {
		t.Fatal(err)
	}
	late := webGroup()
	late.Selector.MatchLabels = map[string]string{"role": "late"}
	createGroup(ctx, t, gc, "late", late)
	if v := auditState(ctx, t, r).verify; v.LastSequence != atSnapshot.verify.LastSequence+3 {
		t.Fatalf("audit after the later changes = %v, want 3 events past sequence %d", v, atSnapshot.verify.LastSequence)
	}
	if err := r.stop(); err != nil {
		t.Fatalf("clean shutdown: %v\n%s", err, r.log.String())
	}
	// The machine is lost: nothing of the data dir is left.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}

	// Restore (etcdutl snapshot restore) into a new data dir.
	restored := filepath.Join(t.TempDir(), "data")
	if err := etcdutl.NewV3(zap.NewNop()).Restore(etcdutl.RestoreConfig{
		SnapshotPath:        snap,
		Name:                restoreName,
		OutputDataDir:       filepath.Join(restored, "etcd"),
		PeerURLs:            []string{restorePeer},
		InitialCluster:      restoreName + "=" + restorePeer,
		InitialClusterToken: "etcd-cluster",
	}); err != nil {
		t.Fatalf("snapshot restore: %v", err)
	}

	// Without the audit key the restored log is refused: a new key would be
	// generated, and the chain is keyed with the old one.
	err := runErr(t, "--data-dir", restored)
	if err == nil || !strings.Contains(err.Error(), "the audit chain is keyed with key id "+atSnapshot.verify.KeyId) {
		t.Fatalf("restored data without its audit key: err = %v, want a refusal naming key id %s", err, atSnapshot.verify.KeyId)
	}
	copyFile(t, filepath.Join(backup, "audit.key"), filepath.Join(restored, "audit.key"))

	r2 := runController(t, "--data-dir", restored, "--replica-name", "ctl-a") // serving: runController waited for SERVING
	gc2 := pb.NewGroupServiceClient(r2.conn)
	if diff := cmp.Diff(groupsAtSnapshot, listGroups(ctx, t, gc2), cmpProto); diff != "" {
		t.Fatalf("groups after the restore (-snapshot +restored):\n%s", diff)
	}
	for group, want := range map[string][]int64{"web": {3, 2, 1}, "db": {1}} {
		resp, err := gc2.ListPolicyRevisions(ctx, &pb.ListPolicyRevisionsRequest{Parent: "groups/" + group})
		if err != nil {
			t.Fatal(err)
		}
		var got []int64
		for _, rev := range resp.Revisions {
			got = append(got, rev.Revision)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("revisions of %s after the restore (-want +got):\n%s", group, diff)
		}
	}
	if h, err := pb.NewHostServiceClient(r2.conn).GetHost(ctx, &pb.GetHostRequest{Name: "hosts/h1"}); err != nil || h.AppliedRevision != 3 {
		t.Fatalf("host h1 after the restore = %v, %v; want its record of revision 3", h, err)
	}

	// The audit log is the snapshot's, event for event, and verifies: the
	// events after the snapshot are gone, the head is the snapshot's.
	after := auditState(ctx, t, r2)
	if diff := cmp.Diff(atSnapshot, after, cmp.AllowUnexported(auditSnapshot{}), cmpProto); diff != "" {
		t.Fatalf("audit log after the restore (-snapshot +restored):\n%s", diff)
	}

	// The agent, which had applied revision 4, gets the snapshot's policy
	// back, and new writes continue the chain (revision 4 again, with
	// another policy).
	a2 := connectAgent(t, pb.NewAgentServiceClient(r2.conn), "h1", map[string]string{"role": "web"}, true)
	a2.waitFor(t, "web revision 3 after the restore", func(d *pb.DesiredConfig) bool {
		return managedAt("groups/web", 3)(d) && d.Policy.GetLimits().GetSubflows() == 4
	})
	restoredWeb, err := gc2.GetGroup(ctx, &pb.GetGroupRequest{Name: "groups/web"})
	if err != nil {
		t.Fatal(err)
	}
	if got := updatePolicy(ctx, t, gc2, restoredWeb, 6); got.PolicyRevision != 4 {
		t.Fatalf("update after the restore: revision %d, want 4", got.PolicyRevision)
	}
	a2.waitFor(t, "web revision 4 after the restore", func(d *pb.DesiredConfig) bool {
		return managedAt("groups/web", 4)(d) && d.Policy.GetLimits().GetSubflows() == 6
	})
	v, err := pb.NewAuditServiceClient(r2.conn).VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{})
	if err != nil || !v.Ok || v.LastSequence != atSnapshot.verify.LastSequence+1 || v.KeyId != atSnapshot.verify.KeyId {
		t.Fatalf("audit after a write on the restored data = %v, %v; want ok up to sequence %d", v, err, atSnapshot.verify.LastSequence+1)
	}
	if err := r2.stop(); err != nil {
		t.Fatalf("clean shutdown: %v\n%s", err, r2.log.String())
	}
}

var cmpProto = cmp.Comparer(proto.Equal)

func createGroup(ctx context.Context, t *testing.T, gc pb.GroupServiceClient, id string, g *pb.Group) *pb.Group {
	t.Helper()
	g, err := gc.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: id, Group: g, Reason: "backup test"})
	if err != nil {
		t.Fatalf("create group %s: %v", id, err)
	}
	return g
}

// updatePolicy sets the group's subflow limit: a new policy revision.
func updatePolicy(ctx context.Context, t *testing.T, gc pb.GroupServiceClient, g *pb.Group, subflows uint32) *pb.Group {
	t.Helper()
	g = proto.Clone(g).(*pb.Group)
	g.Policy.Limits.Subflows = proto.Uint32(subflows)
	g, err := gc.UpdateGroup(ctx, &pb.UpdateGroupRequest{Group: g, Reason: "backup test"})
	if err != nil {
		t.Fatalf("update %s: %v", g.GetName(), err)
	}
	return g
}

func listGroups(ctx context.Context, t *testing.T, gc pb.GroupServiceClient) []*pb.Group {
	t.Helper()
	resp, err := gc.ListGroups(ctx, &pb.ListGroupsRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return resp.Groups
}

// auditSnapshot is what the audit log says of itself: every event and the
// verification.
type auditSnapshot struct {
	events []*pb.AuditEvent
	verify *pb.VerifyAuditLogResponse
}

func auditState(ctx context.Context, t *testing.T, r *running) auditSnapshot {
	t.Helper()
	ac := pb.NewAuditServiceClient(r.conn)
	resp, err := ac.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	v, err := ac.VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{})
	if err != nil || !v.Ok || v.KeyId == "" || v.EventsChecked != uint64(len(resp.Events)) {
		t.Fatalf("verify = %v, %v; want a keyed chain of the %d events listed", v, err, len(resp.Events))
	}
	return auditSnapshot{events: resp.Events, verify: v}
}

// waitHostState waits until the host is IN_SYNC at the revision, as its
// agent reports it.
func waitHostState(ctx context.Context, t *testing.T, hc pb.HostServiceClient, name string, rev int64) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := hc.WatchHosts(ctx, &pb.WatchHostsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := w.Recv()
		if err != nil {
			t.Fatalf("host %s: no IN_SYNC at revision %d: %v", name, rev, err)
		}
		if h := ev.GetHost(); h.GetName() == name && h.GetSyncState() == pb.SyncState_SYNC_STATE_IN_SYNC && h.GetAppliedRevision() == rev {
			return
		}
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
