package store_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/mpfleet/mpfleet/internal/store"
)

// lockedBuffer is a log destination etcd's goroutines may write to while
// the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestEmbeddedLog: with EmbedConfig.Log, etcd logs through the program's
// handler with component=etcd; its info messages come at debug, so that a
// log at info is not flooded with them, and a clean start and stop logs no
// errors.
func TestEmbeddedLog(t *testing.T) {
	for _, tc := range []struct {
		level     slog.Level
		wantDebug bool // etcd's info messages, at debug
	}{
		{slog.LevelDebug, true},
		{slog.LevelInfo, false},
		{slog.LevelWarn, false},
	} {
		t.Run(tc.level.String(), func(t *testing.T) {
			var out lockedBuffer
			log := slog.New(slog.NewJSONHandler(&out, &slog.HandlerOptions{Level: tc.level})).With("replica", "r1")
			e, err := store.StartEmbedded(context.Background(), store.EmbedConfig{DataDir: t.TempDir(), Log: log})
			if err != nil {
				t.Fatal(err)
			}
			e.Close()
			var etcdDebug int
			for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
				if line == "" {
					continue
				}
				var rec map[string]any
				if err := json.Unmarshal([]byte(line), &rec); err != nil {
					t.Fatalf("not a JSON record: %q: %v", line, err)
				}
				if rec["component"] != "etcd" || rec["replica"] != "r1" {
					t.Errorf("record without component=etcd and the logger's own attributes: %s", line)
				}
				switch rec["level"] {
				case "DEBUG":
					etcdDebug++
				case "INFO":
					t.Errorf("etcd record at info: %s", line)
				case "ERROR":
					// A clean stop is not an error (etcd's servers report
					// their closed listeners as errors).
					t.Errorf("etcd record at error: %s", line)
				}
			}
			if tc.wantDebug && etcdDebug == 0 {
				t.Errorf("no etcd record at debug in:\n%s", out.String())
			}
			if !tc.wantDebug && etcdDebug != 0 {
				t.Errorf("%d etcd records at debug in a log at %s", etcdDebug, tc.level)
			}
		})
	}
}
