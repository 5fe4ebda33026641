package agent

// Reconcile passes, numbered and handed to Options.OnReconcile, so that a
// test can wait for the pass that a change or a resync started and then
// check what it did, or that it did nothing, instead of sleeping.

import (
	"time"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// Pass is the outcome of one reconcile pass, as Options.OnReconcile sees it.
type Pass struct {
	// Seq numbers the agent's passes from 1, in the order they ended.
	Seq uint64
	// Reason is what started the pass: "desired" (a desired configuration
	// arrived), "event" (an address or link changed, or the agent looks
	// again after an apply), "resync" (the periodic resync) or "restore"
	// (the last good configuration, at start).
	Reason string
	// State is the sync state the pass left.
	State pb.SyncState
	// Events is how many events the pass emitted (sent, or queued for the
	// next session).
	Events int
}

// endPass numbers a pass that has ended, measures it, publishes its
// outcome (ready.go) and hands it to the hook; events is the loop's event
// count when the pass began, start the time.
func (l *loop) endPass(why reason, events uint64, start time.Time) {
	l.a.metrics.reconcile.Observe(time.Since(start).Seconds())
	l.publish()
	l.passes++
	if f := l.a.opts.OnReconcile; f != nil {
		f(Pass{Seq: l.passes, Reason: why.String(), State: l.state, Events: int(l.events - events)})
	}
}
