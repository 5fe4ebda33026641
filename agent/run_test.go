package agent

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/mpfleet/mpfleet/internal/version"
)

func TestRunFlags(t *testing.T) {
	var out, errb bytes.Buffer
	if err := Run(context.Background(), []string{"--help"}, &out, &errb); err != nil {
		t.Fatalf("--help: %v", err)
	}
	for _, want := range []string{"mpfleet-agent applies", "--controller", "--confirm-timeout", "--probe-listen ADDR", "MPFLEET_AGENT_HOST_ID", "--cleanup", "--metrics-listen ADDR", "--enable-pprof"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("--help lacks %q", want)
		}
	}
	out.Reset()
	if err := Run(context.Background(), []string{"--version"}, &out, &errb); err != nil || strings.TrimSpace(out.String()) != version.Line("mpfleet-agent") {
		t.Errorf("--version: %q, %v", out.String(), err)
	}
	for _, tt := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"bad host id", []string{"--host-id", "Web_1"}, nil, "--host-id"},
		{"bad host id from the environment", nil, map[string]string{"MPFLEET_AGENT_HOST_ID": "-x"}, "--host-id"},
		{"cert without key", []string{"--host-id", "h1", "--tls-cert-file", "/nonexistent"}, nil, "together"},
		{"missing CA file", []string{"--host-id", "h1", "--tls-ca-file", "/nonexistent"}, nil, "--tls-ca-file"},
		{"bad log level", []string{"--log-level", "loud"}, nil, "--log-level"},
		{"bad duration in the environment", nil, map[string]string{"MPFLEET_AGENT_RESYNC_INTERVAL": "soon"}, "MPFLEET_AGENT_RESYNC_INTERVAL"},
		{"unknown config key", []string{"--config", writeTemp(t, "hots-id: h1\n")}, nil, "hots-id"},
		{"stray argument", []string{"extra"}, nil, "unexpected"},
		{"bad probe listen address", []string{"--host-id", "h1", "--probe-listen", "nowhere"}, nil, "--probe-listen"},
		{"bad probe listen address from the environment", []string{"--host-id", "h1"}, map[string]string{"MPFLEET_AGENT_PROBE_LISTEN": "198.18.0.1"}, "--probe-listen"},
		{"bad metrics listen address", []string{"--host-id", "h1", "--dry-run", "--metrics-listen", "nowhere"}, nil, "--metrics-listen"},
		{"bad metrics listen address in the config file", []string{"--host-id", "h1", "--dry-run", "--config", writeTemp(t, "metrics-listen: 198.18.0.1\n")}, nil, "--metrics-listen"},
		{"pprof without a metrics address", []string{"--host-id", "h1", "--enable-pprof"}, nil, "--enable-pprof"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			err := Run(context.Background(), tt.args, &out, &errb)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Run(%q) = %v, want an error about %s", tt.args, err, tt.want)
			}
		})
	}
}

func writeTemp(t *testing.T, content string) string {
	name := t.TempDir() + "/agent.yaml"
	if err := writeFile(name, content); err != nil {
		t.Fatal(err)
	}
	return name
}
