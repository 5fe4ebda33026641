package controller

// Run: the controller program — flags, TLS and etcd set up, then the
// server and its background work until the context ends.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/mpfleet/mpfleet/internal/program"
	"github.com/mpfleet/mpfleet/internal/store"
	"github.com/mpfleet/mpfleet/internal/transport"
	"github.com/mpfleet/mpfleet/internal/zaplog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// Run runs the controller until ctx ends (SIGTERM in main).
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f Flags
	fs := flagSet(&f)
	log, done, err := program.Start(fs, args, stderr, program.Spec{Usage: Usage, EnvPrefix: "MPFLEET_CONTROLLER_", Stdout: stdout})
	if done || err != nil {
		return err
	}

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
	if err := checkDrainFlags(f); err != nil {
		return err
	}
	if err := f.Metrics.Check(); err != nil {
		return err
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
	// /metrics, /healthz and /readyz from now on (--metrics-listen).
	mon, err := startMonitor(f, log)
	if err != nil {
		return err
	}
	defer mon.close()

	var endpoints []string
	var etcdTLS *tls.Config
	var embedded *store.Embedded
	if len(f.EtcdEndpoints) == 0 {
		log.Info("starting embedded etcd", "data-dir", f.DataDir)
		if f.AuditMaxBytes == 0 || f.AuditMaxBytes > f.EtcdQuotaBytes/2 {
			log.Warn("the audit log may fill etcd: keep --audit-retention-bytes well under --etcd-quota-bytes (a quarter of it leaves room for history and the rest)",
				"audit-retention-bytes", f.AuditMaxBytes, "etcd-quota-bytes", f.EtcdQuotaBytes)
		}
		embedded, err = store.StartEmbedded(ctx, store.EmbedConfig{DataDir: f.DataDir, ClientURL: f.EtcdClientURL, PeerURL: f.EtcdPeerURL, QuotaBytes: int64(f.EtcdQuotaBytes), Log: log})
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
		Logger: etcdClientLogger(log),
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
	mon.observe(guard)
	cli.KV = guard.KV(cli.KV)
	st := store.New(cli, f.EtcdPrefix, store.WithAuditKey(auditKey))
	if err := keyAuditChain(ctx, st, log); err != nil {
		return err
	}
	cache := store.NewCache(st, log.With("component", "cache"))
	c := New(st, cache, Options{Log: log, Retention: Retention{MaxEvents: f.AuditMaxEvents, MaxAge: f.AuditMaxAge, MaxBytes: f.AuditMaxBytes},
		Store: StoreHealthOptions{Guard: guard}, Hub: HubOptions{Replica: replicaName(f.ReplicaName, lis.Addr()), DrainRate: f.DrainRate, DrainTimeout: f.DrainTimeout},
		Metrics: mon.registerer()})
	srv, hs := c.NewServer(sopts)
	mon.follow(c)

	// The background work outlives ctx until the drain below is done: the
	// session lease holds the keys of the hosts still being served.
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
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
	hs.Shutdown() // NOT_SERVING: load balancers and new agents go elsewhere
	if ctx.Err() != nil {
		// Asked to stop: move the agents to the other replicas, paced.
		c.hub.drain()
	}
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

// etcdClientLogger sends the etcd client's own log through the
// controller's (component=etcd-client): its errors at error, the rest
// (retries of calls the controller retries or reports itself) at debug.
func etcdClientLogger(log *slog.Logger) *zap.Logger {
	return zaplog.New(log.With("component", "etcd-client").Handler(), func(e zapcore.Entry) slog.Level {
		if e.Level >= zapcore.ErrorLevel {
			return slog.LevelError
		}
		return slog.LevelDebug
	})
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
	if !transport.IsLoopback(f.Listen) && !f.Insecure {
		if f.TLSCertFile == "" {
			return o, fmt.Errorf("refusing plaintext on non-loopback address %s: give --tls-cert-file and --tls-key-file, or --insecure", f.Listen)
		}
		if f.TokensFile == "" && f.TLSClientCAFile == "" {
			return o, fmt.Errorf("refusing unauthenticated access on non-loopback address %s: give --tokens-file and/or --tls-client-ca-file, or --insecure", f.Listen)
		}
	}
	return o, nil
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
	return transport.TLSInfo{
		CertFile: f.EtcdCertFile, KeyFile: f.EtcdKeyFile, TrustedCAFile: f.EtcdCAFile,
		CALabel: "--etcd-ca-file", KeyPairLabel: "etcd client key pair",
	}.ClientConfig()
}
