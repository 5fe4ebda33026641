package cli

import (
	"strings"
	"testing"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// webV2 changes group web's policy: revision 2.
const webV2 = "kind: Group\nname: web\npolicy:\n  enabled: true\n"

func host(name, group string, state mpfleetv1.SyncState, desired, applied int64, connected bool) *mpfleetv1.HostEvent {
	return &mpfleetv1.HostEvent{Type: mpfleetv1.HostEvent_TYPE_UPSERT, Host: &mpfleetv1.Host{
		Name: "hosts/" + name, Group: "groups/" + group, SyncState: state,
		DesiredRevision: desired, AppliedRevision: applied, Connected: connected,
	}}
}

var synced = &mpfleetv1.HostEvent{Type: mpfleetv1.HostEvent_TYPE_SYNCED}

const (
	inSync   = mpfleetv1.SyncState_SYNC_STATE_IN_SYNC
	applying = mpfleetv1.SyncState_SYNC_STATE_APPLYING
	failed   = mpfleetv1.SyncState_SYNC_STATE_FAILED
)

func TestApplyWaitForHosts(t *testing.T) {
	c := newController(t)
	c.groups.put("web", &mpfleetv1.Group{})
	c.hosts.events = []*mpfleetv1.HostEvent{
		// h1 failed an older revision: that is not a failure of this one.
		host("h1", "web", failed, 1, 1, true),
		host("h2", "web", inSync, 2, 2, true),
		host("h9", "db", failed, 2, 1, true), // another group
		synced,
		host("h1", "web", applying, 2, 1, true),
		host("h1", "web", inSync, 2, 2, true),
	}
	r := c.run(t, webV2, nil, "apply", "-f", "-", "--wait")
	want := `group/web configured (revision 2)
12:00:00 group/web 1/2 hosts in sync at revision 2
12:00:00 group/web 2/2 hosts in sync at revision 2
`
	if r.err != nil || r.stdout != want {
		t.Errorf("apply --wait: %v (stderr %q), printed:\n%s\nwant:\n%s", r.err, r.stderr, r.stdout, want)
	}
	if w := c.hosts.watches; len(w) != 1 || w[0].GetGroup() != "groups/web" {
		t.Errorf("WatchHosts requests %v, want one for groups/web", w)
	}

	// Nothing changed: nothing to wait for.
	r = c.run(t, webV2, nil, "apply", "-f", "-", "--wait")
	if r.err != nil || r.stdout != "group/web unchanged\n" || len(c.hosts.watches) != 1 {
		t.Errorf("unchanged apply --wait: %v, printed %q, %d watches", r.err, r.stdout, len(c.hosts.watches))
	}
}

func TestApplyWaitHostFails(t *testing.T) {
	c := newController(t)
	c.groups.put("web", &mpfleetv1.Group{})
	failing := host("h1", "web", failed, 2, 1, true)
	failing.Host.LastError = "add endpoint 198.18.1.2:\nERANGE"
	c.hosts.events = []*mpfleetv1.HostEvent{host("h1", "web", applying, 2, 1, true), synced, failing}
	r := c.run(t, webV2, nil, "apply", "-f", "-", "--wait")
	wantOneLineError(t, r, 1, `mpfleetctl: group "web": host h1 failed to apply revision 2: add endpoint 198.18.1.2: ERANGE`)
	if want := "group/web configured (revision 2)\n12:00:00 group/web 0/1 hosts in sync at revision 2\n"; r.stdout != want {
		t.Errorf("printed %q, want %q", r.stdout, want)
	}
}

func TestApplyWaitTimesOut(t *testing.T) {
	c := newController(t)
	c.groups.put("web", &mpfleetv1.Group{})
	c.hosts.block = true
	c.hosts.events = []*mpfleetv1.HostEvent{
		host("h1", "web", applying, 2, 1, true),
		host("h2", "web", mpfleetv1.SyncState_SYNC_STATE_DISCONNECTED, 1, 1, false),
		synced,
	}
	r := c.run(t, webV2, nil, "apply", "-f", "-", "--wait", "--timeout", "300ms")
	wantOneLineError(t, r, 1, `mpfleetctl: group "web": timed out after 300ms waiting for its hosts: `+
		`2 of 2 hosts not in sync at revision 2: h1 (applying, applied 1), h2 (disconnected, applied 1)`)
}

// rolloutNamed returns the states of rolloutStates renamed.
func rolloutNamed(name string, end mpfleetv1.Rollout_State) []*mpfleetv1.Rollout {
	states := rolloutStates(end)
	for _, s := range states {
		s.Name = name
	}
	return states
}

func TestApplyWaitFollowsRollouts(t *testing.T) {
	for _, tt := range []struct {
		end     mpfleetv1.Rollout_State
		wantErr string
	}{
		{mpfleetv1.Rollout_STATE_SUCCEEDED, ""},
		{mpfleetv1.Rollout_STATE_ROLLED_BACK, `mpfleetctl: group "web": rollout "web-2" ended rolled_back: ` +
			`1 host failed in batch 1 (max failures 0); 2 moved hosts are back on revision 1`},
	} {
		t.Run(shortEnum(tt.end), func(t *testing.T) {
			c := newController(t)
			c.groups.put("web", &mpfleetv1.Group{RolloutStrategy: &mpfleetv1.RolloutStrategy{CanaryCount: 1}})
			c.rollouts.watches["rollouts/web-2"] = rolloutNamed("rollouts/web-2", tt.end)
			r := c.run(t, webV2, nil, "apply", "-f", "-", "--wait")
			lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
			if lines[0] != "group/web configured (revision 2; rollout/web-2 started)" ||
				!strings.HasPrefix(lines[len(lines)-1], "12:00:00 rollout/web-2 "+shortEnum(tt.end)+" group=web rev=1→2") {
				t.Errorf("apply --wait printed:\n%s", r.stdout)
			}
			if len(c.hosts.watches) != 0 {
				t.Errorf("a group with a rollout was waited for host by host too")
			}
			if tt.wantErr == "" {
				if r.err != nil {
					t.Errorf("apply --wait: %v (stderr %q)", r.err, r.stderr)
				}
				return
			}
			wantOneLineError(t, r, 1, tt.wantErr)
		})
	}
}

// Every group is waited for, and each one that did not converge is named.
func TestApplyWaitReportsEveryGroup(t *testing.T) {
	c := newController(t)
	c.groups.put("web", &mpfleetv1.Group{RolloutStrategy: &mpfleetv1.RolloutStrategy{CanaryCount: 1}})
	c.rollouts.watches["rollouts/web-2"] = rolloutNamed("rollouts/web-2", mpfleetv1.Rollout_STATE_CANCELLED)
	c.hosts.events = []*mpfleetv1.HostEvent{host("h9", "db", failed, 1, 0, true), synced}
	doc := webV2 + "---\nkind: Group\nname: db\n"
	r := c.run(t, doc, nil, "apply", "-f", "-", "--wait")
	wantOneLineError(t, r, 1, `mpfleetctl: 2 of 2 groups did not converge: group "db": host h9 failed to apply revision 1: no error reported; `+
		`group "web": rollout "web-2" ended cancelled: 1 host failed in batch 1 (max failures 0); 2 moved hosts are back on revision 1`)
	if !strings.HasPrefix(r.stdout, "group/web configured (revision 2; rollout/web-2 started)\ngroup/db created (revision 1)\n12:00:00 group/db 0/1 hosts in sync at revision 1\n12:00:00 rollout/web-2 pending") {
		t.Errorf("printed:\n%s", r.stdout)
	}
}

func TestApplyWhileRolloutRuns(t *testing.T) {
	c := newController(t)
	g := c.groups.put("web", &mpfleetv1.Group{RolloutStrategy: &mpfleetv1.RolloutStrategy{CanaryCount: 1}})
	g.ActiveRollout = "rollouts/web-7"
	r := c.run(t, webV2, nil, "apply", "-f", "-")
	wantOneLineError(t, r, 1, `mpfleetctl: group "web" (document 1, line 1): failed precondition: group groups/web: rollouts/web-7 is running; wait for it to end or cancel it`)
	if c.groups.writeCount() != 0 {
		t.Error("a refused change wrote")
	}
	// A change that leaves the policy alone goes through; the running
	// rollout is named as running, not started.
	r = c.run(t, "kind: Group\nname: web\ndescription: web tier\n", nil, "apply", "-f", "-")
	if r.err != nil || r.stdout != "group/web configured (revision 1; rollout/web-7 running)\n" {
		t.Errorf("description change: %v, printed %q", r.err, r.stdout)
	}
	wantOneLineError(t, c.run(t, webV2, nil, "apply", "-f", "-", "--wait", "--dry-run"), 2,
		"mpfleetctl: --wait cannot be combined with --dry-run: nothing is written to wait for (see 'mpfleetctl apply --help')")
	if g := c.groups.groups["groups/web"]; g.GetPolicyRevision() != 1 {
		t.Errorf("group changed to %v", g)
	}
}
