package cli

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/durationpb"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

func (a *app) rollouts() (mpfleetv1.RolloutServiceClient, error) {
	conn, err := a.client()
	if err != nil {
		return nil, err
	}
	return mpfleetv1.NewRolloutServiceClient(conn), nil
}

func (a *app) rolloutCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "rollout COMMAND",
		Aliases: []string{"rollouts"},
		Short:   "Start, follow, pause, resume and cancel rollouts",
		Long: `A rollout moves a group's hosts from one policy revision to another in steps:
a canary step, then batches. Each step's hosts must report IN_SYNC and
healthy within the step timeout, and stay so for the bake time; when more
hosts fail than the strategy tolerates, the rollout halts (FAILED) and, unless
the strategy says no_rollback, moves the hosts it moved back (ROLLING_BACK,
then ROLLED_BACK).

A group with a rollout_strategy starts a rollout by itself on every policy
change (mpfleetctl apply says so and "apply --wait" follows it); "rollout
start" starts one explicitly, "rollback" starts one to an older revision.

States: pending, running, paused, succeeded, failed, cancelled, rolling_back,
rolled_back. A rollout has ended when it is succeeded, failed, cancelled or
rolled_back.`,
		Example: `  mpfleetctl rollout start web --canary 1 --batch 25% --wait
  mpfleetctl rollout status r-7f3a --watch
  mpfleetctl rollout list web
  mpfleetctl rollout pause r-7f3a --reason "investigating fallbacks"`,
		RunE: parentRunE("command", "start, status, list, pause, resume, cancel"),
	}
	cmd.AddCommand(
		a.rolloutStartCommand(),
		a.rolloutStatusCommand(),
		a.rolloutListCommand(),
		a.rolloutControlCommand("pause", "paused", "Pause a running rollout before its next step",
			`rollout pause stops a running rollout before its next step: hosts already
moved stay where they are. "rollout resume" continues it.`),
		a.rolloutControlCommand("resume", "resumed", "Resume a paused rollout",
			`rollout resume continues a paused rollout with its next step.`),
		a.rolloutControlCommand("cancel", "cancelled", "Cancel a rollout",
			`rollout cancel stops a rollout for good. The hosts it moved are moved back
to the revision they ran before (the rollout goes ROLLING_BACK, then
ROLLED_BACK) unless its strategy says no_rollback, in which case they stay on
the target revision (CANCELLED).`),
	)
	return cmd
}

// strategyFlags are the flags that build a RolloutStrategy.
type strategyFlags struct {
	canary, batch, bake, stepTimeout, maxFailures string
	noRollback                                    bool
}

func (s *strategyFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&s.canary, "canary", "", "hosts in the canary step (`N|N%`: a number of hosts, or a percentage of the group's)")
	fs.StringVar(&s.batch, "batch", "", "hosts per batch after the canary (`N|N%`: a number of hosts, or a percentage of the group's)")
	fs.StringVar(&s.bake, "bake", "", "how long (`DURATION`) a host must stay IN_SYNC and healthy at the target to count as succeeded, e.g. 30s")
	fs.StringVar(&s.stepTimeout, "step-timeout", "", "how long (`DURATION`) a step's hosts have to succeed, e.g. 5m")
	fs.StringVar(&s.maxFailures, "max-failures", "", "how many failed hosts (`N`) are tolerated before the rollout halts")
	fs.BoolVar(&s.noRollback, "no-rollback", false, "when halted, leave moved hosts on the target revision instead of moving them back")
}

// strategyFlagNames are the flags of strategyFlags.
var strategyFlagNames = []string{"canary", "batch", "bake", "step-timeout", "max-failures", "no-rollback"}

// strategy returns the strategy the flags given describe, or nil when none
// is given: the controller then uses the group's rollout_strategy, or its
// default.
func (s *strategyFlags) strategy(fs *pflag.FlagSet) (*mpfleetv1.RolloutStrategy, error) {
	given := false
	for _, n := range strategyFlagNames {
		given = given || fs.Changed(n)
	}
	if !given {
		return nil, nil
	}
	st := &mpfleetv1.RolloutStrategy{NoRollback: s.noRollback}
	var err error
	if fs.Changed("canary") {
		n, pct, err := parseCountOrPercent("canary", s.canary)
		if err != nil {
			return nil, err
		}
		if pct {
			st.CanaryPercent = n
		} else {
			st.CanaryCount = n
		}
	}
	if fs.Changed("batch") {
		n, pct, err := parseCountOrPercent("batch", s.batch)
		if err != nil {
			return nil, err
		}
		if pct {
			st.BatchPercent = n
		} else {
			st.BatchSize = n
		}
	}
	if fs.Changed("bake") {
		if st.BakeTime, err = parseStrategyDuration("bake", s.bake); err != nil {
			return nil, err
		}
	}
	if fs.Changed("step-timeout") {
		if st.StepTimeout, err = parseStrategyDuration("step-timeout", s.stepTimeout); err != nil {
			return nil, err
		}
	}
	if fs.Changed("max-failures") {
		n, err := strconv.ParseInt(strings.TrimSpace(s.maxFailures), 10, 32)
		if err != nil || n < 0 {
			return nil, usagef("--max-failures %q: want a number of hosts from 0", s.maxFailures)
		}
		st.MaxFailures = int32(n)
	}
	return st, nil
}

// parseCountOrPercent parses the value of --canary or --batch: N (hosts,
// from 1) or N% (of the group's hosts, 1 to 100).
func parseCountOrPercent(flag, s string) (n int32, percent bool, err error) {
	t := strings.TrimSpace(s)
	if p, ok := strings.CutSuffix(t, "%"); ok {
		v, err := strconv.ParseInt(strings.TrimSpace(p), 10, 32)
		if err != nil || v < 1 || v > 100 {
			return 0, false, usagef("--%s %q: want a percentage from 1%% to 100%%", flag, s)
		}
		return int32(v), true, nil
	}
	v, err := strconv.ParseInt(t, 10, 32)
	if err != nil || v < 1 {
		return 0, false, usagef("--%s %q: want a number of hosts from 1, or a percentage such as 25%%", flag, s)
	}
	return int32(v), false, nil
}

func parseStrategyDuration(flag, s string) (*durationpb.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil || d <= 0 {
		return nil, usagef("--%s %q: want a positive duration such as 30s or 5m", flag, s)
	}
	return durationpb.New(d), nil
}

// parseRevision parses the value of --to.
func parseRevision(s string) (int64, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n < 1 {
		return 0, usagef("--to %q: want a revision number from 1", s)
	}
	return n, nil
}

func (a *app) rolloutStartCommand() *cobra.Command {
	var (
		sf         strategyFlags
		to, reason string
		wait       bool
	)
	cmd := &cobra.Command{
		Use:   "start GROUP",
		Short: "Start a rollout of a group to a policy revision",
		Long: `rollout start moves the hosts of GROUP from the revision they run to --to
(default: the group's latest policy revision) in steps, and prints the new
rollout's name:
  rollout/r-7f3a started (group web, revision 4 → 5)

The strategy flags say how. With none of them the controller uses the
group's rollout_strategy, or its default (one canary host, then the rest);
with any of them the rollout gets a strategy made of exactly the flags given
(what is not given is left to the controller's defaults):

  --canary N|N%        hosts in the canary step: a number, or a percentage of
                       the group's hosts
  --batch N|N%         hosts per batch after the canary
  --step-timeout DUR   how long a step's hosts have to report IN_SYNC and
                       healthy
  --bake DUR           how long a host must stay so before it counts as
                       succeeded (controller default 10s)
  --max-failures N     failed hosts tolerated before the rollout halts
  --no-rollback        when halted, keep moved hosts on the new revision

With --wait it then follows the rollout as "rollout status --watch" does and
exits non-zero unless it ends succeeded.`,
		Example: `  mpfleetctl rollout start web
  mpfleetctl rollout start web --to 7 --canary 2 --batch 25% --bake 1m --reason "second uplink"
  mpfleetctl rollout start web --canary 10% --max-failures 1 --wait`,
		Args: exactArgs(1, "GROUP"),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := sf.strategy(cmd.Flags())
			if err != nil {
				return err
			}
			var rev int64
			if cmd.Flags().Changed("to") {
				if rev, err = parseRevision(to); err != nil {
					return err
				}
			}
			return a.startRollout(cmd.Context(), trimName(args[0]), rev, st, reason, wait)
		},
	}
	sf.register(cmd.Flags())
	cmd.Flags().StringVar(&to, "to", "", "revision (`REV`) to move the hosts to (default: the group's latest policy revision)")
	cmd.Flags().StringVar(&reason, "reason", "", "why (recorded in the rollout and the audit log)")
	cmd.Flags().BoolVar(&wait, "wait", false, "follow the rollout until it ends; exit non-zero unless it succeeded")
	return cmd
}

// startRollout creates a rollout of group to rev (0: the latest revision)
// and, with wait, follows it until it ends.
func (a *app) startRollout(ctx context.Context, group string, rev int64, st *mpfleetv1.RolloutStrategy, reason string, wait bool) error {
	rc, err := a.rollouts()
	if err != nil {
		return err
	}
	cctx, cancel := a.callCtx(ctx)
	r, err := rc.CreateRollout(cctx, &mpfleetv1.CreateRolloutRequest{
		Rollout: &mpfleetv1.Rollout{Group: groupName(group), TargetRevision: rev, Strategy: st},
		Reason:  reason,
	})
	cancel()
	if err != nil {
		return fmt.Errorf("group %q: %w", group, a.rpcErr(err))
	}
	if a.output == "table" || !wait {
		// With --wait, -o json prints the rollout's states as JSON lines.
		err := a.printObject(r, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "rollout/%s started (group %s, revision %s → %s)\n", terminalSafe(trimName(r.GetName())),
				terminalSafe(trimName(r.GetGroup())), revision(r.GetFromRevision()), revision(r.GetTargetRevision()))
			return err
		})
		if err != nil || !wait {
			return err
		}
	}
	return a.waitRollout(ctx, rc, r.GetName(), a.followMode(false))
}

// waitRollout follows a rollout until it ends and returns an error unless
// it succeeded.
func (a *app) waitRollout(ctx context.Context, rc mpfleetv1.RolloutServiceClient, name string, mode followMode) error {
	r, err := a.followRollout(ctx, rc, name, mode)
	if err != nil {
		return err
	}
	return rolloutOutcome(r)
}

func (a *app) rolloutStatusCommand() *cobra.Command {
	var watch bool
	cmd := &cobra.Command{
		Use:   "status ROLLOUT",
		Short: "Show a rollout, or follow it until it ends",
		Long: `rollout status shows a rollout (its id, or rollouts/{id}): the group, the
revisions it moves the hosts from and to, its state, the message that says
why it halted, its strategy, and one line per step: the step (0 is the
canary, then batch 1, 2, …), its hosts, how many are done (IN_SYNC and
healthy at the target), failed and pending, and when it started and ended;
then each failed host with the reason.

With --watch it follows the rollout until it ends. On a terminal the display
is redrawn in place: per step done/failed/pending, a progress bar over all
hosts and the elapsed time. When stdout is not a terminal it prints one plain
line per change, without escape codes:
  12:00:05 rollout/r-7f3a running group=web rev=4→5 step=batch-1 done=3/6 failed=0 pending=3
and one line per host that fails:
  12:00:09 rollout/r-7f3a host/web-5 failed: not IN_SYNC within 5m
With -o json (or yaml) it prints every state of the rollout as a JSON line
(a YAML document).

--watch exits 0 when the rollout ends succeeded, and 1 when it ends failed,
cancelled or rolled_back, saying which and why. Interrupting the watch does
not stop the rollout.`,
		Example: `  mpfleetctl rollout status r-7f3a
  mpfleetctl rollout status rollouts/r-7f3a --watch
  mpfleetctl rollout status r-7f3a -o yaml`,
		Args: exactArgs(1, "ROLLOUT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			rc, err := a.rollouts()
			if err != nil {
				return err
			}
			if watch {
				return a.waitRollout(cmd.Context(), rc, rolloutName(args[0]), a.followMode(false))
			}
			r, err := a.getRollout(cmd.Context(), rc, rolloutName(args[0]))
			if err != nil {
				return err
			}
			return a.printObject(r, func(w io.Writer) error { return a.describeRollout(w, r) })
		},
	}
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "follow the rollout until it ends; exit non-zero unless it succeeded")
	return cmd
}

func (a *app) getRollout(ctx context.Context, rc mpfleetv1.RolloutServiceClient, name string) (*mpfleetv1.Rollout, error) {
	cctx, cancel := a.callCtx(ctx)
	defer cancel()
	r, err := rc.GetRollout(cctx, &mpfleetv1.GetRolloutRequest{Name: name})
	if err != nil {
		return nil, fmt.Errorf("rollout %q: %w", trimName(name), a.rpcErr(err))
	}
	return r, nil
}

func (a *app) rolloutListCommand() *cobra.Command {
	var limit int
	cmd := &cobra.Command{
		Use:   "list [GROUP]",
		Short: "List rollouts, newest first",
		Long: `rollout list lists the rollouts (of GROUP, if given), newest first, following
all pages unless --limit. The table has NAME, GROUP, FROM and TARGET revision,
STATE, STEP (the step in progress, or the last one: canary, batch 1, …),
PROGRESS (hosts done of all the rollout's hosts, e.g. 3/6) and AGE.`,
		Example: `  mpfleetctl rollout list
  mpfleetctl rollout list web --limit 5
  mpfleetctl rollout list -o json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rc, err := a.rollouts()
			if err != nil {
				return err
			}
			req := &mpfleetv1.ListRolloutsRequest{}
			if len(args) == 1 {
				req.Group = groupName(args[0])
			}
			rs, err := collectPages(cmd.Context(), a, limit, func(ctx context.Context, size int32, token string) ([]*mpfleetv1.Rollout, string, error) {
				req.PageSize, req.PageToken = size, token
				resp, err := rc.ListRollouts(ctx, req)
				return resp.GetRollouts(), resp.GetNextPageToken(), err
			})
			if err != nil {
				return fmt.Errorf("list rollouts: %w", err)
			}
			return a.printObject(&mpfleetv1.ListRolloutsResponse{Rollouts: rs}, func(w io.Writer) error {
				t := newTable(w, "NAME", "GROUP", "FROM", "TARGET", "STATE", "STEP", "PROGRESS", "AGE")
				for _, r := range rs {
					p := progressOf(r)
					prog := ""
					if p.total > 0 {
						prog = fmt.Sprintf("%d/%d", p.done, p.total)
					}
					t.row(trimName(r.GetName()), trimName(r.GetGroup()), revision(r.GetFromRevision()),
						revision(r.GetTargetRevision()), shortEnum(r.GetState()), currentStepLabel(r), prog, a.age(r.GetCreateTime()))
				}
				return t.flush()
			})
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 0, "list at most N rollouts (0: all)")
	return cmd
}

// rolloutControlCommand is pause, resume or cancel.
func (a *app) rolloutControlCommand(verb, done, short, long string) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:     verb + " ROLLOUT",
		Short:   short,
		Long:    long + "\n\nIt prints the rollout's state afterwards: rollout/r-7f3a " + done + " (state …).",
		Example: fmt.Sprintf("  mpfleetctl rollout %s r-7f3a --reason \"...\"", verb),
		Args:    exactArgs(1, "ROLLOUT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			rc, err := a.rollouts()
			if err != nil {
				return err
			}
			name := rolloutName(args[0])
			ctx, cancel := a.callCtx(cmd.Context())
			defer cancel()
			var r *mpfleetv1.Rollout
			switch verb {
			case "pause":
				r, err = rc.PauseRollout(ctx, &mpfleetv1.PauseRolloutRequest{Name: name, Reason: reason})
			case "resume":
				r, err = rc.ResumeRollout(ctx, &mpfleetv1.ResumeRolloutRequest{Name: name, Reason: reason})
			default:
				r, err = rc.CancelRollout(ctx, &mpfleetv1.CancelRolloutRequest{Name: name, Reason: reason})
			}
			if err != nil {
				return fmt.Errorf("rollout %q: %w", trimName(name), a.rpcErr(err))
			}
			return a.printObject(r, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "rollout/%s %s (state %s)\n", terminalSafe(trimName(r.GetName())), done, shortEnum(r.GetState()))
				return err
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (recorded in the audit log)")
	return cmd
}
