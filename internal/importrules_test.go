package internal_test

// The import rules of docs/architecture.md ("Packages"), checked on what
// `go list` says the packages import.

import (
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/mpfleet/mpfleet/internal/nstest"
)

const module = "github.com/mpfleet/mpfleet"

// programs are the program packages (and everything under them): nothing in
// internal/ may import them.
var programs = []string{module + "/agent", module + "/controller", module + "/cli"}

// kernelPackages talk to the kernel over netlink or enter network
// namespaces (with everything under them): the controller and the CLI never
// link them, directly or not.
var kernelPackages = []string{
	"github.com/mdlayher/netlink",
	"github.com/mdlayher/genetlink",
	"github.com/vishvananda/netlink",
	"github.com/vishvananda/netns",
	module + "/internal/mptcp/mptcpnl",
	module + "/internal/route/routenl",
	module + "/internal/reconcile/nlkernel",
	module + "/internal/nsrun",
}

// testSupport are fakes and suites for tests: no program links them.
var testSupport = []string{
	module + "/internal/reconcile/fakekernel",
	module + "/internal/reconcile/kerneltest",
	module + "/internal/etcdtest",
	module + "/internal/nstest",
	module + "/internal/testpki",
}

// pkg is what the test reads of `go list -json`.
type pkg struct {
	ImportPath   string
	Imports      []string
	Deps         []string
	TestImports  []string
	XTestImports []string
}

// under reports whether path is one of roots or inside one.
func under(path string, roots []string) bool {
	for _, r := range roots {
		if path == r || strings.HasPrefix(path, r+"/") {
			return true
		}
	}
	return false
}

// list runs `go list -deps=deps -json` on patterns and returns the packages
// by import path.
func list(t *testing.T, deps bool, patterns ...string) map[string]pkg {
	t.Helper()
	gocmd, err := exec.LookPath("go")
	if err != nil {
		nstest.Skip(t, "no go command in PATH: "+err.Error())
	}
	args := []string{"list", "-e", "-json=ImportPath,Imports,Deps,TestImports,XTestImports"}
	if deps {
		args = append(args, "-deps")
	}
	cmd := exec.Command(gocmd, append(args, patterns...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pkgs := map[string]pkg{}
	dec := json.NewDecoder(out)
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("go list %v: %v", patterns, err)
		}
		pkgs[p.ImportPath] = p
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("go list %v: %v\n%s", patterns, err, stderr.String())
	}
	return pkgs
}

// why names the direct imports, among pkgs, that bring a forbidden package
// into the dependencies: "a imports b".
func why(pkgs map[string]pkg, forbidden func(string) bool) []string {
	var out []string
	for _, p := range pkgs {
		if forbidden(p.ImportPath) {
			continue
		}
		for _, imp := range p.Imports {
			if forbidden(imp) {
				out = append(out, p.ImportPath+" imports "+imp)
			}
		}
	}
	slices.Sort(out)
	return out
}

// TestInternalImportsNoProgram: no package under internal/, nor its tests,
// imports a program package (agent, controller, cli and their cmd/).
func TestInternalImportsNoProgram(t *testing.T) {
	for _, p := range list(t, false, module+"/internal/...") {
		for _, imp := range slices.Concat(p.Deps, p.TestImports, p.XTestImports) {
			if under(imp, programs) {
				t.Errorf("%s depends on the program package %s", p.ImportPath, imp)
			}
		}
	}
}

// TestControllerAndCLILinkNoKernelCode: the controller and the CLI never
// link netlink, genetlink or netns code, nor mpfleet's kernel drivers.
func TestControllerAndCLILinkNoKernelCode(t *testing.T) {
	for _, root := range []string{"/controller/...", "/cli/..."} {
		pkgs := list(t, true, module+root)
		forbidden := func(path string) bool { return under(path, kernelPackages) }
		if chain := why(pkgs, forbidden); len(chain) > 0 {
			t.Errorf(".%s links kernel code:\n\t%s", root, strings.Join(chain, "\n\t"))
		}
		if _, ok := pkgs[module+"/internal/reconcile"]; root == "/controller/..." && !ok {
			// The controller plans through the pure model; if it stopped
			// doing so this test would pass for the wrong reason.
			t.Errorf(".%s does not link internal/reconcile any more: update this test", root)
		}
	}
}

// TestProgramsLinkNoTestSupport: fakes and test suites stay out of the
// programs.
func TestProgramsLinkNoTestSupport(t *testing.T) {
	pkgs := list(t, true, module+"/agent/...", module+"/controller/...", module+"/cli/...")
	if chain := why(pkgs, func(path string) bool { return under(path, testSupport) }); len(chain) > 0 {
		t.Errorf("programs link test support:\n\t%s", strings.Join(chain, "\n\t"))
	}
}
