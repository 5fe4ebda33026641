package scale

// The Go runtime's figures of a server, after a forced GC, before the
// agents came and with all of them connected: the floor's from its
// /runtime, the controller's from its /metrics after a GC forced with
// /debug/pprof/heap?gc=1.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/metrics"
	"github.com/mpfleet/mpfleet/test/scale/floor"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// runtimeSplit is a server's Go runtime figures idle and with the N agents
// connected.
type runtimeSplit struct {
	idle, loaded floor.Runtime
}

// measured reports whether both were read (a Go process never maps 0
// bytes).
func (r *runtimeSplit) measured() bool {
	return r != nil && r.idle.Total != 0 && r.loaded.Total != 0
}

// perAgent returns (loaded − idle) / n of a runtime figure.
func (r *runtimeSplit) perAgent(n int, fig func(floor.Runtime) uint64) float64 {
	return (float64(fig(r.loaded)) - float64(fig(r.idle))) / float64(n)
}

// kbPerAgent returns perAgent of a figure in bytes, in KiB.
func (r *runtimeSplit) kbPerAgent(n int, fig func(floor.Runtime) uint64) float64 {
	return r.perAgent(n, fig) / 1024
}

// The figures of a floor.Runtime a table row or a metric shows.
func goroutines(r floor.Runtime) uint64 { return r.Goroutines }
func stacks(r floor.Runtime) uint64     { return r.Stacks }
func heapLive(r floor.Runtime) uint64   { return r.HeapLive }
func metadata(r floor.Runtime) uint64   { return r.Metadata }
func goTotal(r floor.Runtime) uint64    { return r.Total }

// runtimeRow is a row of the table: its label, and its cell of a side.
type runtimeRow struct {
	label string
	cell  func(*side) string
}

// runtimeRows are the table's rows of the Go runtime's figures per agent,
// a cell for each side ("—" for a side without them: etcd's); none if no
// side has them.
func runtimeRows(n int, hub *side, fl *floorRun) []runtimeRow {
	hubHas, floorHas := hub != nil && hub.rt.measured(), fl != nil && fl.s.rt.measured()
	if !hubHas && !floorHas {
		return nil
	}
	// cell renders format with a side's figures.
	cell := func(format string, figs func(r *runtimeSplit) []any) func(*side) string {
		return func(s *side) string {
			if !s.rt.measured() {
				return "—"
			}
			return fmt.Sprintf(format, figs(s.rt)...)
		}
	}
	return []runtimeRow{
		{"  Go runtime per agent (after a GC)", cell("%.2f goroutines, %.1f KB stacks", func(r *runtimeSplit) []any {
			return []any{r.perAgent(n, goroutines), r.kbPerAgent(n, stacks)}
		})},
		{"    heap live, runtime metadata per agent", cell("%.1f KB heap live, %.1f KB metadata", func(r *runtimeSplit) []any {
			return []any{r.kbPerAgent(n, heapLive), r.kbPerAgent(n, metadata)}
		})},
		{"    heap in use, runtime total per agent", cell("%.1f KB in use, %.1f KB total mapped", func(r *runtimeSplit) []any {
			return []any{r.kbPerAgent(n, floor.Runtime.HeapInUse), r.kbPerAgent(n, goTotal)}
		})},
	}
}

// reportRuntime reports a side's Go runtime figures per agent as benchmark
// metrics, if it has them.
func reportRuntime(b *testing.B, n int, s *side) {
	if !s.rt.measured() {
		return
	}
	p := s.name + "-"
	b.ReportMetric(s.rt.perAgent(n, goroutines), p+"goroutines/agent")
	b.ReportMetric(s.rt.kbPerAgent(n, stacks), p+"KB-stack/agent")
	b.ReportMetric(s.rt.kbPerAgent(n, heapLive), p+"KB-heap-live/agent")
	b.ReportMetric(s.rt.kbPerAgent(n, floor.Runtime.HeapInUse), p+"KB-heap-inuse/agent")
	b.ReportMetric(s.rt.kbPerAgent(n, goTotal), p+"KB-go-total/agent")
}

// hubRuntimeNotes explain the hub's Go runtime figures.
func hubRuntimeNotes(hub *side) []string {
	if hub == nil || !hub.rt.measured() {
		return nil
	}
	return []string{
		"hub Go runtime figures: the controller's /metrics after GET /debug/pprof/heap?gc=1, per agent (with N − idle) / N; the floor's runtime/metrics classes:",
		"  stacks go_memstats_stack_inuse_bytes, heap in use heap_inuse, metadata mspan_sys + mcache_sys + gc_sys, total mapped sys − heap_released; but heap live",
		"  is heap_alloc (the heap's objects as /metrics was read, what was allocated since the GC included), the floor's /gc/heap/live (what the GC marked)."}
}

// metricsClient reads a controller's --metrics-listen server.
type metricsClient struct {
	url    string // http://host:port
	client *http.Client
}

// withMetrics returns the controller's args with its metrics server on
// (--metrics-listen on a free loopback port, unless args give one) and
// /debug/pprof/ (--enable-pprof, unless args give it), and a client of
// that server.
func withMetrics(b testing.TB, args []string) ([]string, *metricsClient) {
	b.Helper()
	listen, pprof := "", false
	for i := 0; i < len(args); i++ {
		name, val, hasVal := strings.Cut(args[i], "=")
		switch name {
		case "--" + metrics.ListenFlag:
			if !hasVal && i+1 < len(args) {
				i++
				val = args[i]
			}
			listen = val
		case "--" + metrics.PprofFlag:
			pprof = true
			if hasVal {
				on, err := strconv.ParseBool(val)
				if err != nil {
					b.Fatalf("-controller-args: %s: %v", args[i], err)
				}
				pprof = on
			}
		}
	}
	if listen == "" {
		listen = fmt.Sprintf("127.0.0.1:%d", etcdtest.FreePort(b))
		args = append(args, "--"+metrics.ListenFlag, listen)
	}
	if !pprof {
		args = append(args, "--"+metrics.PprofFlag)
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil || port == "0" {
		b.Fatalf("-controller-args: --%s %q: the benchmark reads it: give host:port, a port other than 0 (%v)", metrics.ListenFlag, listen, err)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	tr := &http.Transport{}
	b.Cleanup(tr.CloseIdleConnections)
	return args, &metricsClient{url: "http://" + net.JoinHostPort(host, port), client: &http.Client{Transport: tr}}
}

// runtime forces a GC in the controller and reads its Go runtime's
// figures and its agent streams from /metrics.
func (c *controllerProc) runtime() floor.Runtime {
	c.b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rt, err := c.metrics.runtime(ctx)
	if err != nil {
		c.b.Fatalf("controller runtime figures: %v\n%s", err, c.p.tail(20))
	}
	return rt
}

func (m *metricsClient) runtime(ctx context.Context) (floor.Runtime, error) {
	if err := m.get(ctx, "/debug/pprof/heap?gc=1", io.Discard); err != nil {
		return floor.Runtime{}, err
	}
	var body bytes.Buffer
	if err := m.get(ctx, "/metrics", &body); err != nil {
		return floor.Runtime{}, err
	}
	fams, err := new(expfmt.TextParser).TextToMetricFamilies(&body)
	if err != nil {
		return floor.Runtime{}, fmt.Errorf("/metrics: %w", err)
	}
	return runtimeFromMetrics(fams)
}

func (m *metricsClient) get(ctx context.Context, path string, w io.Writer) error {
	return floor.Request(ctx, m.client, http.MethodGet, m.url+path, nil, w)
}

// runtimeFromMetrics returns the Go runtime's figures of a controller's
// /metrics, with the floor's definitions (floor.Runtime, runtime/metrics
// classes), but for HeapLive: the Prometheus Go collector's go_memstats_*
// are those classes, and have no /gc/heap/live, so HeapLive is
// go_memstats_heap_alloc_bytes (/memory/classes/heap/objects). Streams are
// mpfleet_controller_agents_connected.
func runtimeFromMetrics(fams map[string]*dto.MetricFamily) (floor.Runtime, error) {
	var missing []string
	v := func(name string) uint64 {
		f := fams[name]
		if f == nil || len(f.GetMetric()) != 1 {
			missing = append(missing, name)
			return 0
		}
		m := f.GetMetric()[0]
		switch {
		case m.GetGauge() != nil:
			return uint64(m.GetGauge().GetValue())
		case m.GetUntyped() != nil:
			return uint64(m.GetUntyped().GetValue())
		}
		missing = append(missing, name)
		return 0
	}
	ms := func(s string) uint64 { return v("go_memstats_" + s + "_bytes") }
	alloc, inuse, released := ms("heap_alloc"), ms("heap_inuse"), ms("heap_released")
	stack := ms("stack_inuse")
	r := floor.Runtime{
		Streams:     int(v("mpfleet_controller_agents_connected")),
		Goroutines:  v("go_goroutines"),
		HeapLive:    alloc,
		HeapObjects: alloc,
		HeapUnused:  inuse - alloc,
		HeapFree:    ms("heap_idle") - released,
		Stacks:      stack,
		OSStacks:    ms("stack_sys") - stack,
		Metadata:    ms("mspan_sys") + ms("mcache_sys") + ms("gc_sys"),
		Other:       ms("other_sys") + ms("buck_hash_sys"),
		Total:       ms("sys") - released,
	}
	if len(missing) > 0 {
		return r, fmt.Errorf("/metrics: no single gauge %s", strings.Join(missing, ", "))
	}
	return r, nil
}

// TestWithMetrics: the benchmark turns the controller's metrics server and
// pprof on, on a free port unless -controller-args gives one, and reads
// the address it listens on.
func TestWithMetrics(t *testing.T) {
	base := []string{"--listen", "127.0.0.1:1"}
	// free stands for the free port the benchmark picks.
	const free = "FREE"
	for _, tc := range []struct {
		given, wantArgs []string // both after base
		wantURL         string
	}{
		{given: nil, wantArgs: []string{"--metrics-listen", free, "--enable-pprof"}, wantURL: "http://" + free},
		{given: []string{"--enable-pprof"}, wantArgs: []string{"--enable-pprof", "--metrics-listen", free}, wantURL: "http://" + free},
		{given: []string{"--metrics-listen", "127.0.0.1:9464"}, wantArgs: []string{"--metrics-listen", "127.0.0.1:9464", "--enable-pprof"}, wantURL: "http://127.0.0.1:9464"},
		{given: []string{"--metrics-listen=:9464", "--enable-pprof"}, wantArgs: []string{"--metrics-listen=:9464", "--enable-pprof"}, wantURL: "http://127.0.0.1:9464"},
		{given: []string{"--enable-pprof=false", "--metrics-listen", "[::]:9464"}, wantArgs: []string{"--enable-pprof=false", "--metrics-listen", "[::]:9464", "--enable-pprof"}, wantURL: "http://127.0.0.1:9464"},
		{given: []string{"--metrics-listen", "[::1]:9464", "--enable-pprof=true"}, wantArgs: []string{"--metrics-listen", "[::1]:9464", "--enable-pprof=true"}, wantURL: "http://[::1]:9464"},
	} {
		args, mc := withMetrics(t, append(slices.Clone(base), tc.given...))
		// The free port, if one was picked: the value after the last
		// --metrics-listen, on loopback.
		port := ""
		if i := slices.Index(args, "--metrics-listen"); i >= 0 && i+1 < len(args) && slices.Contains(tc.wantArgs, free) {
			port = args[i+1]
			if !strings.HasPrefix(port, "127.0.0.1:") {
				t.Errorf("%q: --metrics-listen %q; want a loopback address", tc.given, port)
			}
		}
		want := append(slices.Clone(base), tc.wantArgs...)
		for i := range want {
			if want[i] == free {
				want[i] = port
			}
		}
		if wantURL := strings.Replace(tc.wantURL, free, port, 1); !slices.Equal(args, want) || mc.url != wantURL {
			t.Errorf("%q: args %q, URL %q; want %q, %q", tc.given, args, mc.url, want, wantURL)
		}
	}
}

// TestMetricsRuntime reads the runtime figures as the benchmark reads the
// controller's, from an internal/metrics server with pprof on, and checks
// them against the floor's own reading of the same process's runtime.
func TestMetricsRuntime(t *testing.T) {
	reg := metrics.NewRegistry("mpfleet-test")
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mpfleet_controller_agents_connected", Help: "Agent streams."},
		func() float64 { return 7 }))
	srv, err := metrics.Listen(metrics.Options{Addr: "127.0.0.1:0", Gatherer: reg, Pprof: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	tr := &http.Transport{}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("metrics server: %v", err)
		}
	})
	mc := &metricsClient{url: "http://" + srv.Addr().String(), client: &http.Client{Transport: tr}}
	got, err := mc.runtime(ctx)
	if err != nil {
		t.Fatal(err)
	}
	own := floor.NewServer().Runtime()
	if got.Streams != 7 {
		t.Errorf("streams %d; want 7, the gauge's", got.Streams)
	}
	// The same process a moment apart: the figures that barely move are
	// within a factor of 2 of the floor's reading.
	near := func(name string, a, b uint64) {
		if a == 0 || a > 2*b || b > 2*a {
			t.Errorf("%s: %d from /metrics, %d from runtime/metrics; want both nonzero and close", name, a, b)
		}
	}
	near("goroutines", got.Goroutines, own.Goroutines)
	near("stacks", got.Stacks, own.Stacks)
	near("heap live", got.HeapLive, own.HeapLive)
	near("heap in use", got.HeapInUse(), own.HeapInUse())
	near("metadata", got.Metadata, own.Metadata)
	near("total", got.Total, own.Total)
	if got.Total < got.HeapInUse()+got.Stacks+got.Metadata {
		t.Errorf("total %d below heap in use + stacks + metadata: %+v", got.Total, got)
	}

	if _, err := runtimeFromMetrics(map[string]*dto.MetricFamily{}); err == nil || !strings.Contains(err.Error(), "go_memstats_sys_bytes") {
		t.Errorf("no metrics: %v; want an error naming the missing ones", err)
	}
}
