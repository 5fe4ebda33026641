package controller_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/controller"
	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/metrics"
	"github.com/mpfleet/mpfleet/internal/nstest"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/prometheus/common/expfmt"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

// sample is one series of a scrape: its labels and value (a histogram's:
// its count of observations, and their sum).
type sample struct {
	labels map[string]string
	value  float64
	sum    float64
}

// scrape is a parsed /metrics: samples by metric family.
type scrape map[string][]sample

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// scrapeMetrics gets base/metrics and parses it.
func scrapeMetrics(t *testing.T, base string) scrape {
	t.Helper()
	code, body := httpGet(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	fams, err := new(expfmt.TextParser).TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	s := scrape{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			x := sample{labels: map[string]string{}}
			for _, l := range m.GetLabel() {
				x.labels[l.GetName()] = l.GetValue()
			}
			switch {
			case m.GetHistogram() != nil:
				x.value, x.sum = float64(m.GetHistogram().GetSampleCount()), m.GetHistogram().GetSampleSum()
			case m.GetCounter() != nil:
				x.value = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				x.value = m.GetGauge().GetValue()
			}
			s[name] = append(s[name], x)
		}
	}
	return s
}

// get returns the sample of name whose labels include labels ("k=v"
// pairs), failing the test unless there is exactly one.
func (s scrape) get(t *testing.T, name string, labels ...string) sample {
	t.Helper()
	var found []sample
	for _, x := range s[name] {
		ok := true
		for _, kv := range labels {
			k, v, _ := strings.Cut(kv, "=")
			if got, has := x.labels[k]; !has || got != v {
				ok = false
			}
		}
		if ok {
			found = append(found, x)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s%v: %d series, want 1 (all: %v)", name, labels, len(found), s[name])
	}
	return found[0]
}

// want checks the value of the one series of name with labels.
func (s scrape) want(t *testing.T, want float64, name string, labels ...string) {
	t.Helper()
	if got := s.get(t, name, labels...).value; got != want {
		t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}

// serveMetrics serves reg and ready like the program does, until the test
// ends, and returns its base URL.
func serveMetrics(t *testing.T, reg *metrics.Server) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- reg.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("metrics server: %v", err)
		}
	})
	return "http://" + reg.Addr().String()
}

// The controller's metrics, scraped over HTTP from a controller serving
// real agent streams: agents connected, hosts by group, state and health,
// the propagation of a change committed to a group and of one a rollout
// makes, the rollout's state and steps, the leader, etcd's requests and the
// gRPC calls.
func TestMetricsController(t *testing.T) {
	_, cli := etcdtest.Embedded(t)
	reg := metrics.NewRegistry("mpfleet-controller")
	guard := store.NewGuard(0)
	controller.ObserveEtcd(guard, reg)
	cli.KV = guard.KV(cli.KV)
	e := startOn(t, cli, controller.Options{Metrics: reg})
	srv, err := metrics.Listen(metrics.Options{Addr: "127.0.0.1:0", Gatherer: reg, Ready: e.ctl.Ready})
	if err != nil {
		t.Fatal(err)
	}
	base := serveMetrics(t, srv)
	ctx := ctxT(t)

	// web: a group with a rollout strategy and a host whose path is OK;
	// db: a group without one, and a host that reports no paths.
	g, _ := fleetOf(t, e, 1, healthyAt)
	dbGroup := webGroup()
	dbGroup.Selector.MatchLabels = map[string]string{"role": "db"}
	dbg, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "db", Group: dbGroup})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "empty", Group: &pb.Group{
		Selector: &pb.Selector{MatchLabels: map[string]string{"role": "none"}}, Policy: webGroup().Policy}}); err != nil {
		t.Fatal(err)
	}
	db := connectAgent(t, e.agents, "db-1", map[string]string{"role": "db"}, true)
	db.waitFor(t, "revision 1", managedAt("groups/db", 1))
	waitHost(t, e, "hosts/db-1", func(h *pb.Host) bool {
		return h.GetSyncState() == pb.SyncState_SYNC_STATE_IN_SYNC && h.GetAppliedRevision() == 1
	})

	// Both groups change: db's change goes to its host at once, web's in a
	// rollout (one step: its only host).
	dbg.Policy.Limits.Subflows = proto.Uint32(4)
	if _, err := e.groups.UpdateGroup(ctx, &pb.UpdateGroupRequest{Group: dbg, Reason: "more subflows"}); err != nil {
		t.Fatal(err)
	}
	g = changePolicy(t, e, g, 4)
	r := waitRollout(t, e, g.GetActiveRollout(), func(r *pb.Rollout) bool { return r.GetState() == pb.Rollout_STATE_SUCCEEDED })
	waitHost(t, e, "hosts/web-1", func(h *pb.Host) bool {
		return h.GetSyncState() == pb.SyncState_SYNC_STATE_IN_SYNC && h.GetAppliedRevision() == 2
	})
	waitHost(t, e, "hosts/db-1", func(h *pb.Host) bool {
		return h.GetSyncState() == pb.SyncState_SYNC_STATE_IN_SYNC && h.GetAppliedRevision() == 2
	})

	s := scrapeMetrics(t, base)
	s.want(t, 2, "mpfleet_controller_agents_connected")
	s.want(t, 1, "mpfleet_controller_leader")
	s.want(t, 1, "mpfleet_build_info", "program=mpfleet-controller")
	// Hosts: every group has every state and health, 0 or not.
	s.want(t, 1, "mpfleet_controller_hosts", "group=web", "state=IN_SYNC")
	s.want(t, 1, "mpfleet_controller_hosts", "group=db", "state=IN_SYNC")
	s.want(t, 0, "mpfleet_controller_hosts", "group=web", "state=FAILED")
	s.want(t, 0, "mpfleet_controller_hosts", "group=empty", "state=IN_SYNC")
	s.want(t, 0, "mpfleet_controller_hosts", "group=", "state=UNMANAGED")
	if n, want := len(s["mpfleet_controller_hosts"]), 4*len(pb.SyncState_name); n != want {
		t.Errorf("mpfleet_controller_hosts has %d series, want %d (4 groups with \"\", every state)", n, want)
	}
	s.want(t, 1, "mpfleet_controller_hosts_health", "group=web", "health=healthy")
	s.want(t, 1, "mpfleet_controller_hosts_health", "group=db", "health=unknown") // it reports no paths
	s.want(t, 0, "mpfleet_controller_hosts_health", "group=web", "health=degraded")
	s.want(t, 0, "mpfleet_controller_hosts_health", "group=empty", "health=healthy")
	// Propagation: db's revision 2 (from its commit) and web's (from the
	// rollout's move), once each.
	p := s.get(t, "mpfleet_controller_propagation_seconds")
	if p.value != 2 || p.sum <= 0 || p.sum > 30 {
		t.Errorf("propagation: %v observations, %vs in all; want 2, of some ms each", p.value, p.sum)
	}
	// Rollouts: web's latest succeeded, in its one step; db never had one.
	s.want(t, 1, "mpfleet_controller_rollout_state", "group=web", "state=SUCCEEDED")
	s.want(t, 0, "mpfleet_controller_rollout_state", "group=web", "state=RUNNING")
	s.want(t, float64(len(r.GetSteps())), "mpfleet_controller_rollout_steps", "group=web")
	s.want(t, float64(len(r.GetSteps())), "mpfleet_controller_rollout_step", "group=web")
	s.want(t, 0, "mpfleet_controller_rollout_state", "group=db", "state=SUCCEEDED")
	for _, x := range s["mpfleet_controller_rollout_step"] {
		if x.labels["group"] != "web" {
			t.Errorf("rollout_step of a group without a rollout: %v", x.labels)
		}
	}
	// etcd: the store's reads and transactions, timed.
	for _, op := range []string{"get", "txn"} {
		if x := s.get(t, "mpfleet_controller_etcd_request_duration_seconds", "op="+op); x.value == 0 {
			t.Errorf("no etcd %s request timed", op)
		}
		s.get(t, "mpfleet_controller_etcd_request_errors_total", "op="+op)
	}
	// gRPC: both updates, OK; a method never called is there at 0.
	s.want(t, 2, "grpc_server_handled_total", "grpc_service=mpfleet.v1.GroupService", "grpc_method=UpdateGroup", "grpc_code=OK")
	s.want(t, 0, "grpc_server_handled_total", "grpc_service=mpfleet.v1.GroupService", "grpc_method=DeleteGroup", "grpc_code=OK")
	if x := s.get(t, "grpc_server_handling_seconds", "grpc_service=mpfleet.v1.GroupService", "grpc_method=UpdateGroup"); x.value != 2 {
		t.Errorf("grpc_server_handling_seconds for UpdateGroup: %v observations, want 2", x.value)
	}
	// A refused call counts with its code.
	_, err = e.groups.GetGroup(ctx, &pb.GetGroupRequest{Name: "groups/nope"})
	wantCode(t, err, codes.NotFound)
	scrapeMetrics(t, base).want(t, 1, "grpc_server_handled_total", "grpc_service=mpfleet.v1.GroupService", "grpc_method=GetGroup", "grpc_code=NotFound")

	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := httpGet(t, base+path); code != http.StatusOK {
			t.Errorf("%s: %d %s", path, code, body)
		}
	}
}

// The program with --metrics-listen: /healthz and /readyz answer, /metrics
// has the controller's metrics; while its etcd is down /readyz says so
// (503) and the failed etcd requests are counted, and it is ready again
// when etcd is back.
func TestMetricsRunReadyEtcdDown(t *testing.T) {
	bin := etcdtest.Binary(t)
	if bin == "" {
		nstest.Skip(t, "no etcd server binary: run `make tools` (builds .tools/bin/etcd) or set MPFLEET_ETCD_BIN")
	}
	p := etcdtest.StartProc(t, bin, etcdtest.ProcOptions{})
	maddr := fmt.Sprintf("127.0.0.1:%d", etcdtest.FreePort(t))
	r := runController(t, "--etcd-endpoints", p.Endpoint(), "--audit-key-file", writeAuditKey(t, 1),
		"--etcd-request-timeout", "3s", "--metrics-listen", maddr)
	base := "http://" + maddr
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := httpGet(t, base+path); code != http.StatusOK {
			t.Fatalf("%s: %d %s", path, code, body)
		}
	}
	if code, _ := httpGet(t, base+"/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("/debug/pprof/ without --enable-pprof: %d, want 404", code)
	}
	s := scrapeMetrics(t, base)
	s.want(t, 0, "mpfleet_controller_agents_connected")
	s.want(t, 1, "mpfleet_build_info", "program=mpfleet-controller")
	if x := s.get(t, "grpc_server_handled_total", "grpc_service=grpc.health.v1.Health", "grpc_method=Check", "grpc_code=OK"); x.value == 0 {
		t.Errorf("the health checks that waited for the controller are not counted")
	}

	p.Kill()
	waitReadyz(t, base, http.StatusServiceUnavailable, "etcd is unreachable")
	if code, _ := httpGet(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz while etcd is down: %d, want 200 (the process runs)", code)
	}
	gc := pb.NewGroupServiceClient(r.conn)
	_, err := gc.GetGroup(ctxT(t), &pb.GetGroupRequest{Name: "groups/web"})
	wantCode(t, err, codes.Unavailable)
	if x := scrapeMetrics(t, base).get(t, "mpfleet_controller_etcd_request_errors_total", "op=get"); x.value == 0 {
		t.Errorf("a get that failed on an unreachable etcd is not counted")
	}

	p.Start()
	waitReadyz(t, base, http.StatusOK, "ok")
}

// waitReadyz polls /readyz until it answers code with a body containing
// want.
func waitReadyz(t *testing.T, base string, code int, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, body := httpGet(t, base+"/readyz")
		if got == code && strings.Contains(body, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz = %d %q, want %d %q", got, body, code, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A --metrics-listen that cannot be listened on fails the start, naming
// the flag.
func TestMetricsListenBadAddress(t *testing.T) {
	err := controller.Run(ctxT(t), []string{"--listen", "127.0.0.1:0", "--data-dir", t.TempDir(),
		"--audit-key-file", writeAuditKey(t, 1), "--metrics-listen", "127.0.0.1:notaport"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--metrics-listen") {
		t.Fatalf("Run = %v, want an error naming --metrics-listen", err)
	}
}
