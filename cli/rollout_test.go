package cli

import (
	"bytes"
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// withGroups returns a controller holding group web at revision 3 (its
// hosts on 3) and group db at revision 1.
func withGroups(t *testing.T) *controller {
	t.Helper()
	c := newController(t)
	c.groups.put("web", &mpfleetv1.Group{})
	c.groups.put("db", &mpfleetv1.Group{})
	g := c.groups.groups["groups/web"]
	g.PolicyRevision, g.DeployedRevision = 3, 3
	return c
}

func TestRolloutStartStrategyFlags(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		target int64
		want   *mpfleetv1.RolloutStrategy
	}{
		{"no strategy flags leave the strategy unset", nil, 0, nil},
		{"counts", []string{"--canary", "2", "--batch", "5"}, 0, &mpfleetv1.RolloutStrategy{CanaryCount: 2, BatchSize: 5}},
		{"percentages", []string{"--canary", "10%", "--batch", "100%"}, 0, &mpfleetv1.RolloutStrategy{CanaryPercent: 10, BatchPercent: 100}},
		{"one flag alone", []string{"--max-failures", "0"}, 0, &mpfleetv1.RolloutStrategy{}},
		{"no-rollback alone", []string{"--no-rollback"}, 0, &mpfleetv1.RolloutStrategy{NoRollback: true}},
		{"every flag", []string{"--to", "2", "--canary", "1", "--batch", "25%", "--bake", "30s", "--step-timeout", "5m", "--max-failures", "2", "--no-rollback"}, 2,
			&mpfleetv1.RolloutStrategy{CanaryCount: 1, BatchPercent: 25, BakeTime: durationpb.New(30 * time.Second),
				StepTimeout: durationpb.New(5 * time.Minute), MaxFailures: 2, NoRollback: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := withGroups(t)
			r := c.run(t, "", nil, append([]string{"rollout", "start", "web", "--reason", "why not"}, tt.args...)...)
			if r.err != nil {
				t.Fatalf("rollout start: %v (stderr %q)", r.err, r.stderr)
			}
			target := tt.target
			if target == 0 {
				target = 3
			}
			if want := "rollout/r1 started (group web, revision 3 → " + revision(target) + ")\n"; r.stdout != want {
				t.Errorf("printed %q, want %q", r.stdout, want)
			}
			want := &mpfleetv1.CreateRolloutRequest{
				Rollout: &mpfleetv1.Rollout{Group: "groups/web", TargetRevision: tt.target, Strategy: tt.want},
				Reason:  "why not",
			}
			if diff := cmp.Diff(want, c.rollouts.creates[0], protocmp.Transform()); diff != "" {
				t.Errorf("CreateRollout request (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRolloutFlagErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--canary", "0"}, `--canary "0": want a number of hosts from 1, or a percentage such as 25%`},
		{[]string{"--canary", "-3"}, `--canary "-3": want a number of hosts from 1, or a percentage such as 25%`},
		{[]string{"--canary", "0%"}, `--canary "0%": want a percentage from 1% to 100%`},
		{[]string{"--batch", "101%"}, `--batch "101%": want a percentage from 1% to 100%`},
		{[]string{"--batch", "half"}, `--batch "half": want a number of hosts from 1, or a percentage such as 25%`},
		{[]string{"--batch", "2.5%"}, `--batch "2.5%": want a percentage from 1% to 100%`},
		{[]string{"--bake", "soon"}, `--bake "soon": want a positive duration such as 30s or 5m`},
		{[]string{"--step-timeout", "0s"}, `--step-timeout "0s": want a positive duration such as 30s or 5m`},
		{[]string{"--max-failures", "-1"}, `--max-failures "-1": want a number of hosts from 0`},
		{[]string{"--to", "0"}, `--to "0": want a revision number from 1`},
		{[]string{"--to", "latest"}, `--to "latest": want a revision number from 1`},
	}
	c := withGroups(t)
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			r := c.run(t, "", nil, append([]string{"rollout", "start", "web"}, tt.args...)...)
			wantOneLineError(t, r, 2, "mpfleetctl: "+tt.want+" (see 'mpfleetctl rollout start --help')")
		})
	}
	wantOneLineError(t, c.run(t, "", nil, "rollback", "web", "--to", "2", "--canary", "0%"), 2,
		`mpfleetctl: --canary "0%": want a percentage from 1% to 100% (see 'mpfleetctl rollback --help')`)
	if m := c.methods(); len(m) != 0 {
		t.Errorf("bad flags made calls %v, want none", m)
	}
}

func TestRollback(t *testing.T) {
	c := withGroups(t)
	r := c.run(t, "", nil, "rollback", "web", "--to", "2", "--reason", "fallbacks")
	if r.err != nil || r.stdout != "rollout/r1 started (group web, revision 3 → 2)\n" {
		t.Fatalf("rollback: %v, printed %q", r.err, r.stdout)
	}
	want := &mpfleetv1.CreateRolloutRequest{Rollout: &mpfleetv1.Rollout{Group: "groups/web", TargetRevision: 2}, Reason: "fallbacks"}
	if diff := cmp.Diff(want, c.rollouts.creates[0], protocmp.Transform()); diff != "" {
		t.Errorf("CreateRollout request (-want +got):\n%s", diff)
	}
	r = c.run(t, "", nil, "rollback", "web", "--to", "1", "--canary", "100%")
	if r.err != nil || c.rollouts.creates[1].GetRollout().GetStrategy().GetCanaryPercent() != 100 {
		t.Errorf("rollback --canary 100%%: %v, request %v", r.err, c.rollouts.creates[1])
	}
	wantOneLineError(t, c.run(t, "", nil, "rollback", "web"), 2,
		"mpfleetctl: rollback: --to REV is required (the revision to go back to; see mpfleetctl revisions web) (see 'mpfleetctl rollback --help')")
	wantOneLineError(t, c.run(t, "", nil, "rollback", "web", "--to", "9"), 1,
		`mpfleetctl: group "web": invalid argument: group groups/web has no revision 9`)
	wantOneLineError(t, c.run(t, "", nil, "rollback", "nope", "--to", "1"), 1, `mpfleetctl: group "nope": not found`)
}

func TestRolloutStatus(t *testing.T) {
	c := withGroups(t)
	states := rolloutStates(mpfleetv1.Rollout_STATE_ROLLED_BACK)
	r := proto.Clone(states[len(states)-2]).(*mpfleetv1.Rollout) // rolling back
	r.Actor, r.Reason = "alice", "second uplink"
	r.MovedHosts = []string{"hosts/h1", "hosts/h2"}
	r.Strategy.StepTimeout = durationpb.New(5 * time.Minute)
	r.Strategy.BakeTime = durationpb.New(90 * time.Second)
	c.rollouts.put(r)

	res := c.run(t, "", nil, "rollout", "status", "r1")
	want := `Name:     r1
Group:    web
Revision: 1 → 2
State:    rolling_back, step 1 (batch 1)
Message:  1 host failed in batch 1 (max failures 0): rolling back 2 moved hosts
Strategy: canary 1, batch 75%, step timeout 5m, bake 1m30s, max failures 0, roll back when halted
Progress: 2/4 hosts done, 1 failed, 1 pending; 2 moved
Created:  2025-11-25T11:58:00Z (2m ago) by alice
Reason:   second uplink
Steps:
  STEP          HOSTS   DONE   FAILED   PENDING   STARTED                ENDED
  0 (canary)    1       1      0        0         2025-11-25T11:58:01Z   2025-11-25T11:58:20Z
  1 (batch 1)   3       1      1        1         2025-11-25T11:58:21Z   -
Failed hosts:
  STEP      HOST   REASON
  batch 1   h3     not IN_SYNC within 5m: add endpoint: ERANGE
`
	if res.err != nil || res.stdout != want {
		t.Errorf("rollout status: %v, printed:\n%s\nwant:\n%s", res.err, res.stdout, want)
	}

	res = c.run(t, "", nil, "rollout", "status", "rollouts/r1", "-o", "json")
	var got mpfleetv1.Rollout
	if err := protojson.Unmarshal([]byte(res.stdout), &got); err != nil || !proto.Equal(&got, r) {
		t.Errorf("rollout status -o json: %v\n%s", err, res.stdout)
	}
	wantOneLineError(t, c.run(t, "", nil, "rollout", "status", "r9"), 1, `mpfleetctl: rollout "r9": not found`)
}

func TestRolloutStatusWatch(t *testing.T) {
	tests := []struct {
		end      mpfleetv1.Rollout_State
		wantOut  string
		wantCode int
		wantErr  string
	}{
		{mpfleetv1.Rollout_STATE_SUCCEEDED, `12:00:00 rollout/r1 pending group=web rev=1→2 step=- done=0/0 failed=0 pending=0
12:00:00 rollout/r1 running group=web rev=1→2 step=canary done=0/4 failed=0 pending=4
12:00:00 rollout/r1 running group=web rev=1→2 step=batch-1 done=2/4 failed=0 pending=2
12:00:00 rollout/r1 succeeded group=web rev=1→2 step=batch-1 done=4/4 failed=0 pending=0
`, 0, ""},
		{mpfleetv1.Rollout_STATE_ROLLED_BACK, `12:00:00 rollout/r1 pending group=web rev=1→2 step=- done=0/0 failed=0 pending=0
12:00:00 rollout/r1 running group=web rev=1→2 step=canary done=0/4 failed=0 pending=4
12:00:00 rollout/r1 running group=web rev=1→2 step=batch-1 done=2/4 failed=0 pending=2
12:00:00 rollout/r1 rolling_back group=web rev=1→2 step=batch-1 done=2/4 failed=1 pending=1 message="1 host failed in batch 1 (max failures 0): rolling back 2 moved hosts"
12:00:00 rollout/r1 host/h3 failed: not IN_SYNC within 5m: add endpoint: ERANGE
12:00:00 rollout/r1 rolled_back group=web rev=1→2 step=batch-1 done=2/4 failed=1 pending=1 message="1 host failed in batch 1 (max failures 0); 2 moved hosts are back on revision 1"
`, 1, `mpfleetctl: rollout "r1" ended rolled_back: 1 host failed in batch 1 (max failures 0); 2 moved hosts are back on revision 1`},
		{mpfleetv1.Rollout_STATE_FAILED, "", 1,
			`mpfleetctl: rollout "r1" ended failed: 1 host failed in batch 1 (max failures 0); 2 moved hosts are back on revision 1`},
	}
	for _, tt := range tests {
		t.Run(shortEnum(tt.end), func(t *testing.T) {
			c := withGroups(t)
			c.rollouts.watches["rollouts/r1"] = rolloutStates(tt.end)
			r := c.run(t, "", nil, "rollout", "status", "r1", "--watch")
			if tt.wantOut != "" && r.stdout != tt.wantOut {
				t.Errorf("rollout status --watch printed:\n%s\nwant:\n%s", r.stdout, tt.wantOut)
			}
			if strings.Contains(r.stdout, "\x1b") {
				t.Errorf("plain output holds escape codes: %q", r.stdout)
			}
			if tt.wantErr == "" {
				if r.err != nil || r.stderr != "" {
					t.Errorf("exit %d, stderr %q; want success", r.code(), r.stderr)
				}
				return
			}
			wantOneLineError(t, r, tt.wantCode, tt.wantErr)
		})
	}
}

func TestRolloutWatchJSON(t *testing.T) {
	c := withGroups(t)
	c.rollouts.watches["rollouts/r1"] = rolloutStates(mpfleetv1.Rollout_STATE_SUCCEEDED)
	r := c.run(t, "", nil, "rollout", "status", "r1", "--watch", "-o", "json")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.err != nil || len(lines) != 5 {
		t.Fatalf("--watch -o json: %v, %d lines:\n%s", r.err, len(lines), r.stdout)
	}
	var last mpfleetv1.Rollout
	if err := protojson.Unmarshal([]byte(lines[4]), &last); err != nil || last.GetState() != mpfleetv1.Rollout_STATE_SUCCEEDED {
		t.Errorf("last line %q: %v", lines[4], err)
	}
}

// A watch that ends before the rollout does is checked with GetRollout.
func TestRolloutWatchEndsEarly(t *testing.T) {
	c := withGroups(t)
	states := rolloutStates(mpfleetv1.Rollout_STATE_SUCCEEDED)
	c.rollouts.watches["rollouts/r1"] = states[:2]
	c.rollouts.put(states[1])
	r := c.run(t, "", nil, "rollout", "status", "r1", "--watch")
	wantOneLineError(t, r, 1, `mpfleetctl: rollout "r1": the controller ended the watch while the rollout is running`)

	c.rollouts.mu.Lock()
	c.rollouts.rollouts[0] = states[len(states)-1]
	c.rollouts.mu.Unlock()
	r = c.run(t, "", nil, "rollout", "status", "r1", "--watch")
	if r.err != nil || !strings.HasSuffix(r.stdout, "rollout/r1 succeeded group=web rev=1→2 step=batch-1 done=4/4 failed=0 pending=0\n") {
		t.Errorf("watch ended early, rollout then succeeded: %v, printed:\n%s", r.err, r.stdout)
	}
}

func TestRolloutWatchInterrupted(t *testing.T) {
	c := withGroups(t)
	c.rollouts.watches["rollouts/r1"] = rolloutStates(mpfleetv1.Rollout_STATE_SUCCEEDED)[:2]
	c.rollouts.block = true
	c.rollouts.sent = make(chan struct{})
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		<-c.rollouts.sent
		cancel()
	}()
	var out, errb bytes.Buffer
	err := run(ctx, []string{"--controller", c.addr, "rollout", "status", "r1", "--watch"}, stdio{in: strings.NewReader(""), out: &out, err: &errb},
		func(string) string { return "" }, func() time.Time { return testNow })
	if ExitCode(err) != 1 || !strings.Contains(errb.String(), "(the rollout goes on)") {
		t.Errorf("interrupted watch: exit %d, stderr %q; want 1 and that the rollout goes on", ExitCode(err), errb.String())
	}
}

func TestRolloutWatchLive(t *testing.T) {
	c := withGroups(t)
	c.rollouts.watches["rollouts/r1"] = rolloutStates(mpfleetv1.Rollout_STATE_ROLLED_BACK)
	var out, errb bytes.Buffer
	err := run(t.Context(), []string{"--controller", c.addr, "rollout", "status", "r1", "--watch"},
		stdio{in: strings.NewReader(""), out: &out, err: &errb, tty: true, width: 72},
		func(string) string { return "" }, func() time.Time { return testNow })
	if ExitCode(err) != 1 {
		t.Errorf("exit %d, want 1 (rolled back)", ExitCode(err))
	}
	// Every frame after the first moves up over the one before and
	// clears it.
	frames := strings.Split(out.String(), "\x1b[J")
	if len(frames) < 6 || !strings.HasPrefix(out.String(), "\x1b[J") {
		t.Fatalf("got %d frames, want one per state:\n%q", len(frames)-1, out.String())
	}
	for i, f := range frames[1 : len(frames)-1] {
		if up := strings.Count(f, "\n"); !strings.HasSuffix(f, "\x1b["+strconv.Itoa(up)+"A") {
			t.Errorf("frame %d has %d lines but the next one does not move up as many: %q", i, up, f)
		}
	}
	last := frames[len(frames)-1]
	want := `rollout/r1  group web  revision 1 → 2  rolled_back  elapsed 2m
[===============xxxxxxxx       ]  2/4 hosts done, 1 failed, 1 pending
  STEP          HOSTS   DONE   FAILED   PENDING
  0 (canary)    1       1      0        0
  1 (batch 1)   3       1      1        1
  host/h3 failed: not IN_SYNC within 5m: add endpoint: ERANGE
  1 host failed in batch 1 (max failures 0); 2 moved hosts are back on…
`
	if last != want {
		t.Errorf("last frame:\n%s\nwant:\n%s", last, want)
	}
}

func TestLiveFrameMarksCurrentStepAndWindows(t *testing.T) {
	a := &app{now: func() time.Time { return testNow }}
	r := &mpfleetv1.Rollout{Name: "rollouts/big", Group: "groups/web", FromRevision: 4, TargetRevision: 5,
		State: mpfleetv1.Rollout_STATE_RUNNING, CurrentStep: 10, CreateTime: timestamppb.New(testNow.Add(-133 * time.Second))}
	for i := range int32(20) {
		s := &mpfleetv1.RolloutStep{Index: i, Hosts: []string{"hosts/a" + strconv.Itoa(int(i))}}
		if i < 10 {
			s.SucceededHosts = s.Hosts
		}
		r.Steps = append(r.Steps, s)
	}
	got := strings.Join(a.liveFrame(r, 0), "\n")
	want := `rollout/big  group web  revision 4 → 5  running  elapsed 2m13s
[===============               ]  10/20 hosts done, 0 failed, 10 pending
  … 6 steps before
  STEP            HOSTS   DONE   FAILED   PENDING
  6 (batch 6)     1       1      0        0
  7 (batch 7)     1       1      0        0
  8 (batch 8)     1       1      0        0
  9 (batch 9)     1       1      0        0
> 10 (batch 10)   1       0      0        1
  11 (batch 11)   1       0      0        1
  12 (batch 12)   1       0      0        1
  13 (batch 13)   1       0      0        1
  … 6 steps after`
	if got != want {
		t.Errorf("frame:\n%s\nwant:\n%s", got, want)
	}
}

func TestRolloutList(t *testing.T) {
	c := withGroups(t)
	states := rolloutStates(mpfleetv1.Rollout_STATE_ROLLED_BACK)
	old := proto.Clone(states[len(states)-1]).(*mpfleetv1.Rollout)
	old.Name, old.CreateTime = "rollouts/r0", timestamppb.New(testNow.Add(-50*time.Hour))
	c.rollouts.put(old)
	c.rollouts.put(&mpfleetv1.Rollout{Name: "rollouts/d1", Group: "groups/db", FromRevision: 1, TargetRevision: 1,
		State: mpfleetv1.Rollout_STATE_PENDING, CreateTime: timestamppb.New(testNow.Add(-time.Hour))})
	running := states[3]
	running.CreateTime = timestamppb.New(testNow.Add(-90 * time.Second))
	c.rollouts.put(running)

	r := c.run(t, "", nil, "rollout", "list")
	want := `NAME   GROUP   FROM   TARGET   STATE         STEP      PROGRESS   AGE
r1     web     1      2        running       batch 1   2/4        1m
d1     db      1      1        pending       -         -          1h
r0     web     1      2        rolled_back   batch 1   2/4        2d
`
	if r.err != nil || r.stdout != want {
		t.Errorf("rollout list: %v, printed:\n%s\nwant:\n%s", r.err, r.stdout, want)
	}
	r = c.run(t, "", nil, "rollout", "list", "web", "-o", "json")
	var list mpfleetv1.ListRolloutsResponse
	if err := protojson.Unmarshal([]byte(r.stdout), &list); err != nil || len(list.GetRollouts()) != 2 ||
		list.GetRollouts()[0].GetName() != "rollouts/r1" || list.GetRollouts()[1].GetName() != "rollouts/r0" {
		t.Errorf("rollout list web -o json: %v\n%s", err, r.stdout)
	}
	wantOneLineError(t, c.run(t, "", nil, "rollout", "list", "web", "db"), 2,
		`mpfleetctl: accepts at most 1 arg(s), received 2 (see 'mpfleetctl rollout list --help')`)
}

func TestRolloutPauseResumeCancel(t *testing.T) {
	c := withGroups(t)
	c.rollouts.put(&mpfleetv1.Rollout{Name: "rollouts/r1", Group: "groups/web", State: mpfleetv1.Rollout_STATE_RUNNING})
	for _, step := range []struct{ args, want string }{
		{"pause r1 --reason look", "rollout/r1 paused (state paused)\n"},
		{"resume rollouts/r1", "rollout/r1 resumed (state running)\n"},
		{"cancel r1 --reason enough", "rollout/r1 cancelled (state rolling_back)\n"},
	} {
		r := c.run(t, "", nil, append([]string{"rollout"}, strings.Fields(step.args)...)...)
		if r.err != nil || r.stdout != step.want {
			t.Errorf("rollout %s: %v, printed %q, want %q", step.args, r.err, r.stdout, step.want)
		}
	}
	want := []string{"pause rollouts/r1 look", "resume rollouts/r1 ", "cancel rollouts/r1 enough"}
	if !cmp.Equal(c.rollouts.controls, want) {
		t.Errorf("calls %q, want %q", c.rollouts.controls, want)
	}
	wantOneLineError(t, c.run(t, "", nil, "rollout", "resume", "r1"), 1,
		`mpfleetctl: rollout "r1": failed precondition: rollouts/r1 is STATE_ROLLING_BACK`)
	wantOneLineError(t, c.run(t, "", nil, "rollout"), 2,
		`mpfleetctl: rollout: missing command (one of: start, status, list, pause, resume, cancel) (see 'mpfleetctl rollout --help')`)
}

func TestRolloutStartWait(t *testing.T) {
	c := withGroups(t)
	c.rollouts.watches["rollouts/r1"] = rolloutStates(mpfleetv1.Rollout_STATE_FAILED)
	r := c.run(t, "", nil, "rollout", "start", "web", "--wait")
	if !strings.HasPrefix(r.stdout, "rollout/r1 started (group web, revision 3 → 3)\n12:00:00 rollout/r1 pending") {
		t.Errorf("rollout start --wait printed:\n%s", r.stdout)
	}
	wantOneLineError(t, r, 1, `mpfleetctl: rollout "r1" ended failed: 1 host failed in batch 1 (max failures 0); 2 moved hosts are back on revision 1`)
}

// seedDocsRollouts gives the fake controller the groups and rollouts the
// samples of docs/cli.md show (see TestDocsSampleOutput): group web moving
// from revision 4 to 5 with rollout r-7f3a, which is rolling back, and
// group db, whose rollout d-2 took it to revision 2.
func seedDocsRollouts(c *controller) {
	ago := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(testNow.Add(-d)) }
	db := c.groups.put("db", &mpfleetv1.Group{
		Selector: &mpfleetv1.Selector{MatchLabels: map[string]string{"role": "db"}},
		Policy: &mpfleetv1.MultipathPolicy{Endpoints: []*mpfleetv1.EndpointRule{
			{Cidr: "198.18.0.0/15", Flags: []mpfleetv1.EndpointFlag{mpfleetv1.EndpointFlag_ENDPOINT_FLAG_SIGNAL}},
		}},
	})
	db.PolicyRevision, db.DeployedRevision, db.UpdateTime = 2, 2, ago(3*time.Minute)
	web := c.groups.put("web", &mpfleetv1.Group{
		Selector: &mpfleetv1.Selector{MatchLabels: map[string]string{"role": "web"}},
		Policy: &mpfleetv1.MultipathPolicy{
			Endpoints: []*mpfleetv1.EndpointRule{{Interface: "eth*", Flags: []mpfleetv1.EndpointFlag{mpfleetv1.EndpointFlag_ENDPOINT_FLAG_SUBFLOW}}},
			Routing:   &mpfleetv1.Routing{Enabled: true},
		},
		RolloutStrategy: &mpfleetv1.RolloutStrategy{CanaryCount: 1, BatchPercent: 75},
	})
	web.PolicyRevision, web.DeployedRevision, web.ActiveRollout, web.UpdateTime = 5, 4, "rollouts/r-7f3a", ago(time.Minute)

	states := rolloutStates(mpfleetv1.Rollout_STATE_ROLLED_BACK)
	old := proto.Clone(states[len(states)-1]).(*mpfleetv1.Rollout)
	old.Name, old.FromRevision, old.TargetRevision, old.CreateTime = "rollouts/r-5e10", 3, 4, ago(50*time.Hour)
	c.rollouts.put(old)
	done := proto.Clone(rolloutStates(mpfleetv1.Rollout_STATE_SUCCEEDED)[4]).(*mpfleetv1.Rollout)
	done.Name, done.Group, done.CreateTime = "rollouts/d-2", "groups/db", ago(time.Hour)
	done.Steps[1].Hosts, done.Steps[1].SucceededHosts = done.Steps[1].Hosts[:2], done.Steps[1].Hosts[:2]
	c.rollouts.put(done)
	r := proto.Clone(states[len(states)-2]).(*mpfleetv1.Rollout) // rolling back
	r.Name, r.FromRevision, r.TargetRevision = "rollouts/r-7f3a", 4, 5
	r.Actor, r.Reason = "alice", "second uplink"
	r.MovedHosts = []string{"hosts/h1", "hosts/h2"}
	r.Strategy.StepTimeout = durationpb.New(5 * time.Minute)
	r.Strategy.BakeTime = durationpb.New(90 * time.Second)
	c.rollouts.put(r)
}

// Output to a pipe or a file is not a terminal: progress is plain lines.
func TestPipeIsNotATerminal(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if _, tty := terminalWidth(w.Fd()); tty {
		t.Error("a pipe counts as a terminal")
	}
}
