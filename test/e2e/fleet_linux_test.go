package e2e

import (
	"bufio"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/mpfleet/mpfleet/test/fleettest"
	"github.com/mpfleet/mpfleet/test/lab"
)

// Agent timings of the lab: short, so that the tests are quick.
const (
	resyncInterval = time.Second
	reportInterval = time.Second
)

var (
	// roles are the labels of the lab's hosts, as
	// deploy/examples/lab-*.yaml select them.
	roles = fleettest.Roles
	// groupOf is the group of deploy/examples/lab-*.yaml that selects each
	// host.
	groupOf = fleettest.Groups
)

// fleet is a lab running the real programs for one test (a
// fleettest.Fleet): a controller in the ctl namespace on embedded etcd,
// agents in the client and server namespaces, all over mutual TLS, and
// mpfleetctl with TLS and a bearer token. Its lower-case methods fail the
// test on error.
type fleet struct {
	*fleettest.Fleet
	t *testing.T
}

// fleetConfig is what fleetOptions change; the zero value is the IPv4-only
// lab with default agents.
type fleetConfig struct {
	lab       lab.Config
	agentArgs map[lab.Host][]string
}

// fleetOption changes how newFleet and newBareFleet build a fleet.
type fleetOption func(*fleetConfig)

// dualStack builds a dual-stack lab (lab.Config.IPv6): every interface has
// its 2001:db8::/32 address too, and eth1 the IPv6 default route.
func dualStack() fleetOption { return func(c *fleetConfig) { c.lab.IPv6 = true } }

// fleetHosts adds n hosts to the lab (lab.Config.Hosts: h1..hn), each with
// an agent certificate and the label role=mptcp-fleet; the test starts their
// agents.
func fleetHosts(n int) fleetOption { return func(c *fleetConfig) { c.lab.Hosts = n } }

// agentFlags gives the agent of h extra flags on every start.
func agentFlags(h lab.Host, args ...string) fleetOption {
	return func(c *fleetConfig) {
		if c.agentArgs == nil {
			c.agentArgs = map[lab.Host][]string{}
		}
		c.agentArgs[h] = append(c.agentArgs[h], args...)
	}
}

// newFleet builds a lab, a throwaway PKI and a token, and starts the
// controller and both agents. Everything is removed when the test ends.
func newFleet(t *testing.T, opts ...fleetOption) *fleet {
	t.Helper()
	f := newBareFleet(t, opts...)
	f.startController()
	for _, h := range []lab.Host{lab.Client, lab.Server} {
		f.startAgent(h)
	}
	return f
}

// newBareFleet builds a lab and a throwaway PKI and token, and starts
// nothing.
func newBareFleet(t *testing.T, opts ...fleetOption) *fleet {
	t.Helper()
	e2e(t)
	var cfg fleetConfig
	for _, o := range opts {
		o(&cfg)
	}
	dir := t.TempDir() // before the lab: removed after the lab's processes stop
	l := lab.New(t, cfg.lab)
	ff, err := fleettest.New(l, fleettest.Config{
		Bin:      binaries.dir,
		Dir:      dir,
		Name:     "e2e",
		LogLevel: "debug",
		AgentFlags: []string{
			"--resync-interval", resyncInterval.String(),
			"--report-interval", reportInterval.String(),
		},
		HostFlags: cfg.agentArgs,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(ff.LogTails(40))
		}
	})
	return &fleet{Fleet: ff, t: t}
}

// startController starts the controller and waits until it answers.
func (f *fleet) startController() {
	f.t.Helper()
	if err := f.StartController(context.Background()); err != nil {
		f.t.Fatal(err)
	}
}

// stopController stops the controller: SIGTERM and a clean shutdown, or
// with kill a SIGKILL, as a crash would.
func (f *fleet) stopController(kill bool) {
	f.t.Helper()
	if err := f.StopController(kill); err != nil {
		f.t.Logf("controller stopped: %v", err)
	}
}

// startAgent starts the agent of h with the fleet's extra flags for h
// (agentFlags), then extra.
func (f *fleet) startAgent(h lab.Host, extra ...string) {
	f.t.Helper()
	if err := f.StartAgent(h, extra...); err != nil {
		f.t.Fatal(err)
	}
}

// stopAgent stops the agent of h with SIGTERM.
func (f *fleet) stopAgent(h lab.Host) {
	f.t.Helper()
	if err := f.StopAgent(h); err != nil {
		f.t.Logf("agent of %s stopped: %v", h, err)
	}
}

// ctl runs mpfleetctl in the ctl namespace and returns its standard output.
func (f *fleet) ctl(args ...string) (string, error) {
	return f.Ctl(context.Background(), args...)
}

// mustCtl is ctl that fails the test on error.
func (f *fleet) mustCtl(args ...string) string {
	f.t.Helper()
	out, err := f.ctl(args...)
	if err != nil {
		f.t.Fatal(err)
	}
	return out
}

// apply applies a manifest with mpfleetctl and returns the groups'
// revisions after it.
func (f *fleet) apply(t testing.TB, file, reason string) map[string]int64 {
	t.Helper()
	if !filepath.IsAbs(file) {
		file = filepath.Join(repoRoot(), file)
	}
	out, err := f.ctl("apply", "-f", file, "--reason", reason)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("mpfleetctl apply -f %s:\n%s", filepath.Base(file), strings.TrimSpace(out))
	return f.revisions(t)
}

// revisions returns the current policy revision of every group.
func (f *fleet) revisions(t testing.TB) map[string]int64 {
	t.Helper()
	revs, err := f.Revisions(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return revs
}

// hosts returns the hosts as `mpfleetctl get hosts -o json` shows them,
// by lab host.
func (f *fleet) hosts() (map[lab.Host]*pb.Host, error) {
	return f.Hosts(context.Background())
}

// synced checks that both hosts are connected, IN_SYNC, and have applied
// their group's revision in revs.
func (f *fleet) synced(revs map[string]int64) error {
	return f.Synced(context.Background(), revs)
}

// waitSynced waits until both hosts are IN_SYNC at revs and returns how
// long that took.
func (f *fleet) waitSynced(t testing.TB, revs map[string]int64) time.Duration {
	t.Helper()
	start := time.Now()
	eventually(t, 30*time.Second, func() error { return f.synced(revs) })
	return time.Since(start)
}

// audit returns the audit events whose action starts with action, for
// host h, as `mpfleetctl audit list -o json` prints them.
func (f *fleet) audit(action string, h lab.Host) ([]*pb.AuditEvent, error) {
	out, err := f.ctl("audit", "list", "--action", action, "--host", f.HostName(h), "-o", "json")
	if err != nil {
		return nil, err
	}
	var evs []*pb.AuditEvent
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		ev := &pb.AuditEvent{}
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(sc.Bytes(), ev); err != nil {
			return nil, fmt.Errorf("audit list -o json: %w: %s", err, sc.Text())
		}
		evs = append(evs, ev)
	}
	return evs, sc.Err()
}

// waitAudit waits for an audit event of action for h recorded after since,
// and returns it.
func (f *fleet) waitAudit(t testing.TB, action string, h lab.Host, since time.Time) *pb.AuditEvent {
	t.Helper()
	var found *pb.AuditEvent
	eventually(t, 20*time.Second, func() error {
		evs, err := f.audit(action, h)
		if err != nil {
			return err
		}
		for _, ev := range evs {
			if ev.GetAction() == action && !ev.GetTime().AsTime().Before(since.Add(-time.Second)) {
				found = ev
				return nil
			}
		}
		return fmt.Errorf("no %s event for %s since %s (%d events of that action)", action, f.HostName(h), since.Format(time.TimeOnly), len(evs))
	})
	return found
}

// stop marks err as final: eventually fails with it at once.
func stop(err error) error { return fleettest.Stop(err) }

// eventually calls check every 50 ms until it returns nil, and fails the
// test with the last error when timeout passes or check returns stop(err).
func eventually(t testing.TB, timeout time.Duration, check func() error) {
	t.Helper()
	if err := fleettest.Eventually(context.Background(), timeout, check); err != nil {
		t.Fatal(err)
	}
}
