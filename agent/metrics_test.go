package agent

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/mpfleet/mpfleet/internal/metrics"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// metricValues flattens metric families to name{label="value",...} →
// value (counters, gauges; a histogram's count as name_count).
func metricValues(fams []*dto.MetricFamily) map[string]float64 {
	out := map[string]float64{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			slices.Sort(ls)
			key := f.GetName()
			if len(ls) > 0 {
				key += "{" + strings.Join(ls, ",") + "}"
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[f.GetName()+"_count"] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// gather returns reg's metrics, flattened.
func gather(t testing.TB, reg prometheus.Gatherer) map[string]float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	return metricValues(fams)
}

// metricsServer serves reg and ready as Run does, on 127.0.0.1, until the
// test ends; it returns the base URL.
func metricsServer(t testing.TB, reg prometheus.Gatherer, ready func() error) string {
	t.Helper()
	srv, err := metrics.Listen(metrics.Options{Addr: "127.0.0.1:0", Gatherer: reg, Ready: ready})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("metrics server: %v", err)
		}
	})
	return "http://" + srv.Addr().String()
}

// noKeepAlive leaves no idle connection behind (goleak).
var noKeepAlive = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

func httpGet(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := noKeepAlive.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// scrape fetches base/metrics over HTTP and flattens it.
func scrape(t testing.TB, base string) map[string]float64 {
	t.Helper()
	code, body := httpGet(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	fams, err := new(expfmt.TextParser).TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	var list []*dto.MetricFamily
	for _, f := range fams {
		list = append(list, f)
	}
	return metricValues(list)
}

// wantMetrics checks the values of got that want names.
func wantMetrics(t testing.TB, got map[string]float64, want map[string]float64) {
	t.Helper()
	for _, k := range slices.Sorted(maps.Keys(want)) {
		v, ok := got[k]
		switch {
		case !ok:
			t.Errorf("%s missing", k)
		case v != want[k]:
			t.Errorf("%s = %v, want %v", k, v, want[k])
		}
	}
}

// syncStateWant is mpfleet_agent_sync_state with 1 for s only.
func syncStateWant(s string) map[string]float64 {
	out := map[string]float64{}
	for _, st := range syncStates {
		out[fmt.Sprintf("mpfleet_agent_sync_state{state=%q}", syncStateLabel(st))] = boolValue(syncStateLabel(st) == s)
	}
	return out
}

func pathStateKey(ifname, state string) string {
	return fmt.Sprintf("mpfleet_agent_path_state{interface=%q,state=%q}", ifname, state)
}

func merge(ms ...map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

// waitReady waits for /readyz to answer code with a body containing each
// of want.
func waitReady(t *testing.T, base string, code int, want ...string) {
	t.Helper()
	var gotCode int
	var body string
	waitUntil(t, fmt.Sprintf("/readyz %d %q", code, want), func() bool {
		gotCode, body = httpGet(t, base+"/readyz")
		if gotCode != code {
			return false
		}
		for _, w := range want {
			if !strings.Contains(body, w) {
				return false
			}
		}
		return true
	})
	if strings.Count(strings.TrimSpace(body), "\n") != 0 {
		t.Errorf("/readyz says more than one line: %q", body)
	}
}

// TestAgentMetrics drives an agent on the fake kernel through an apply, a
// drift repair, an apply failure, a link going down and a lost stream, and
// checks its metrics (gathered from the registry) and /readyz (over HTTP)
// after each.
func TestAgentMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := newHarness(t, func(h *harness) { h.opts.Metrics = reg })
	p := testPolicy()
	h.ctrl.setDesired(managed(1, p))
	h.start()
	base := metricsServer(t, reg, h.agent.Ready)
	h.ctrl.waitReport(t, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	waitReady(t, base, http.StatusOK, "ok")
	eps := len(h.k.Snapshot().Endpoints)
	if eps == 0 {
		t.Fatal("the policy made no endpoints")
	}
	got := gather(t, reg)
	wantMetrics(t, got, merge(syncStateWant("IN_SYNC"), map[string]float64{
		"mpfleet_agent_connected":                                1,
		"mpfleet_agent_config_revision":                          1,
		"mpfleet_agent_endpoints":                                float64(eps),
		"mpfleet_agent_drift_repairs_total":                      0,
		"mpfleet_agent_apply_failures_total":                     0,
		pathStateKey("eth0", "UNPROBED"):                         1, // testPolicy has no probes
		pathStateKey("eth0", "OK"):                               0,
		pathStateKey("eth1", "UNPROBED"):                         1,
		pathStateKey("eth1", "LINK_DOWN"):                        0,
		"mpfleet_agent_mptcp_connections":                        1, // fakeSystem's health
		"mpfleet_agent_mptcp_subflows":                           2,
		"mpfleet_agent_mptcp_fallbacks_total":                    0,
		`mpfleet_agent_mptcpext_total{counter="MPCapableSYNTX"}`: 1,
	}))
	passes := got["mpfleet_agent_reconcile_duration_seconds_count"]
	if passes < 1 {
		t.Errorf("reconcile passes measured: %v, want at least 1", passes)
	}
	if _, ok := got[pathStateKey("lo", "OK")]; ok {
		t.Error("lo, which the policy does not manage, has a path state")
	}

	// Drift: `ip mptcp endpoint flush`, found and repaired.
	_, _, ne := h.ctrl.counts()
	for _, e := range h.k.Snapshot().Endpoints {
		if _, err := h.k.Do(context.Background(), reconcile.Op{Kind: reconcile.DelEndpoint, Endpoint: &e}); err != nil {
			t.Fatal(err)
		}
	}
	ps := h.reconcileNow()
	h.ctrl.waitEvent(t, ne, pb.AgentEvent_KIND_DRIFT_REPAIRED)
	got = gather(t, reg)
	wantMetrics(t, got, merge(syncStateWant("IN_SYNC"), map[string]float64{
		"mpfleet_agent_drift_repairs_total":  1,
		"mpfleet_agent_apply_failures_total": 0,
		"mpfleet_agent_endpoints":            float64(eps),
	}))
	if n := got["mpfleet_agent_reconcile_duration_seconds_count"]; n < passes+float64(len(ps)) {
		t.Errorf("reconcile passes measured: %v, want at least %v", n, passes+float64(len(ps)))
	}

	// An apply that fails: the repair of a second drift. The host is FAILED
	// and not ready, and says why.
	h.k.FailOn(func(_ int, op reconcile.Op) error {
		if op.Kind == reconcile.AddEndpoint && op.Endpoint.Addr == netip.MustParseAddr("198.18.1.2") {
			return errInjected
		}
		return nil
	})
	for _, e := range h.k.Snapshot().Endpoints {
		if _, err := h.k.Do(context.Background(), reconcile.Op{Kind: reconcile.DelEndpoint, Endpoint: &e}); err != nil {
			t.Fatal(err)
		}
	}
	_, _, ne = h.ctrl.counts()
	h.reconcileNow()
	h.ctrl.waitEvent(t, ne, pb.AgentEvent_KIND_APPLY_FAILED)
	got = gather(t, reg)
	wantMetrics(t, got, merge(syncStateWant("FAILED"), map[string]float64{
		"mpfleet_agent_drift_repairs_total": 1,
		"mpfleet_agent_endpoints":           0, // as read before the apply, which was rolled back
		"mpfleet_agent_config_revision":     1,
	}))
	if n := got["mpfleet_agent_apply_failures_total"]; n < 1 {
		t.Errorf("mpfleet_agent_apply_failures_total = %v after a failed apply", n)
	}
	waitReady(t, base, http.StatusServiceUnavailable, "the last reconcile pass failed", "injected failure")
	if _, body := httpGet(t, base+"/readyz"); strings.Contains(body, "stream") {
		t.Errorf("/readyz blames the stream, which is up: %q", body)
	}
	// Repaired at the next pass: ready again.
	h.k.FailOn(nil)
	_, nr, _ := h.ctrl.counts()
	h.reconcileNow()
	h.ctrl.waitReport(t, nr, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	waitReady(t, base, http.StatusOK, "ok")
	wantMetrics(t, gather(t, reg), map[string]float64{
		"mpfleet_agent_drift_repairs_total": 2,
		"mpfleet_agent_endpoints":           float64(eps),
	})

	// eth1 goes down: its path is LINK_DOWN, eth0's unchanged.
	ifs := hostIfaces()
	ifs[2].Up = false
	h.sys.setInterfaces(ifs, Change{Link: 3, Down: true})
	h.reconcileNow()
	wantMetrics(t, gather(t, reg), merge(syncStateWant("DEGRADED"), map[string]float64{
		pathStateKey("eth1", "LINK_DOWN"): 1,
		pathStateKey("eth1", "UNPROBED"):  0,
		pathStateKey("eth0", "UNPROBED"):  1,
	}))

	// The stream drops (the controller goes away): not ready, not
	// connected; the kernel stays as it is.
	h.ctrl.stop()
	waitReady(t, base, http.StatusServiceUnavailable, "no stream to a controller")
	wantMetrics(t, gather(t, reg), map[string]float64{"mpfleet_agent_connected": 0, "mpfleet_agent_config_revision": 1})
}

// TestAgentMetricsRegisterOnce: a registry that already holds the agent's
// metrics refuses a second agent, and New says so.
func TestAgentMetricsRegisterOnce(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := newHarness(t, func(h *harness) { h.opts.Metrics = reg })
	if _, err := New(h.opts); err != nil {
		t.Fatal(err)
	}
	if _, err := New(h.opts); err == nil || !strings.Contains(err.Error(), "metrics") {
		t.Fatalf("a second agent on the same registry: %v", err)
	}
}

// TestReadyBeforeDesired: an agent without a state to restore is ready once
// connected, before any desired configuration; one whose state dir cannot
// be read is not, and says so.
func TestReadyBeforeDesired(t *testing.T) {
	t.Run("nothing to restore", func(t *testing.T) {
		h := newHarness(t)
		h.start()
		waitUntil(t, "a hello", func() bool { n, _, _ := h.ctrl.counts(); return n == 1 })
		waitUntil(t, "ready", func() bool { return h.agent.Ready() == nil })
	})
	t.Run("unreadable state", func(t *testing.T) {
		h := newHarness(t)
		if err := writeFile(h.opts.StateDir+"/"+stateFile, "{not json"); err != nil {
			t.Fatal(err)
		}
		h.start()
		waitUntil(t, "a hello", func() bool { n, _, _ := h.ctrl.counts(); return n == 1 })
		waitUntil(t, "the stream", h.agent.streamUp.Load)
		err := h.agent.Ready()
		if err == nil || !strings.Contains(err.Error(), "the last reconcile pass failed: state ") || strings.Contains(err.Error(), "stream") {
			t.Fatalf("Ready() = %v, want the state dir's failure alone", err)
		}
		// The controller's configuration, applied, makes it ready.
		h.ctrl.setDesired(managed(1, testPolicy()))
		waitUntil(t, "ready", func() bool { return h.agent.Ready() == nil })
	})
}
