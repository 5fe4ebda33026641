package agent

import (
	"path/filepath"
	"runtime"
	"slices"
	"testing"

	"github.com/mpfleet/mpfleet/internal/config"
)

// The agent configs of deploy/ parse with the real flags, and their
// controller addresses with the agent's rules: the HA examples list both
// replicas, or the headless Service over them.
func TestDeployAgentConfigs(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	deploy := filepath.Join(filepath.Dir(file), "..", "deploy")
	for _, tc := range []struct {
		path string
		want []string
	}{
		{"config/agent.yaml", []string{"mpfleet.example.net:7400"}},
		{"systemd/ha/agent.yaml", []string{"ctl-a.example.net:7400", "ctl-b.example.net:7400"}},
		{"kubernetes/ha/agent.yaml", []string{"mpfleet-controller-agents.mpfleet.svc.cluster.local:7400"}},
	} {
		var f Flags
		fs := flagSet(&f)
		if err := fs.Parse([]string{"--config", filepath.Join(deploy, tc.path)}); err != nil {
			t.Fatal(err)
		}
		if err := config.Apply(fs, "MPFLEET_AGENT_TEST_", "config"); err != nil {
			t.Fatalf("%s: %v", tc.path, err)
		}
		got, err := parseControllers(f.Controller)
		if err != nil {
			t.Fatalf("%s: %v", tc.path, err)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: controllers %q, want %q", tc.path, got, tc.want)
		}
		if f.TLSCAFile == "" {
			t.Errorf("%s: no TLS to the controller", tc.path)
		}
		if tc.path == "config/agent.yaml" && f.Metrics.Listen != ":7402" {
			t.Errorf("%s: metrics-listen %q, want \":7402\"", tc.path, f.Metrics.Listen)
		}
	}
}
