package policy

import (
	"fmt"
	"sort"
	"strings"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// Matches reports whether a host with labels belongs to a group with selector
// s: it must carry every label of the selector with the same value. An empty
// selector matches no host, so that a group without a selector never grabs
// the whole fleet by accident.
func Matches(s *pb.Selector, labels map[string]string) bool {
	ml := s.GetMatchLabels()
	if len(ml) == 0 {
		return false
	}
	for k, v := range ml {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// Assign returns the ids of the groups selecting a host, sorted. One id means
// the host is managed by that group; none, unmanaged; more, a conflict.
func Assign(groups map[string]*pb.Group, labels map[string]string) []string {
	var ids []string
	for id, g := range groups {
		if Matches(g.GetSelector(), labels) {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
}

// ParseLabelSelector parses "k=v,k2=v2" into a label map.
func ParseLabelSelector(s string) (map[string]string, error) {
	out := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%q is not k=v", part)
		}
		out[k] = v
	}
	var vs Violations
	ValidateLabels(&vs, "labels", out)
	if err := vs.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// HasLabels reports whether labels include every entry of want.
func HasLabels(labels, want map[string]string) bool {
	for k, v := range want {
		if labels[k] != v {
			return false
		}
	}
	return true
}
