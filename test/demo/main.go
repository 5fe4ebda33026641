//go:build linux

// Command demo is `make demo`: it builds the network lab, runs the real
// mpfleet-controller (embedded etcd, TLS, bearer tokens) and an
// mpfleet-agent on each lab host (mutual TLS), applies the lab's policy set
// with mpfleetctl, and shows what it does to one Multipath TCP connection:
// two links' throughput against one, a link pulled mid-transfer with every
// byte still delivered, and the link's subflow coming back. It narrates as
// it goes and removes everything it made on exit, on failure and on Ctrl-C.
//
//	go run ./test/demo --bin bin    # as root, after make build
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/route"
	"github.com/mpfleet/mpfleet/internal/testpki"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/mpfleet/mpfleet/test/lab"
	"github.com/mpfleet/mpfleet/test/lab/traffic"
)

// prefix is the demo lab's: `make lab-clean` removes it too.
const prefix = "mpfd"

// logLevel is the programs' --log-level.
var logLevel = "info"

// flapHost is the host whose eth2 section 7 takes down and up.
var flapHost = lab.Client

// demoRoles are the lab hosts' roles, which deploy/examples/lab-*.yaml
// select.
var demoRoles = map[lab.Host]string{lab.Client: "mptcp-client", lab.Server: "mptcp-server"}

func main() {
	bin := flag.String("bin", "bin", "directory holding mpfleet-controller, mpfleet-agent and mpfleetctl")
	logs := flag.String("logs", "", "copy the controller's and the agents' logs into this directory at the end")
	flag.StringVar(&logLevel, "log-level", "info", "log level of the controller and the agents (debug, info, warn, error)")
	flap := flag.String("flap", "client", "whose eth2 to take down and up in section 7: client or server")
	flag.Parse()
	switch *flap {
	case "client", "server":
		flapHost = lab.Host(*flap)
	default:
		fmt.Fprintln(os.Stderr, "demo: --flap: want client or server")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, *bin, *logs)
	interrupted := ctx.Err() != nil
	stop()
	if err != nil {
		if interrupted {
			fmt.Fprintln(os.Stderr, "demo: interrupted; everything was removed")
		} else {
			fmt.Fprintln(os.Stderr, "demo:", err)
		}
		os.Exit(1)
	}
}

// demo is the running demo: the lab, the programs, the output.
type demo struct {
	ctx  context.Context
	lab  *lab.Lab
	bin  string
	dir  string
	repo string

	ca, token string
	procs     []*lab.Process
	logs      []string
	addr      string // traffic server
	start     time.Time
}

func run(ctx context.Context, bin, logs string) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces): run `sudo make demo`")
	}
	repo, err := os.Getwd()
	if err != nil {
		return err
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return err
	}
	for _, p := range []string{"mpfleet-controller", "mpfleet-agent", "mpfleetctl"} {
		if _, err := os.Stat(filepath.Join(bin, p)); err != nil {
			return fmt.Errorf("%s: %w (run `make build`)", p, err)
		}
	}
	d := &demo{ctx: ctx, bin: bin, repo: repo, start: time.Now()}
	if d.dir, err = os.MkdirTemp("", "mpfleet-demo-"); err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(d.dir) }()
	// A demo killed before it could clean up left its lab behind.
	_ = lab.Run(context.Background(), []string{"down", "--prefix", prefix}, io.Discard, io.Discard)

	defer func() {
		if err != nil {
			d.dumpLogs()
		}
		d.section("Clean up")
		if d.lab != nil {
			if derr := d.lab.Down(); derr != nil && err == nil {
				err = derr
			}
		}
		if logs != "" {
			if cerr := d.copyLogs(logs); cerr != nil && err == nil {
				err = cerr
			}
		}
		d.say("Stopped the controller and the agents, removed the lab's namespaces (and with them its links) and %s.", d.dir)
		d.say("Demo done in %v.", time.Since(d.start).Round(100*time.Millisecond))
	}()
	return d.script()
}

func (d *demo) script() error {
	d.section("1. The lab")
	d.say(`Four network namespaces joined by veth pairs: a client and a server with two 100 Mbit/s
links each (tbf), through a router that drops packets arriving on the wrong link (strict
reverse-path filtering), and a management network for the controller. Only 198.18.0.0/15.`)
	l, err := lab.Up(d.ctx, lab.Config{Prefix: prefix})
	if err != nil {
		return err
	}
	d.lab = l
	var topo bytes.Buffer
	l.Describe(&topo)
	printIndented(topo.String())

	d.section("2. The controller, secured")
	d.say(`A throwaway CA signs the controller's certificate (IP 198.18.100.1) and one client
certificate per agent (common name = host id); mpfleetctl uses TLS and a bearer token.`)
	if err := d.pki(); err != nil {
		return err
	}
	if err := d.startController(); err != nil {
		return err
	}

	d.section("3. The agents")
	d.say("One agent per host, each in its namespace, labelled by role; no group selects them yet.")
	for _, h := range []lab.Host{lab.Client, lab.Server} {
		if err := d.startAgent(h); err != nil {
			return err
		}
	}
	if err := d.waitHosts(func(h *pb.Host) bool {
		return h.GetConnected() && h.GetSyncState() == pb.SyncState_SYNC_STATE_UNMANAGED
	}); err != nil {
		return err
	}
	if err := d.ctlShow("get", "hosts"); err != nil {
		return err
	}

	d.section("4. Apply the policy set")
	d.say(`deploy/examples/lab-two-links.yaml: servers announce their eth2 address (signal); clients
join it from their own eth2 address (fullmesh); both get source-based policy routing so that
each subflow leaves by its own link.`)
	if err := d.apply("deploy/examples/lab-two-links.yaml", "demo: two links"); err != nil {
		return err
	}
	if err := d.ctlShow("get", "hosts"); err != nil {
		return err
	}
	for _, h := range []lab.Host{lab.Client, lab.Server} {
		if err := d.describe(h); err != nil {
			return err
		}
	}

	d.section("5. One link against two")
	if err := d.serve(); err != nil {
		return err
	}
	d.say("Baseline: deploy/examples/lab-one-link.yaml (MPTCP on, no endpoints: one subflow, over eth1).")
	if err := d.apply("deploy/examples/lab-one-link.yaml", "demo: one link baseline"); err != nil {
		return err
	}
	one, err := d.transfer(30_000_000, nil)
	if err != nil {
		return err
	}
	d.say("Now both links: deploy/examples/lab-two-links.yaml again.")
	if err := d.apply("deploy/examples/lab-two-links.yaml", "demo: two links"); err != nil {
		return err
	}
	two, err := d.transfer(60_000_000, nil)
	if err != nil {
		return err
	}
	d.say("One connection, two links: %.1f Mbit/s against %.1f Mbit/s on one link: %.2f× (the limit is 2×).",
		two.Mbps, one.Mbps, two.Mbps/one.Mbps)

	d.section("6. Pull the primary link mid-transfer, then put it back")
	d.say(`120 MB over both links; 1.5 s in, the client's eth1 (the connection's first subflow) goes
down, and the kernel deletes its routes; 3 s later it comes back.`)
	var pullErr error
	returned := 0    // the first line with eth1 carrying data after it came back
	minSubflows := 9 // while eth1 was down
	r, err := d.transfer(120_000_000, func(tick int, eth1, _ float64, sf int) {
		if tick > 3 && tick <= 9 && sf >= 0 {
			minSubflows = min(minSubflows, sf)
		}
		switch {
		case tick == 3: // 1.5 s
			fmt.Println("              >>> ip link set eth1 down   (client)")
			pullErr = errors.Join(pullErr, d.lab.LinkDown(lab.Client, lab.Link1))
		case tick == 9: // 4.5 s
			fmt.Println("              >>> ip link set eth1 up     (client; its main-table route is put back)")
			pullErr = errors.Join(pullErr, d.lab.LinkUp(lab.Client, lab.Link1))
		case tick > 9 && returned == 0 && eth1 > 10:
			returned = tick
		}
	})
	if err != nil {
		return err
	}
	if pullErr != nil {
		return pullErr
	}
	d.say("Every byte arrived and was verified: %v. The receiver's longest wait for data: %v, while\n"+
		"MPTCP re-sent what was in flight on eth1 over eth2.", r.Verified, r.LongestStall.Round(time.Millisecond))
	if returned > 0 {
		how := "Its subflow was opened again."
		if minSubflows >= 2 {
			how = "Its subflow never closed (sock_diag counted 2 subflows throughout):\nTCP kept retransmitting into the dead link until the route was back."
		}
		d.say("eth1 carried the connection again within %v of its return. %s",
			time.Duration(returned-9)*500*time.Millisecond, how)
	} else {
		d.say("eth1 did not carry data again before the transfer ended.")
	}
	d.say("eth1 is not an endpoint and its route is the main table's: the agents had nothing to restore.")
	if err := d.ctlShow("get", "hosts"); err != nil {
		return err
	}

	h := flapHost
	d.section(fmt.Sprintf("7. Flap the %s's second link: the agent repairs it", h))
	if h == lab.Client {
		d.say(`Now the client's eth2 goes down for 2 s. The kernel deletes every route through it, the
policy routing table's included, and never puts them back. The agent keeps the eth2
endpoint through the flap (a fullmesh endpoint: re-adding it would open no subflow) and
restores the table as soon as the link is back; the subflow then resumes.`)
	} else {
		d.say(`Now the server's eth2 goes down for 2 s. The kernel deletes every route through it, the
policy routing table's included, and never puts them back. When the link returns, the
server's agent restores the table; it keeps the signal endpoint as it is (re-announcing it
while its subflow still retransmits was seen to corrupt the stream on this kernel), and the
surviving subflow carries the connection again at its next retransmission.`)
	}
	var restored time.Duration
	rs := d.policyRouting(h)
	fmt.Printf("\n    %s policy routing before: %s\n", h, rs)
	returned = 0
	minSubflows = 9
	r, err = d.transfer(120_000_000, func(tick int, _, eth2 float64, sf int) {
		if tick > 3 && sf >= 0 {
			minSubflows = min(minSubflows, sf)
		}
		switch {
		case tick == 3:
			fmt.Printf("              >>> ip link set eth2 down   (%s)\n", h)
			pullErr = errors.Join(pullErr, d.lab.LinkDown(h, lab.Link2))
			fmt.Printf("              %s policy routing now: %s\n", h, d.policyRouting(h))
		case tick == 7:
			fmt.Printf("              >>> ip link set eth2 up     (%s)\n", h)
			pullErr = errors.Join(pullErr, d.lab.LinkUp(h, lab.Link2))
			upAt := time.Now()
			for time.Since(upAt) < 2*time.Second && d.policyRouting(h) != rs {
				time.Sleep(2 * time.Millisecond)
			}
			if d.policyRouting(h) == rs {
				restored = time.Since(upAt)
			}
		case tick > 7 && returned == 0 && eth2 > 10:
			returned = tick
		}
	})
	if err != nil {
		return err
	}
	if pullErr != nil {
		return pullErr
	}
	if restored > 0 {
		d.say("The %s's agent put its policy routing back %v after eth2 came up.", h, restored.Round(time.Millisecond))
	} else {
		d.say("The %s's policy routing was NOT back 2 s after eth2 came up.", h)
	}
	if returned > 0 {
		how := "over a new subflow"
		if minSubflows >= 2 {
			how = "over the same subflow (sock_diag counted 2 throughout)"
		}
		d.say("The client's eth2 carried the connection again within %v of the return, %s.\nEvery byte verified: %v.",
			time.Duration(returned-7)*500*time.Millisecond, how, r.Verified)
	} else {
		d.say("The client's eth2 did not carry data again before the transfer ended. Every byte verified: %v.", r.Verified)
	}

	d.section("8. Who did what: the audit log")
	if err := d.ctlShow("audit", "list"); err != nil {
		return err
	}
	return d.ctlShow("audit", "verify")
}

// ---------------------------------------------------------------- output

func (d *demo) section(title string) {
	fmt.Printf("\n\033[1m== %s\033[0m  (%v)\n", title, time.Since(d.start).Round(100*time.Millisecond))
}

func (d *demo) say(format string, args ...any) {
	fmt.Println()
	for _, line := range strings.Split(fmt.Sprintf(format, args...), "\n") {
		fmt.Println("  " + line)
	}
}

// copyLogs copies the programs' logs into dir.
func (d *demo) copyLogs(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, p := range d.logs {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(p)), b, 0o644); err != nil {
			return err
		}
	}
	d.say("Logs copied to %s.", dir)
	return nil
}

func (d *demo) dumpLogs() {
	for _, p := range d.logs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(lines) > 20 {
			lines = lines[len(lines)-20:]
		}
		fmt.Fprintf(os.Stderr, "---- last lines of %s:\n%s\n", filepath.Base(p), strings.Join(lines, "\n"))
	}
}

// ---------------------------------------------------------------- programs

const controllerPort = "7400"

func (d *demo) controllerAddr() string {
	return net.JoinHostPort(d.lab.ControllerAddr().String(), controllerPort)
}

func (d *demo) hostID(h lab.Host) string { return d.lab.NSName(h) }

func (d *demo) path(name string) string { return filepath.Join(d.dir, name) }

func (d *demo) pki() error {
	ca, err := testpki.NewCA("mpfleet demo CA")
	if err != nil {
		return err
	}
	if d.ca, err = ca.WriteCA(d.dir); err != nil {
		return err
	}
	if _, _, err := ca.WriteLeaf(d.dir, "controller", testpki.Leaf{CommonName: "mpfleet-controller", IPs: []netip.Addr{d.lab.ControllerAddr()}, Server: true}); err != nil {
		return err
	}
	for _, h := range []lab.Host{lab.Client, lab.Server} {
		// The certificate binds the host's role: with authentication on, the
		// labels an agent reports do not choose its group.
		if _, _, err := ca.WriteLeaf(d.dir, "agent-"+string(h), testpki.Leaf{CommonName: d.hostID(h), Client: true,
			Labels: map[string]string{"role": demoRoles[h]}}); err != nil {
			return err
		}
	}
	tok, sum, err := testpki.Token()
	if err != nil {
		return err
	}
	d.token = tok
	return os.WriteFile(d.path("tokens.yaml"), fmt.Appendf(nil, "- name: demo-operator\n  role: admin\n  tokenSHA256: %s\n", sum), 0o600)
}

func (d *demo) startProcess(h lab.Host, name string, args ...string) error {
	fmt.Printf("\n  $ ip netns exec %s %s %s\n", d.lab.NSName(h), name, strings.Join(args, " "))
	cmd := d.lab.Command(context.Background(), h, filepath.Join(d.bin, name), args...)
	logPath := d.path(name + "-" + string(h) + ".log")
	lf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer lf.Close()
	d.logs = append(d.logs, logPath)
	cmd.Stdout, cmd.Stderr = lf, lf
	p, err := d.lab.Start(cmd)
	if err != nil {
		return err
	}
	d.procs = append(d.procs, p)
	return nil
}

func (d *demo) startController() error {
	err := d.startProcess(lab.Controller, "mpfleet-controller",
		"--listen", d.controllerAddr(), "--data-dir", d.path("controller"),
		"--tls-cert-file", d.path("controller.pem"), "--tls-key-file", d.path("controller-key.pem"),
		"--tls-client-ca-file", d.ca, "--tokens-file", d.path("tokens.yaml"), "--log-level", logLevel)
	if err != nil {
		return err
	}
	start := time.Now()
	for {
		if _, err := d.ctl("get", "groups"); err == nil {
			break
		} else if time.Since(start) > 30*time.Second {
			return fmt.Errorf("the controller did not answer within 30 s: %w", err)
		}
		if err := d.sleep(100 * time.Millisecond); err != nil {
			return err
		}
	}
	d.say("Serving on %s after %v (embedded etcd in %s). mpfleetctl below runs in the ctl namespace with\n"+
		"  MPFLEET_CONTROLLER=%s MPFLEET_CA_FILE=%s MPFLEET_TOKEN=<token>",
		d.controllerAddr(), time.Since(start).Round(time.Millisecond), d.path("controller"), d.controllerAddr(), d.ca)
	return nil
}

func (d *demo) startAgent(h lab.Host) error {
	role := demoRoles[h]
	return d.startProcess(h, "mpfleet-agent",
		"--controller", d.controllerAddr(), "--host-id", d.hostID(h), "--labels", "role="+role,
		"--state-dir", d.path("state-"+string(h)),
		"--tls-ca-file", d.ca, "--tls-cert-file", d.path("agent-"+string(h)+".pem"), "--tls-key-file", d.path("agent-"+string(h)+"-key.pem"),
		"--log-level", logLevel)
}

// ctl runs mpfleetctl in the ctl namespace and returns its output.
func (d *demo) ctl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(d.ctx, 30*time.Second)
	defer cancel()
	cmd := d.lab.Command(ctx, lab.Controller, filepath.Join(d.bin, "mpfleetctl"), args...)
	cmd.Env = append(os.Environ(), "MPFLEET_CONTROLLER="+d.controllerAddr(), "MPFLEET_CA_FILE="+d.ca, "MPFLEET_TOKEN="+d.token)
	cmd.Dir = d.repo
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("mpfleetctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// ctlShow runs mpfleetctl and prints the command and its output.
func (d *demo) ctlShow(args ...string) error {
	fmt.Printf("\n  $ mpfleetctl %s\n", strings.Join(args, " "))
	out, err := d.ctl(args...)
	printIndented(out)
	return err
}

func printIndented(s string) {
	for _, line := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		fmt.Println("    " + line)
	}
}

// describe prints `mpfleetctl describe host` without the facts and the
// counters (the rest: state, what is applied, health).
func (d *demo) describe(h lab.Host) error {
	args := []string{"describe", "host", d.hostID(h)}
	fmt.Printf("\n  $ mpfleetctl %s   (facts and counters left out)\n", strings.Join(args, " "))
	out, err := d.ctl(args...)
	if err != nil {
		return err
	}
	skip := false
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		trimmed := strings.TrimSpace(line)
		top := !strings.HasPrefix(line, "  ")
		switch {
		case top && (strings.HasPrefix(trimmed, "Facts:") || strings.HasPrefix(trimmed, "Interfaces:") ||
			strings.HasPrefix(trimmed, "Agent:") || strings.HasPrefix(trimmed, "Last plan:")):
			skip = true
		case top:
			skip = false
		case strings.HasPrefix(trimmed, "Counters:"):
			skip = true
			continue
		}
		if !skip {
			fmt.Println("    " + line)
		}
	}
	return nil
}

// apply applies a manifest and waits until both hosts are IN_SYNC with it.
func (d *demo) apply(file, reason string) error {
	if err := d.ctlShow("apply", "-f", file, "--reason", reason); err != nil {
		return err
	}
	out, err := d.ctl("get", "groups", "-o", "json")
	if err != nil {
		return err
	}
	var groups pb.ListGroupsResponse
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal([]byte(out), &groups); err != nil {
		return err
	}
	revs := map[string]int64{}
	for _, g := range groups.GetGroups() {
		revs[g.GetName()] = g.GetPolicyRevision()
	}
	start := time.Now()
	err = d.waitHosts(func(h *pb.Host) bool {
		return h.GetConnected() && h.GetSyncState() == pb.SyncState_SYNC_STATE_IN_SYNC && h.GetAppliedRevision() == revs[h.GetGroup()]
	})
	if err == nil {
		fmt.Printf("    (both hosts IN_SYNC %v after the apply)\n", time.Since(start).Round(time.Millisecond))
	}
	return err
}

// waitHosts waits until both lab hosts satisfy ok.
func (d *demo) waitHosts(ok func(*pb.Host) bool) error {
	start := time.Now()
	for {
		out, err := d.ctl("get", "hosts", "-o", "json")
		var hosts pb.ListHostsResponse
		if err == nil {
			err = (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal([]byte(out), &hosts)
		}
		if err == nil {
			n := 0
			for _, h := range hosts.GetHosts() {
				if ok(h) {
					n++
				}
			}
			if n == 2 {
				return nil
			}
			err = fmt.Errorf("hosts: %s", out)
		}
		for _, p := range d.procs {
			select {
			case <-p.Done():
				return fmt.Errorf("%s exited: %w", filepath.Base(p.Cmd.Path), p.Wait())
			default:
			}
		}
		if time.Since(start) > 30*time.Second {
			return fmt.Errorf("the hosts did not get there within 30 s: %w", err)
		}
		if err := d.sleep(100 * time.Millisecond); err != nil {
			return err
		}
	}
}

func (d *demo) sleep(t time.Duration) error {
	select {
	case <-time.After(t):
		return nil
	case <-d.ctx.Done():
		return d.ctx.Err()
	}
}

// ---------------------------------------------------------------- traffic

// serve starts the traffic receiver in the server namespace on the wildcard
// address (joins to the announced eth2 address need a listener there).
func (d *demo) serve() error {
	var ln net.Listener
	if err := d.lab.Do(lab.Server, func() (err error) { ln, err = traffic.Listen(d.ctx, ":5201"); return err }); err != nil {
		return err
	}
	go func() { _ = traffic.Serve(d.ctx, ln, nil) }()
	d.addr = net.JoinHostPort(lab.Addr(lab.Server, lab.Link1).String(), "5201")
	d.say("A receiver listens in the server namespace; the client sends to %s over one MPTCP\n"+
		"connection, every byte checked against a seeded pseudo-random stream. Every half second:\n"+
		"what each client link sent, and the connection's subflows as sock_diag (ss -M) sees them.", d.addr)
	return nil
}

// transfer sends n bytes from the client, printing the links' rates and the
// connection's subflows every 500 ms; after each line it calls at (if set)
// with the line's number, from 1, the links' rates in Mbit/s and the
// subflows (-1: unknown).
func (d *demo) transfer(n int64, at func(tick int, eth1, eth2 float64, subflows int)) (traffic.Report, error) {
	fmt.Printf("\n  send %d MB from the client to %s\n", n/1_000_000, d.addr)
	dctx, cancel := context.WithTimeout(d.ctx, 5*time.Second)
	defer cancel()
	var c net.Conn
	if err := d.lab.Do(lab.Client, func() (err error) { c, err = traffic.Dial(dctx, d.addr, traffic.DialOptions{}); return err }); err != nil {
		return traffic.Report{}, err
	}
	mc, err := mptcp.Dial(&mptcp.DialOptions{NetNS: int(d.lab.NS(lab.Client))})
	if err != nil {
		c.Close()
		return traffic.Report{}, err
	}
	defer func() { _ = mc.Close() }()
	local := c.LocalAddr().String()

	type res struct {
		r   traffic.Report
		err error
	}
	done := make(chan res, 1)
	go func() {
		ctx, cancel := context.WithTimeout(d.ctx, 2*time.Minute)
		defer cancel()
		r, err := traffic.Send(ctx, c, traffic.SendOptions{Bytes: n})
		done <- res{r, err}
	}()
	start := time.Now()
	prev := d.tx()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case r := <-done:
			fmt.Printf("    %s\n", r.r)
			return r.r, r.err
		case <-tick.C:
			now := d.tx()
			eth1, eth2 := mbps(now[0]-prev[0]), mbps(now[1]-prev[1])
			sf := subflows(mc, local)
			sfs := "?"
			if sf >= 0 {
				sfs = fmt.Sprint(sf)
			}
			fmt.Printf("    %5.1f s   eth1 %s   eth2 %s   subflows %s\n", time.Since(start).Seconds(),
				meter(eth1), meter(eth2), sfs)
			prev = now
			if at != nil {
				at(n, eth1, eth2, sf)
			}
		}
	}
}

// policyRouting renders the policy routing of h (rules and routes in
// mpfleet's range), as `ip rule` and `ip route show table T` would show it.
func (d *demo) policyRouting(h lab.Host) string {
	m, err := route.Open(&route.Options{NetNS: int(d.lab.NS(h))})
	if err != nil {
		return err.Error()
	}
	defer func() { _ = m.Close() }()
	rules, err := m.Rules()
	if err != nil {
		return err.Error()
	}
	routes, err := m.Routes()
	if err != nil {
		return err.Error()
	}
	return strings.ReplaceAll(strings.TrimSpace(route.Render(rules, routes)), "\n", "; ")
}

// tx returns the bytes the client's eth1 and eth2 have sent.
func (d *demo) tx() [2]uint64 {
	var out [2]uint64
	for i, k := range lab.DataLinks {
		if s, err := d.lab.LinkStats(lab.Client, k); err == nil {
			out[i] = s.TxBytes
		}
	}
	return out
}

// mbps converts bytes sent in 500 ms to Mbit/s.
func mbps(b uint64) float64 { return float64(b) * 8 / 0.5 / 1e6 }

// meter renders a rate in Mbit/s and as a bar (# = 10 Mbit/s).
func meter(mbps float64) string {
	bar := strings.Repeat("#", min(int(mbps/10+0.5), 12))
	return fmt.Sprintf("%5.1f Mbit/s %-12s", mbps, bar)
}

// subflows returns the subflows of the client's connection from local,
// the initial one included, as sock_diag reports them; -1 if unknown.
func subflows(mc *mptcp.Client, local string) int {
	conns, err := mc.Connections()
	if err != nil {
		return -1
	}
	for _, c := range conns {
		if c.Local.String() == local {
			if n := int(c.Info.SubflowsTotal); n > 0 {
				return n
			}
			return int(c.Info.Subflows) + 1
		}
	}
	return -1
}
