// Package controller is mpfleet's controller: the gRPC API (groups, hosts,
// rollouts, audit, and the agent-facing stream) over state kept in etcd,
// embedded by default or an existing cluster.
package controller

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
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
	metrics   *controllerMetrics // nil: no metrics
}

// Options configure a Controller.
type Options struct {
	Log       *slog.Logger
	Hub       HubOptions
	Retention Retention
	Store     StoreHealthOptions
	// Metrics, if set, gets the controller's Prometheus metrics
	// (mpfleet_controller_* and grpc_server_*; see metrics.go); the
	// servers NewServer returns count their calls in it.
	Metrics prometheus.Registerer
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
	if opts.Metrics != nil {
		c.metrics = newControllerMetrics(c, opts.Metrics)
	}
	return c
}

// Run does the controller's background work until ctx ends: the replica's
// etcd session (its lease holds the agents' session keys and its place in
// the leader election; see replica.go), the agent hub (group assignments),
// the store's health (see storehealth.go) and, when this replica is elected
// leader, rollouts and audit retention.
func (c *Controller) Run(ctx context.Context) {
	done := make(chan struct{})
	go func() { defer close(done); c.runSession(ctx) }()
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
	// creds are the credentials Run loads from files and reloads.
	creds *credStore
}

// NewServer returns a gRPC server with every mpfleet service, health and
// reflection (v1 and v1alpha) registered, and the health status.
func (c *Controller) NewServer(opts ServerOptions) (*grpc.Server, *health.Server) {
	a := &authenticator{creds: opts.creds}
	unary, stream := c.metrics.interceptors()
	sopts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(append(unary, recoverUnary(c.log), a.unary, logUnary(c.log))...),
		grpc.ChainStreamInterceptor(append(stream, recoverStream(c.log), a.stream, logStream(c.log))...),
		// Agents ping every 20s; allow pings down to 5s, also between streams,
		// so that no agent is ever cut off with too_many_pings.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.MaxRecvMsgSize(8 << 20),
		// A connection's write buffer (taken from a shared pool for each
		// flush) is one HTTP/2 frame of the default size, not 32 KiB: a
		// fan-out to 10,000 agents writes to all their connections at once
		// (docs/scaling.md has what an agent costs).
		grpc.WriteBufferSize(16 << 10),
		// An agent stream's context, which the hub ends (hubsend.go).
		grpc.InTapHandle(agentStreamTap),
	}
	if opts.creds != nil && opts.creds.serverTLS() != nil {
		sopts = append(sopts, grpc.Creds(credentials.NewTLS(opts.creds.serverTLS())))
	}
	srv := grpc.NewServer(sopts...)
	pb.RegisterGroupServiceServer(srv, &groupService{c: c})
	pb.RegisterAuditServiceServer(srv, &auditService{c: c})
	pb.RegisterHostServiceServer(srv, &hostService{c: c})
	pb.RegisterRolloutServiceServer(srv, &rolloutService{c: c})
	pb.RegisterAgentServiceServer(srv, &agentService{h: c.hub})
	pb.RegisterVersionServiceServer(srv, versionService{})
	hs := health.NewServer()
	c.sh.attach(hs) // NOT_SERVING while etcd is unreachable or out of space
	healthpb.RegisterHealthServer(srv, hs)
	reflection.Register(srv) // registers both v1 and v1alpha
	c.metrics.initialize(srv)
	return srv, hs
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
