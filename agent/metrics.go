package agent

// Prometheus metrics: what the loop did (passes, their time, drift repairs,
// failures), what it keeps (endpoints, path states, sync state, revision),
// whether a stream to a controller is up, and MPTCP health read from the
// kernel when scraped. Run serves them with internal/metrics on
// --metrics-listen; Options.Metrics registers them anywhere (tests).

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/prometheus/client_golang/prometheus"
)

// Metric names, a contract shared with the dashboards and alert rules.
const (
	metricConnected     = "mpfleet_agent_connected"
	metricReconcile     = "mpfleet_agent_reconcile_duration_seconds"
	metricDriftRepairs  = "mpfleet_agent_drift_repairs_total"
	metricApplyFailures = "mpfleet_agent_apply_failures_total"
	metricEndpoints     = "mpfleet_agent_endpoints"
	metricRevision      = "mpfleet_agent_config_revision"
	metricSyncState     = "mpfleet_agent_sync_state"
	metricPathState     = "mpfleet_agent_path_state"
	metricConnections   = "mpfleet_agent_mptcp_connections"
	metricSubflows      = "mpfleet_agent_mptcp_subflows"
	metricFallbacks     = "mpfleet_agent_mptcp_fallbacks_total"
	metricMPTcpExt      = "mpfleet_agent_mptcpext_total"
)

// reconcileBuckets cover a pass from a no-op (well under a millisecond) to
// one that waits for the controller's confirmation (--confirm-timeout).
var reconcileBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// syncStates are the sync states an agent can be in, as the label values
// of mpfleet_agent_sync_state (DISCONNECTED is the controller's view of an
// agent, never the agent's own).
var syncStates = []pb.SyncState{
	pb.SyncState_SYNC_STATE_IN_SYNC, pb.SyncState_SYNC_STATE_APPLYING, pb.SyncState_SYNC_STATE_DRIFTED,
	pb.SyncState_SYNC_STATE_FAILED, pb.SyncState_SYNC_STATE_CONFLICT, pb.SyncState_SYNC_STATE_UNMANAGED,
	pb.SyncState_SYNC_STATE_DEGRADED,
}

// pathStateOrder are the label values of mpfleet_agent_path_state, most severe
// first: an interface with several paths (one per managed address) shows
// the most severe of their states.
var pathStateOrder = []pb.PathState{
	pb.PathState_PATH_STATE_LINK_DOWN, pb.PathState_PATH_STATE_FAILED, pb.PathState_PATH_STATE_NO_GATEWAY,
	pb.PathState_PATH_STATE_OK, pb.PathState_PATH_STATE_UNPROBED,
}

// gaugeCounters are the MPTcpExt entries that are gauges, not counters:
// mpfleet_agent_mptcpext_total leaves them out.
var gaugeCounters = map[string]bool{"MPCurrEstab": true}

// Health reads at scrape time: a reading younger than healthMaxAge is
// reused (several scrapers), and a scrape waits at most healthWait for a
// fresh one before it takes the last reading.
const (
	healthMaxAge = time.Second
	healthWait   = 2 * time.Second
	healthLimit  = 30 * time.Second // bounds one read, waited for or not
)

// agentMetrics are one agent's metrics. The loop updates them; a scrape
// reads them, and the kernel's MPTCP health, from another goroutine.
type agentMetrics struct {
	connected     prometheus.Gauge
	reconcile     prometheus.Histogram
	driftRepairs  prometheus.Counter
	applyFailures prometheus.Counter
	endpoints     prometheus.Gauge
	revision      prometheus.Gauge

	mu        sync.Mutex
	syncState pb.SyncState
	paths     map[string]pb.PathState // by interface

	health *healthReader

	syncDesc, pathDesc, connsDesc, subflowsDesc, fallbacksDesc, extDesc *prometheus.Desc
}

func newAgentMetrics(sys System, log *slog.Logger) *agentMetrics {
	return &agentMetrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{Name: metricConnected,
			Help: "1 while the agent holds a stream to a controller, else 0."}),
		reconcile: prometheus.NewHistogram(prometheus.HistogramOpts{Name: metricReconcile, Buckets: reconcileBuckets,
			Help: "How long each reconcile pass took: render, read, plan, apply and, for a new revision, the controller's confirmation."}),
		driftRepairs: prometheus.NewCounter(prometheus.CounterOpts{Name: metricDriftRepairs,
			Help: "Reconcile passes that found the kernel changed under an unchanged configuration and repaired it."}),
		applyFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: metricApplyFailures,
			Help: "Reconcile passes that failed to bring the kernel to the desired configuration (render, read, plan or apply failed, or the plan was refused to keep the controller reachable), and desired configurations rejected as invalid."}),
		endpoints: prometheus.NewGauge(prometheus.GaugeOpts{Name: metricEndpoints,
			Help: "MPTCP endpoints the kernel holds, as the agent last read them back."}),
		revision: prometheus.NewGauge(prometheus.GaugeOpts{Name: metricRevision,
			Help: "The revision of the group's configuration applied (and confirmed); 0 when none is."}),
		paths:  map[string]pb.PathState{},
		health: &healthReader{sys: sys, log: log},
		syncDesc: prometheus.NewDesc(metricSyncState,
			"1 for the agent's current sync state, 0 for the others.", []string{"state"}, nil),
		pathDesc: prometheus.NewDesc(metricPathState,
			"1 for the current state of the interface's paths (the most severe of its managed addresses'), 0 for the others.", []string{"interface", "state"}, nil),
		connsDesc: prometheus.NewDesc(metricConnections,
			"MPTCP connections in the agent's network namespace (every state but LISTEN).", nil, nil),
		subflowsDesc: prometheus.NewDesc(metricSubflows,
			"Subflows of those connections, the initial ones included.", nil, nil),
		fallbacksDesc: prometheus.NewDesc(metricFallbacks,
			"Connections that fell back to plain TCP: the sum of the kernel's MPTcpExt fallback counters.", nil, nil),
		extDesc: prometheus.NewDesc(metricMPTcpExt,
			"The kernel's MPTcpExt counters that the health report carries, by name (nstat's MPTcpExt<counter>).", []string{"counter"}, nil),
	}
}

// register registers every metric in r.
func (m *agentMetrics) register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.connected, m.reconcile, m.driftRepairs, m.applyFailures, m.endpoints, m.revision, m} {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Describe implements prometheus.Collector for the metrics read at scrape
// time.
func (m *agentMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.syncDesc, m.pathDesc, m.connsDesc, m.subflowsDesc, m.fallbacksDesc, m.extDesc} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: the sync and path states as the
// loop left them, and MPTCP health as the kernel has it now (or as last
// read, when a fresh read takes too long).
func (m *agentMetrics) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	state := m.syncState
	paths := m.paths // replaced, never changed in place
	m.mu.Unlock()
	for _, s := range syncStates {
		ch <- prometheus.MustNewConstMetric(m.syncDesc, prometheus.GaugeValue, boolValue(s == state), syncStateLabel(s))
	}
	for _, ifname := range slices.Sorted(maps.Keys(paths)) {
		for _, s := range pathStateOrder {
			ch <- prometheus.MustNewConstMetric(m.pathDesc, prometheus.GaugeValue, boolValue(s == paths[ifname]), ifname, pathStateLabel(s))
		}
	}
	h := m.health.read()
	if h == nil {
		return // no reading yet, or a kernel without MPTCP
	}
	ch <- prometheus.MustNewConstMetric(m.connsDesc, prometheus.GaugeValue, float64(h.connections))
	ch <- prometheus.MustNewConstMetric(m.subflowsDesc, prometheus.GaugeValue, float64(h.subflows))
	ch <- prometheus.MustNewConstMetric(m.fallbacksDesc, prometheus.CounterValue, float64(h.counters.Fallbacks()))
	for _, name := range healthCounters {
		if v, ok := h.counters[name]; ok && !gaugeCounters[name] {
			ch <- prometheus.MustNewConstMetric(m.extDesc, prometheus.CounterValue, float64(v), name)
		}
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func syncStateLabel(s pb.SyncState) string {
	return strings.TrimPrefix(s.String(), "SYNC_STATE_")
}

func pathStateLabel(s pb.PathState) string {
	return strings.TrimPrefix(s.String(), "PATH_STATE_")
}

// setSyncState records the loop's sync state.
func (m *agentMetrics) setSyncState(s pb.SyncState) {
	m.mu.Lock()
	m.syncState = s
	m.mu.Unlock()
}

// setPaths records the judged paths: per interface, the most severe state
// of its paths.
func (m *agentMetrics) setPaths(ps []*pb.PathStatus) {
	byIf := map[string]pb.PathState{}
	for _, p := range ps {
		s := p.GetState()
		rank := slices.Index(pathStateOrder, s)
		if rank < 0 {
			continue
		}
		if cur, ok := byIf[p.GetInterface()]; !ok || rank < slices.Index(pathStateOrder, cur) {
			byIf[p.GetInterface()] = s
		}
	}
	m.mu.Lock()
	m.paths = byIf
	m.mu.Unlock()
}

// healthReader reads the kernel's MPTCP health for a scrape: one read at a
// time, reused for healthMaxAge, waited for at most healthWait (the scrape
// then gets the last reading, and the read goes on to refresh it). The
// loop's reports offer their readings too.
type healthReader struct {
	sys System
	log *slog.Logger

	mu     sync.Mutex
	last   *healthReading
	lastAt time.Time
	busy   chan struct{} // closed when the read under way ends; nil: none
}

// healthReading is what the metrics take of an MptcpHealth.
type healthReading struct {
	connections, subflows uint32
	counters              mptcp.Counters
}

func readingOf(h *pb.MptcpHealth) *healthReading {
	return &healthReading{connections: h.GetConnections(), subflows: h.GetSubflows(), counters: maps.Clone(h.GetCounters())}
}

func (r *healthReader) read() *healthReading {
	r.mu.Lock()
	if r.last != nil && time.Since(r.lastAt) < healthMaxAge {
		defer r.mu.Unlock()
		return r.last
	}
	done := r.busy
	if done == nil {
		done = make(chan struct{})
		r.busy = done
		go r.refresh(done)
	}
	r.mu.Unlock()
	t := time.NewTimer(healthWait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

func (r *healthReader) refresh(done chan struct{}) {
	defer close(done)
	ctx, cancel := context.WithTimeout(context.Background(), healthLimit)
	defer cancel()
	h, err := r.sys.Health(ctx)
	if err != nil {
		r.log.Debug("MPTCP health for the metrics", "err", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.busy = nil
	if err == nil {
		r.last, r.lastAt = readingOf(h), time.Now()
	}
}

// offer takes a reading made for a report.
func (r *healthReader) offer(h *pb.MptcpHealth) {
	if h == nil {
		return
	}
	rd := readingOf(h)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last, r.lastAt = rd, time.Now()
}
