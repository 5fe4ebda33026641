package fleettest

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// pollInterval is how often Eventually checks.
const pollInterval = 50 * time.Millisecond

// stopError ends Eventually at once.
type stopError struct{ err error }

func (s stopError) Error() string { return s.err.Error() }
func (s stopError) Unwrap() error { return s.err }

// Stop marks err as final: Eventually returns it at once instead of trying
// again.
func Stop(err error) error { return stopError{err} }

// Eventually calls check every 50 ms until it returns nil. It returns the
// error check wrapped with Stop at once (unwrapped), the last error when
// timeout passes ("after 30s: …"), or the context's error when ctx ends.
func Eventually(ctx context.Context, timeout time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		var s stopError
		if errors.As(err, &s) {
			return s.err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %w)", ctx.Err(), err)
		case <-time.After(pollInterval):
		}
	}
}
