package program

import (
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/spf13/pflag"
)

// The log's flags: every program defines --log-level; Parse adds
// --log-format next to it.
const (
	LogLevelFlag  = "log-level"
	LogFormatFlag = "log-format"
)

// The formats of --log-format.
const (
	// FormatText is slog's text format: level=INFO msg=... key=value.
	FormatText = "text"
	// FormatJSON is one JSON object a line, with time, level and msg.
	FormatJSON = "json"
	// FormatAuto is json under systemd or Kubernetes when stderr is not a
	// terminal, text otherwise (see AutoFormat).
	FormatAuto = "auto"
)

const logFormatUsage = "log format: text, json, or auto (json when run by systemd or Kubernetes, i.e. JOURNAL_STREAM or KUBERNETES_SERVICE_HOST is set, and the log is not a terminal; text otherwise)"

// NewLogger returns the log to w that fs's --log-level and --log-format
// ask for (auto when fs has no --log-format).
func NewLogger(fs *pflag.FlagSet, w io.Writer) (*slog.Logger, error) {
	level := fs.Lookup(LogLevelFlag)
	if level == nil {
		return nil, fmt.Errorf("flag set %s has no --%s", fs.Name(), LogLevelFlag)
	}
	format := FormatAuto
	if f := fs.Lookup(LogFormatFlag); f != nil {
		format = f.Value.String()
	}
	return LoggerFormat(w, level.Value.String(), format)
}

// LoggerFormat returns a log to w at level (debug, info, warn or error) in
// format (text, json or auto). An unknown level is an error naming
// --log-level, an unknown format one naming --log-format.
func LoggerFormat(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--%s: %w", LogLevelFlag, err)
	}
	if format == FormatAuto {
		format = AutoFormat(w)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case FormatText:
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case FormatJSON:
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--%s: unknown format %q: want %s, %s or %s", LogFormatFlag, format, FormatText, FormatJSON, FormatAuto)
}

// AutoFormat is the format --log-format=auto chooses for a log to w: json
// when the program runs under systemd (JOURNAL_STREAM is set: its output
// goes to the journal) or in Kubernetes (KUBERNETES_SERVICE_HOST is set),
// unless w is a terminal; text otherwise.
func AutoFormat(w io.Writer) string {
	if os.Getenv("JOURNAL_STREAM") == "" && os.Getenv("KUBERNETES_SERVICE_HOST") == "" {
		return FormatText
	}
	if f, ok := w.(*os.File); ok && isTerminal(f) {
		return FormatText
	}
	return FormatJSON
}
