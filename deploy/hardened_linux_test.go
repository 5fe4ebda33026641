package deploy

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/nstest"
	"github.com/mpfleet/mpfleet/test/fleettest"
	"github.com/mpfleet/mpfleet/test/lab"
)

// testHardenedAgent runs the packaged agent (bin/mpfleet-agent) in the
// network lab the way its unit does, as far as a machine without systemd as
// PID 1 allows: a user that is not root, only the unit's capabilities (as
// ambient ones, in the bounding set too), no new privileges, and /proc/sys
// read-only but the unit's ReadWritePaths. It must apply a full policy —
// endpoints, limits, sysctls, policy routing — and report IN_SYNC to the
// real controller. (The system call and socket family filters need systemd
// itself; systemd-analyze checks those settings.)
func testHardenedAgent(t *testing.T, root, bin string) {
	nstest.RequireRoot(t)
	requireTools(t, "nsenter", "unshare", "setpriv", "mount")
	unit := serviceSettings(t, filepath.Join(root, "deploy/systemd/mpfleet-agent.service"))
	caps := setprivCaps(t, unit["AmbientCapabilities"])
	if bounding := setprivCaps(t, unit["CapabilityBoundingSet"]); bounding != caps {
		t.Fatalf("the agent unit's bounding set %s is not its ambient set %s: the test runs it with the latter", bounding, caps)
	}
	var rw []string
	for _, v := range unit["ReadWritePaths"] {
		for _, p := range strings.Fields(v) {
			rw = append(rw, strings.TrimPrefix(p, "-"))
		}
	}
	uid := freeID(t)

	l := lab.New(t, lab.Config{})
	dir := t.TempDir()
	// The agent's user must reach its program, certificate and state.
	reachable(t, bin)
	reachable(t, dir)
	wrapped := filepath.Join(dir, "bin")
	fleetDir := filepath.Join(dir, "fleet")
	for _, d := range []string{wrapped, fleetDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"mpfleet-controller", "mpfleetctl"} {
		if err := os.Symlink(filepath.Join(bin, p), filepath.Join(wrapped, p)); err != nil {
			t.Fatal(err)
		}
	}
	var mounts strings.Builder
	mounts.WriteString("mount --bind /proc/sys /proc/sys\n")
	for _, p := range rw {
		fmt.Fprintf(&mounts, "mount --bind %s %s\n", p, p)
	}
	mounts.WriteString("mount -o remount,bind,ro /proc/sys\n")
	// nsenter runs this in the host's namespace; it execs in place, so the
	// agent keeps the pid the fleet stops.
	wrapper := fmt.Sprintf(`#!/bin/sh
# mpfleet-agent as deploy/systemd/mpfleet-agent.service runs it.
exec unshare --mount --propagation private -- /bin/sh -ec '
%sexec setpriv --reuid=%d --regid=%d --clear-groups --inh-caps=-all,%s --ambient-caps=-all,%s --bounding-set=-all,%s --no-new-privs -- %s "$@"
' mpfleet-agent "$@"
`, mounts.String(), uid, uid, caps, caps, caps, filepath.Join(bin, "mpfleet-agent"))
	if err := os.WriteFile(filepath.Join(wrapped, "mpfleet-agent"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}

	f, err := fleettest.New(l, fleettest.Config{Bin: wrapped, Dir: fleetDir, Name: "deploy", WorkDir: root})
	if err != nil {
		t.Fatal(err)
	}
	// What the agent reads and writes is its user's, as /etc/mpfleet's key
	// files are the group mpfleet's and its state directory its own.
	state := filepath.Join(fleetDir, "state-"+string(lab.Client))
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(fleetDir, "pki"), f.PKI.CA, f.PKI.Agents[lab.Client].Cert, f.PKI.Agents[lab.Client].Key, state} {
		if err := os.Chown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := f.StartController(ctx); err != nil {
		t.Fatalf("%v\n%s", err, f.LogTails(20))
	}
	if out, err := f.Ctl(ctx, "apply", "-f", "deploy/examples/lab-two-links.yaml", "--reason", "deploy: hardened agent"); err != nil {
		t.Fatalf("mpfleetctl apply: %v\n%s", err, out)
	}
	revs, err := f.Revisions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.StartAgent(lab.Client); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitHosts(ctx, time.Minute, []lab.Host{lab.Client}, fleettest.InSync(revs)); err != nil {
		t.Fatalf("the hardened agent: %v\n%s", err, f.LogTails(30))
	}

	// It ran as the unit says, and changed the kernel of its namespace.
	pid := pidOf(t, filepath.Join(bin, "mpfleet-agent"))
	status := string(readFile(t, fmt.Sprintf("/proc/%d/status", pid)))
	for _, want := range []string{
		fmt.Sprintf("Uid:\t%d\t%d\t%d\t%d\n", uid, uid, uid, uid),
		"CapEff:\t0000000000001000\n", "CapBnd:\t0000000000001000\n", "NoNewPrivs:\t1\n",
	} {
		if !strings.Contains(status, want) {
			t.Errorf("the agent's /proc/%d/status lacks %q:\n%s", pid, want, status)
		}
	}
	kernel := map[string][]string{
		"cat /proc/sys/net/mptcp/close_timeout": {"30"},
		"ip mptcp endpoint show":                {"dev eth2"},
		"ip rule show":                          {"proto 173"},
	}
	for cmd, wants := range kernel {
		args := strings.Fields(cmd)
		out, err := l.Exec(ctx, lab.Client, args[0], args[1:]...)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range wants {
			if !strings.Contains(string(out), w) {
				t.Errorf("%s in the client: %q lacks %q", cmd, out, w)
			}
		}
	}
}

// reachable makes dir and the directories above it, up to the temporary
// directory, searchable by everyone (t.TempDir makes them 0700).
func reachable(t *testing.T, dir string) {
	t.Helper()
	for d := dir; strings.HasPrefix(d, os.TempDir()+"/"); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// setprivCaps turns a unit's capability list ("CAP_NET_ADMIN") into
// setpriv's ("+net_admin").
func setprivCaps(t *testing.T, values []string) string {
	t.Helper()
	var caps []string
	for _, v := range values {
		for _, c := range strings.Fields(v) {
			caps = append(caps, "+"+strings.ToLower(strings.TrimPrefix(c, "CAP_")))
		}
	}
	if len(caps) == 0 {
		t.Fatalf("no capability in %q", values)
	}
	return strings.Join(caps, ",")
}

// freeID returns a user and group id that no account on this machine has,
// in the range systemd gives transient users.
func freeID(t *testing.T) int {
	t.Helper()
	for id := 61900; id < 62000; id++ {
		s := strconv.Itoa(id)
		if exec.Command("getent", "passwd", s).Run() != nil && exec.Command("getent", "group", s).Run() != nil {
			return id
		}
	}
	t.Fatal("no free user id in 61900-61999")
	return 0
}

// pidOf returns the pid of the one process running the program at path.
func pidOf(t *testing.T, path string) int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); err == nil && exe == path {
			pids = append(pids, pid)
		}
	}
	if len(pids) != 1 {
		t.Fatalf("processes running %s: %v, want one", path, pids)
	}
	return pids[0]
}
