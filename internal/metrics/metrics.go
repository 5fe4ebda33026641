// Package metrics serves a program's Prometheus metrics and its probes over
// plain HTTP, on the address --metrics-listen names: /metrics, /healthz (the
// process runs and serves), /readyz (the program says it is ready) and, when
// asked for, Go's profiles under /debug/pprof/.
//
// It holds no kernel or etcd code: the controller and the agent register
// their own collectors in the registry NewRegistry returns.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/mpfleet/mpfleet/internal/version"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"
)

// ListenFlag is the flag that names the address to serve on; empty: no
// metrics server.
const ListenFlag = "metrics-listen"

// ListenUsage is ListenFlag's help text.
const ListenUsage = "serve Prometheus /metrics and the /healthz and /readyz probes over plain HTTP on `ADDR` (host:port; off when empty)"

// PprofUsage is the help text of the flag that turns on /debug/pprof/.
const PprofUsage = "also serve Go's profiles under /debug/pprof/ on --metrics-listen (they show the program's internals: keep that address private)"

// NewRegistry returns a registry holding the Go runtime's and the process's
// collectors and mpfleet_build_info{program,version,commit,go_version} = 1.
func NewRegistry(program string) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	v := version.Get()
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "mpfleet_build_info",
		Help:        "Always 1; the labels say which build of which program runs.",
		ConstLabels: prometheus.Labels{"program": program, "version": v.Version, "commit": v.Commit, "go_version": v.GoVersion},
	})
	build.Set(1)
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		build,
	)
	return reg
}

// Options configure a Server.
type Options struct {
	// Addr is where to listen, host:port.
	Addr string
	// Gatherer is what /metrics serves.
	Gatherer prometheus.Gatherer
	// Ready answers /readyz: nil is 200 "ok", an error is 503 with its
	// text. A nil Ready is always ready.
	Ready func() error
	// Pprof serves net/http/pprof's handlers under /debug/pprof/.
	Pprof bool
	// Log gets the server's errors; nil discards them.
	Log *slog.Logger
}

// Server is a listening metrics and probe server.
type Server struct {
	lis net.Listener
	srv *http.Server
}

// Listen binds opts.Addr, so that a wrong address fails at start, before
// Serve.
func Listen(opts Options) (*Server, error) {
	if opts.Gatherer == nil {
		return nil, errors.New("metrics: no gatherer")
	}
	lis, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", ListenFlag, err)
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ErrorHandling:     promhttp.ContinueOnError,
		EnableOpenMetrics: true,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if opts.Ready != nil {
			if err := opts.Ready(); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = fmt.Fprintln(w, "ok")
	})
	if opts.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return &Server{lis: lis, srv: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}}, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.lis.Addr() }

// Serve serves until ctx ends, then shuts down, giving requests in flight
// a second to finish. It returns nil when ctx ended it.
func (s *Server) Serve(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.lis) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	if err := s.srv.Shutdown(sctx); err != nil {
		_ = s.srv.Close()
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// PprofFlag is the flag that turns /debug/pprof/ on.
const PprofFlag = "enable-pprof"

// Flags are a daemon's metrics settings, --metrics-listen and
// --enable-pprof.
type Flags struct {
	Listen string
	Pprof  bool
}

// Register defines the flags in fs.
func (f *Flags) Register(fs *pflag.FlagSet) {
	fs.StringVar(&f.Listen, ListenFlag, "", ListenUsage)
	fs.BoolVar(&f.Pprof, PprofFlag, false, PprofUsage)
}

// Check refuses --enable-pprof without --metrics-listen, which would serve
// nothing.
func (f Flags) Check() error {
	if f.Pprof && f.Listen == "" {
		return fmt.Errorf("--%s serves on --%s: give that address too", PprofFlag, ListenFlag)
	}
	return nil
}
