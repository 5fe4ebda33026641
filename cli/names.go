package cli

import "strings"

// groupNamePrefix and friends are the resource name prefixes of the API.
const (
	groupPrefix   = "groups/"
	hostPrefix    = "hosts/"
	rolloutPrefix = "rollouts/"
)

// groupName returns "groups/{id}" for a group id or name.
func groupName(s string) string {
	return groupPrefix + strings.TrimPrefix(s, groupPrefix)
}

// hostName returns "hosts/{id}" for a host id or name.
func hostName(s string) string {
	return hostPrefix + strings.TrimPrefix(s, hostPrefix)
}

// rolloutName returns "rollouts/{id}" for a rollout id or name.
func rolloutName(s string) string {
	return rolloutPrefix + strings.TrimPrefix(s, rolloutPrefix)
}
