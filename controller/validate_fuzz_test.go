package controller

import (
	"strings"
	"testing"

	"github.com/mpfleet/mpfleet/internal/policy"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// FuzzUpdateGroupRequest drives the request validation and mask merge of
// UpdateGroup with arbitrary requests: it must never panic; an accepted
// request must only change mutable fields, and the merged group must either
// validate or be rejected with errors naming fields.
func FuzzUpdateGroupRequest(f *testing.F) {
	seed := &pb.UpdateGroupRequest{
		Group: &pb.Group{Name: "groups/web", Description: "d",
			Policy: &pb.MultipathPolicy{Limits: &pb.Limits{Subflows: proto.Uint32(3)}}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"policy.limits", "description"}},
	}
	b, _ := proto.Marshal(seed)
	f.Add(b, "policy.limits.subflows")
	f.Add(b, "selector.match_labels")
	f.Add(b, "policy_revision")
	f.Add([]byte{}, "*")
	f.Fuzz(func(t *testing.T, raw []byte, extraPath string) {
		req := &pb.UpdateGroupRequest{}
		if err := proto.Unmarshal(raw, req); err != nil {
			return
		}
		if extraPath != "" {
			if req.UpdateMask == nil {
				req.UpdateMask = &fieldmaskpb.FieldMask{}
			}
			req.UpdateMask.Paths = append(req.UpdateMask.Paths, extraPath)
		}
		_, paths, err := checkUpdate(req)
		if err != nil {
			if !strings.Contains(err.Error(), "invalid argument") {
				t.Fatalf("error is not an invalid-argument error: %v", err)
			}
			return
		}
		cur := &pb.Group{Name: "groups/web", PolicyRevision: 7, Etag: "5", CreateTime: timestamppb.Now()}
		before := proto.Clone(cur).(*pb.Group)
		for _, p := range paths {
			copyPath(cur.ProtoReflect(), req.GetGroup().ProtoReflect(), p)
		}
		if cur.Name != before.Name || cur.PolicyRevision != before.PolicyRevision || cur.Etag != before.Etag ||
			!proto.Equal(cur.CreateTime, before.CreateTime) {
			t.Fatalf("mask %v changed an output-only field: %v", paths, cur)
		}
		var vs policy.Violations
		policy.ValidateGroup(&vs, "group", cur)
		for _, v := range vs {
			if !strings.HasPrefix(v.Field, "group") || v.Description == "" {
				t.Fatalf("violation does not name a field: %+v", v)
			}
		}
	})
}
