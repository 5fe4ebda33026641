package agent

// The agent's mailboxes: what the session and the address and link watch
// hand to the loop, each taken by the loop when it is ready.

import (
	"context"
	"time"

	"github.com/mpfleet/mpfleet/internal/wait"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// watchLoop follows address and link changes; when the subscription
// breaks it forces a reconcile (changes may have been missed) and
// subscribes again.
func (a *Agent) watchLoop(ctx context.Context) {
	for {
		err := a.opts.System.Watch(ctx, a.notifyChange)
		if ctx.Err() != nil {
			return
		}
		a.log.Warn("address and link watch broke; resubscribing", "err", err)
		a.kick()
		if !wait.Sleep(ctx, time.Second) {
			return
		}
	}
}

func (a *Agent) notifyChange(c Change) {
	if !c.Addr && c.Down {
		a.downMu.Lock()
		a.down[c.Link] = true
		a.downMu.Unlock()
	}
	a.offerAddress(c)
	a.kick()
}

func (a *Agent) kick() {
	select {
	case a.trigger <- struct{}{}:
	default:
	}
}

func (a *Agent) takeDown() map[int]bool {
	a.downMu.Lock()
	defer a.downMu.Unlock()
	d := a.down
	a.down = map[int]bool{}
	return d
}

// offerDesired hands the controller's latest desired configuration to the
// loop; one not yet taken is replaced.
func (a *Agent) offerDesired(d *pb.DesiredConfig) {
	a.desiredMu.Lock()
	a.desired = d
	a.desiredMu.Unlock()
	select {
	case a.desiredC <- struct{}{}:
	default:
	}
}

func (a *Agent) takeDesired() *pb.DesiredConfig {
	a.desiredMu.Lock()
	defer a.desiredMu.Unlock()
	d := a.desired
	a.desired = nil
	return d
}

func (a *Agent) offerProblem(err error) {
	a.problemMu.Lock()
	a.problems = append(a.problems, err)
	a.problemMu.Unlock()
	select {
	case a.problemC <- struct{}{}:
	default:
	}
}

func (a *Agent) takeProblems() []error {
	a.problemMu.Lock()
	defer a.problemMu.Unlock()
	p := a.problems
	a.problems = nil
	return p
}
