package loadgen

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/mpfleet/mpfleet/internal/program"
	"github.com/mpfleet/mpfleet/internal/transport"
	"github.com/spf13/pflag"
	"google.golang.org/grpc/credentials"
)

// Flags are mpfleet-loadgen's settings.
type Flags struct {
	Controller       string
	EtcdEndpoints    []string
	EtcdKey          string
	EtcdStatusPrefix string
	Agents           int
	Prefix           string
	First            int
	Labels           map[string]string
	ReportInterval   time.Duration
	Confirm          bool
	Events           bool
	Silent           bool
	TokenFile        string
	TLSCAFile        string
	ServerName       string
	StartConcurrency int
	HTTPListen       string
	PrintReceipts    bool
	LogLevel         string
	Config           string
}

func flagSet(f *Flags) *pflag.FlagSet {
	fs := pflag.NewFlagSet("mpfleet-loadgen", pflag.ContinueOnError)
	fs.StringVar(&f.Controller, "controller", "", "controller address, host:port: each agent holds its own connection and AgentService.Connect stream to it")
	fs.StringSliceVar(&f.EtcdEndpoints, "etcd-endpoints", nil, "instead of --controller, the baseline: each agent holds its own etcd client (comma-separated URLs) and watch on --etcd-key")
	fs.StringVar(&f.EtcdKey, "etcd-key", "/mpfleet-loadgen/desired", "with --etcd-endpoints: the key every agent watches, holding a DesiredConfig (protobuf)")
	fs.StringVar(&f.EtcdStatusPrefix, "etcd-status-prefix", "", "with --etcd-endpoints: after each revision an agent puts its status (a Host, protobuf) at this prefix + its host id (default: no writes)")
	fs.IntVar(&f.Agents, "agents", 100, "number of agents")
	fs.StringVar(&f.Prefix, "prefix", "loadgen", "host ids are PREFIX-N; give each loadgen process of a run its own")
	fs.IntVar(&f.First, "first", 0, "N of the first host id")
	fs.StringToStringVar(&f.Labels, "labels", map[string]string{"role": "loadgen"}, "labels of every agent, k=v,k2=v2 (so that they fall in a group)")
	fs.DurationVar(&f.ReportInterval, "report-interval", 10*time.Second, "how often each agent sends a health report (0: never); the first is at a random point within it")
	fs.BoolVar(&f.Confirm, "confirm", false, "report APPLYING and have the controller echo a nonce before reporting a new revision IN_SYNC, as a real agent applying a change does")
	fs.BoolVar(&f.Events, "events", false, "send an APPLIED event for each new revision, as a real agent does (each is an audit log write)")
	fs.BoolVar(&f.Silent, "silent", false, "send no reports at all, only the hello (the controller never learns what the agents hold): to tell the fan-out's cost from the reports'")
	fs.StringVar(&f.TokenFile, "token-file", "", "bearer tokens: one line TOKEN for every agent, or lines HOST TOKEN")
	fs.StringVar(&f.TLSCAFile, "tls-ca-file", "", "CA bundle to verify the controller's certificate (enables TLS)")
	fs.StringVar(&f.ServerName, "server-name", "", "name to verify the controller's certificate against (default: the host of --controller)")
	fs.IntVar(&f.StartConcurrency, "start-concurrency", 64, "at most this many agents in their first connection attempt at once (reconnects are not bounded)")
	fs.StringVar(&f.HTTPListen, "http-listen", "127.0.0.1:0", "serve the receipts over HTTP on this address (/status, /receipts, /wait/revision, /wait/connected)")
	fs.BoolVar(&f.PrintReceipts, "print-receipts", false, "print a line \"recv HOST GROUP REVISION UNIX_NANO\" on stdout for every agent's first receipt of every revision")
	fs.StringVar(&f.LogLevel, "log-level", "warn", "debug, info, warn or error")
	fs.StringVar(&f.Config, "config", "", "YAML file of settings (keys are flag names)")
	return fs
}

// Usage is mpfleet-loadgen's --help text header.
const Usage = `mpfleet-loadgen runs N simulated mpfleet agents in one process, for scale
benchmarks. Each holds its own gRPC connection and AgentService.Connect stream
to the controller and speaks as a real agent does — a hello with facts, a
report after each desired configuration (applied_revision that revision,
IN_SYNC), health reports every --report-interval — with no kernel behind it.
With --etcd-endpoints it runs the do-it-yourself baseline instead: each agent
holds its own etcd client and watch on --etcd-key.

It prints "status http://ADDR" first: GET /status there for a summary (agents
served, per revision how many agents hold it and when the first and the last
received it, Unix nanoseconds), /receipts?group=G&revision=R for every
agent's receipt time, and /wait/revision?group=G&revision=R[&agents=N]
or /wait/connected?[agents=N&]since=UNIX_NANO to wait (with &timeout=30s).
Several loadgen processes may share a run: give each its own --prefix.

Every flag can also be set in the environment (MPFLEET_LOADGEN_AGENTS for
--agents, ...) or in a --config YAML file.
`

// Run runs mpfleet-loadgen until ctx ends.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f Flags
	fs := flagSet(&f)
	log, done, err := program.Start(fs, args, stderr, program.Spec{Usage: Usage, EnvPrefix: "MPFLEET_LOADGEN_", NoArgs: true})
	if done || err != nil {
		return err
	}
	cfg, err := f.config()
	if err != nil {
		return err
	}
	cfg.Log = log
	limit, err := RaiseFileLimit()
	if err != nil {
		return err
	}
	if need := uint64(cfg.Agents) + 64; limit != 0 && limit < need {
		log.Warn("the open files limit is below one per agent; raise the hard limit (ulimit -Hn)", "limit", limit, "agents", cfg.Agents)
	}
	out := &lineWriter{w: bufio.NewWriter(stdout)}
	if f.PrintReceipts {
		cfg.OnReceipt = func(r Receipt) {
			out.printf("recv %s %s %d %d\n", r.Host, r.Group, r.Revision, r.Time.UnixNano())
		}
	}
	lis, err := net.Listen("tcp", f.HTTPListen)
	if err != nil {
		return fmt.Errorf("--http-listen: %w", err)
	}
	fleet, err := Start(cfg)
	if err != nil {
		_ = lis.Close()
		return err
	}
	defer fleet.Close()
	srv := &http.Server{Handler: fleet.Handler(), ReadHeaderTimeout: 10 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(lis) }()
	out.printf("status http://%s\n", lis.Addr())
	out.flush()
	log.Info("loadgen started", "agents", cfg.Agents, "prefix", cfg.Prefix, "controller", cfg.Controller, "etcd", cfg.EtcdEndpoints)

	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = srv.Shutdown(sctx)
			cancel()
			fleet.Close()
			out.flush()
			return nil
		case err := <-serveErr:
			return fmt.Errorf("HTTP server: %w", err)
		case <-tick.C:
			out.flush()
		}
	}
}

// config turns the flags into a Config, naming the flag at fault.
func (f *Flags) config() (Config, error) {
	cfg := Config{
		Agents: f.Agents, Prefix: f.Prefix, First: f.First, Labels: f.Labels,
		Controller: f.Controller, ReportInterval: f.ReportInterval, Confirm: f.Confirm, Events: f.Events,
		Silent:           f.Silent,
		StartConcurrency: f.StartConcurrency,
	}
	switch {
	case f.Agents <= 0:
		return cfg, fmt.Errorf("--agents %d: must be positive", f.Agents)
	case f.First < 0:
		return cfg, fmt.Errorf("--first %d: must not be negative", f.First)
	case (f.Controller == "") == (len(f.EtcdEndpoints) == 0):
		return cfg, errors.New("give exactly one of --controller and --etcd-endpoints")
	case f.ReportInterval < 0:
		return cfg, fmt.Errorf("--report-interval %v: must not be negative", f.ReportInterval)
	case f.Silent && (f.Confirm || f.Events):
		return cfg, errors.New("--silent: an agent that reports nothing cannot --confirm or send --events")
	case f.StartConcurrency <= 0:
		return cfg, fmt.Errorf("--start-concurrency %d: must be positive", f.StartConcurrency)
	}
	if len(f.EtcdEndpoints) > 0 {
		if f.EtcdKey == "" {
			return cfg, errors.New("--etcd-key: required with --etcd-endpoints")
		}
		if f.TokenFile != "" || f.TLSCAFile != "" || f.Confirm || f.Events || f.Silent {
			return cfg, errors.New("--token-file, --tls-ca-file, --confirm, --events and --silent are for --controller, not --etcd-endpoints")
		}
		cfg.EtcdEndpoints, cfg.EtcdKey, cfg.EtcdStatusPrefix = f.EtcdEndpoints, f.EtcdKey, f.EtcdStatusPrefix
	}
	if f.TokenFile != "" {
		tok, err := ReadTokens(f.TokenFile)
		if err != nil {
			return cfg, fmt.Errorf("--token-file: %w", err)
		}
		cfg.Token = tok
	}
	info := transport.TLSInfo{TrustedCAFile: f.TLSCAFile, ServerName: f.ServerName, CALabel: "--tls-ca-file"}
	if !info.Empty() {
		c, err := info.ClientConfig()
		if err != nil {
			return cfg, err
		}
		cfg.Credentials = credentials.NewTLS(c)
	}
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("--%w", err) // its field names are the flags'

	}
	return cfg, nil
}

// lineWriter writes lines from many goroutines to one buffered writer.
type lineWriter struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func (l *lineWriter) printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = fmt.Fprintf(l.w, format, args...)
}

func (l *lineWriter) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	_ = l.w.Flush()
}
