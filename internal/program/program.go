// Package program starts mpfleet's programs (controller and agent) the same
// way: a context that SIGINT and SIGTERM end, flags from the command line,
// the environment and a --config file (package config), a structured log
// at the level --log-level and in the format --log-format ask for, and
// --version.
package program

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/mpfleet/mpfleet/internal/config"
	"github.com/mpfleet/mpfleet/internal/version"
	"github.com/spf13/pflag"
)

// ErrHelp is what Parse returns after printing --help, or --version: the
// program ends successfully.
var ErrHelp = pflag.ErrHelp

// VersionFlag prints the program's version (version.Line of the flag set's
// name) to Spec.Stdout.
const VersionFlag = "version"

// Spec describes a program to Parse.
type Spec struct {
	// Usage is the --help text before the flags.
	Usage string
	// EnvPrefix prefixes the environment variable of every flag
	// (MPFLEET_AGENT_ gives MPFLEET_AGENT_HOST_ID for --host-id).
	EnvPrefix string
	// NoArgs makes arguments other than flags an error.
	NoArgs bool
	// Stdout, when set, is where --version prints: Parse then defines
	// --version, unless the flag set has it already.
	Stdout io.Writer
}

// ConfigFlag is the flag that names a program's YAML config file; the flag
// set must define it.
const ConfigFlag = "config"

// Parse parses args into fs, then sets every flag not given on the command
// line from the environment or the --config file. --help prints s.Usage,
// a "Flags:" heading and the flags to stderr and returns ErrHelp. A flag
// set with --log-level gets --log-format too, unless it has it. With
// s.Stdout set, --version on the command line prints version.Line(fs.Name())
// there and returns ErrHelp, before the environment and the --config file
// are read.
func Parse(fs *pflag.FlagSet, args []string, stderr io.Writer, s Spec) error {
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, s.Usage+"\nFlags:\n")
		fs.PrintDefaults()
	}
	if s.Stdout != nil && fs.Lookup(VersionFlag) == nil {
		fs.Bool(VersionFlag, false, "print the version and exit")
	}
	if fs.Lookup(LogLevelFlag) != nil && fs.Lookup(LogFormatFlag) == nil {
		fs.String(LogFormatFlag, FormatAuto, logFormatUsage)
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if f := fs.Lookup(VersionFlag); s.Stdout != nil && f != nil && f.Changed && f.Value.String() == "true" {
		if _, err := fmt.Fprintln(s.Stdout, version.Line(fs.Name())); err != nil {
			return err
		}
		return ErrHelp
	}
	if s.NoArgs && fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return config.Apply(fs, s.EnvPrefix, ConfigFlag)
}

// Start is what a program does first: Parse, then NewLogger. done is true
// after --help or --version: the program has nothing more to do and ends
// successfully.
func Start(fs *pflag.FlagSet, args []string, stderr io.Writer, s Spec) (log *slog.Logger, done bool, err error) {
	if err := Parse(fs, args, stderr, s); err != nil {
		if errors.Is(err, ErrHelp) {
			return nil, true, nil
		}
		return nil, false, err
	}
	log, err = NewLogger(fs, stderr)
	return log, false, err
}

// SignalContext returns a context that SIGINT and SIGTERM end; stop
// releases the signals.
func SignalContext() (ctx context.Context, stop context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// Main is a program's main function: it runs run with the program's
// arguments and a SignalContext. An error is printed as "name: error" and
// exits 1.
func Main(name string, run func(ctx context.Context, args []string, stdout, stderr io.Writer) error) {
	ctx, stop := SignalContext()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
}
