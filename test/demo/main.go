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
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/mpfleet/mpfleet/test/fleettest"
	"github.com/mpfleet/mpfleet/test/lab"
)

// prefix is the demo lab's: `make lab-clean` removes it too.
const prefix = "mpfd"

// logLevel is the programs' --log-level.
var logLevel = "info"

// flapHost is the host whose eth2 section 7 takes down and up.
var flapHost = lab.Client

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
	ctx   context.Context
	lab   *lab.Lab
	fleet *fleettest.Fleet // the controller and the agents
	bin   string
	dir   string
	repo  string

	addr  string // traffic server
	start time.Time
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
	if err := fleettest.CheckBin(bin); err != nil {
		return fmt.Errorf("%w (run `make build`)", err)
	}
	d := &demo{ctx: ctx, bin: bin, repo: repo, start: time.Now()}
	if d.dir, err = os.MkdirTemp("", "mpfleet-demo-"); err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(d.dir) }()
	// A demo killed before it could clean up left its lab behind.
	_ = lab.Run(context.Background(), []string{"down", "--prefix", prefix}, io.Discard, io.Discard)

	defer func() {
		if err != nil && d.fleet != nil {
			fmt.Fprint(os.Stderr, d.fleet.LogTails(20))
		}
		d.section("Clean up")
		if d.lab != nil {
			if derr := d.lab.Down(); derr != nil && err == nil {
				err = derr
			}
		}
		if logs != "" && d.fleet != nil {
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
		if err := d.fleet.StartAgent(h); err != nil {
			return err
		}
	}
	if err := d.waitHosts(unmanaged); err != nil {
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
