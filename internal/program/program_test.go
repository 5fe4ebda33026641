package program_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mpfleet/mpfleet/internal/program"
	"github.com/mpfleet/mpfleet/internal/version"
	"github.com/spf13/pflag"
)

type flags struct {
	listen, level, config string
	quiet                 bool
}

func flagSet(f *flags) *pflag.FlagSet {
	fs := pflag.NewFlagSet("test-program", pflag.ContinueOnError)
	fs.StringVar(&f.listen, "listen", "127.0.0.1:7400", "listen address")
	fs.StringVar(&f.level, "log-level", "info", "log level")
	fs.BoolVar(&f.quiet, "quiet", false, "say less")
	fs.StringVar(&f.config, "config", "", "YAML file of settings")
	return fs
}

var spec = program.Spec{Usage: "test-program does nothing.\n", EnvPrefix: "MPFLEET_PROGTEST_"}

// TestParseSources: the command line wins, then the environment, then
// the config file.
func TestParseSources(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(cfg, []byte("listen: 127.0.0.1:1\nlog-level: debug\nquiet: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MPFLEET_PROGTEST_LOG_LEVEL", "warn")
	var f flags
	var stderr bytes.Buffer
	if err := program.Parse(flagSet(&f), []string{"--config", cfg, "--listen", "127.0.0.1:2"}, &stderr, spec); err != nil {
		t.Fatal(err)
	}
	if f.listen != "127.0.0.1:2" || f.level != "warn" || !f.quiet {
		t.Errorf("listen %q (want the command line's), log-level %q (want the environment's), quiet %v (want the file's)", f.listen, f.level, f.quiet)
	}
	if stderr.Len() != 0 {
		t.Errorf("stderr: %q", stderr.String())
	}
}

func TestParseHelp(t *testing.T) {
	var f flags
	var stderr bytes.Buffer
	err := program.Parse(flagSet(&f), []string{"--help"}, &stderr, spec)
	if !errors.Is(err, program.ErrHelp) {
		t.Fatalf("--help: %v, want ErrHelp", err)
	}
	out := stderr.String()
	if !strings.HasPrefix(out, spec.Usage+"\nFlags:\n") || !strings.Contains(out, "--listen") {
		t.Errorf("help text:\n%s", out)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		args   []string
		noArgs bool
		env    string
		want   string
	}{
		{"unknown flag", []string{"--nope"}, false, "", "unknown flag: --nope"},
		{"arguments refused", []string{"extra"}, true, "", `unexpected arguments ["extra"]`},
		{"bad environment", nil, false, "maybe", "MPFLEET_PROGTEST_QUIET"},
		{"missing config file", []string{"--config", "/nonexistent/c.yaml"}, false, "", "config file: open /nonexistent/c.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv("MPFLEET_PROGTEST_QUIET", tc.env)
			}
			var f flags
			s := spec
			s.NoArgs = tc.noArgs
			err := program.Parse(flagSet(&f), tc.args, &bytes.Buffer{}, s)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// Arguments are allowed unless refused.
	var f flags
	if err := program.Parse(flagSet(&f), []string{"extra"}, &bytes.Buffer{}, spec); err != nil {
		t.Errorf("arguments allowed: %v", err)
	}
}

func TestLogger(t *testing.T) {
	var buf bytes.Buffer
	log, err := program.LoggerFormat(&buf, "warn", program.FormatText)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hidden")
	log.Warn("shown", "k", "v")
	if out := buf.String(); strings.Contains(out, "hidden") || !strings.Contains(out, "level=WARN msg=shown k=v") {
		t.Errorf("log at warn:\n%s", out)
	}
	if _, err := program.LoggerFormat(&buf, "loud", program.FormatText); err == nil || !strings.HasPrefix(err.Error(), "--log-level: ") {
		t.Errorf("unknown level: %v", err)
	}
}

// TestParseVersion: with Spec.Stdout, --version prints the program's
// version line there and ends the program successfully, before the
// environment and the config file are read; a flag set that has --version
// keeps its own definition; without Stdout there is no --version.
func TestParseVersion(t *testing.T) {
	t.Setenv("MPFLEET_PROGTEST_QUIET", "not a bool") // would fail Parse if read
	var f flags
	var stdout, stderr bytes.Buffer
	s := spec
	s.Stdout = &stdout
	err := program.Parse(flagSet(&f), []string{"--version", "--config", "/nonexistent/c.yaml"}, &stderr, s)
	if !errors.Is(err, program.ErrHelp) {
		t.Fatalf("--version: %v, want ErrHelp", err)
	}
	if got, want := stdout.String(), version.Line("test-program")+"\n"; got != want {
		t.Errorf("--version printed %q, want %q", got, want)
	}
	if !strings.HasPrefix(stdout.String(), "test-program ") {
		t.Errorf("--version does not start with the program's name: %q", stdout.String())
	}

	// --help lists it.
	stderr.Reset()
	if err := program.Parse(flagSet(&f), []string{"--help"}, &stderr, s); !errors.Is(err, program.ErrHelp) || !strings.Contains(stderr.String(), "--version") {
		t.Errorf("--help: %v, without --version:\n%s", err, stderr.String())
	}

	// Set only from the environment, it is not asked for.
	if err := os.Unsetenv("MPFLEET_PROGTEST_QUIET"); err != nil { // t.Setenv restores it
		t.Fatal(err)
	}
	t.Setenv("MPFLEET_PROGTEST_VERSION", "true")
	stdout.Reset()
	if err := program.Parse(flagSet(&f), nil, &stderr, s); err != nil || stdout.Len() != 0 {
		t.Errorf("MPFLEET_PROGTEST_VERSION=true: %v, printed %q", err, stdout.String())
	}

	// The flag set's own --version is used, not redefined (that panics).
	fs := flagSet(&f)
	own := fs.Bool("version", false, "its own")
	stdout.Reset()
	if err := program.Parse(fs, []string{"--version"}, &stderr, s); !errors.Is(err, program.ErrHelp) || !*own || stdout.Len() == 0 {
		t.Errorf("own --version flag: %v, set %v, printed %q", err, *own, stdout.String())
	}

	// Without Stdout, no --version.
	if err := program.Parse(flagSet(&f), []string{"--version"}, &stderr, spec); err == nil || !strings.Contains(err.Error(), "unknown flag: --version") {
		t.Errorf("--version without Stdout: %v, want unknown flag", err)
	}
}

func TestStart(t *testing.T) {
	var f flags
	var stderr bytes.Buffer
	log, done, err := program.Start(flagSet(&f), []string{"--log-level", "debug"}, &stderr, spec)
	if err != nil || done || log == nil {
		t.Fatalf("Start = %v, done %v, err %v", log, done, err)
	}
	if !log.Enabled(t.Context(), -4) {
		t.Error("--log-level debug: the logger does not log debug")
	}
	if _, done, err := program.Start(flagSet(&f), []string{"--help"}, &stderr, spec); err != nil || !done {
		t.Errorf("--help: done %v, err %v; want done and no error", done, err)
	}
	if _, done, err := program.Start(flagSet(&f), []string{"--log-level", "loud"}, &stderr, spec); err == nil || done {
		t.Errorf("--log-level loud: done %v, err %v; want an error", done, err)
	}
}
