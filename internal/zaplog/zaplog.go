// Package zaplog gives libraries that log with zap (etcd) a *zap.Logger
// whose entries go to a slog.Handler, so that they share the program's log:
// its format, its level and its attributes.
package zaplog

import (
	"context"
	"log/slog"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Quieter maps zap's levels to slog's one step down for chatty libraries:
// debug and info become slog's debug (a library's info is mostly noise in
// the program's log), warn stays warn, error and above become error.
func Quieter(e zapcore.Entry) slog.Level {
	switch l := e.Level; {
	case l <= zapcore.InfoLevel:
		return slog.LevelDebug
	case l == zapcore.WarnLevel:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}

// Leveler chooses the slog level of a zap entry (its Message and
// LoggerName are set, its fields are not). Asked with only Level set, it
// must give the highest level it gives any entry of that Level: it may
// lower an entry by its message, never raise it.
type Leveler func(zapcore.Entry) slog.Level

// New returns a zap logger that writes each entry to h at the slog level
// level gives it, with the entry's fields as attributes (and the logger's
// name, if any, as "logger"). An entry h would not handle at that level is
// dropped before zap encodes it.
func New(h slog.Handler, level Leveler) *zap.Logger {
	return zap.New(&core{h: h, level: level})
}

type core struct {
	h     slog.Handler
	level Leveler
}

func (c *core) Enabled(l zapcore.Level) bool {
	return c.h.Enabled(context.Background(), c.level(zapcore.Entry{Level: l}))
}

func (c *core) With(fields []zapcore.Field) zapcore.Core {
	if len(fields) == 0 {
		return c
	}
	return &core{h: c.h.WithAttrs(attrs(fields)), level: c.level}
}

func (c *core) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.h.Enabled(context.Background(), c.level(e)) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *core) Write(e zapcore.Entry, fields []zapcore.Field) error {
	r := slog.NewRecord(e.Time, c.level(e), e.Message, e.Caller.PC)
	if e.LoggerName != "" {
		r.AddAttrs(slog.String("logger", e.LoggerName))
	}
	r.AddAttrs(attrs(fields)...)
	return c.h.Handle(context.Background(), r)
}

func (c *core) Sync() error { return nil }

// attrs converts zap fields to slog attributes, in their order. Each field
// is encoded on its own, so that its type (error, duration, array, object)
// is rendered by zap the usual way; a zap.Namespace does not nest the
// fields after it.
func attrs(fields []zapcore.Field) []slog.Attr {
	out := make([]slog.Attr, 0, len(fields))
	for _, f := range fields {
		enc := zapcore.NewMapObjectEncoder()
		f.AddTo(enc)
		for k, v := range enc.Fields {
			out = append(out, slog.Any(k, v))
		}
	}
	return out
}
