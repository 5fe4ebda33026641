package fleettest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestEventually(t *testing.T) {
	errNotYet := errors.New("not yet")
	errFinal := errors.New("final")

	t.Run("passes once check does", func(t *testing.T) {
		calls := 0
		err := Eventually(context.Background(), 5*time.Second, func() error {
			if calls++; calls < 3 {
				return errNotYet
			}
			return nil
		})
		if err != nil || calls != 3 {
			t.Fatalf("err %v after %d calls, want nil after 3", err, calls)
		}
	})
	t.Run("Stop ends at once", func(t *testing.T) {
		calls := 0
		err := Eventually(context.Background(), 5*time.Second, func() error { calls++; return Stop(errFinal) })
		if !errors.Is(err, errFinal) || err.Error() != errFinal.Error() || calls != 1 {
			t.Fatalf("err %v after %d calls, want %v after 1", err, calls, errFinal)
		}
	})
	t.Run("timeout keeps the last error", func(t *testing.T) {
		err := Eventually(context.Background(), 0, func() error { return errNotYet })
		if !errors.Is(err, errNotYet) || !strings.HasPrefix(err.Error(), "after 0s: ") {
			t.Fatalf("err %v, want %q after the timeout", err, errNotYet)
		}
	})
	t.Run("context ends the wait", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		err := Eventually(ctx, time.Hour, func() error { return errNotYet })
		if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), errNotYet.Error()) {
			t.Fatalf("err %v, want context.Canceled and the last error", err)
		}
	})
}
