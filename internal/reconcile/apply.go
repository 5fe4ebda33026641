package reconcile

import (
	"context"
	"errors"
	"fmt"
)

// Kernel is the seam between the reconciler and one namespace's kernel
// state. nlkernel.Kernel is the real one; fakekernel.Kernel keeps state in
// memory for tests; kerneltest.Run checks that both behave alike.
type Kernel interface {
	// Read returns the current state as Plan(desired, state) needs it:
	// net.mptcp.enabled, the limits, all endpoints, mpfleet's rules and
	// routes and, apart, the foreign ones in its range, the sysctls desired
	// names (one the kernel lacks is left out of State.Sysctls), and the
	// names of the interfaces that the state or desired refer to.
	Read(ctx context.Context, desired HostConfig) (State, error)
	// Do applies one op and returns the op that undoes it, built from what
	// the kernel held just before (so an undo restores that, not what the
	// plan expected). On error nothing was changed.
	Do(ctx context.Context, op Op) (undo Op, err error)
}

// ApplyError is Apply's error: which op failed, why, and how the rollback
// went. It unwraps to the op's error, so errors.Is(err, os.ErrExist) and the
// like see the kernel's cause.
type ApplyError struct {
	Index int   // index of the failed op in the plan
	Total int   // ops in the plan
	Op    Op    // the failed op
	Err   error // why it failed
	// Undone is how many applied ops were rolled back; RollbackErr is set if
	// undoing any of them failed, in which case the kernel was NOT left as
	// it was.
	Undone      int
	RollbackErr error
}

// Error names the failed step and op, the cause and the rollback outcome.
func (e *ApplyError) Error() string {
	s := fmt.Sprintf("reconcile: step %d of %d (%s) failed: %v", e.Index+1, e.Total, e.Op, e.Err)
	if e.RollbackErr != nil {
		return s + fmt.Sprintf("; rollback FAILED, kernel state is partial: %v", e.RollbackErr)
	}
	return s + fmt.Sprintf("; rolled back %d applied step(s)", e.Undone)
}

// Unwrap returns the failed op's error.
func (e *ApplyError) Unwrap() error { return e.Err }

// Apply applies ops in order through k, journaling each op's undo. If an op
// fails, or ctx ends between two ops, the ops already applied are undone in
// reverse order (even though ctx is done) and an *ApplyError is returned: the
// kernel is left as it was unless ApplyError.RollbackErr says otherwise.
func Apply(ctx context.Context, k Kernel, ops Ops) error {
	journal := make([]Op, 0, len(ops))
	for i, op := range ops {
		err := ctx.Err()
		var undo Op
		if err == nil {
			undo, err = k.Do(ctx, op)
		}
		if err != nil {
			ae := &ApplyError{Index: i, Total: len(ops), Op: op, Err: err}
			ae.Undone, ae.RollbackErr = rollback(context.WithoutCancel(ctx), k, journal)
			return ae
		}
		journal = append(journal, undo)
	}
	return nil
}

// rollback applies the journal's undos newest first. It goes on past a
// failure, so as much as possible is restored, and reports every failure.
func rollback(ctx context.Context, k Kernel, journal []Op) (undone int, err error) {
	var errs []error
	for i := len(journal) - 1; i >= 0; i-- {
		if _, uerr := k.Do(ctx, journal[i]); uerr != nil {
			errs = append(errs, fmt.Errorf("undo %s: %w", journal[i], uerr))
			continue
		}
		undone++
	}
	return undone, errors.Join(errs...)
}
