// Package cli implements mpfleetctl, the command-line client of the mpfleet
// controller: it applies group manifests (YAML), starts and follows rollouts
// of policy revisions, reads groups, policy revisions, hosts and the audit
// log, and prints them as a table, JSON or YAML. It also makes the private
// CA and certificates that mutual TLS with the controller needs (certs), and
// says its version and the controller's (version).
//
// Run is the whole program; cmd/mpfleetctl/main.go only calls it and exits
// with ExitCode. Every error reaches the user as one line on stderr,
// "mpfleetctl: …", with exit status 1, or 2 for a usage error (a bad flag, a
// missing argument, a flag combination that is refused).
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/mpfleet/mpfleet/internal/config"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
)

// DefaultController is the controller address used when neither
// --controller nor MPFLEET_CONTROLLER is given.
const DefaultController = "127.0.0.1:7400"

// envPrefix prefixes the environment variable of every global flag:
// --controller is also MPFLEET_CONTROLLER, --ca-file MPFLEET_CA_FILE.
const envPrefix = "MPFLEET_"

// Run runs mpfleetctl with args (without the program name), reading manifests
// given as "-f -" from stdin and writing results to stdout. An error is also
// printed to stderr as one line; pass it to ExitCode for the exit status.
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	sio := stdio{in: stdin, out: stdout, err: stderr}
	if f, ok := stdout.(interface{ Fd() uintptr }); ok && os.Getenv("TERM") != "dumb" {
		sio.width, sio.tty = terminalWidth(f.Fd())
	}
	return run(ctx, args, sio, os.Getenv, time.Now)
}

// ExitCode returns the exit status for an error returned by Run: 0 for nil,
// 2 for a usage error, 1 for any other error; diff -f returns 1 when the
// files differ from the live groups and 2 on any error, as kubectl diff.
func ExitCode(err error) int {
	var ce interface{ ExitCode() int }
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ce):
		return ce.ExitCode()
	case IsUsageError(err):
		return 2
	default:
		return 1
	}
}

// IsUsageError reports whether err, returned by Run, is a usage error: an
// unknown command or flag, a bad flag value or argument count, or a refused
// combination of flags.
func IsUsageError(err error) bool {
	var u *usageError
	return errors.As(err, &u)
}

// usageError marks an error caused by how mpfleetctl was invoked. With
// noHint the message is not followed by a pointer to --help (a refused
// connection setting is not explained there).
type usageError struct {
	err    error
	noHint bool
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// usagef returns a usage error.
func usagef(format string, args ...any) error {
	return &usageError{err: fmt.Errorf(format, args...)}
}

// refusef returns a usage error for a refused connection setting.
func refusef(format string, args ...any) error {
	return &usageError{err: fmt.Errorf(format, args...), noHint: true}
}

type stdio struct {
	in       io.Reader
	out, err io.Writer
	// tty is set when out is a terminal: progress is then redrawn in
	// place. width is its width in columns, 0 if unknown.
	tty   bool
	width int
}

// app holds the global flags and the state of one invocation.
type app struct {
	io     stdio
	getenv func(string) string
	now    func() time.Time

	controller string
	output     string
	// listFormat is name, wide or jsonpath when --output says so (output
	// is then "table"); jsonTmpl is the parsed jsonpath template.
	listFormat string
	jsonTmpl   *jsonTemplate
	timeout    time.Duration
	token      string
	tls        bool
	caFile     string
	certFile   string
	keyFile    string
	serverName string
	insecure   bool

	// started is set once cobra has parsed the command line and a command
	// begins to run; an error before that is a usage error.
	started  bool
	conn     *grpc.ClientConn
	writeErr error // first error writing to stdout
}

func run(ctx context.Context, args []string, sio stdio, getenv func(string) string, now func() time.Time) error {
	sio, flush := safeStdio(sio) // nothing printed can drive the terminal (termsafe.go)
	defer flush()
	a := &app{io: sio, getenv: getenv, now: now}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(sio.in)
	root.SetOut(sio.out)
	root.SetErr(sio.err)

	cmd, err := root.ExecuteContextC(ctx)
	if a.conn != nil {
		_ = a.conn.Close() // nothing is left to flush
	}
	if err == nil && a.writeErr != nil {
		err = fmt.Errorf("write output: %w", a.writeErr)
	}
	if err == nil {
		return nil
	}
	if errors.Is(err, errDiffers) {
		return err // diff -f: the diff says it
	}
	if !a.started && !IsUsageError(err) {
		// Cobra's own errors: unknown command, unknown flag, wrong number
		// of arguments.
		err = &usageError{err: err}
	}
	msg := terminalSafe(oneLine(err.Error()))
	var u *usageError
	if errors.As(err, &u) && !u.noHint && cmd != nil {
		msg += fmt.Sprintf(" (see '%s --help')", cmd.CommandPath())
	}
	_, _ = fmt.Fprintf(sio.err, "mpfleetctl: %s\n", msg) // nowhere left to report a failure
	return err
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "mpfleetctl",
		Short: "Manage MPTCP policies across an mpfleet fleet",
		Long: `mpfleetctl drives the mpfleet controller's API: it applies group manifests
(which hosts use which links for MPTCP, with which endpoint flags, limits,
sysctls and policy routing), shows groups, their policy revisions and the
hosts with what is applied on them and their MPTCP health, plans a change
before it is made, rolls a new policy revision out to a group's hosts in
steps (a canary, then batches) and follows it, and reads the hash-chained
audit log.

Plaintext is used only for a loopback controller; any other address needs
--tls (or --insecure to allow plaintext). A bearer token (--token) is sent
only over TLS or to a loopback address.

Every global flag can also be set through the environment: MPFLEET_ followed
by the flag name in upper case with '-' as '_' (MPFLEET_CONTROLLER,
MPFLEET_TOKEN, MPFLEET_CA_FILE, …). A flag on the command line wins.`,
		Example: `  mpfleetctl apply -f deploy/examples/two-links.yaml
  mpfleetctl get groups
  mpfleetctl get hosts --group lab
  mpfleetctl rollout start lab --canary 1 --batch 25% --wait
  mpfleetctl --controller ctl.example:7400 --tls --ca-file ca.pem get hosts`,
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			a.started = true
			return a.setup(cmd)
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err: err} })

	f := root.PersistentFlags()
	f.StringVar(&a.controller, "controller", DefaultController, "controller address, host:port")
	f.StringVarP(&a.output, "output", "o", "table", "output format: table, json or yaml; for get and rollout list also name, wide or jsonpath=TEMPLATE")
	f.DurationVar(&a.timeout, "timeout", 10*time.Second, "deadline of each call to the controller (0: none; watches run until interrupted); given to apply --wait, also how long to wait for hosts")
	f.StringVar(&a.token, "token", "", "bearer token sent as authorization metadata (only over TLS or to a loopback controller)")
	f.BoolVar(&a.tls, "tls", false, "connect with TLS (implied by --ca-file, --cert-file, --key-file, --server-name)")
	f.StringVar(&a.caFile, "ca-file", "", "PEM file of the CA certificates that verify the controller (default: the system's)")
	f.StringVar(&a.certFile, "cert-file", "", "PEM client certificate for mutual TLS")
	f.StringVar(&a.keyFile, "key-file", "", "PEM private key of --cert-file")
	f.StringVar(&a.serverName, "server-name", "", "name to verify the controller's certificate against (default: the host of --controller)")
	f.BoolVar(&a.insecure, "insecure", false, "allow plaintext (no TLS) to a controller that is not on a loopback address")
	addVersionFlag(root)

	root.AddCommand(
		a.applyCommand(),
		a.planCommand(),
		a.getCommand(),
		a.describeCommand(),
		a.deleteCommand(),
		a.labelCommand(),
		a.revisionsCommand(),
		a.diffCommand(),
		a.auditCommand(),
		a.watchCommand(),
		a.rolloutCommand(),
		a.rollbackCommand(),
		a.versionCommand(),
		a.certsCommand(),
	)
	return root
}

// setup reads global flags not given on the command line from the
// environment and checks them.
func (a *app) setup(cmd *cobra.Command) error {
	var err error
	cmd.Root().PersistentFlags().VisitAll(func(fl *pflag.Flag) {
		if err != nil || fl.Changed {
			return
		}
		name := config.EnvName(envPrefix, fl.Name)
		v := a.getenv(name)
		if v == "" {
			return
		}
		if e := fl.Value.Set(v); e != nil {
			err = usagef("%s=%q: %v", name, v, e)
		}
	})
	if err != nil {
		return err
	}
	if err := a.parseOutput(cmd); err != nil {
		return err
	}
	if a.timeout < 0 {
		return usagef("--timeout %v: must not be negative", a.timeout)
	}
	if (a.certFile == "") != (a.keyFile == "") {
		return usagef("--cert-file and --key-file go together")
	}
	if a.insecure && a.useTLS() {
		return usagef("--insecure (plaintext) cannot be combined with TLS flags")
	}
	return nil
}
