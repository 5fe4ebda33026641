package controller

// What the API accepts, every agent takes: a group whose hosts would receive
// a desired configuration over the agents' limit is refused when it is
// created or updated, not found out by every agent of the group.

import (
	"fmt"
	"math"
	"strings"

	"github.com/mpfleet/mpfleet/internal/policy"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
)

// longestGroupName is the name of a group with the longest id there can be,
// so that the size does not depend on the id (validated apart).
var longestGroupName = store.GroupName(strings.Repeat("x", 63))

// desiredSize is the encoded size of the desired configuration a host of a
// group with policy p receives, at its largest revision.
func desiredSize(p *pb.MultipathPolicy) int {
	return proto.Size(&pb.DesiredConfig{
		Assignment: pb.DesiredConfig_ASSIGNMENT_MANAGED,
		Group:      longestGroupName,
		Revision:   math.MaxInt64,
		Policy:     p,
	})
}

// checkDesiredSize refuses (a *policy.InvalidError naming field, the
// group's policy) a policy whose desired configuration is over
// policy.MaxDesiredSize. It is checked before the policy is validated: a
// policy that large is refused whatever else is wrong with it.
func checkDesiredSize(field string, p *pb.MultipathPolicy) error {
	if n := desiredSize(p); n > policy.MaxDesiredSize {
		return policy.Violations{{Field: field, Description: fmt.Sprintf("makes a desired configuration of %d bytes encoded; agents accept at most %d", n, policy.MaxDesiredSize)}}.Err()
	}
	return nil
}
