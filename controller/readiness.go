package controller

// Readiness, and the metrics server the program runs with
// --metrics-listen: /metrics, /healthz and /readyz (internal/metrics).

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"

	"github.com/mpfleet/mpfleet/internal/metrics"
	"github.com/mpfleet/mpfleet/internal/store"
	"github.com/prometheus/client_golang/prometheus"
)

// Ready says whether the controller is ready to serve, as /readyz does: nil
// when etcd answers its health probes without an alarm, the cache holds
// etcd's state and the controller is not shutting down; else an error
// saying which is not so. (grpc.health.v1 says NOT_SERVING in the same
// cases.)
func (c *Controller) Ready() error {
	if c.hub.isClosing() {
		return errors.New("draining: the controller is shutting down and moving its agents to other replicas")
	}
	switch st, _ := c.sh.current(); st {
	case storeOK:
	case storeUnreachable:
		return errors.New("etcd is unreachable")
	case storeNoSpace:
		return errors.New("etcd is out of space (NOSPACE alarm)")
	default:
		return errors.New("etcd raised an alarm (etcdctl alarm list)")
	}
	if c.cache.Revision() == 0 {
		return errors.New("the cache has not loaded etcd's state yet")
	}
	return nil
}

// isClosing says whether the hub refuses new streams: the controller is
// draining or shutting down.
func (h *hub) isClosing() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.closing
}

// monitor is the program's metrics server (nil without --metrics-listen):
// it serves from the start, before etcd is reached, and is not ready until
// the controller is.
type monitor struct {
	reg  *prometheus.Registry
	ctl  atomic.Pointer[Controller]
	stop context.CancelFunc
	done chan struct{}
}

// startMonitor listens on --metrics-listen (failing at once on a bad
// address) and serves until stopped. Without the flag it returns nil.
func startMonitor(f Flags, log *slog.Logger) (*monitor, error) {
	if f.Metrics.Listen == "" {
		return nil, nil
	}
	m := &monitor{reg: metrics.NewRegistry("mpfleet-controller"), done: make(chan struct{})}
	srv, err := metrics.Listen(metrics.Options{Addr: f.Metrics.Listen, Gatherer: m.reg, Ready: m.ready, Pprof: f.Metrics.Pprof, Log: log.With("component", "metrics")})
	if err != nil {
		return nil, err
	}
	ctx, stop := context.WithCancel(context.Background())
	m.stop = stop
	go func() {
		defer close(m.done)
		if err := srv.Serve(ctx); err != nil {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	log.Info("serving metrics", "metrics-listen", srv.Addr().String(), "pprof", f.Metrics.Pprof)
	return m, nil
}

func (m *monitor) ready() error {
	c := m.ctl.Load()
	if c == nil {
		return errors.New("starting: etcd not reached yet")
	}
	return c.Ready()
}

// registerer is where the controller's metrics go (nil: nowhere).
func (m *monitor) registerer() prometheus.Registerer {
	if m == nil {
		return nil
	}
	return m.reg
}

// observe times and counts the requests of the store's guard (nothing
// without a monitor).
func (m *monitor) observe(g *store.Guard) {
	if m != nil {
		ObserveEtcd(g, m.reg)
	}
}

// follow makes /readyz follow c.
func (m *monitor) follow(c *Controller) {
	if m != nil {
		m.ctl.Store(c)
	}
}

// close stops the server and waits until it has.
func (m *monitor) close() {
	if m != nil {
		m.stop()
		<-m.done
	}
}
