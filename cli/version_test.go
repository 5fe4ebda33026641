package cli

import (
	"fmt"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/version"
)

// TestVersionFlag: --version prints mpfleetctl's version line, as the
// daemons' --version does, and contacts nobody.
func TestVersionFlag(t *testing.T) {
	r := runCLI(t, "", nil, "--controller", "198.18.0.1:7400", "--version")
	if r.err != nil || r.stdout != version.Line("mpfleetctl")+"\n" || r.stderr != "" {
		t.Errorf("--version: %v, stdout %q, stderr %q; want %q", r.err, r.stdout, r.stderr, version.Line("mpfleetctl"))
	}
}

// TestVersionUnreachable: with no controller to answer, version prints the
// client's version all the same, then the error, and exits 1; --client asks
// no controller.
func TestVersionUnreachable(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", etcdtest.FreePort(t)) // nothing listens
	client := "Client: mpfleetctl " + version.Get().String() + "\n"
	r := runCLI(t, "", nil, "--controller", addr, "--timeout", "5s", "version")
	if r.code() != 1 || r.stdout != client || !strings.HasPrefix(r.stderr, "mpfleetctl: server version: ") || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("version, no controller: exit %d, stdout %q, stderr %q", r.code(), r.stdout, r.stderr)
	}
	r = runCLI(t, "", nil, "--controller", addr, "version", "--client")
	if r.err != nil || r.stdout != client {
		t.Errorf("version --client: %v, stdout %q", r.err, r.stdout)
	}
	r = runCLI(t, "", nil, "--controller", addr, "version", "--client", "-o", "yaml")
	var got map[string]map[string]any
	if err := yaml.Unmarshal([]byte(r.stdout), &got); r.err != nil || err != nil || len(got) != 1 || got["client"]["version"] != version.Get().Version {
		t.Errorf("version --client -o yaml: %v, %v, %q", r.err, err, r.stdout)
	}
	if r := runCLI(t, "", nil, "version", "extra"); r.code() != 2 {
		t.Errorf("version extra: exit %d, %q", r.code(), r.stderr)
	}
}
