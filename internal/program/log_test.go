package program_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mpfleet/mpfleet/internal/program"
)

// noAutoEnv clears what --log-format=auto looks at.
func noAutoEnv(t *testing.T) {
	t.Helper()
	for _, k := range []string{"JOURNAL_STREAM", "KUBERNETES_SERVICE_HOST"} {
		t.Setenv(k, "") // restores it after the test
		if err := os.Unsetenv(k); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLogFormatFlag: Parse adds --log-format to a flag set with
// --log-level; NewLogger honours both, from the command line, the
// environment or the config file; json gives one JSON object a line with
// level and msg; a bad format is refused naming the flag.
func TestLogFormatFlag(t *testing.T) {
	noAutoEnv(t)
	parse := func(t *testing.T, args ...string) (*bytes.Buffer, error) {
		t.Helper()
		var f flags
		fs := flagSet(&f)
		var stderr bytes.Buffer
		if err := program.Parse(fs, args, &stderr, spec); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		log, err := program.NewLogger(fs, &out)
		if err == nil {
			log.Debug("hidden")
			log.Warn("shown", "k", "v")
		}
		return &out, err
	}

	t.Run("json", func(t *testing.T) {
		out, err := parse(t, "--log-format", "json", "--log-level", "warn")
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		if len(lines) != 1 {
			t.Fatalf("want one record, got:\n%s", out)
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
			t.Fatalf("not JSON: %q: %v", lines[0], err)
		}
		if rec["level"] != "WARN" || rec["msg"] != "shown" || rec["k"] != "v" || rec["time"] == nil {
			t.Errorf("record %v", rec)
		}
	})
	t.Run("text by default", func(t *testing.T) {
		out, err := parse(t)
		if err != nil {
			t.Fatal(err)
		}
		if s := out.String(); !strings.Contains(s, "level=WARN msg=shown k=v") || strings.Contains(s, "{") {
			t.Errorf("default format, not under systemd or Kubernetes:\n%s", s)
		}
	})
	t.Run("environment and config file", func(t *testing.T) {
		t.Setenv("MPFLEET_PROGTEST_LOG_FORMAT", "json")
		out, err := parse(t)
		if err != nil || !json.Valid(bytes.TrimSpace(out.Bytes())) {
			t.Errorf("MPFLEET_PROGTEST_LOG_FORMAT=json: %v:\n%s", err, out)
		}
		if err := os.Unsetenv("MPFLEET_PROGTEST_LOG_FORMAT"); err != nil {
			t.Fatal(err)
		}
		cfg := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(cfg, []byte("log-format: json\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err = parse(t, "--config", cfg)
		if err != nil || !json.Valid(bytes.TrimSpace(out.Bytes())) {
			t.Errorf("log-format in the config file: %v:\n%s", err, out)
		}
	})
	t.Run("bad format", func(t *testing.T) {
		out, err := parse(t, "--log-format", "xml")
		if err == nil || !strings.HasPrefix(err.Error(), "--log-format: ") || !strings.Contains(err.Error(), `"xml"`) {
			t.Errorf("--log-format xml: %v, want an error naming the flag and the value", err)
		}
		if out.Len() != 0 {
			t.Errorf("wrote %q", out)
		}
	})
	t.Run("help", func(t *testing.T) {
		var f flags
		var stderr bytes.Buffer
		_ = program.Parse(flagSet(&f), []string{"--help"}, &stderr, spec)
		if !strings.Contains(stderr.String(), "--log-format") {
			t.Errorf("--help without --log-format:\n%s", stderr.String())
		}
	})
}

// TestAutoFormat: json under systemd or Kubernetes, unless the log is a
// terminal; text otherwise.
func TestAutoFormat(t *testing.T) {
	noAutoEnv(t)
	var buf bytes.Buffer
	if got := program.AutoFormat(&buf); got != program.FormatText {
		t.Errorf("no service manager: %s, want text", got)
	}
	for _, k := range []string{"JOURNAL_STREAM", "KUBERNETES_SERVICE_HOST"} {
		t.Run(k, func(t *testing.T) {
			t.Setenv(k, "8:12345")
			if got := program.AutoFormat(&buf); got != program.FormatJSON {
				t.Errorf("%s set, log to a pipe: %s, want json", k, got)
			}
			log, err := program.LoggerFormat(&buf, "info", program.FormatAuto)
			if err != nil {
				t.Fatal(err)
			}
			buf.Reset()
			log.Info("hello")
			if !json.Valid(bytes.TrimSpace(buf.Bytes())) {
				t.Errorf("auto under %s is not JSON: %q", k, buf.String())
			}
			if tty := openTerminal(t); tty != nil {
				if got := program.AutoFormat(tty); got != program.FormatText {
					t.Errorf("%s set, log to a terminal: %s, want text", k, got)
				}
			}
			// A file is not a terminal.
			file, err := os.Create(filepath.Join(t.TempDir(), "log"))
			if err != nil {
				t.Fatal(err)
			}
			defer file.Close()
			if got := program.AutoFormat(file); got != program.FormatJSON {
				t.Errorf("%s set, log to a file: %s, want json", k, got)
			}
		})
	}
}
