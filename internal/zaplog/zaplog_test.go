package zaplog_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mpfleet/mpfleet/internal/zaplog"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func records(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not JSON: %q: %v", line, err)
		}
		delete(m, "time")
		out = append(out, m)
	}
	return out
}

// TestNew: entries reach the handler with their fields, the logger's
// fields and name, at the mapped level; entries below the handler's level
// are dropped.
func TestNew(t *testing.T) {
	var buf bytes.Buffer
	h := slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})
	lg := zaplog.New(slog.New(h).With("component", "etcd").Handler(), zaplog.Quieter).Named("raft").With(zap.String("member", "m1"))
	lg.Info("chatter", zap.Int("n", 1)) // info → debug: dropped at info
	lg.Debug("more chatter")            // dropped
	lg.Warn("slow", zap.Duration("took", 1500*time.Millisecond), zap.Strings("peers", []string{"a", "b"}))
	lg.Error("failed", zap.Error(errors.New("disk full")))
	if ce := lg.Check(zapcore.InfoLevel, "checked"); ce != nil {
		t.Errorf("Check(info) at slog info with Quieter: %v, want nil", ce)
	}
	want := []map[string]any{
		{"level": "WARN", "msg": "slow", "component": "etcd", "member": "m1", "logger": "raft", "took": float64(1500 * time.Millisecond), "peers": []any{"a", "b"}},
		{"level": "ERROR", "msg": "failed", "component": "etcd", "member": "m1", "logger": "raft", "error": "disk full"},
	}
	if diff := cmp.Diff(want, records(t, &buf)); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
}

func TestLevels(t *testing.T) {
	for _, tc := range []struct {
		zl          zapcore.Level
		quiet, same slog.Level
	}{
		{zapcore.DebugLevel, slog.LevelDebug, slog.LevelDebug},
		{zapcore.InfoLevel, slog.LevelDebug, slog.LevelInfo},
		{zapcore.WarnLevel, slog.LevelWarn, slog.LevelWarn},
		{zapcore.ErrorLevel, slog.LevelError, slog.LevelError},
		{zapcore.DPanicLevel, slog.LevelError, slog.LevelError},
		{zapcore.FatalLevel, slog.LevelError, slog.LevelError},
	} {
		if got := zaplog.Quieter(zapcore.Entry{Level: tc.zl}); got != tc.quiet {
			t.Errorf("Quieter(%s) = %s, want %s", tc.zl, got, tc.quiet)
		}
		if got := zaplog.Same(zapcore.Entry{Level: tc.zl}); got != tc.same {
			t.Errorf("Same(%s) = %s, want %s", tc.zl, got, tc.same)
		}
	}

	// A Leveler may lower an entry by its message.
	var buf2 bytes.Buffer
	lower := func(e zapcore.Entry) slog.Level {
		if e.Message == "noise" {
			return slog.LevelDebug
		}
		return zaplog.Same(e)
	}
	lg2 := zaplog.New(slog.NewJSONHandler(&buf2, nil), lower)
	lg2.Warn("noise")
	lg2.Warn("news")
	if got := records(t, &buf2); len(got) != 1 || got[0]["msg"] != "news" {
		t.Errorf("lowered entry logged: %v", got)
	}

	// Same keeps info at info.
	var buf bytes.Buffer
	lg := zaplog.New(slog.NewJSONHandler(&buf, nil), zaplog.Same)
	lg.Info("hello")
	if got := records(t, &buf); len(got) != 1 || got[0]["level"] != "INFO" || got[0]["msg"] != "hello" {
		t.Errorf("Same at info: %v", got)
	}
}
