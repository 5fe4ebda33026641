package agent

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/mpfleet/mpfleet/internal/metrics"
	"github.com/mpfleet/mpfleet/internal/probe"
	"github.com/mpfleet/mpfleet/internal/program"
	"github.com/spf13/pflag"
	"github.com/vishvananda/netns"
	"google.golang.org/grpc/credentials"
)

// Flags are the agent program's settings.
type Flags struct {
	Controller     string
	HostID         string
	Labels         map[string]string
	StateDir       string
	DryRun         bool
	ResyncInterval time.Duration
	ConfirmTimeout time.Duration
	ReportInterval time.Duration
	TLSCAFile      string
	TLSCertFile    string
	TLSKeyFile     string
	ServerName     string
	Token          string
	LogLevel       string
	ProbeListen    string
	Config         string
	Cleanup        bool
	Metrics        metrics.Flags
}

func flagSet(f *Flags) *pflag.FlagSet {
	fs := pflag.NewFlagSet("mpfleet-agent", pflag.ContinueOnError)
	fs.StringVar(&f.Controller, "controller", "127.0.0.1:7400", "controller address, host:port; for several replicas a comma-separated list, or a name that resolves to several addresses (re-resolved each round): the agent holds one stream, to one replica at a time, and moves to another, in random order, when its replica goes away")
	fs.StringVar(&f.HostID, "host-id", "", "host id in the fleet: lower-case letters, digits, '-' and '.' (default: the host name)")
	fs.StringToStringVar(&f.Labels, "labels", nil, "labels of this host, k=v,k2=v2: they choose its group only when the controller authenticates nobody; otherwise the operator's labels and those in the certificate do, and these are reported")
	fs.StringVar(&f.StateDir, "state-dir", "/var/lib/mpfleet-agent", "directory of the last good configuration, re-applied at start")
	fs.BoolVar(&f.DryRun, "dry-run", false, "compute and report plans; change nothing")
	fs.DurationVar(&f.ResyncInterval, "resync-interval", 30*time.Second, "how often to compare the kernel with the desired state when nothing announced a change")
	fs.DurationVar(&f.ConfirmTimeout, "confirm-timeout", 10*time.Second, "how long the controller has to confirm a new revision, or the restore at start, before the agent reverts it")
	fs.DurationVar(&f.ReportInterval, "report-interval", 10*time.Second, "how often to report MPTCP health")
	fs.StringVar(&f.TLSCAFile, "tls-ca-file", "", "CA bundle to verify the controller's certificate (enables TLS)")
	fs.StringVar(&f.TLSCertFile, "tls-cert-file", "", "client certificate for mutual TLS; its common name must be the host id")
	fs.StringVar(&f.TLSKeyFile, "tls-key-file", "", "client key for mutual TLS")
	fs.StringVar(&f.ServerName, "server-name", "", "name to verify the controller's certificate against, whichever replica is dialed (default: the host of each --controller address as listed)")
	fs.StringVar(&f.Token, "token", "", "bearer token (only over TLS, or to a loopback controller)")
	fs.StringVar(&f.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.ProbeListen, "probe-listen", "", "serve as a probe target: an MPTCP listener on `ADDR` (host:port) that accepts and drains, so that a fleet can probe its own members")
	f.Metrics.Register(fs)
	fs.StringVar(&f.Config, "config", "", "YAML file of settings (keys are flag names)")
	fs.BoolVar(&f.Cleanup, "cleanup", false, "remove what mpfleet put in this namespace's kernel (rules and routes with proto 173 in any table, the endpoints --state-dir records as mpfleet's), restore the sysctls and limits it changed to the values --state-dir recorded, remove the state dir's files, and exit; no controller needed; refused while an agent runs with the same --state-dir")
	return fs
}

// Usage is the agent's --help text header.
const Usage = `mpfleet-agent applies its group's MPTCP policy to the network namespace it
runs in (endpoints, limits, sysctls, source-based policy routing), keeps it
applied as addresses and links change, and reports to the controller.

It re-applies the last good configuration from --state-dir at start, before
the controller is reachable; a new revision, and that restore, that the
controller does not confirm within --confirm-timeout of its apply is
reverted.

With several controller replicas, list them all in --controller (a:7400,b:7400)
or give a name that resolves to each. The agent holds one stream, to one
replica; when that replica goes away it moves to another, and when it is
stopped (it drains its agents) it moves at once.

With --metrics-listen ADDR it serves Prometheus metrics (mpfleet_agent_*) on
/metrics, and /healthz and /readyz for probes, over plain HTTP: /readyz is 200
while the agent holds a stream to a controller and its last reconcile pass
succeeded, else 503 with the reason.

The TLS files reload without a restart when they change, and on SIGHUP:
new connections to a controller use them; the open stream keeps its
certificate until it reconnects for another reason.

Every flag can also be set in the environment (MPFLEET_AGENT_HOST_ID for
--host-id, ...) or in a --config YAML file; the command line wins, then the
environment, then the file.

mpfleet-agent --cleanup [--state-dir DIR] undoes what the agent did to the
kernel, for removing mpfleet from a host: stop the agent first.
`

// Run runs the agent program until ctx ends (SIGTERM in main).
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f Flags
	fs := flagSet(&f)
	log, done, err := program.Start(fs, args, stderr, program.Spec{Usage: Usage, EnvPrefix: "MPFLEET_AGENT_", NoArgs: true, Stdout: stdout})
	if done || err != nil {
		return err
	}
	if f.Cleanup {
		return Cleanup(ctx, CleanupOptions{StateDir: f.StateDir, Kernel: netlinkKernels(0, false), Out: stdout})
	}
	if f.HostID == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("no --host-id and no host name: %w", err)
		}
		f.HostID = strings.ToLower(h)
	}
	if err := ValidateHostID(f.HostID); err != nil {
		return fmt.Errorf("--host-id: %w", err)
	}
	controllers, err := parseControllers(f.Controller)
	if err != nil {
		return fmt.Errorf("--controller: %w", err)
	}
	tlsFiles, err := clientTLS(f, log)
	if err != nil {
		return err
	}
	var creds credentials.TransportCredentials
	if tlsFiles != nil {
		creds = tlsFiles.Credentials()
	}
	defer startTLSReload(ctx, tlsFiles, log)()
	if err := f.Metrics.Check(); err != nil {
		return err
	}
	if f.ProbeListen != "" {
		pl, err := probe.Listen(ctx, netns.None(), f.ProbeListen)
		if err != nil {
			return fmt.Errorf("--probe-listen: %w", err)
		}
		defer func() { _ = pl.Close() }()
		log.Info("serving as a probe target", "addr", pl.Addr().String())
	}
	sys, err := OpenNetlinkSystem(0)
	if err != nil {
		return err
	}
	defer func() { _ = sys.Close() }()
	reg := metrics.NewRegistry("mpfleet-agent")
	a, err := New(Options{
		HostID: f.HostID, Labels: f.Labels, Controller: f.Controller, Credentials: creds, Token: f.Token,
		StateDir: f.StateDir, DryRun: f.DryRun,
		ResyncInterval: f.ResyncInterval, ConfirmTimeout: f.ConfirmTimeout, ReportInterval: f.ReportInterval,
		Kernel: netlinkKernels(0, !f.DryRun), System: sys, Logger: log, Metrics: reg,
	})
	if err != nil {
		return err
	}
	if f.Metrics.Listen != "" {
		srv, err := metrics.Listen(metrics.Options{Addr: f.Metrics.Listen, Gatherer: reg, Ready: a.Ready, Pprof: f.Metrics.Pprof, Log: log})
		if err != nil {
			return err
		}
		sctx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Go(func() {
			if err := srv.Serve(sctx); err != nil {
				log.Error("the metrics server stopped", "err", err)
			}
		})
		defer wg.Wait()
		defer stop()
		log.Info("serving metrics and probes", "addr", srv.Addr().String(), "pprof", f.Metrics.Pprof)
	}
	if creds == nil && !allLoopback(controllers) {
		log.Warn("plaintext connection to a controller that is not on loopback: use --tls-ca-file", "controller", f.Controller)
	}
	log.Info("mpfleet agent starting", "version", Version, "host", f.HostID, "controller", f.Controller,
		"tls", creds != nil, "state-dir", f.StateDir, "dry-run", f.DryRun)
	err = a.Run(ctx)
	log.Info("mpfleet agent stopped; the kernel is left as it is")
	return err
}
