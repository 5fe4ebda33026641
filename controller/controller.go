// Package controller is mpfleet's controller: the gRPC API (groups, hosts,
// rollouts, audit, and the agent-facing stream) over state kept in etcd,
// embedded by default or an existing cluster.
package controller

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mpfleet/mpfleet/internal/config"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	// The error-detail types must be in the binary's registry so that
	// reflection serves them and grpcurl can print google.rpc.BadRequest.
	_ "google.golang.org/genproto/googleapis/rpc/errdetails"
)

const auditTimeout = 5 * time.Second

// Controller serves the mpfleet API over one store and cache.
type Controller struct {
	store *store.Store
	cache *store.Cache
	log   *slog.Logger
	hub   *hub

	retention Retention
	sh        *storeHealth
	leading   atomic.Bool
	pruneNow  chan struct{}
}

// Options configure a Controller.
type Options struct {
	Log       *slog.Logger
	Hub       HubOptions
	Retention Retention
	Store     StoreHealthOptions
}

// New returns a controller over s and its cache. The caller runs the cache
// (cache.Run) and the controller's background work (Run).
func New(s *store.Store, cache *store.Cache, opts Options) *Controller {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Controller{store: s, cache: cache, log: log, retention: opts.Retention, pruneNow: make(chan struct{}, 1)}
	c.sh = newStoreHealth(s, log, opts.Store)
	c.hub = newHub(c, opts.Hub)
	return c
}

// Run does the controller's background work until ctx ends: the agent hub
// (session lease, group assignments), the store's health (see
// storehealth.go) and, when this replica is elected leader, audit
// retention.
func (c *Controller) Run(ctx context.Context) {
	done := make(chan struct{})
	go func() { defer close(done); c.runLeader(ctx, c.hub.opts.Replica) }()
	storeDone := make(chan struct{})
	go func() { defer close(storeDone); c.runStore(ctx) }()
	c.hub.run(ctx)
	<-done
	<-storeDone
}

// DesiredEncodes reports how many desired-configuration messages the hub
// has encoded: once per group revision, however many hosts receive it.
func (c *Controller) DesiredEncodes() int64 { return c.hub.encodes.Load() }

// waitCache waits (briefly) until the cache has seen a write, so that streams
// and cached reads on this replica reflect it when the call returns.
func (c *Controller) waitCache(ctx context.Context, rev int64) {
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.cache.WaitRevision(wctx, rev); err != nil {
		c.log.Warn("cache did not catch up with a write", "rev", rev, "err", err)
	}
}

// ServerOptions configure the gRPC server.
type ServerOptions struct {
	// TLS, if not nil, is the server's fixed TLS configuration (no client
	// authentication).
	TLS *tls.Config
	// creds are the credentials Run loads from files and reloads.
	creds *credStore
}

// NewServer returns a gRPC server with every mpfleet service, health and
// reflection (v1 and v1alpha) registered, and the health status.
func (c *Controller) NewServer(opts ServerOptions) (*grpc.Server, *health.Server) {
	a := &authenticator{creds: opts.creds}
	sopts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(recoverUnary(c.log), a.unary),
		grpc.ChainStreamInterceptor(recoverStream(c.log), a.stream),
		// Agents ping every 20s; allow pings down to 5s, also between streams,
		// so that no agent is ever cut off with too_many_pings.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.MaxRecvMsgSize(8 << 20),
	}
	switch {
	case opts.creds != nil && opts.creds.serverTLS() != nil:
		sopts = append(sopts, grpc.Creds(credentials.NewTLS(opts.creds.serverTLS())))
	case opts.TLS != nil:
		sopts = append(sopts, grpc.Creds(credentials.NewTLS(opts.TLS)))
	}
	srv := grpc.NewServer(sopts...)
	pb.RegisterGroupServiceServer(srv, &groupService{c: c})
	pb.RegisterAuditServiceServer(srv, &auditService{c: c})
	pb.RegisterHostServiceServer(srv, &hostService{c: c})
	pb.RegisterRolloutServiceServer(srv, &rolloutService{c: c})
	pb.RegisterAgentServiceServer(srv, &agentService{h: c.hub})
	hs := health.NewServer()
	c.sh.attach(hs) // NOT_SERVING while etcd is unreachable or out of space
	healthpb.RegisterHealthServer(srv, hs)
	reflection.Register(srv) // registers both v1 and v1alpha
	return srv, hs
}

// Flags are the controller's settings.
type Flags struct {
	Listen          string
	DataDir         string
	EtcdEndpoints   []string
	EtcdPrefix      string
	EtcdClientURL   string
	EtcdPeerURL     string
	EtcdCAFile      string
	EtcdCertFile    string
	EtcdKeyFile     string
	TLSCertFile     string
	TLSKeyFile      string
	TLSClientCAFile string
	TokensFile      string
	ReloadInterval  time.Duration
	Insecure        bool
	LogLevel        string
	Config          string
	AuditMaxEvents  uint64
	AuditMaxAge     time.Duration
	AuditMaxBytes   uint64
	EtcdQuotaBytes  uint64
	EtcdReqTimeout  time.Duration
	AuditKeyFile    string
}

func flagSet(f *Flags) *pflag.FlagSet {
	fs := pflag.NewFlagSet("mpfleet-controller", pflag.ContinueOnError)
	fs.StringVar(&f.Listen, "listen", "127.0.0.1:7400", "gRPC listen address")
	fs.StringVar(&f.DataDir, "data-dir", "/var/lib/mpfleet", "directory of the embedded etcd (unused with --etcd-endpoints) and of the default --audit-key-file")
	fs.StringSliceVar(&f.EtcdEndpoints, "etcd-endpoints", nil, "use this existing etcd cluster (comma-separated URLs) instead of an embedded one")
	fs.StringVar(&f.EtcdPrefix, "etcd-prefix", store.DefaultPrefix, "etcd key prefix of all mpfleet data")
	fs.StringVar(&f.EtcdClientURL, "etcd-client-url", "", "client URL of the embedded etcd: a unix socket (unix:///path) or http://LOOPBACK:PORT; nothing else is allowed (default: unix socket <data-dir>/"+store.EmbedSocket+")")
	fs.StringVar(&f.EtcdPeerURL, "etcd-peer-url", "", "peer URL of the embedded etcd, http://LOOPBACK:PORT (default: none; a single member has no peers)")
	fs.StringVar(&f.EtcdCAFile, "etcd-ca-file", "", "CA bundle to verify an external etcd's TLS certificate")
	fs.StringVar(&f.EtcdCertFile, "etcd-cert-file", "", "client certificate for an external etcd")
	fs.StringVar(&f.EtcdKeyFile, "etcd-key-file", "", "client key for an external etcd")
	f.EtcdQuotaBytes = uint64(store.DefaultQuotaBytes)
	fs.Var((*byteSize)(&f.EtcdQuotaBytes), "etcd-quota-bytes", "backend quota of the embedded etcd (e.g. 2GiB, 8GiB); past it etcd refuses writes (NOSPACE) until space is freed (an external etcd has its own --quota-backend-bytes)")
	fs.DurationVar(&f.EtcdReqTimeout, "etcd-request-timeout", 5*time.Second, "longest wait for one etcd request; a call whose request gets no answer in time fails with UNAVAILABLE")
	fs.StringVar(&f.TLSCertFile, "tls-cert-file", "", "server certificate (PEM); enables TLS")
	fs.StringVar(&f.TLSKeyFile, "tls-key-file", "", "server key (PEM)")
	fs.StringVar(&f.TLSClientCAFile, "tls-client-ca-file", "", "CA bundle to verify client certificates (agents' mutual TLS)")
	fs.StringVar(&f.TokensFile, "tokens-file", "", "YAML list of {name, role, tokenSHA256[, host][, expires]} bearer tokens (agent tokens name their host)")
	fs.DurationVar(&f.ReloadInterval, "reload-interval", 2*time.Second, "how often to check the tokens file, TLS certificate and client CA for changes and reload them (0: only on SIGHUP)")
	fs.BoolVar(&f.Insecure, "insecure", false, "allow plaintext without authentication on a non-loopback --listen (never in production)")
	fs.Uint64Var(&f.AuditMaxEvents, "audit-retention-events", 200000, "keep at most this many audit events (0: no limit); the leader prunes the oldest")
	fs.DurationVar(&f.AuditMaxAge, "audit-retention-age", 0, "drop audit events older than this, e.g. 8760h (0: no limit)")
	f.AuditMaxBytes = defaultAuditMaxBytes
	fs.Var((*byteSize)(&f.AuditMaxBytes), "audit-retention-bytes", "keep the audit log within this size (its events' stored values; estimated for a large log), e.g. 256MiB (0: no limit); the leader prunes the oldest. Keep it well under etcd's quota")
	fs.StringVar(&f.AuditKeyFile, "audit-key-file", "", "secret key (hex, 32+ bytes) that keys the audit chain's hashes; every replica needs the same file (default: <data-dir>/audit.key, generated on first start)")
	fs.StringVar(&f.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.Config, "config", "", "YAML file of settings (keys are flag names)")
	return fs
}

// Usage is the controller's --help text header.
const Usage = `mpfleet-controller serves the mpfleet API and keeps the fleet's desired state
in etcd: an embedded single member in --data-dir by default, or an existing
cluster given by --etcd-endpoints.

Every flag can also be set in the environment (MPFLEET_CONTROLLER_LISTEN for
--listen, ...) or in a --config YAML file; the command line wins, then the
environment, then the file.

Plaintext without authentication is allowed on loopback only. On any other
address give --tls-cert-file/--tls-key-file (and --tls-client-ca-file for
agents, --tokens-file for people), or --insecure.
`

// Run runs the controller until ctx ends (SIGTERM in main).
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f Flags
	fs := flagSet(&f)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, Usage+"\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return err
	}
	if err := config.Apply(fs, "MPFLEET_CONTROLLER_", "config"); err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.LogLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	sopts, err := serverSecurity(f, log)
	if err != nil {
		return err
	}
	if err := checkEmbedFlags(f); err != nil {
		return err
	}
	if f.EtcdReqTimeout <= 0 {
		return errors.New("--etcd-request-timeout must be positive")
	}
	auditKey, err := loadAuditKey(f, log)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", f.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", f.Listen, err)
	}
	defer lis.Close()

	var endpoints []string
	var etcdTLS *tls.Config
	var embedded *store.Embedded
	if len(f.EtcdEndpoints) == 0 {
		log.Info("starting embedded etcd", "data-dir", f.DataDir)
		if f.AuditMaxBytes == 0 || f.AuditMaxBytes > f.EtcdQuotaBytes/2 {
			log.Warn("the audit log may fill etcd: keep --audit-retention-bytes well under --etcd-quota-bytes (a quarter of it leaves room for history and the rest)",
				"audit-retention-bytes", f.AuditMaxBytes, "etcd-quota-bytes", f.EtcdQuotaBytes)
		}
		embedded, err = store.StartEmbedded(ctx, store.EmbedConfig{DataDir: f.DataDir, ClientURL: f.EtcdClientURL, PeerURL: f.EtcdPeerURL, QuotaBytes: int64(f.EtcdQuotaBytes)})
		if err != nil {
			return err
		}
		defer embedded.Close()
		endpoints = embedded.Endpoints()
	} else {
		endpoints = f.EtcdEndpoints
		if etcdTLS, err = etcdClientTLS(f); err != nil {
			return err
		}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: endpoints, DialTimeout: 10 * time.Second, TLS: etcdTLS,
		DialKeepAliveTime: 30 * time.Second, DialKeepAliveTimeout: 10 * time.Second,
		Logger: etcdClientLogger(),
		// Reconnect within seconds once etcd is back (gRPC's default
		// backoff grows to two minutes).
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		})},
	})
	if err != nil {
		return fmt.Errorf("etcd client: %w", err)
	}
	defer cli.Close()
	// Fail fast with a clear error when etcd is unreachable.
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	_, err = cli.Get(pctx, f.EtcdPrefix+"ping", clientv3.WithCountOnly())
	cancel()
	if err != nil {
		return fmt.Errorf("etcd at %s: %w", strings.Join(endpoints, ","), err)
	}

	// Every request of the store is bounded and fails at once while the
	// health monitor knows etcd to be unreachable.
	guard := store.NewGuard(f.EtcdReqTimeout)
	cli.KV = guard.KV(cli.KV)
	st := store.New(cli, f.EtcdPrefix, store.WithAuditKey(auditKey))
	if err := keyAuditChain(ctx, st, log); err != nil {
		return err
	}
	cache := store.NewCache(st, log.With("component", "cache"))
	c := New(st, cache, Options{Log: log, Retention: Retention{MaxEvents: f.AuditMaxEvents, MaxAge: f.AuditMaxAge, MaxBytes: f.AuditMaxBytes},
		Store: StoreHealthOptions{Guard: guard}})
	srv, hs := c.NewServer(sopts)

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = cache.Run(runCtx) }()
	go func() { defer wg.Done(); c.Run(runCtx) }()
	if err := cache.WaitRevision(ctx, 1); err != nil {
		return err
	}
	// Credentials reload on SIGHUP and when their files change.
	hup, stopHUP := notifyHUP()
	defer stopHUP()
	wg.Add(1)
	go func() { defer wg.Done(); sopts.creds.watch(runCtx, hup, f.ReloadInterval) }()
	c.sh.publish() // SERVING unless etcd has failed since

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(lis) }()
	log.Info("mpfleet controller serving", "listen", lis.Addr().String(), "etcd", strings.Join(endpoints, ","), "prefix", f.EtcdPrefix, "tls", f.TLSCertFile != "")

	var embeddedErr <-chan error
	if embedded != nil {
		embeddedErr = embedded.Err()
	}
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err = <-serveErr:
		log.Error("gRPC server stopped", "err", err)
	case err = <-embeddedErr:
		log.Error("embedded etcd failed", "err", err)
	}
	hs.Shutdown()
	// End the streams first — agent sessions, then (with the cache) the
	// watches — so that GracefulStop only waits for unary calls.
	c.hub.closeAll()
	stop()
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	// Streams (agents, watches) never end by themselves: give unary calls a
	// moment, then cut the rest.
	select {
	case <-stopped:
	case <-time.After(3 * time.Second):
		srv.Stop()
	}
	wg.Wait()
	return err
}

// etcdClientLogger keeps the etcd client's own zap logger to errors: its
// retry chatter is noise, and what matters reaches our log as errors.
func etcdClientLogger() *zap.Logger {
	cfg := zap.NewProductionConfig()
	cfg.Level = zap.NewAtomicLevelAt(zap.ErrorLevel)
	l, err := cfg.Build()
	if err != nil {
		return zap.NewNop()
	}
	return l
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func serverSecurity(f Flags, log *slog.Logger) (ServerOptions, error) {
	var o ServerOptions
	if (f.TLSCertFile == "") != (f.TLSKeyFile == "") {
		return o, errors.New("--tls-cert-file and --tls-key-file must be given together")
	}
	if f.TLSCertFile == "" && f.TLSClientCAFile != "" {
		return o, errors.New("--tls-client-ca-file needs --tls-cert-file and --tls-key-file")
	}
	creds, err := newCredStore(f, log)
	if err != nil {
		return o, err
	}
	o.creds = creds
	if !isLoopback(f.Listen) && !f.Insecure {
		if f.TLSCertFile == "" {
			return o, fmt.Errorf("refusing plaintext on non-loopback address %s: give --tls-cert-file and --tls-key-file, or --insecure", f.Listen)
		}
		if f.TokensFile == "" && f.TLSClientCAFile == "" {
			return o, fmt.Errorf("refusing unauthenticated access on non-loopback address %s: give --tokens-file and/or --tls-client-ca-file, or --insecure", f.Listen)
		}
	}
	return o, nil
}

func loadPool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s: no PEM certificates", path)
	}
	return pool, nil
}

// checkEmbedFlags refuses embedded etcd URLs that are not local, before
// anything starts.
func checkEmbedFlags(f Flags) error {
	if len(f.EtcdEndpoints) > 0 {
		return nil
	}
	if err := store.CheckEmbedClientURL(f.EtcdClientURL); err != nil {
		return fmt.Errorf("--etcd-client-url %w", err)
	}
	if err := store.CheckEmbedPeerURL(f.EtcdPeerURL); err != nil {
		return fmt.Errorf("--etcd-peer-url %w", err)
	}
	if f.EtcdQuotaBytes < minEtcdQuota {
		return fmt.Errorf("--etcd-quota-bytes %s: must be at least 16MiB (etcd's default is 2GiB)", (*byteSize)(&f.EtcdQuotaBytes))
	}
	return nil
}

func etcdClientTLS(f Flags) (*tls.Config, error) {
	if f.EtcdCAFile == "" && f.EtcdCertFile == "" {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.EtcdCAFile != "" {
		pool, err := loadPool(f.EtcdCAFile)
		if err != nil {
			return nil, fmt.Errorf("--etcd-ca-file: %w", err)
		}
		c.RootCAs = pool
	}
	if f.EtcdCertFile != "" {
		cert, err := tls.LoadX509KeyPair(f.EtcdCertFile, f.EtcdKeyFile)
		if err != nil {
			return nil, fmt.Errorf("etcd client key pair: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

func recoverUnary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				log.Error("panic in handler", "method", info.FullMethod, "panic", r)
				err = toStatus(fmt.Errorf("internal error in %s", info.FullMethod))
			}
		}()
		return h(ctx, req)
	}
}

func recoverStream(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
		defer func() {
			if r := recover(); r != nil {
				log.Error("panic in handler", "method", info.FullMethod, "panic", r)
				err = toStatus(fmt.Errorf("internal error in %s", info.FullMethod))
			}
		}()
		return h(srv, ss)
	}
}
