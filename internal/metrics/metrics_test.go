package metrics_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/mpfleet/mpfleet/internal/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/spf13/pflag"
)

func get(t *testing.T, url string) (int, string) {
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

func TestServer(t *testing.T) {
	reg := metrics.NewRegistry("mpfleet-test")
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "mpfleet_test_things_total", Help: "Things."})
	reg.MustRegister(c)
	c.Add(3)
	var notReady atomic.Pointer[error]
	srv, err := metrics.Listen(metrics.Options{Addr: "127.0.0.1:0", Gatherer: reg, Ready: func() error {
		if e := notReady.Load(); e != nil {
			return *e
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	base := "http://" + srv.Addr().String()

	code, body := get(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	fams, err := new(expfmt.TextParser).TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	if f := fams["mpfleet_test_things_total"]; f == nil || f.GetMetric()[0].GetCounter().GetValue() != 3 {
		t.Errorf("mpfleet_test_things_total = %v, want 3", f)
	}
	for _, name := range []string{"mpfleet_build_info", "go_goroutines", "process_resident_memory_bytes"} {
		if fams[name] == nil {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if code, _ := get(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d", code)
	}
	if code, _ := get(t, base+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz when ready: %d", code)
	}
	e := errors.New("etcd unreachable")
	notReady.Store(&e)
	if code, body := get(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "etcd unreachable") {
		t.Errorf("/readyz when not ready: %d %q, want 503 naming the reason", code, body)
	}
	if code, _ := get(t, base+"/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("/debug/pprof/ without Pprof: %d, want 404", code)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

func TestPprof(t *testing.T) {
	srv, err := metrics.Listen(metrics.Options{Addr: "127.0.0.1:0", Gatherer: prometheus.NewRegistry(), Pprof: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() { _ = srv.Serve(ctx) }()
	if code, body := get(t, "http://"+srv.Addr().String()+"/debug/pprof/goroutine?debug=1"); code != http.StatusOK || !strings.Contains(body, "goroutine profile") {
		t.Errorf("/debug/pprof/goroutine: %d %.80q", code, body)
	}
}

func TestListenBadAddress(t *testing.T) {
	if _, err := metrics.Listen(metrics.Options{Addr: "127.0.0.1:notaport", Gatherer: prometheus.NewRegistry()}); err == nil || !strings.Contains(err.Error(), "--metrics-listen") {
		t.Errorf("Listen(bad address) = %v, want an error naming --metrics-listen", err)
	}
}

func TestFlags(t *testing.T) {
	var f metrics.Flags
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	f.Register(fs)
	if err := fs.Parse([]string{"--enable-pprof"}); err != nil {
		t.Fatal(err)
	}
	if err := f.Check(); err == nil || !strings.Contains(err.Error(), "--metrics-listen") {
		t.Errorf("--enable-pprof alone: %v, want an error naming --metrics-listen", err)
	}
	if err := fs.Parse([]string{"--metrics-listen", ":7401"}); err != nil {
		t.Fatal(err)
	}
	if err := f.Check(); err != nil || f.Listen != ":7401" || !f.Pprof {
		t.Errorf("flags %+v, check %v", f, err)
	}
}
