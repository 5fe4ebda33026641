package deploy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/nstest"
	"github.com/mpfleet/mpfleet/test/fleettest"
	"github.com/mpfleet/mpfleet/test/lab"
	"github.com/prometheus/common/expfmt"
)

// Metrics ports of the packaged configs (deploy/config).
const (
	controllerMetricsPort = 7401
	agentMetricsPort      = 7402
)

// testObservability runs the built programs (bin) as a fleet in the network
// lab with --metrics-listen, takes the fleet through an apply and a
// rollout, scrapes the controller and an agent over HTTP, and checks that
// every metric the Grafana dashboard and the alert rules read is exported,
// and that /healthz and /readyz answer 200.
func testObservability(t *testing.T, root, bin string) {
	nstest.RequireRoot(t)
	uses := observabilityMetrics(t)

	l := lab.New(t, lab.Config{})
	dir := t.TempDir()
	ctlMetrics := netip.AddrPortFrom(l.ControllerAddr(), controllerMetricsPort).String()
	agentMetrics := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), agentMetricsPort).String()
	f, err := fleettest.New(l, fleettest.Config{
		Bin: bin, Dir: dir, Name: "observability", WorkDir: root,
		ControllerFlags: []string{"--metrics-listen", ctlMetrics},
		AgentFlags:      []string{"--metrics-listen", agentMetrics},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := f.StartController(ctx); err != nil {
		t.Fatalf("%v\n%s", err, f.LogTails(20))
	}
	if out, err := f.Ctl(ctx, "apply", "-f", "deploy/examples/lab-two-links.yaml", "--reason", "deploy: observability"); err != nil {
		t.Fatalf("mpfleetctl apply: %v\n%s", err, out)
	}
	hosts := []lab.Host{lab.Client, lab.Server}
	for _, h := range hosts {
		if err := f.StartAgent(h); err != nil {
			t.Fatal(err)
		}
	}
	revs, err := f.Revisions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.WaitHosts(ctx, time.Minute, hosts, fleettest.InSync(revs)); err != nil {
		t.Fatalf("%v\n%s", err, f.LogTails(30))
	}
	// A second revision, and a rollout back to the first, so that the
	// rollout metrics have a group to speak of.
	if out, err := f.Ctl(ctx, "apply", "-f", "deploy/examples/lab-one-link.yaml", "--reason", "deploy: observability"); err != nil {
		t.Fatalf("mpfleetctl apply: %v\n%s", err, out)
	}
	if out, err := f.Ctl(ctx, "rollback", "lab-clients", "--to", "1", "--canary", "100%", "--reason", "deploy: observability"); err != nil {
		t.Fatalf("mpfleetctl rollback: %v\n%s", err, out)
	}

	// Every metric read must be exported, by the controller or the agent;
	// some appear only once the programs have seen the fleet.
	err = fleettest.Eventually(ctx, time.Minute, func() error {
		exported := map[string]bool{}
		for _, target := range []struct {
			h    lab.Host
			addr string
		}{{lab.Controller, ctlMetrics}, {lab.Client, agentMetrics}} {
			c := nsClient(l, target.h)
			for _, probe := range []string{"/healthz", "/readyz"} {
				if _, err := httpGet(ctx, c, "http://"+target.addr+probe); err != nil {
					return fmt.Errorf("%s: %w", target.h, err)
				}
			}
			body, err := httpGet(ctx, c, "http://"+target.addr+"/metrics")
			if err != nil {
				return fmt.Errorf("%s: %w", target.h, err)
			}
			fams, err := new(expfmt.TextParser).TextToMetricFamilies(strings.NewReader(body))
			if err != nil {
				return fleettest.Stop(fmt.Errorf("%s: /metrics does not parse: %w", target.h, err))
			}
			for name, fam := range fams {
				if len(fam.GetMetric()) > 0 {
					exported[name] = true
				}
			}
		}
		var missing []string
		for name, where := range uses {
			if !exported[name] {
				missing = append(missing, fmt.Sprintf("%s (read by %s)", name, strings.Join(where, "; ")))
			}
		}
		sort.Strings(missing)
		if len(missing) > 0 {
			return fmt.Errorf("not exported by the controller or the agent:\n  %s", strings.Join(missing, "\n  "))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, f.LogTails(20))
	}
	if err := f.Exited(); err != nil {
		t.Error(err)
	}
}

// nsClient is an HTTP client whose connections are made in h's network
// namespace.
func nsClient(l *lab.Lab, h lab.Host) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := l.Do(h, func() error {
				var err error
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}
}

// httpGet returns the body of a 200 answer to GET url.
func httpGet(ctx context.Context, c *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(b)))
	}
	return string(b), nil
}
