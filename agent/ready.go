package agent

// Readiness, as /readyz answers it: the agent holds a stream to a
// controller, and its last reconcile pass succeeded (before the first
// desired configuration: the restore of the last good one at start, or the
// reading of the state dir, did not fail).

import (
	"errors"
	"strings"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// maxReadyReason bounds the failure that Ready quotes.
const maxReadyReason = 300

// Ready returns nil when the agent is ready, else an error saying, in one
// line, what is missing: a stream to a controller, a last reconcile pass
// that succeeded, or both. It is safe to call from any goroutine.
func (a *Agent) Ready() error {
	var missing []string
	if !a.streamUp.Load() {
		missing = append(missing, "no stream to a controller")
	}
	if f := a.failure.Load(); f != nil {
		missing = append(missing, *f)
	}
	if len(missing) == 0 {
		return nil
	}
	return errors.New(strings.Join(missing, "; "))
}

// setStream records whether a stream to a controller is up.
func (a *Agent) setStream(up bool) {
	a.streamUp.Store(up)
	a.metrics.connected.Set(boolValue(up))
}

// publish hands what the loop decided last to Ready and the metrics: it
// runs at the end of every reconcile pass and of every decision taken
// without one (a configuration rejected, or one that leaves the kernel
// alone, the state dir read at start).
func (l *loop) publish() {
	if l.state == pb.SyncState_SYNC_STATE_FAILED {
		msg := "the last reconcile pass failed: " + oneLine(l.lastError)
		l.a.failure.Store(&msg)
	} else {
		l.a.failure.Store(nil)
	}
	rev := l.lastGood.GetRevision()
	if l.a.opts.DryRun && l.dryRevision != 0 {
		rev = l.dryRevision
	}
	l.a.metrics.revision.Set(float64(rev))
}

// oneLine makes s one line of at most maxReadyReason bytes.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if s == "" {
		return "no reason given"
	}
	return truncate(s, maxReadyReason)
}
