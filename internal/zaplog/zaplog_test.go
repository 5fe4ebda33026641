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
		zl    zapcore.Level
		quiet slog.Level
	}{
		{zapcore.DebugLevel, slog.LevelDebug},
		{zapcore.InfoLevel, slog.LevelDebug},
		{zapcore.WarnLevel, slog.LevelWarn},
		{zapcore.ErrorLevel, slog.LevelError},
		{zapcore.DPanicLevel, slog.LevelError},
		{zapcore.FatalLevel, slog.LevelError},
	} {
		if got := zaplog.Quieter(zapcore.Entry{Level: tc.zl}); got != tc.quiet {
			t.Errorf("Quieter(%s) = %s, want %s", tc.zl, got, tc.quiet)
		}
	}

	// A Leveler may lower an entry by its message.
	var buf2 bytes.Buffer
	lower := func(e zapcore.Entry) slog.Level {
		if e.Message == "noise" {
			return slog.LevelDebug
		}
		return slog.LevelWarn
	}
	lg2 := zaplog.New(slog.NewJSONHandler(&buf2, nil), lower)
	lg2.Warn("noise")
	lg2.Warn("news")
	if got := records(t, &buf2); len(got) != 1 || got[0]["msg"] != "news" {
		t.Errorf("lowered entry logged: %v", got)
	}

	// A Leveler may keep a library's info at info.
	var buf bytes.Buffer
	lg := zaplog.New(slog.NewJSONHandler(&buf, nil), func(zapcore.Entry) slog.Level { return slog.LevelInfo })
	lg.Info("hello")
	if got := records(t, &buf); len(got) != 1 || got[0]["level"] != "INFO" || got[0]["msg"] != "hello" {
		t.Errorf("info at info: %v", got)
	}
}
