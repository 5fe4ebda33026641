package controller

// The controller's Prometheus metrics (docs/operations.md, "Controller
// metrics"). What follows from the fleet's state — hosts by sync state and
// health, rollouts — is computed from the cache at each scrape, so it costs
// nothing between scrapes and every replica reports the same numbers (the
// cache is the store's); what happens on this replica — agent streams, the
// propagation to them, its gRPC calls and etcd requests, whether it leads —
// is its own.

import (
	"strings"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
)

// propagationBuckets fit a change that reaches its hosts in 10 ms to one
// that takes a minute.
var propagationBuckets = []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 20, 30, 60}

// controllerMetrics are the metrics the controller updates itself (the
// rest are collected at scrape time).
type controllerMetrics struct {
	grpc        *grpcprom.ServerMetrics
	propagation prometheus.Histogram
}

// newControllerMetrics registers the controller's metrics in reg.
func newControllerMetrics(c *Controller, reg prometheus.Registerer) *controllerMetrics {
	m := &controllerMetrics{
		grpc: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
			grpcprom.WithHistogramBuckets([]float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}))),
		propagation: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mpfleet_controller_propagation_seconds",
			Help:    "Time from the commit of a change that gives a connected host a new policy revision to the host's report that it holds the revision (IN_SYNC or DEGRADED), once per host and revision, on the replica serving the host.",
			Buckets: propagationBuckets,
		}),
	}
	reg.MustRegister(
		m.grpc,
		m.propagation,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "mpfleet_controller_agents_connected",
			Help: "Agent streams this replica holds.",
		}, func() float64 { return float64(c.hub.connected()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "mpfleet_controller_leader",
			Help: "1 on the replica elected leader (it runs rollouts and audit retention), 0 on the others.",
		}, func() float64 {
			if c.leading.Load() {
				return 1
			}
			return 0
		}),
		&fleetCollector{c: c},
	)
	return m
}

// interceptors returns the gRPC server's metric interceptors (none when
// metrics are off); they go first in the chain, so that they count every
// call with the code it ends with.
func (m *controllerMetrics) interceptors() ([]grpc.UnaryServerInterceptor, []grpc.StreamServerInterceptor) {
	if m == nil {
		return nil, nil
	}
	return []grpc.UnaryServerInterceptor{m.grpc.UnaryServerInterceptor()}, []grpc.StreamServerInterceptor{m.grpc.StreamServerInterceptor()}
}

// initialize sets the gRPC counters of every method of srv to 0.
func (m *controllerMetrics) initialize(srv *grpc.Server) {
	if m != nil {
		m.grpc.InitializeMetrics(srv)
	}
}

// connected counts the agent streams of the hub.
func (h *hub) connected() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.sessions)
}

// Host health, as mpfleet_controller_hosts_health says it.
const (
	healthHealthy   = "healthy"   // every managed path checked is OK, no problems
	healthDegraded  = "degraded"  // a problem, or a path not OK while another is
	healthUnhealthy = "unhealthy" // no managed path is OK
	healthUnknown   = "unknown"   // disconnected, or no path checked yet
)

var healthValues = []string{healthHealthy, healthDegraded, healthUnhealthy, healthUnknown}

// hostHealth is the health of a host as the API shows it (hostView).
func hostHealth(v *pb.Host) string {
	if !v.GetConnected() {
		return healthUnknown
	}
	good, bad := 0, 0
	for _, p := range v.GetHealth().GetPaths() {
		switch p.GetState() {
		case pb.PathState_PATH_STATE_OK, pb.PathState_PATH_STATE_UNPROBED:
			good++
		case pb.PathState_PATH_STATE_FAILED, pb.PathState_PATH_STATE_LINK_DOWN, pb.PathState_PATH_STATE_NO_GATEWAY:
			bad++
		}
	}
	switch {
	case bad > 0 && good == 0:
		return healthUnhealthy
	case bad > 0 || len(v.GetProblems()) > 0:
		return healthDegraded
	case good > 0:
		return healthHealthy
	}
	return healthUnknown
}

// syncStateName is the short name of a sync state: IN_SYNC for
// SYNC_STATE_IN_SYNC.
func syncStateName(s pb.SyncState) string { return strings.TrimPrefix(s.String(), "SYNC_STATE_") }

// rolloutStateName is the short name of a rollout state: RUNNING for
// STATE_RUNNING.
func rolloutStateName(s pb.Rollout_State) string { return strings.TrimPrefix(s.String(), "STATE_") }

var (
	hostsDesc = prometheus.NewDesc("mpfleet_controller_hosts",
		"Hosts by group and sync state, as the API shows them (group is empty for hosts in no group or in several); every replica reports the whole fleet: take max across replicas.",
		[]string{"group", "state"}, nil)
	hostsHealthDesc = prometheus.NewDesc("mpfleet_controller_hosts_health",
		"Hosts by group and health of their managed paths: healthy, degraded, unhealthy or unknown (disconnected, or nothing checked yet); every replica reports the whole fleet: take max across replicas.",
		[]string{"group", "health"}, nil)
	rolloutStateDesc = prometheus.NewDesc("mpfleet_controller_rollout_state",
		"1 for the state of the group's latest rollout, 0 for the other states (all 0: the group never had a rollout).",
		[]string{"group", "state"}, nil)
	rolloutStepDesc = prometheus.NewDesc("mpfleet_controller_rollout_step",
		"Index of the step in progress of the group's latest rollout (0 is the canary; equal to mpfleet_controller_rollout_steps once every step is done).",
		[]string{"group"}, nil)
	rolloutStepsDesc = prometheus.NewDesc("mpfleet_controller_rollout_steps",
		"Steps of the group's latest rollout (0 until it starts).",
		[]string{"group"}, nil)
)

// fleetCollector computes the fleet's gauges from the cache at scrape time.
type fleetCollector struct{ c *Controller }

func (f *fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{hostsDesc, hostsHealthDesc, rolloutStateDesc, rolloutStepDesc, rolloutStepsDesc} {
		ch <- d
	}
}

func (f *fleetCollector) Collect(ch chan<- prometheus.Metric) {
	cache := f.c.cache
	groups, hosts, sessions, targets := cache.Groups(), cache.Hosts(), cache.Sessions(), cache.Targets()
	type key struct{ group, value string }
	states, health := map[key]int{}, map[key]int{}
	// Every known group (and "": no group) has every series, 0 or not.
	ids := []string{""}
	for id := range groups {
		ids = append(ids, id)
	}
	for _, id := range ids {
		for n := range pb.SyncState_name {
			states[key{id, syncStateName(pb.SyncState(n))}] = 0
		}
		for _, h := range healthValues {
			health[key{id, h}] = 0
		}
	}
	for id, h := range hosts {
		v := hostView(h, sessions[id], groups, targets)
		g := strings.TrimPrefix(v.GetGroup(), "groups/")
		states[key{g, syncStateName(v.GetSyncState())}]++
		health[key{g, hostHealth(v)}]++
	}
	for k, n := range states {
		ch <- prometheus.MustNewConstMetric(hostsDesc, prometheus.GaugeValue, float64(n), k.group, k.value)
	}
	for k, n := range health {
		ch <- prometheus.MustNewConstMetric(hostsHealthDesc, prometheus.GaugeValue, float64(n), k.group, k.value)
	}

	// The latest rollout of each group: the newest, the first by name
	// among those created at once (as ListRollouts orders them).
	latest := map[string]*pb.Rollout{}
	for _, r := range cache.Rollouts() {
		id := strings.TrimPrefix(r.GetGroup(), "groups/")
		if l, ok := latest[id]; !ok || rolloutOrder(r, l) < 0 {
			latest[id] = r
		}
	}
	for id := range groups {
		r := latest[id]
		for n := range pb.Rollout_State_name {
			st := pb.Rollout_State(n)
			if st == pb.Rollout_STATE_UNSPECIFIED {
				continue
			}
			v := 0.0
			if r != nil && r.GetState() == st {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(rolloutStateDesc, prometheus.GaugeValue, v, id, rolloutStateName(st))
		}
		if r != nil {
			ch <- prometheus.MustNewConstMetric(rolloutStepDesc, prometheus.GaugeValue, float64(max(r.GetCurrentStep(), 0)), id)
			ch <- prometheus.MustNewConstMetric(rolloutStepsDesc, prometheus.GaugeValue, float64(len(r.GetSteps())), id)
		}
	}
}
