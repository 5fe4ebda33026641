package agent

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/prometheus/client_golang/prometheus"
)

// TestIntegrationMetrics runs the agent on a real namespace (newLab: veth0
// and veth1, each with an IPv4 and an IPv6 path) with an MPTCP connection
// inside it, and scrapes /metrics over HTTP: the endpoints and MPTcpExt
// counters are the kernel's, read back the same way by the test.
func TestIntegrationMetrics(t *testing.T) {
	l := newLab(t, 2)
	ctrl := newController(t, false)
	ctrl.setDesired(managed(1, labPolicy()))
	reg := prometheus.NewRegistry()
	a := startAgent(t, l.ns, ctrl, func(o *Options) { o.Metrics = reg })
	base := metricsServer(t, reg, a.Ready)
	ctrl.waitReport(t, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	waitUntilTB(t, "/readyz 200", func() bool { code, _ := httpGet(t, base+"/readyz"); return code == http.StatusOK })

	// An MPTCP connection inside the namespace, from veth1's address to
	// veth0's: both of its ends are the namespace's.
	var ln net.Listener
	if err := l.ns.Do(func() error {
		var lc net.ListenConfig
		lc.SetMultipathTCP(true)
		var err error
		ln, err = lc.Listen(context.Background(), "tcp4", l.links[0].v4.Addr().String()+":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
		_, _ = io.Copy(io.Discard, c)
	}()
	var conn net.Conn
	if err := l.ns.Do(func() error {
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: l.links[1].v4.Addr().AsSlice()}}
		d.SetMultipathTCP(true)
		var err error
		conn, err = d.Dial("tcp4", ln.Addr().String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	if mp, err := conn.(*net.TCPConn).MultipathTCP(); err != nil || !mp {
		t.Fatalf("not an MPTCP connection: %v %v", mp, err)
	}
	srvConn, ok := <-accepted
	if !ok {
		t.Fatal("the listener accepted nothing")
	}
	t.Cleanup(func() { _ = srvConn.Close() })

	// The kernel's view, read by the test: endpoints and counters.
	eps, err := l.mp.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	var ctrs mptcp.Counters
	if err := l.ns.Do(func() error {
		var err error
		ctrs, err = mptcp.ReadCounters()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if ctrs.MPCapableSYNTX() < 1 || ctrs.MPCapableSYNRX() < 1 {
		t.Fatalf("the kernel counted no MP_CAPABLE handshake: %v", ctrs)
	}

	// Scrape until a reading after the connection (a scrape may reuse one
	// up to a second old) shows it.
	var got map[string]float64
	waitUntilTB(t, "a scrape that shows the connection", func() bool {
		got = scrape(t, base)
		return got["mpfleet_agent_mptcp_connections"] >= 2
	})
	wantMetrics(t, got, merge(syncStateWant("IN_SYNC"), map[string]float64{
		"mpfleet_agent_connected":                                1,
		"mpfleet_agent_config_revision":                          1,
		"mpfleet_agent_endpoints":                                float64(len(eps)),
		"mpfleet_agent_apply_failures_total":                     0,
		"mpfleet_agent_mptcp_connections":                        2, // the client's end and the server's
		pathStateKey("veth0", "UNPROBED"):                        1, // labPolicy has no probes
		pathStateKey("veth0", "OK"):                              0,
		pathStateKey("veth1", "UNPROBED"):                        1,
		pathStateKey("veth1", "LINK_DOWN"):                       0,
		`mpfleet_agent_mptcpext_total{counter="MPCapableSYNTX"}`: float64(ctrs.MPCapableSYNTX()),
		`mpfleet_agent_mptcpext_total{counter="MPCapableSYNRX"}`: float64(ctrs.MPCapableSYNRX()),
		"mpfleet_agent_mptcp_fallbacks_total":                    float64(ctrs.Fallbacks()),
	}))
	if len(eps) != 4 {
		t.Errorf("the kernel holds %d endpoints, want labPolicy's 4", len(eps))
	}
	if got["mpfleet_agent_mptcp_subflows"] < 2 {
		t.Errorf("mpfleet_agent_mptcp_subflows = %v, want at least the 2 initial subflows", got["mpfleet_agent_mptcp_subflows"])
	}
	if got["mpfleet_agent_reconcile_duration_seconds_count"] < 1 {
		t.Error("no reconcile pass measured")
	}
	if _, ok := got[`mpfleet_agent_mptcpext_total{counter="MPCurrEstab"}`]; ok {
		t.Error("MPCurrEstab, a gauge, is exported as a counter")
	}
	for _, name := range []string{"veth0p", "veth1p", "lo"} {
		if _, ok := got[pathStateKey(name, "UNPROBED")]; ok {
			t.Errorf("%s, which the policy does not manage, has a path state", name)
		}
	}
}

// TestRunServesMetrics runs the agent program with --metrics-listen (and
// --dry-run, with no configuration to apply, so that it changes nothing):
// /healthz answers, /metrics carries the build and the agent's metrics,
// and /readyz follows the stream to the controller.
func TestRunServesMetrics(t *testing.T) {
	ctrl := newController(t, false)
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := free.Addr().String()
	if err := free.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, []string{"--host-id", "metrics-1", "--controller", ctrl.addr, "--state-dir", t.TempDir(),
			"--dry-run", "--metrics-listen", addr, "--enable-pprof"}, io.Discard, io.Discard)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	base := "http://" + addr
	waitUntilTB(t, "/healthz", func() bool {
		resp, err := noKeepAlive.Get(base + "/healthz")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	waitUntilTB(t, "/readyz 200", func() bool { code, _ := httpGet(t, base+"/readyz"); return code == http.StatusOK })
	got := scrape(t, base)
	wantMetrics(t, got, map[string]float64{
		"mpfleet_agent_connected":           1,
		"mpfleet_agent_config_revision":     0,
		"mpfleet_agent_drift_repairs_total": 0,
	})
	found := false
	for k := range got {
		found = found || strings.HasPrefix(k, "mpfleet_build_info{") && strings.Contains(k, `program="mpfleet-agent"`)
	}
	if !found {
		t.Error("no mpfleet_build_info{program=\"mpfleet-agent\"}")
	}
	if code, _ := httpGet(t, base+"/debug/pprof/cmdline"); code != http.StatusOK {
		t.Errorf("--enable-pprof: /debug/pprof/cmdline %d", code)
	}
	ctrl.stop()
	var body string
	waitUntilTB(t, "/readyz 503", func() bool {
		var code int
		code, body = httpGet(t, base+"/readyz")
		return code == http.StatusServiceUnavailable
	})
	if want := "not ready: no stream to a controller\n"; body != want {
		t.Errorf("/readyz says %q, want %q", body, want)
	}
}
