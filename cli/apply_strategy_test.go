package cli

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// TestApplyRolloutStrategy: a manifest's rolloutStrategy is sent (and only
// then is rollout_strategy in the mask); a manifest without one leaves the
// group's strategy alone; a strategy change alone is an update.
func TestApplyRolloutStrategy(t *testing.T) {
	c := newController(t)
	withStrategy := strings.Replace(twoGroups, "policy:\n", "rolloutStrategy:\n  canaryCount: 1\n  batchPercent: 50\n  bakeTime: 30s\npolicy:\n", 1)
	if r := c.run(t, withStrategy, nil, "apply", "-f", "-"); r.err != nil {
		t.Fatalf("apply: %v (stderr %q)", r.err, r.stderr)
	}
	g := c.groups.groups["groups/web"]
	if s := g.GetRolloutStrategy(); s.GetCanaryCount() != 1 || s.GetBatchPercent() != 50 || s.GetBakeTime().AsDuration().Seconds() != 30 {
		t.Fatalf("stored strategy %v", s)
	}
	// The same file again: unchanged.
	if r := c.run(t, withStrategy, nil, "apply", "-f", "-"); r.err != nil || !strings.Contains(r.stdout, "group/web unchanged") {
		t.Fatalf("second apply: %v, %q", r.err, r.stdout)
	}
	// Only the strategy changes: an update with rollout_strategy in the mask.
	changed := strings.Replace(withStrategy, "batchPercent: 50", "batchPercent: 25", 1)
	if r := c.run(t, changed, nil, "apply", "-f", "-"); r.err != nil || !strings.Contains(r.stdout, "group/web configured") {
		t.Fatalf("strategy change: %v, %q", r.err, r.stdout)
	}
	u := c.groups.updates[len(c.groups.updates)-1]
	if !cmp.Equal(u.GetUpdateMask().GetPaths(), []string{"description", "selector", "policy", "rollout_strategy"}) {
		t.Errorf("mask %v", u.GetUpdateMask().GetPaths())
	}
	// A manifest without a strategy leaves it.
	if r := c.run(t, twoGroups, nil, "apply", "-f", "-"); r.err != nil {
		t.Fatalf("apply without a strategy: %v", r.err)
	}
	if s := c.groups.groups["groups/web"].GetRolloutStrategy(); s.GetBatchPercent() != 25 {
		t.Errorf("strategy after a manifest without one: %v", s)
	}
}

func TestDeleteHost(t *testing.T) {
	c := newController(t)
	c.hosts.hosts = []*mpfleetv1.Host{{Name: "hosts/web-7"}, {Name: "hosts/web-8", Connected: true}}
	if r := c.run(t, "", nil, "delete", "host", "web-7", "--reason", "gone"); r.err != nil || r.stdout != "host/web-7 deleted\n" {
		t.Fatalf("delete host: %v, %q", r.err, r.stdout)
	}
	wantOneLineError(t, c.run(t, "", nil, "delete", "host", "hosts/web-8"), 1, `mpfleetctl: host "web-8": failed precondition: host "hosts/web-8" is connected`)
}

func TestLabelHost(t *testing.T) {
	c := newController(t)
	c.hosts.hosts = []*mpfleetv1.Host{{Name: "hosts/web-7", Labels: map[string]string{"role": "web", "zone": "a"}}}
	if r := c.run(t, "", nil, "label", "host", "web-7", "rack=r1", "zone-", "--reason", "moved"); r.err != nil || r.stdout != "host/web-7 labeled (rack=r1,role=web)\n" {
		t.Fatalf("label: %v, %q", r.err, r.stdout)
	}
	u := c.hosts.labelled[0]
	if !cmp.Equal(u.GetHost().GetLabels(), map[string]string{"role": "web", "rack": "r1"}) || u.GetReason() != "moved" ||
		!cmp.Equal(u.GetUpdateMask().GetPaths(), []string{"labels"}) {
		t.Errorf("request %v", u)
	}
	r := c.run(t, "", nil, "label", "host", "web-7", "role=db")
	if r.err == nil || !strings.Contains(r.stderr, "--overwrite") {
		t.Errorf("changing a label without --overwrite: %v, %q", r.err, r.stderr)
	}
	if r := c.run(t, "", nil, "label", "host", "web-7", "role=db", "--overwrite"); r.err != nil {
		t.Fatal(r.err)
	}
	// A host not yet connected can be labelled.
	if r := c.run(t, "", nil, "label", "host", "new-1", "role=web"); r.err != nil {
		t.Fatal(r.err)
	}
}

// TestManifestRefusesWhatTheAPIRefuses: the group-id rule is the API's; a
// file that cannot be read whole is refused, not applied in part.
func TestManifestRefusesWhatTheAPIRefuses(t *testing.T) {
	if _, err := parseManifests("x.yaml", []byte("kind: Group\nname: a-\n")); err == nil {
		t.Error("name a- accepted; the API refuses it")
	}
	huge := "kind: Group\nname: web\n# " + strings.Repeat("x", 17<<20) + "\n---\nkind: Group\nname: db\n"
	if _, err := parseManifests("x.yaml", []byte(huge)); err == nil {
		t.Error("a file with a line over 16 MiB was accepted in part")
	}
}
