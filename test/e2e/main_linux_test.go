package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/nstest"
	"github.com/mpfleet/mpfleet/test/fleettest"
)

// binaries are the programs under test, built once per package run by
// TestMain (or taken from MPFLEET_E2E_BIN, a directory holding all three).
var binaries struct {
	dir string
	err error
}

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	// Without root (or with -short) every test skips: building would be
	// wasted time.
	if !testing.Short() && os.Geteuid() == 0 {
		if dir := os.Getenv("MPFLEET_E2E_BIN"); dir != "" {
			binaries.dir = dir
		} else {
			dir, err := os.MkdirTemp("", "mpfleet-e2e-bin-")
			if err != nil {
				binaries.err = err
			} else {
				defer os.RemoveAll(dir)
				binaries.dir, binaries.err = dir, build(dir)
			}
		}
	}
	return m.Run()
}

// repoRoot is the module's root directory.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// build builds the programs into dir with the go command that runs the
// tests.
func build(dir string) error {
	start := time.Now()
	if err := fleettest.Build(context.Background(), repoRoot(), dir); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "e2e: built %d programs in %v\n", len(fleettest.Programs), time.Since(start).Round(time.Millisecond))
	return nil
}

// e2e skips t under -short and without root (failing under CI=true), and
// fails it if the programs could not be built.
func e2e(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	nstest.RequireRoot(t)
	if binaries.err != nil {
		t.Fatalf("building the programs: %v", binaries.err)
	}
	if binaries.dir == "" {
		t.Fatal("the programs were not built")
	}
}
