//go:build linux

package main

import (
	"fmt"
	"strings"
	"time"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/mpfleet/mpfleet/test/fleettest"
	"github.com/mpfleet/mpfleet/test/lab"
)

// waitTimeout is how long the demo waits for the hosts to get where it
// wants them.
const waitTimeout = 30 * time.Second

// pki makes the fleet: its throwaway CA, the controller's certificate, one
// client certificate per agent and the operator's token. Each program the
// fleet starts is shown as the command it runs.
func (d *demo) pki() (err error) {
	d.fleet, err = fleettest.New(d.lab, fleettest.Config{
		Bin:      d.bin,
		Dir:      d.dir,
		Name:     "demo",
		LogLevel: logLevel,
		WorkDir:  d.repo,
		OnStart: func(h lab.Host, program string, args []string) {
			fmt.Printf("\n  $ ip netns exec %s %s %s\n", d.lab.NSName(h), program, strings.Join(args, " "))
		},
	})
	return err
}

func (d *demo) startController() error {
	start := time.Now()
	if err := d.fleet.StartController(d.ctx); err != nil {
		return err
	}
	addr := d.fleet.ControllerAddr()
	d.say("Serving on %s after %v (embedded etcd in %s). mpfleetctl below runs in the ctl namespace with\n"+
		"  MPFLEET_CONTROLLER=%s MPFLEET_CA_FILE=%s MPFLEET_TOKEN=<token>",
		addr, time.Since(start).Round(time.Millisecond), d.fleet.DataDir(), addr, d.fleet.PKI.CA)
	return nil
}

// unmanaged accepts a host that is connected and that no group selects.
func unmanaged(_ lab.Host, h *pb.Host) error {
	if !h.GetConnected() || h.GetSyncState() != pb.SyncState_SYNC_STATE_UNMANAGED {
		return fmt.Errorf("%s: connected %v, %s", h.GetName(), h.GetConnected(), h.GetSyncState())
	}
	return nil
}

// apply applies a manifest and waits until both hosts are IN_SYNC with it.
func (d *demo) apply(file, reason string) error {
	if err := d.ctlShow("apply", "-f", file, "--reason", reason); err != nil {
		return err
	}
	revs, err := d.fleet.Revisions(d.ctx)
	if err != nil {
		return err
	}
	start := time.Now()
	if err := d.waitHosts(fleettest.InSync(revs)); err != nil {
		return err
	}
	fmt.Printf("    (both hosts IN_SYNC %v after the apply)\n", time.Since(start).Round(time.Millisecond))
	return nil
}

// waitHosts waits until both lab hosts pass check.
func (d *demo) waitHosts(check fleettest.HostCheck) error {
	return d.fleet.WaitHosts(d.ctx, waitTimeout, []lab.Host{lab.Client, lab.Server}, check)
}
