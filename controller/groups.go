package controller

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/mpfleet/mpfleet/internal/policy"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

func pageSize(n int32) (int, error) {
	switch {
	case n < 0:
		return 0, invalid("page_size", "is %d; must not be negative", n)
	case n == 0:
		return defaultPageSize, nil
	case n > maxPageSize:
		return maxPageSize, nil
	}
	return int(n), nil
}

// page reads a list request's page size and page token (of kind).
func page(size int32, token, kind string) (int, string, error) {
	n, err := pageSize(size)
	if err != nil {
		return 0, "", err
	}
	pos, err := decodeToken(token, kind)
	return n, pos, err
}

// Page tokens are opaque to clients: base64url of "kind:position".
func encodeToken(kind, pos string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(kind + ":" + pos))
}

func decodeToken(tok, kind string) (string, error) {
	if tok == "" {
		return "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err == nil {
		if pos, ok := strings.CutPrefix(string(b), kind+":"); ok {
			return pos, nil
		}
	}
	return "", invalid("page_token", "is not a page token of this list; pass next_page_token unchanged")
}

type groupService struct {
	pb.UnimplementedGroupServiceServer
	c *Controller
}

func meta(ctx context.Context, reason string) store.Meta {
	c := callerFrom(ctx)
	return store.Meta{Actor: c.Actor, Reason: reason, RequestID: c.RequestID, Peer: c.Peer}
}

func (s *groupService) CreateGroup(ctx context.Context, req *pb.CreateGroupRequest) (*pb.Group, error) {
	dropUnknown(req)
	if err := checkDesiredSize("group.policy", req.GetGroup().GetPolicy()); err != nil {
		return nil, toStatus(err)
	}
	var vs policy.Violations
	policy.ValidateGroupID(&vs, "group_id", req.GetGroupId())
	policy.ValidateGroup(&vs, "group", req.GetGroup())
	policy.ValidateReason(&vs, "reason", req.GetReason())
	if err := vs.Err(); err != nil {
		return nil, toStatus(err)
	}
	name := store.GroupName(req.GetGroupId())
	if req.GetValidateOnly() {
		g := proto.Clone(req.GetGroup()).(*pb.Group)
		g.Name, g.PolicyRevision, g.Etag = name, 1, ""
		g.CreateTime, g.UpdateTime = timestamppb.Now(), timestamppb.Now()
		return g, nil
	}
	g, rev, err := s.c.store.CreateGroup(ctx, req.GetGroupId(), req.GetGroup(), meta(ctx, req.GetReason()))
	if err := s.c.written(ctx, "groups.create", name, req.GetReason(), rev, err); err != nil {
		return nil, err
	}
	return s.c.decorateGroup(g), nil
}

func (s *groupService) GetGroup(ctx context.Context, req *pb.GetGroupRequest) (*pb.Group, error) {
	id, err := groupID("name", req.GetName())
	if err != nil {
		return nil, err
	}
	g, err := s.c.store.GetGroup(ctx, id)
	return s.c.decorateGroup(g), toStatus(err)
}

func (s *groupService) ListGroups(ctx context.Context, req *pb.ListGroupsRequest) (*pb.ListGroupsResponse, error) {
	n, after, err := page(req.GetPageSize(), req.GetPageToken(), "g")
	if err != nil {
		return nil, err
	}
	gs, more, err := s.c.store.ListGroups(ctx, after, n)
	if err != nil {
		return nil, toStatus(err)
	}
	for _, g := range gs {
		s.c.decorateGroup(g)
	}
	resp := &pb.ListGroupsResponse{Groups: gs}
	if more {
		resp.NextPageToken = encodeToken("g", strings.TrimPrefix(gs[len(gs)-1].GetName(), "groups/"))
	}
	return resp, nil
}

// mutableGroupFields are the update_mask paths a client may name.
var mutableGroupFields = map[string]bool{"description": true, "selector": true, "policy": true, "rollout_strategy": true}

func (s *groupService) UpdateGroup(ctx context.Context, req *pb.UpdateGroupRequest) (*pb.Group, error) {
	dropUnknown(req)
	id, paths, err := checkUpdate(req)
	if err != nil {
		return nil, toStatus(err)
	}
	in := req.GetGroup()
	apply := func(cur *pb.Group) (*pb.Group, error) {
		for _, p := range paths {
			copyPath(cur.ProtoReflect(), in.ProtoReflect(), p)
		}
		if err := checkDesiredSize("group.policy", cur.GetPolicy()); err != nil {
			return cur, err
		}
		var vs policy.Violations
		policy.ValidateGroup(&vs, "group", cur)
		return cur, vs.Err()
	}
	if req.GetValidateOnly() {
		cur, err := s.c.store.GetGroup(ctx, id)
		if err != nil {
			return nil, toStatus(err)
		}
		if in.GetEtag() != "" && in.GetEtag() != cur.GetEtag() {
			return nil, toStatus(fmt.Errorf("group %q: %w", id, store.ErrConflict))
		}
		g, err := apply(cur)
		return g, toStatus(err)
	}
	m := meta(ctx, req.GetReason())
	var started string
	g, rev, err := s.c.store.UpdateGroupWith(ctx, id, in.GetEtag(), apply, m, s.c.policyHook(m, &started))
	if err := s.c.written(ctx, "groups.update", store.GroupName(id), req.GetReason(), rev, err); err != nil {
		return nil, err
	}
	g = s.c.decorateGroup(g)
	if started != "" {
		g.ActiveRollout = started
	}
	return g, nil
}

// checkUpdate validates an UpdateGroupRequest's name and mask and returns the
// group id and the paths to copy.
func checkUpdate(req *pb.UpdateGroupRequest) (string, []string, error) {
	var vs policy.Violations
	in := req.GetGroup()
	if in == nil {
		vs = append(vs, policy.FieldViolation{Field: "group", Description: "is required"})
		return "", nil, vs.Err()
	}
	id := policy.GroupIDFromName(&vs, "group.name", in.GetName())
	policy.ValidateReason(&vs, "reason", req.GetReason())
	paths := req.GetUpdateMask().GetPaths()
	if len(paths) == 0 || (len(paths) == 1 && paths[0] == "*") {
		paths = []string{"description", "selector", "policy", "rollout_strategy"}
	}
	for i, p := range paths {
		top, _, _ := strings.Cut(p, ".")
		field := fmt.Sprintf("update_mask.paths[%d]", i)
		switch {
		case p == "*":
			vs = append(vs, policy.FieldViolation{Field: field, Description: `"*" must be the only path`})
		case !mutableGroupFields[top]:
			if fd := (&pb.Group{}).ProtoReflect().Descriptor().Fields().ByName(protoreflect.Name(top)); fd != nil {
				vs = append(vs, policy.FieldViolation{Field: field, Description: fmt.Sprintf("%q is output only", p)})
			} else {
				vs = append(vs, policy.FieldViolation{Field: field, Description: fmt.Sprintf("%q is not a field of Group", p)})
			}
		default:
			if _, err := fieldPath((&pb.Group{}).ProtoReflect().Descriptor(), p); err != nil {
				vs = append(vs, policy.FieldViolation{Field: field, Description: err.Error()})
			}
		}
	}
	return id, paths, vs.Err()
}

// fieldPath resolves a dotted path of singular message fields.
func fieldPath(md protoreflect.MessageDescriptor, p string) ([]protoreflect.FieldDescriptor, error) {
	var fds []protoreflect.FieldDescriptor
	parts := strings.Split(p, ".")
	for i, name := range parts {
		fd := md.Fields().ByName(protoreflect.Name(name))
		if fd == nil {
			return nil, fmt.Errorf("%q: %s has no field %q", p, md.Name(), name)
		}
		fds = append(fds, fd)
		if i < len(parts)-1 {
			if fd.Message() == nil || fd.IsList() || fd.IsMap() {
				return nil, fmt.Errorf("%q: cannot descend into %s", p, name)
			}
			md = fd.Message()
		}
	}
	return fds, nil
}

// copyPath sets the field at path p of dst to its value in src (clearing it
// when src lacks it).
func copyPath(dst, src protoreflect.Message, p string) {
	fds, err := fieldPath(dst.Descriptor(), p)
	if err != nil {
		return // validated before
	}
	for _, fd := range fds[:len(fds)-1] {
		if !src.Has(fd) {
			src = dst.NewField(fd).Message() // empty: clears the leaf below
		} else {
			src = src.Get(fd).Message()
		}
		dst = dst.Mutable(fd).Message()
	}
	leaf := fds[len(fds)-1]
	if src.Has(leaf) {
		dst.Set(leaf, src.Get(leaf))
	} else {
		dst.Clear(leaf)
	}
}

func (s *groupService) DeleteGroup(ctx context.Context, req *pb.DeleteGroupRequest) (*emptypb.Empty, error) {
	id, err := groupID("name", req.GetName(), func(vs *policy.Violations) { policy.ValidateReason(vs, "reason", req.GetReason()) })
	if err != nil {
		return nil, err
	}
	rev, err := s.c.store.DeleteGroup(ctx, id, req.GetEtag(), meta(ctx, req.GetReason()))
	if err := s.c.written(ctx, "groups.delete", req.GetName(), req.GetReason(), rev, err); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

func (s *groupService) ListPolicyRevisions(ctx context.Context, req *pb.ListPolicyRevisionsRequest) (*pb.ListPolicyRevisionsResponse, error) {
	id, err := groupID("parent", req.GetParent())
	if err != nil {
		return nil, err
	}
	n, pos, err := page(req.GetPageSize(), req.GetPageToken(), "r")
	if err != nil {
		return nil, err
	}
	var before int64
	if pos != "" {
		if before, err = strconv.ParseInt(pos, 10, 64); err != nil {
			return nil, invalid("page_token", "is not a page token of this list")
		}
	}
	revs, more, err := s.c.store.ListRevisions(ctx, id, before, n)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &pb.ListPolicyRevisionsResponse{Revisions: revs}
	if more {
		resp.NextPageToken = encodeToken("r", strconv.FormatInt(revs[len(revs)-1].GetRevision(), 10))
	}
	return resp, nil
}

func (s *groupService) GetPolicyRevision(ctx context.Context, req *pb.GetPolicyRevisionRequest) (*pb.PolicyRevision, error) {
	parent, revStr, ok := strings.Cut(req.GetName(), "/revisions/")
	var vs policy.Violations
	id := policy.GroupIDFromName(&vs, "name", parent)
	n, err := strconv.ParseInt(revStr, 10, 64)
	if !ok || err != nil || n < 1 {
		return nil, invalid("name", "%q is not a revision name of the form groups/{group}/revisions/{n}", req.GetName())
	}
	if err := vs.Err(); err != nil {
		return nil, toStatus(err)
	}
	r, err := s.c.store.GetRevision(ctx, id, n)
	if errors.Is(err, store.ErrNotFound) {
		if _, gerr := s.c.store.GetGroup(ctx, id); gerr != nil {
			return nil, toStatus(gerr)
		}
	}
	return r, toStatus(err)
}

// statusCode names err's gRPC code as the audit log records it.
func statusCode(err error) string {
	return status.Code(toStatus(err)).String()
}

// groupID checks a request's group name, in field, and whatever more checks
// add, and returns the group's id, or INVALID_ARGUMENT naming every
// violation.
func groupID(field, name string, checks ...func(*policy.Violations)) (string, error) {
	var vs policy.Violations
	id := policy.GroupIDFromName(&vs, field, name)
	for _, check := range checks {
		check(&vs)
	}
	return id, toStatus(vs.Err())
}
