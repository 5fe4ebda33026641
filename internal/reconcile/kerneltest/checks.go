package kerneltest

import (
	"context"
	"errors"
	"testing"

	"github.com/mpfleet/mpfleet/internal/reconcile"
)

// readState reads the state k holds for desired, failing the test on an
// error.
func readState(t testing.TB, k reconcile.Kernel, desired reconcile.HostConfig) reconcile.State {
	t.Helper()
	s, err := k.Read(context.Background(), desired)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// readPlan reads the state k holds for desired and plans desired on it,
// failing the test on an error.
func readPlan(t testing.TB, k reconcile.Kernel, desired reconcile.HostConfig) (reconcile.State, reconcile.Ops) {
	t.Helper()
	actual := readState(t, k, desired)
	ops, err := reconcile.Plan(desired, actual)
	if err != nil {
		t.Fatal(err)
	}
	return actual, ops
}

// checkConverged reads the state k holds for desired, which it should have
// converged to: another plan is empty. It returns the state.
func checkConverged(t testing.TB, k reconcile.Kernel, desired reconcile.HostConfig) reconcile.State {
	t.Helper()
	s := readState(t, k, desired)
	if again, err := reconcile.Plan(desired, s); err != nil || len(again) != 0 {
		t.Errorf("second plan = %v, %v; want none", again, err)
	}
	return s
}

// refusal is an op the Kernel must refuse with an error matching want.
type refusal struct {
	name string
	op   reconcile.Op
	want error
}

// checkRefused does each op through ns's Kernel: each must fail with the
// error wanted and leave the namespace as it was.
func checkRefused(t testing.TB, ns Namespace, tests []refusal) {
	t.Helper()
	for _, tt := range tests {
		before := ns.Snapshot(t)
		if _, err := ns.Kernel().Do(context.Background(), tt.op); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
		if after := ns.Snapshot(t); after != before {
			t.Errorf("%s: a failed op changed the namespace:\n%s\nwant:\n%s", tt.name, after, before)
		}
	}
}
