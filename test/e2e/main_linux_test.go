package e2e

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/nstest"
)

// binaries are the programs under test, built once per package run by
// TestMain (or taken from MPFLEET_E2E_BIN, a directory holding all three).
var binaries struct {
	dir string
	err error
}

// programs are the binaries the tests run, by command directory.
var programs = []string{"controller/cmd/mpfleet-controller", "agent/cmd/mpfleet-agent", "cli/cmd/mpfleetctl"}

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
	goCmd, err := exec.LookPath("go")
	if err != nil {
		goCmd = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	for _, p := range programs {
		args = append(args, "./"+p)
	}
	start := time.Now()
	cmd := exec.Command(goCmd, args...)
	cmd.Dir = repoRoot()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %v: %w\n%s", args, err, out)
	}
	fmt.Fprintf(os.Stderr, "e2e: built %d programs in %v\n", len(programs), time.Since(start).Round(time.Millisecond))
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

// bin returns the path of a program.
func bin(name string) string { return filepath.Join(binaries.dir, name) }
