package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// waitApplied waits for the groups apply wrote to reach their hosts: a
// group whose change started a rollout until the rollout ends, any other
// until its hosts run its revision (bounded by timeout, 0: no bound). It
// waits for every group, and fails if any did not get there.
func (a *app) waitApplied(ctx context.Context, groups []*mpfleetv1.Group, timeout time.Duration) error {
	var (
		errs    []error
		rolling []*mpfleetv1.Group
	)
	hctx := ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		hctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	for _, g := range groups {
		if g.GetActiveRollout() != "" {
			rolling = append(rolling, g)
			continue
		}
		if err := a.waitHosts(hctx, ctx, g, timeout); err != nil {
			if ctx.Err() != nil {
				return err
			}
			errs = append(errs, err)
		}
	}
	if len(rolling) > 0 {
		rc, err := a.rollouts()
		if err != nil {
			return err
		}
		for _, g := range rolling {
			if err := a.waitRollout(ctx, rc, g.GetActiveRollout(), a.followMode(true)); err != nil {
				if ctx.Err() != nil {
					return err
				}
				errs = append(errs, fmt.Errorf("group %q: %w", trimName(g.GetName()), err))
			}
		}
	}
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	msgs := make([]string, len(errs))
	for i, err := range errs {
		msgs[i] = err.Error()
	}
	return fmt.Errorf("%d of %d groups did not converge: %s", len(errs), len(groups), strings.Join(msgs, "; "))
}

// hostAt reports whether h runs revision rev as it should: connected,
// applied and IN_SYNC.
func hostAt(h *mpfleetv1.Host, rev int64) bool {
	return h.GetConnected() && h.GetAppliedRevision() == rev && h.GetSyncState() == mpfleetv1.SyncState_SYNC_STATE_IN_SYNC
}

// waitHosts follows the hosts of g with WatchHosts until every one runs the
// revision g deploys, printing a line each time the count changes. It fails
// as soon as a host reports FAILED for that revision, and when ctx's
// deadline passes. parent is ctx without the deadline: when it is done, the
// user interrupted the wait.
func (a *app) waitHosts(ctx, parent context.Context, g *mpfleetv1.Group, timeout time.Duration) error {
	id := trimName(g.GetName())
	// deployed_revision is what the hosts run when no rollout moves them;
	// a controller that does not say is one where that is the policy's.
	rev := g.GetDeployedRevision()
	if rev == 0 {
		rev = g.GetPolicyRevision()
	}
	hc, err := a.hosts()
	if err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := hc.WatchHosts(wctx, &mpfleetv1.WatchHostsRequest{Group: g.GetName()})
	if err != nil {
		return fmt.Errorf("group %q: watch hosts: %w", id, a.rpcErr(err))
	}
	var (
		hosts  = map[string]*mpfleetv1.Host{}
		synced bool
		last   string
	)
	for {
		ev, err := stream.Recv()
		switch {
		case err != nil && parent.Err() != nil:
			return fmt.Errorf("group %q: stopped waiting for its hosts (interrupted)", id)
		case err != nil && pastDeadline(ctx):
			return fmt.Errorf("group %q: timed out after %s waiting for its hosts: %s", id, formatDuration(timeout), hostsBehind(hosts, rev))
		case errors.Is(err, io.EOF):
			return fmt.Errorf("group %q: watch hosts: the controller ended the stream before the hosts were in sync: %s", id, hostsBehind(hosts, rev))
		case err != nil:
			return fmt.Errorf("group %q: watch hosts: %w", id, a.rpcErr(err))
		}
		switch ev.GetType() {
		case mpfleetv1.HostEvent_TYPE_SYNCED:
			synced = true
		case mpfleetv1.HostEvent_TYPE_DELETED:
			delete(hosts, ev.GetHost().GetName())
		default:
			hosts[ev.GetHost().GetName()] = ev.GetHost()
		}
		if !synced {
			continue
		}
		in := 0
		var failed *mpfleetv1.Host
		for _, n := range sortedKeys(hosts) {
			switch h := hosts[n]; {
			case hostAt(h, rev):
				in++
			case failed == nil && h.GetSyncState() == mpfleetv1.SyncState_SYNC_STATE_FAILED && h.GetDesiredRevision() == rev:
				// Failed this revision; a failure of an older one is
				// no news.
				failed = h
			}
		}
		if line := fmt.Sprintf("group/%s %d/%d hosts in sync at revision %d", id, in, len(hosts), rev); line != last {
			last = line
			a.printf("%s %s\n", a.now().UTC().Format("15:04:05"), line)
		}
		switch {
		case failed != nil:
			return fmt.Errorf("group %q: host %s failed to apply revision %d: %s", id, trimName(failed.GetName()), rev,
				orDefault(oneLine(failed.GetLastError()), "no error reported"))
		case in == len(hosts):
			return nil
		}
	}
}

// hostsBehind says which hosts do not run rev, and why: "1 of 3 hosts not
// in sync at revision 2: h3 (disconnected, applied 1)".
func hostsBehind(hosts map[string]*mpfleetv1.Host, rev int64) string {
	var behind []string
	for _, n := range sortedKeys(hosts) {
		h := hosts[n]
		if hostAt(h, rev) {
			continue
		}
		state := shortEnum(h.GetSyncState())
		if !h.GetConnected() {
			state = "disconnected"
		}
		behind = append(behind, fmt.Sprintf("%s (%s, applied %s)", trimName(n), state, revision(h.GetAppliedRevision())))
	}
	const most = 5
	msg := fmt.Sprintf("%d of %d hosts not in sync at revision %d", len(behind), len(hosts), rev)
	if len(behind) == 0 {
		return msg
	}
	if len(behind) > most {
		behind = append(behind[:most], fmt.Sprintf("and %d more", len(behind)-most))
	}
	return msg + ": " + strings.Join(behind, ", ")
}

// pastDeadline reports whether ctx's deadline has passed: gRPC ends a
// stream on its own timer for the deadline, which can fire a moment before
// ctx.Err() says so.
func pastDeadline(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}
