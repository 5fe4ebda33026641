package controller

import (
	"log/slog"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/mpfleet/mpfleet/internal/config"
)

// The example config an operator installs parses with the real flags.
func TestDeployConfigParses(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	path := filepath.Join(filepath.Dir(file), "..", "deploy", "config", "controller.yaml")
	var f Flags
	fs := flagSet(&f)
	if err := fs.Parse([]string{"--config", path}); err != nil {
		t.Fatal(err)
	}
	if err := config.Apply(fs, "MPFLEET_CONTROLLER_TEST_", "config"); err != nil {
		t.Fatal(err)
	}
	if f.Listen != "0.0.0.0:7400" || f.TLSClientCAFile == "" || f.TokensFile == "" || f.Metrics.Listen != ":7401" || f.Metrics.Pprof {
		t.Fatalf("parsed %+v", f)
	}
	if _, err := serverSecurity(Flags{Listen: f.Listen}, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("a non-loopback listen without TLS was accepted")
	}
}
