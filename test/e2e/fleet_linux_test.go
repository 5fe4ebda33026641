package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/mpfleet/mpfleet/internal/testpki"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/mpfleet/mpfleet/test/lab"
)

// controllerPort is the controller's gRPC port on the management network.
const controllerPort = "7400"

// Agent timings of the lab: short, so that the tests are quick.
const (
	resyncInterval = time.Second
	reportInterval = time.Second
)

// roles are the labels of the lab's hosts, as deploy/examples/lab-*.yaml
// select them.
var roles = map[lab.Host]string{lab.Client: "mptcp-client", lab.Server: "mptcp-server"}

// groupOf is the group of deploy/examples/lab-*.yaml that selects each host.
var groupOf = map[lab.Host]string{lab.Client: "groups/lab-clients", lab.Server: "groups/lab-servers"}

// fleet is a lab running the real programs: a controller in the ctl
// namespace on embedded etcd, agents in the client and server namespaces,
// all over mutual TLS, and mpfleetctl with TLS and a bearer token.
type fleet struct {
	t   *testing.T
	lab *lab.Lab
	dir string // certificates, etcd data, state dirs, logs

	ca, serverCert, serverKey string
	token                     string
	agentCerts                map[lab.Host][2]string // cert, key

	agentArgs map[lab.Host][]string // extra flags of every start of each agent

	mu         sync.Mutex
	controller *lab.Process
	agents     map[lab.Host]*lab.Process
	logs       []string
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

// roleOf is the role label of a lab host: roles for the client and the
// server, fleetRole for the extra hosts.
func roleOf(h lab.Host) string {
	if r, ok := roles[h]; ok {
		return r
	}
	return fleetRole
}

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
	f := &fleet{t: t, lab: l, dir: dir, agentArgs: cfg.agentArgs, agents: map[lab.Host]*lab.Process{}, agentCerts: map[lab.Host][2]string{}}
	t.Cleanup(f.dumpLogsOnFailure)
	f.makePKI()
	return f
}

// hostID is the fleet host id of a lab host: its namespace's name.
func (f *fleet) hostID(h lab.Host) string { return f.lab.NSName(h) }

// hostName is the API resource name of a lab host.
func (f *fleet) hostName(h lab.Host) string { return "hosts/" + f.hostID(h) }

// controllerAddr is the controller's gRPC address.
func (f *fleet) controllerAddr() string {
	return net.JoinHostPort(f.lab.ControllerAddr().String(), controllerPort)
}

func (f *fleet) makePKI() {
	t := f.t
	t.Helper()
	pki := filepath.Join(f.dir, "pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		t.Fatal(err)
	}
	ca, err := testpki.NewCA("mpfleet e2e CA " + f.lab.Prefix())
	if err != nil {
		t.Fatal(err)
	}
	if f.ca, err = ca.WriteCA(pki); err != nil {
		t.Fatal(err)
	}
	f.serverCert, f.serverKey, err = ca.WriteLeaf(pki, "controller", testpki.Leaf{
		CommonName: "mpfleet-controller", IPs: []netip.Addr{f.lab.ControllerAddr()}, Server: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range append([]lab.Host{lab.Client, lab.Server}, f.lab.FleetHosts()...) {
		// The certificate binds the host's role: with authentication on,
		// the labels an agent reports do not choose its group.
		c, k, err := ca.WriteLeaf(pki, "agent-"+string(h), testpki.Leaf{CommonName: f.hostID(h), Client: true,
			Labels: map[string]string{"role": roleOf(h)}})
		if err != nil {
			t.Fatal(err)
		}
		f.agentCerts[h] = [2]string{c, k}
	}
	tok, sum, err := testpki.Token()
	if err != nil {
		t.Fatal(err)
	}
	f.token = tok
	tokens := fmt.Sprintf("- name: e2e-operator\n  role: admin\n  tokenSHA256: %s\n", sum)
	if err := os.WriteFile(filepath.Join(pki, "tokens.yaml"), []byte(tokens), 0o600); err != nil {
		t.Fatal(err)
	}
}

// logFile opens (appending) the log of a process, kept for dumping on
// failure.
func (f *fleet) logFile(name string) *os.File {
	f.t.Helper()
	p := filepath.Join(f.dir, name+".log")
	lf, err := os.OpenFile(p, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		f.t.Fatal(err)
	}
	f.mu.Lock()
	if !contains(f.logs, p) {
		f.logs = append(f.logs, p)
	}
	f.mu.Unlock()
	return lf
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}

// dumpLogsOnFailure prints the end of every process's log when the test
// failed.
func (f *fleet) dumpLogsOnFailure() {
	if !f.t.Failed() {
		return
	}
	f.mu.Lock()
	logs := append([]string(nil), f.logs...)
	f.mu.Unlock()
	for _, p := range logs {
		f.t.Logf("---- last lines of %s:\n%s", filepath.Base(p), tail(p, 40))
	}
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// startController starts the controller in the ctl namespace on embedded
// etcd in the fleet's data dir (the same on every start), and waits until
// it answers.
func (f *fleet) startController() {
	t := f.t
	t.Helper()
	pki := filepath.Join(f.dir, "pki")
	cmd := f.lab.Command(context.Background(), lab.Controller, bin("mpfleet-controller"),
		"--listen", f.controllerAddr(),
		"--data-dir", filepath.Join(f.dir, "controller"),
		"--tls-cert-file", f.serverCert, "--tls-key-file", f.serverKey,
		"--tls-client-ca-file", f.ca,
		"--tokens-file", filepath.Join(pki, "tokens.yaml"),
		"--log-level", "debug")
	lf := f.logFile("controller")
	defer lf.Close()
	cmd.Stdout, cmd.Stderr = lf, lf
	p, err := f.lab.Start(cmd)
	if err != nil {
		t.Fatalf("start the controller: %v", err)
	}
	f.mu.Lock()
	f.controller = p
	f.mu.Unlock()
	eventually(t, 30*time.Second, func() error {
		select {
		case <-p.Done():
			return stop(fmt.Errorf("the controller exited: %w", p.Wait()))
		default:
		}
		_, err := f.ctl("get", "groups")
		return err
	})
}

// stopController stops the controller: SIGTERM and a clean shutdown, or
// with kill a SIGKILL, as a crash would.
func (f *fleet) stopController(kill bool) {
	f.t.Helper()
	f.mu.Lock()
	p := f.controller
	f.controller = nil
	f.mu.Unlock()
	if p == nil {
		return
	}
	if kill {
		_ = p.Cmd.Process.Kill()
		<-p.Done()
		return
	}
	if err := p.Stop(10 * time.Second); err != nil {
		f.t.Logf("controller stopped: %v", err)
	}
}

// controllerRunning reports whether the fleet's controller was started
// and not stopped.
func (f *fleet) controllerRunning() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.controller != nil
}

// startAgent starts the agent of h in its namespace, with its own state
// dir (the same on every start) and client certificate, the fleet's extra
// flags for h (agentFlags), then extra.
func (f *fleet) startAgent(h lab.Host, extra ...string) {
	t := f.t
	t.Helper()
	args := slices.Concat([]string{
		"--controller", f.controllerAddr(),
		"--host-id", f.hostID(h),
		"--labels", "role=" + roleOf(h),
		"--state-dir", filepath.Join(f.dir, "state-"+string(h)),
		"--resync-interval", resyncInterval.String(),
		"--report-interval", reportInterval.String(),
		"--tls-ca-file", f.ca,
		"--tls-cert-file", f.agentCerts[h][0], "--tls-key-file", f.agentCerts[h][1],
		"--log-level", "debug",
	}, f.agentArgs[h], extra)
	cmd := f.lab.Command(context.Background(), h, bin("mpfleet-agent"), args...)
	lf := f.logFile("agent-" + string(h))
	defer lf.Close()
	cmd.Stdout, cmd.Stderr = lf, lf
	p, err := f.lab.Start(cmd)
	if err != nil {
		t.Fatalf("start the agent of %s: %v", h, err)
	}
	f.mu.Lock()
	f.agents[h] = p
	f.mu.Unlock()
}

// stopAgent stops the agent of h with SIGTERM.
func (f *fleet) stopAgent(h lab.Host) {
	f.t.Helper()
	f.mu.Lock()
	p := f.agents[h]
	delete(f.agents, h)
	f.mu.Unlock()
	if p == nil {
		return
	}
	if err := p.Stop(10 * time.Second); err != nil {
		f.t.Logf("agent of %s stopped: %v", h, err)
	}
}

// agentRunning fails the test if an agent has exited.
func (f *fleet) agentsRunning() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for h, p := range f.agents {
		select {
		case <-p.Done():
			return fmt.Errorf("the agent of %s exited: %w", h, p.Wait())
		default:
		}
	}
	return nil
}

// ctlEnv is what mpfleetctl needs to reach the controller: TLS with the
// test CA, and the operator's token.
func (f *fleet) ctlEnv() []string {
	return append(os.Environ(),
		"MPFLEET_CONTROLLER="+f.controllerAddr(),
		"MPFLEET_CA_FILE="+f.ca,
		"MPFLEET_TOKEN="+f.token)
}

// ctl runs mpfleetctl in the ctl namespace and returns its standard output.
func (f *fleet) ctl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := f.lab.Command(ctx, lab.Controller, bin("mpfleetctl"), args...)
	cmd.Env = f.ctlEnv()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("mpfleetctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
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
	out, err := f.ctl("get", "groups", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var resp pb.ListGroupsResponse
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal([]byte(out), &resp); err != nil {
		t.Fatalf("get groups -o json: %v\n%s", err, out)
	}
	revs := map[string]int64{}
	for _, g := range resp.GetGroups() {
		revs[g.GetName()] = g.GetPolicyRevision()
	}
	return revs
}

// hosts returns the hosts as `mpfleetctl get hosts -o json` shows them,
// by lab host.
func (f *fleet) hosts() (map[lab.Host]*pb.Host, error) {
	out, err := f.ctl("get", "hosts", "-o", "json")
	if err != nil {
		return nil, err
	}
	var resp pb.ListHostsResponse
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal([]byte(out), &resp); err != nil {
		return nil, fmt.Errorf("get hosts -o json: %w\n%s", err, out)
	}
	m := map[lab.Host]*pb.Host{}
	for _, h := range []lab.Host{lab.Client, lab.Server} {
		for _, x := range resp.GetHosts() {
			if x.GetName() == f.hostName(h) {
				m[h] = x
			}
		}
	}
	return m, nil
}

// synced checks that both hosts are connected, IN_SYNC, and have applied
// their group's revision in revs.
func (f *fleet) synced(revs map[string]int64) error {
	if err := f.agentsRunning(); err != nil {
		return stop(err)
	}
	hs, err := f.hosts()
	if err != nil {
		return err
	}
	for _, h := range []lab.Host{lab.Client, lab.Server} {
		x := hs[h]
		switch {
		case x == nil:
			return fmt.Errorf("host %s not listed", f.hostName(h))
		case !x.GetConnected():
			return fmt.Errorf("%s: not connected", f.hostName(h))
		case x.GetGroup() != groupOf[h]:
			return fmt.Errorf("%s: group %q, want %q", f.hostName(h), x.GetGroup(), groupOf[h])
		case x.GetDesiredRevision() != revs[groupOf[h]] || x.GetAppliedRevision() != revs[groupOf[h]]:
			return fmt.Errorf("%s: %s, revision applied %d, desired %d, want %d (%s)", f.hostName(h), x.GetSyncState(),
				x.GetAppliedRevision(), x.GetDesiredRevision(), revs[groupOf[h]], x.GetLastError())
		case x.GetSyncState() != pb.SyncState_SYNC_STATE_IN_SYNC:
			return fmt.Errorf("%s: %s (%s)", f.hostName(h), x.GetSyncState(), x.GetLastError())
		}
	}
	return nil
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
	out, err := f.ctl("audit", "list", "--action", action, "--host", f.hostName(h), "-o", "json")
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
		return fmt.Errorf("no %s event for %s since %s (%d events of that action)", action, f.hostName(h), since.Format(time.TimeOnly), len(evs))
	})
	return found
}

// stopError ends eventually at once.
type stopError struct{ err error }

func (s stopError) Error() string { return s.err.Error() }
func (s stopError) Unwrap() error { return s.err }

// stop marks err as final: eventually fails with it at once.
func stop(err error) error { return stopError{err} }

// eventually calls check every 50 ms until it returns nil, and fails the
// test with the last error when timeout passes or check returns stop(err).
func eventually(t testing.TB, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		var s stopError
		if errors.As(err, &s) {
			t.Fatal(s.err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
