package controller

// WatchHosts after its first listing: what changed, and only that. A
// host's view (hostView) is its status as the cache holds it, plus what
// follows from the sessions (connected) and the groups (group, desired
// revision, sync state). A new status or session is sent as it comes; a
// change of groups or host targets recomputes the derived fields of every
// host once per etcd transaction, and sends only the hosts whose view
// changed — comparing those fields, not whole statuses.

import (
	"context"
	"maps"
	"slices"

	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// sentHost is what a WatchHosts client was last sent of a host, and the
// cache's status it was made from.
type sentHost struct {
	src  *pb.Host // the cache's status (the cache replaces it on every change)
	view *pb.Host
}

// sameDerived reports whether two views of the same status differ in
// nothing that follows from the sessions and the groups.
func sameDerived(a, b *pb.Host) bool {
	return a.GetConnected() == b.GetConnected() && a.GetGroup() == b.GetGroup() &&
		a.GetDesiredRevision() == b.GetDesiredRevision() && a.GetSyncState() == b.GetSyncState() &&
		slices.Equal(a.GetConflictingGroups(), b.GetConflictingGroups())
}

func (s *hostService) watch(ctx context.Context, stream pb.HostService_WatchHostsServer, f hostFilter,
	sub *store.Subscription, groups map[string]*pb.Group, hosts map[string]*pb.Host, sessions map[string]string,
	targets map[string]*pb.HostTargets) error {
	// What the client was last sent, to send only real changes.
	sent := map[string]sentHost{}
	emit := func(id string) error {
		h, ok := hosts[id]
		prev, had := sent[id]
		var v *pb.Host
		if ok {
			v = hostView(h, sessions[id], groups, targets)
		}
		switch {
		case v != nil && f.match(v):
			// A status the client has (the same one the cache holds) needs
			// no resend unless what follows from sessions and groups
			// changed; a new status is a change (the hub writes a status
			// only when it changed).
			if had && prev.src == h && sameDerived(prev.view, v) {
				return nil
			}
			sent[id] = sentHost{src: h, view: v}
			return stream.Send(&pb.HostEvent{Type: pb.HostEvent_TYPE_UPSERT, Host: v})
		case had:
			delete(sent, id)
			return stream.Send(&pb.HostEvent{Type: pb.HostEvent_TYPE_DELETED, Host: prev.view})
		}
		return nil
	}
	for _, id := range slices.Sorted(maps.Keys(hosts)) {
		if err := emit(id); err != nil {
			return err
		}
	}
	if err := stream.Send(&pb.HostEvent{Type: pb.HostEvent_TYPE_SYNCED}); err != nil {
		return err
	}
	dirty := false // groups or targets changed since the hosts were last recomputed
	return follow(ctx, sub, func(ev store.Event) error {
		switch {
		case ev.GroupID != "":
			setOrDelete(groups, ev.GroupID, ev.Group, ev.Group == nil)
			dirty = true
		case ev.TargetsGroup != "":
			setOrDelete(targets, ev.TargetsGroup, ev.Targets, ev.Targets == nil)
			dirty = true
		case ev.HostID != "":
			setOrDelete(hosts, ev.HostID, ev.Host, ev.Host == nil)
			if err := emit(ev.HostID); err != nil {
				return err
			}
		case ev.SessionID != "":
			setOrDelete(sessions, ev.SessionID, ev.Replica, ev.Replica == "")
			if err := emit(ev.SessionID); err != nil {
				return err
			}
		}
		if !dirty || !ev.Last {
			return nil
		}
		// Membership and desired revisions may change for every host: once
		// the whole transaction is in (a policy change and the host targets
		// of its rollout are one write).
		dirty = false
		for id := range hosts {
			if err := emit(id); err != nil {
				return err
			}
		}
		return nil
	})
}
