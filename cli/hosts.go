package cli

import (
	"context"
	"fmt"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// getHost gets one host by id or name.
func (a *app) getHost(ctx context.Context, hc mpfleetv1.HostServiceClient, name string) (*mpfleetv1.Host, error) {
	return unary(ctx, a, fmt.Sprintf("host %q", trimName(name)), hc.GetHost, &mpfleetv1.GetHostRequest{Name: hostName(name)})
}

// hostGroup is the group of a host, or the groups that claim it when they
// conflict.
func hostGroup(h *mpfleetv1.Host) string {
	if len(h.GetConflictingGroups()) > 0 {
		return joinTrimmed(h.GetConflictingGroups())
	}
	return trimName(h.GetGroup())
}

// hostHealth sums up a host's health in a few words, for the HEALTH column
// of get hosts and the Health field of describe host: "ok", "degraded: 2
// problems", or "-" for a host that never reported its health. A
// disconnected host keeps the health it last reported.
func hostHealth(h *mpfleetv1.Host) string {
	broken := 0
	for _, p := range h.GetHealth().GetPaths() {
		if pathBroken(p.GetState()) {
			broken++
		}
	}
	switch {
	case len(h.GetProblems()) > 0:
		return "degraded: " + plural(len(h.GetProblems()), "problem")
	case broken > 0:
		// The controller names every broken path as a problem too; this
		// only guards against a report that does not.
		return "degraded: " + plural(broken, "broken path")
	case h.GetSyncState() == mpfleetv1.SyncState_SYNC_STATE_DEGRADED:
		return "degraded"
	case h.GetHealth().GetReadTime() == nil && len(h.GetHealth().GetPaths()) == 0:
		return "-"
	default:
		return "ok"
	}
}

// pathBroken reports whether a path state means the path does not carry
// traffic as the policy asks. UNPROBED passed every local check; it is only
// not known to carry MPTCP.
func pathBroken(s mpfleetv1.PathState) bool {
	switch s {
	case mpfleetv1.PathState_PATH_STATE_FAILED, mpfleetv1.PathState_PATH_STATE_LINK_DOWN, mpfleetv1.PathState_PATH_STATE_NO_GATEWAY:
		return true
	}
	return false
}
