package controller

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestMetricsHostHealth(t *testing.T) {
	path := func(s pb.PathState) *pb.PathStatus { return &pb.PathStatus{Interface: "eth1", State: s} }
	for _, tc := range []struct {
		name string
		host *pb.Host
		want string
	}{
		{"disconnected", &pb.Host{Health: &pb.MptcpHealth{Paths: []*pb.PathStatus{path(pb.PathState_PATH_STATE_OK)}}}, healthUnknown},
		{"no paths", &pb.Host{Connected: true}, healthUnknown},
		{"not checked yet", &pb.Host{Connected: true, Health: &pb.MptcpHealth{Paths: []*pb.PathStatus{path(pb.PathState_PATH_STATE_UNSPECIFIED)}}}, healthUnknown},
		{"ok", &pb.Host{Connected: true, Health: &pb.MptcpHealth{Paths: []*pb.PathStatus{path(pb.PathState_PATH_STATE_OK), path(pb.PathState_PATH_STATE_UNPROBED)}}}, healthHealthy},
		{"one of two down", &pb.Host{Connected: true, Health: &pb.MptcpHealth{Paths: []*pb.PathStatus{path(pb.PathState_PATH_STATE_OK), path(pb.PathState_PATH_STATE_LINK_DOWN)}}}, healthDegraded},
		{"a problem", &pb.Host{Connected: true, Problems: []*pb.HostProblem{{Code: pb.HostProblem_CODE_SYSCTL_UNSUPPORTED}},
			Health: &pb.MptcpHealth{Paths: []*pb.PathStatus{path(pb.PathState_PATH_STATE_OK)}}}, healthDegraded},
		{"all down", &pb.Host{Connected: true, Health: &pb.MptcpHealth{Paths: []*pb.PathStatus{path(pb.PathState_PATH_STATE_FAILED), path(pb.PathState_PATH_STATE_NO_GATEWAY)}}}, healthUnhealthy},
	} {
		if got := hostHealth(tc.host); got != tc.want {
			t.Errorf("%s: hostHealth = %s, want %s", tc.name, got, tc.want)
		}
	}
}

// Ready names what keeps the controller from being ready: a cache not yet
// loaded, etcd unreachable, a drain.
func TestReadyReasons(t *testing.T) {
	_, cli := etcdtest.Embedded(t)
	st := store.New(cli, "/mpfleet/v1/")
	cache := store.NewCache(st, nil)
	c := New(st, cache, Options{})
	if err := c.Ready(); err == nil || !strings.Contains(err.Error(), "cache") {
		t.Errorf("Ready before the cache loaded = %v, want it to name the cache", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = cache.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if err := cache.WaitRevision(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := c.Ready(); err != nil {
		t.Errorf("Ready = %v, want nil", err)
	}
	c.sh.unanswered(time.Now(), errors.New("connection refused"), true)
	if err := c.Ready(); err == nil || !strings.Contains(err.Error(), "etcd is unreachable") {
		t.Errorf("Ready while etcd is unreachable = %v", err)
	}
	c.sh.answered(nil)
	if err := c.Ready(); err != nil {
		t.Errorf("Ready once etcd answers again = %v, want nil", err)
	}
	c.hub.closeAll()
	if err := c.Ready(); err == nil || !strings.Contains(err.Error(), "draining") {
		t.Errorf("Ready while draining = %v", err)
	}
}

// propagation returns the count and sum of the propagation histogram.
func propagation(t *testing.T, reg *prometheus.Registry) (uint64, float64) {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == "mpfleet_controller_propagation_seconds" {
			h := f.GetMetric()[0].GetHistogram()
			return h.GetSampleCount(), h.GetSampleSum()
		}
	}
	t.Fatal("no mpfleet_controller_propagation_seconds")
	return 0, 0
}

// Propagation is timed from the store's commit of a policy revision, or
// from the moment a change without a commit time (host targets) is seen;
// once per host and revision; not for a host that already holds the
// revision.
func TestMetricsPropagationStart(t *testing.T) {
	_, cli := etcdtest.Embedded(t)
	st := store.New(cli, "/mpfleet/v1/")
	reg := prometheus.NewRegistry()
	c := New(st, store.NewCache(st, nil), Options{Metrics: reg})
	h := c.hub
	s := &session{id: "h1", labels: map[string]string{"role": "web"}, status: &pb.Host{}}
	other := &session{id: "h2", labels: map[string]string{"role": "web"}, status: &pb.Host{AppliedRevision: 1}}
	h.sessions[s.id], h.sessions[other.id] = s, other
	committed := time.Now().Add(-5 * time.Second)
	g := &pb.Group{Name: "groups/web", Selector: &pb.Selector{MatchLabels: map[string]string{"role": "web"}},
		Policy: &pb.MultipathPolicy{}, PolicyRevision: 1, UpdateTime: timestamppb.New(committed)}
	change := func(ev store.Event) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.noteCommitLocked(ev)
		if ev.Group != nil {
			h.groups[ev.GroupID] = ev.Group
		}
		if ev.Targets != nil {
			h.targets[ev.TargetsGroup] = ev.Targets
		}
		h.reassignLocked()
	}
	change(store.Event{GroupID: "web", Group: g})
	inSync := func(rev int64) *pb.Host {
		return &pb.Host{SyncState: pb.SyncState_SYNC_STATE_IN_SYNC, AppliedRevision: rev}
	}
	h.observePropagation(s, &pb.Host{SyncState: pb.SyncState_SYNC_STATE_APPLYING, AppliedRevision: 1})
	if n, _ := propagation(t, reg); n != 0 {
		t.Fatalf("observed %d while the host applies", n)
	}
	h.observePropagation(s, inSync(1))
	h.observePropagation(s, inSync(1))     // once per host and revision
	h.observePropagation(other, inSync(1)) // it held revision 1 already
	n, sum := propagation(t, reg)
	if n != 1 || sum < 5 || sum > 60 {
		t.Fatalf("after revision 1: %d observations, %.3fs; want 1 of the 5s since the commit", n, sum)
	}

	// A rollout moves h1 to revision 2: no commit time, timed from now.
	g2 := &pb.Group{Name: g.Name, Selector: g.Selector, Policy: g.Policy, PolicyRevision: 2, UpdateTime: timestamppb.Now()}
	change(store.Event{GroupID: "web", Group: g2, TargetsGroup: "web", Targets: &pb.HostTargets{DefaultRevision: 1,
		Policies: map[int64]*pb.MultipathPolicy{1: g.Policy, 2: g.Policy}}})
	if s.propRev != 0 {
		t.Fatalf("h1 waits for revision %d, while its target stays 1", s.propRev)
	}
	change(store.Event{TargetsGroup: "web", Targets: &pb.HostTargets{DefaultRevision: 1, HostRevisions: map[string]int64{"h1": 2},
		Policies: map[int64]*pb.MultipathPolicy{1: g.Policy, 2: g.Policy}}})
	h.observePropagation(s, inSync(2))
	n, sum2 := propagation(t, reg)
	if n != 2 || sum2-sum > 1 {
		t.Fatalf("after the move: %d observations, the last %.3fs; want 2, the last from the move", n, sum2-sum)
	}
}
