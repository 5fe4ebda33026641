package fleettest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/mpfleet/mpfleet/test/lab"
)

// ctlTimeout bounds one run of mpfleetctl.
const ctlTimeout = 30 * time.Second

// CtlEnv is the environment mpfleetctl needs to reach the controller: the
// caller's, with the controller's address, TLS with the fleet's CA, and the
// operator's token.
func (f *Fleet) CtlEnv() []string {
	return append(os.Environ(),
		"MPFLEET_CONTROLLER="+f.ControllerAddr(),
		"MPFLEET_CA_FILE="+f.PKI.CA,
		"MPFLEET_TOKEN="+f.PKI.Token)
}

// Ctl runs mpfleetctl with args in the ctl namespace, for at most 30 s, and
// returns its standard output. Its error has the command and the standard
// error.
func (f *Fleet) Ctl(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, ctlTimeout)
	defer cancel()
	cmd := f.Lab.Command(ctx, lab.Controller, filepath.Join(f.cfg.Bin, "mpfleetctl"), args...)
	cmd.Env = f.CtlEnv()
	cmd.Dir = f.cfg.WorkDir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("mpfleetctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Revisions returns the current policy revision of every group, by group
// name ("groups/…"), as `mpfleetctl get groups -o json` shows them.
func (f *Fleet) Revisions(ctx context.Context) (map[string]int64, error) {
	var resp pb.ListGroupsResponse
	if err := f.getJSON(ctx, "groups", &resp); err != nil {
		return nil, err
	}
	revs := map[string]int64{}
	for _, g := range resp.GetGroups() {
		revs[g.GetName()] = g.GetPolicyRevision()
	}
	return revs, nil
}

// Hosts returns the lab's hosts that `mpfleetctl get hosts -o json`
// lists, by lab host.
func (f *Fleet) Hosts(ctx context.Context) (map[lab.Host]*pb.Host, error) {
	var resp pb.ListHostsResponse
	if err := f.getJSON(ctx, "hosts", &resp); err != nil {
		return nil, err
	}
	m := map[lab.Host]*pb.Host{}
	for _, h := range append([]lab.Host{lab.Client, lab.Server}, f.Lab.FleetHosts()...) {
		for _, x := range resp.GetHosts() {
			if x.GetName() == f.HostName(h) {
				m[h] = x
			}
		}
	}
	return m, nil
}

// getJSON runs `mpfleetctl get <what> -o json` and reads its output into
// m.
func (f *Fleet) getJSON(ctx context.Context, what string, m proto.Message) error {
	out, err := f.Ctl(ctx, "get", what, "-o", "json")
	if err != nil {
		return err
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal([]byte(out), m); err != nil {
		return fmt.Errorf("get %s -o json: %w\n%s", what, err, out)
	}
	return nil
}

// HostCheck says what is wrong with the host x of lab host h, or nil.
type HostCheck func(h lab.Host, x *pb.Host) error

// InSync accepts a host that is connected, in the group of Groups, and
// IN_SYNC with its group's revision in revs applied.
func InSync(revs map[string]int64) HostCheck {
	return func(h lab.Host, x *pb.Host) error {
		group := Groups[h]
		switch {
		case !x.GetConnected():
			return fmt.Errorf("%s: not connected", x.GetName())
		case x.GetGroup() != group:
			return fmt.Errorf("%s: group %q, want %q", x.GetName(), x.GetGroup(), group)
		case x.GetDesiredRevision() != revs[group] || x.GetAppliedRevision() != revs[group]:
			return fmt.Errorf("%s: %s, revision applied %d, desired %d, want %d (%s)", x.GetName(), x.GetSyncState(),
				x.GetAppliedRevision(), x.GetDesiredRevision(), revs[group], x.GetLastError())
		case x.GetSyncState() != pb.SyncState_SYNC_STATE_IN_SYNC:
			return fmt.Errorf("%s: %s (%s)", x.GetName(), x.GetSyncState(), x.GetLastError())
		}
		return nil
	}
}

// CheckHosts checks the given lab hosts as the controller shows them. A
// program of the fleet that exited makes its error final (Stop).
func (f *Fleet) CheckHosts(ctx context.Context, hosts []lab.Host, check HostCheck) error {
	if err := f.Exited(); err != nil {
		return Stop(err)
	}
	hs, err := f.Hosts(ctx)
	if err != nil {
		return err
	}
	for _, h := range hosts {
		x := hs[h]
		if x == nil {
			return fmt.Errorf("host %s not listed", f.HostName(h))
		}
		if err := check(h, x); err != nil {
			return err
		}
	}
	return nil
}

// WaitHosts waits until CheckHosts accepts the hosts, at most timeout.
func (f *Fleet) WaitHosts(ctx context.Context, timeout time.Duration, hosts []lab.Host, check HostCheck) error {
	return Eventually(ctx, timeout, func() error { return f.CheckHosts(ctx, hosts, check) })
}

// Synced checks that the client and the server are IN_SYNC at revs
// (InSync).
func (f *Fleet) Synced(ctx context.Context, revs map[string]int64) error {
	return f.CheckHosts(ctx, []lab.Host{lab.Client, lab.Server}, InSync(revs))
}
