package version_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/nstest"
)

// programs are the binaries make build makes.
var programs = []string{"mpfleet-controller", "mpfleet-agent", "mpfleetctl"}

// TestMakeBuildVersion builds the three programs with make build into a
// temporary directory and checks what --version says: the program's name,
// the git version (never dev), the commit checked out, the build's Go
// release; mpfleetctl version --client says the same. A plain go build
// with VCS stamping (no ldflags) still names the commit.
func TestMakeBuildVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the programs: not in -short mode")
	}
	for _, tool := range []string{"make", "git", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			nstest.Skip(t, tool+" is not on PATH: "+err.Error())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	root := strings.TrimSpace(run(ctx, t, ".", "go", "list", "-m", "-f", "{{.Dir}}"))
	if _, err := os.Stat(filepath.Join(root, ".git")); err != nil {
		nstest.Skip(t, "not a git checkout: "+err.Error())
	}
	// Others may commit while this runs: either commit will do.
	heads := []string{strings.TrimSpace(run(ctx, t, root, "git", "rev-parse", "HEAD"))}
	bin := t.TempDir()
	run(ctx, t, root, "make", "--no-print-directory", "build", "BIN="+bin)
	heads = append(heads, strings.TrimSpace(run(ctx, t, root, "git", "rev-parse", "HEAD")))

	check := func(name, line string) {
		t.Helper()
		if !strings.HasPrefix(line, name+" ") || strings.Count(line, "\n") != 1 {
			t.Errorf("%s --version: %q, want one line starting with the program's name", name, line)
			return
		}
		fields := strings.Fields(line)
		if v := fields[1]; v == "dev" || v == "" {
			t.Errorf("%s --version: version %q in %q", name, v, line)
		}
		if !strings.Contains(line, "(commit "+heads[0]+", built ") && !strings.Contains(line, "(commit "+heads[1]+", built ") {
			t.Errorf("%s --version: %q does not name commit %s", name, line, heads[0])
		}
		if !strings.HasSuffix(line, runtime.Version()+" "+runtime.GOOS+"/"+runtime.GOARCH+")\n") {
			t.Errorf("%s --version: %q does not end with the Go release and platform", name, line)
		}
	}
	for _, p := range programs {
		check(p, run(ctx, t, bin, filepath.Join(bin, p), "--version"))
	}
	ctl := run(ctx, t, bin, filepath.Join(bin, "mpfleetctl"), "--version")
	if got := run(ctx, t, bin, filepath.Join(bin, "mpfleetctl"), "version", "--client"); got != "Client: "+ctl {
		t.Errorf("mpfleetctl version --client: %q, want %q", got, "Client: "+ctl)
	}

	// Without make's ldflags, the go command's VCS stamps.
	plain := filepath.Join(bin, "mpfleetctl-plain")
	run(ctx, t, root, "go", "build", "-buildvcs=true", "-o", plain, "./cli/cmd/mpfleetctl")
	check("mpfleetctl", run(ctx, t, bin, plain, "--version"))
}

// run runs a command in dir and returns its standard output; it fails the
// test if the command fails.
func run(ctx context.Context, t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}
