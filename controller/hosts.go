package controller

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/mpfleet/mpfleet/internal/policy"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

type hostService struct {
	pb.UnimplementedHostServiceServer
	c *Controller
}

// hostView is a host as the API shows it: its last reported status, plus
// what follows from the current groups (membership, desired revision) and
// from the sessions (connected or not).
func hostView(h *pb.Host, replica string, groups map[string]*pb.Group, targets map[string]*pb.HostTargets) *pb.Host {
	v := shallowHost(h) // only v's own fields are set below
	v.Connected = replica != ""
	ids := policy.Assign(groups, v.GetLabels())
	v.Group, v.ConflictingGroups, v.DesiredRevision = "", nil, 0
	switch len(ids) {
	case 0:
		if v.Connected {
			v.SyncState = pb.SyncState_SYNC_STATE_UNMANAGED
		}
	case 1:
		v.Group = store.GroupName(ids[0])
		v.DesiredRevision, _ = hostTarget(groups[ids[0]], targets[ids[0]], strings.TrimPrefix(v.GetName(), "hosts/"))
		if v.Connected && (v.SyncState == pb.SyncState_SYNC_STATE_UNMANAGED || v.SyncState == pb.SyncState_SYNC_STATE_CONFLICT) {
			// Assigned since the agent last reported: it is about to apply.
			v.SyncState = pb.SyncState_SYNC_STATE_APPLYING
		}
		if v.Connected && (v.SyncState == pb.SyncState_SYNC_STATE_IN_SYNC || v.SyncState == pb.SyncState_SYNC_STATE_DEGRADED) &&
			v.AppliedRevision != v.DesiredRevision {
			v.SyncState = pb.SyncState_SYNC_STATE_APPLYING
		}
	default:
		for _, id := range ids {
			v.ConflictingGroups = append(v.ConflictingGroups, store.GroupName(id))
		}
		if v.Connected {
			v.SyncState = pb.SyncState_SYNC_STATE_CONFLICT
		}
	}
	if !v.Connected {
		v.SyncState = pb.SyncState_SYNC_STATE_DISCONNECTED
	}
	return v
}

func hostID(field, name string) (string, error) {
	id, ok := strings.CutPrefix(name, "hosts/")
	if !ok || !policy.ValidHostID(id) {
		return "", invalid(field, "%q is not a host name of the form hosts/{host}", name)
	}
	return id, nil
}

func (s *hostService) GetHost(_ context.Context, req *pb.GetHostRequest) (*pb.Host, error) {
	id, err := hostID("name", req.GetName())
	if err != nil {
		return nil, err
	}
	h, replica, ok := s.c.cache.Host(id)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "host %q: not found", id)
	}
	return hostView(h, replica, s.c.cache.Groups(), s.c.cache.Targets()), nil
}

// hostFilter selects hosts for ListHosts and WatchHosts.
type hostFilter struct {
	group  string
	state  pb.SyncState
	labels map[string]string
}

func newHostFilter(group string, state pb.SyncState, selector string) (hostFilter, error) {
	f := hostFilter{group: group, state: state}
	if group != "" {
		var vs policy.Violations
		policy.GroupIDFromName(&vs, "group", group)
		if err := vs.Err(); err != nil {
			return f, toStatus(err)
		}
	}
	if _, ok := pb.SyncState_name[int32(state)]; !ok {
		return f, invalid("sync_state", "unknown state %d", int32(state))
	}
	l, err := policy.ParseLabelSelector(selector)
	if err != nil {
		return f, invalid("label_selector", "%v", err)
	}
	f.labels = l
	return f, nil
}

func (f hostFilter) match(v *pb.Host) bool {
	if f.group != "" && v.GetGroup() != f.group && !slices.Contains(v.GetConflictingGroups(), f.group) {
		return false
	}
	if f.state != pb.SyncState_SYNC_STATE_UNSPECIFIED && v.GetSyncState() != f.state {
		return false
	}
	return policy.HasLabels(v.GetLabels(), f.labels)
}

func (s *hostService) ListHosts(_ context.Context, req *pb.ListHostsRequest) (*pb.ListHostsResponse, error) {
	n, after, err := page(req.GetPageSize(), req.GetPageToken(), "h")
	if err != nil {
		return nil, err
	}
	f, err := newHostFilter(req.GetGroup(), req.GetSyncState(), req.GetLabelSelector())
	if err != nil {
		return nil, err
	}
	hosts, sessions, groups, targets := s.c.cache.Hosts(), s.c.cache.Sessions(), s.c.cache.Groups(), s.c.cache.Targets()
	ids := make([]string, 0, len(hosts))
	for id := range hosts {
		if id > after {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	resp := &pb.ListHostsResponse{}
	for _, id := range ids {
		v := hostView(hosts[id], sessions[id], groups, targets)
		if !f.match(v) {
			continue
		}
		if len(resp.Hosts) == n {
			resp.NextPageToken = encodeToken("h", resp.Hosts[n-1].GetName()[len("hosts/"):])
			break
		}
		resp.Hosts = append(resp.Hosts, v)
	}
	return resp, nil
}

func (s *hostService) WatchHosts(req *pb.WatchHostsRequest, stream pb.HostService_WatchHostsServer) error {
	ctx := stream.Context()
	f, err := newHostFilter(req.GetGroup(), pb.SyncState_SYNC_STATE_UNSPECIFIED, req.GetLabelSelector())
	if err != nil {
		return err
	}
	for {
		sub, groups, hosts, _ := s.c.cache.Subscribe(4096)
		sessions, targets := s.c.cache.Sessions(), s.c.cache.Targets()
		err := s.watch(ctx, stream, f, sub, groups, hosts, sessions, targets)
		sub.Close()
		if !resubscribe(err) {
			return err
		}
	}
}

// hostTarget is the revision a host of group g should run, and its policy:
// the group's policy_revision when the group has no host targets (every
// change goes to every host at once), else the host's own target or the
// group's default one.
func hostTarget(g *pb.Group, t *pb.HostTargets, hostID string) (int64, *pb.MultipathPolicy) {
	if t == nil {
		return g.GetPolicyRevision(), g.GetPolicy()
	}
	rev := t.GetDefaultRevision()
	if r, ok := t.GetHostRevisions()[hostID]; ok {
		rev = r
	}
	if rev == g.GetPolicyRevision() {
		return rev, g.GetPolicy()
	}
	if p, ok := t.GetPolicies()[rev]; ok {
		return rev, p
	}
	// A record without the policy of its revision is a bug; the group's
	// current policy is the safe answer.
	return g.GetPolicyRevision(), g.GetPolicy()
}

func (s *hostService) DeleteHost(ctx context.Context, req *pb.DeleteHostRequest) (*emptypb.Empty, error) {
	id, err := hostID("name", req.GetName())
	if err != nil {
		return nil, err
	}
	var vs policy.Violations
	policy.ValidateReason(&vs, "reason", req.GetReason())
	if err := vs.Err(); err != nil {
		return nil, toStatus(err)
	}
	rev, err := s.c.store.DeleteHost(ctx, id, meta(ctx, req.GetReason()))
	if err := s.c.written(ctx, "hosts.delete", req.GetName(), req.GetReason(), rev, err); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

func (s *hostService) UpdateHost(ctx context.Context, req *pb.UpdateHostRequest) (*pb.Host, error) {
	dropUnknown(req)
	var vs policy.Violations
	id, err := hostID("host.name", req.GetHost().GetName())
	if err != nil {
		return nil, err
	}
	paths := req.GetUpdateMask().GetPaths()
	if len(paths) == 0 {
		paths = []string{"labels"}
	}
	for i, p := range paths {
		if p != "labels" {
			vs = append(vs, policy.FieldViolation{Field: fmt.Sprintf("update_mask.paths[%d]", i), Description: fmt.Sprintf("%q: only labels can be set on a host", p)})
		}
	}
	policy.ValidateLabels(&vs, "host.labels", req.GetHost().GetLabels())
	policy.ValidateReason(&vs, "reason", req.GetReason())
	if err := vs.Err(); err != nil {
		return nil, toStatus(err)
	}
	rev, err := s.c.store.PutHostLabels(ctx, id, req.GetHost().GetLabels(), meta(ctx, req.GetReason()))
	if err := s.c.written(ctx, "hosts.label", req.GetHost().GetName(), req.GetReason(), rev, err); err != nil {
		return nil, err
	}
	if h, replica, ok := s.c.cache.Host(id); ok {
		return hostView(h, replica, s.c.cache.Groups(), s.c.cache.Targets()), nil
	}
	// Labelled before its agent ever connected.
	return &pb.Host{Name: store.HostName(id), Labels: req.GetHost().GetLabels(), SyncState: pb.SyncState_SYNC_STATE_DISCONNECTED}, nil
}
