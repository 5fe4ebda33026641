package cli

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

func (a *app) rolloutCommand() *cobra.Command {
	return parentCommand(&cobra.Command{
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
	}, "command",
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
}

func (a *app) rolloutStartCommand() *cobra.Command {
	var f startFlags
	cmd := &cobra.Command{
		Use:               "start GROUP",
		ValidArgsFunction: firstArg(a.completeGroups),
		Short:             "Start a rollout of a group to a policy revision",
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
			st, err := f.strategy(cmd.Flags())
			if err != nil {
				return err
			}
			var rev int64
			if cmd.Flags().Changed("to") {
				if rev, err = parseRevision(f.to); err != nil {
					return err
				}
			}
			return a.startRollout(cmd.Context(), trimName(args[0]), rev, st, f.reason, f.wait)
		},
	}
	f.register(cmd.Flags(), "revision (`REV`) to move the hosts to (default: the group's latest policy revision)")
	return cmd
}

// startRollout creates a rollout of group to rev (0: the latest revision)
// and, with wait, follows it until it ends.
func (a *app) startRollout(ctx context.Context, group string, rev int64, st *mpfleetv1.RolloutStrategy, reason string, wait bool) error {
	rc, err := a.rollouts()
	if err != nil {
		return err
	}
	r, err := unary(ctx, a, fmt.Sprintf("group %q", group), rc.CreateRollout, &mpfleetv1.CreateRolloutRequest{
		Rollout: &mpfleetv1.Rollout{Group: groupName(group), TargetRevision: rev, Strategy: st},
		Reason:  reason,
	})
	if err != nil {
		return err
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
	return unary(ctx, a, fmt.Sprintf("rollout %q", trimName(name)), rc.GetRollout, &mpfleetv1.GetRolloutRequest{Name: name})
}

func (a *app) rolloutListCommand() *cobra.Command {
	return withListFormats(listCommand(&cobra.Command{
		Use:               "list [GROUP]",
		ValidArgsFunction: firstArg(a.completeGroups),
		Short:             "List rollouts, newest first",
		Long: `rollout list lists the rollouts (of GROUP, if given), newest first, following
all pages unless --limit. The table has NAME, GROUP, FROM and TARGET revision,
STATE, STEP (the step in progress, or the last one: canary, batch 1, …),
PROGRESS (hosts done of all the rollout's hosts, e.g. 3/6) and AGE.`,
		Example: `  mpfleetctl rollout list
  mpfleetctl rollout list web --limit 5
  mpfleetctl rollout list -o json`,
		Args: cobra.MaximumNArgs(1),
	}, "rollouts", func(cmd *cobra.Command, args []string, limit int) error {
		rc, err := a.rollouts()
		if err != nil {
			return err
		}
		req := &mpfleetv1.ListRolloutsRequest{}
		if len(args) == 1 {
			req.Group = groupName(args[0])
		}
		rs, err := listPages(cmd.Context(), a, "list rollouts", limit, rc.ListRollouts, req, (*mpfleetv1.ListRolloutsResponse).GetRollouts)
		if err != nil {
			return err
		}
		header := []string{"NAME", "GROUP", "FROM", "TARGET", "STATE", "STEP", "PROGRESS", "AGE"}
		row := func(r *mpfleetv1.Rollout) []string {
			p := progressOf(r)
			prog := ""
			if p.total > 0 {
				prog = fmt.Sprintf("%d/%d", p.done, p.total)
			}
			return []string{trimName(r.GetName()), trimName(r.GetGroup()), revision(r.GetFromRevision()),
				revision(r.GetTargetRevision()), shortEnum(r.GetState()), currentStepLabel(r), prog, a.age(r.GetCreateTime())}
		}
		return resourceList[*mpfleetv1.Rollout]{
			items:      rs,
			wrap:       func(rs []*mpfleetv1.Rollout) proto.Message { return &mpfleetv1.ListRolloutsResponse{Rollouts: rs} },
			header:     header,
			row:        row,
			wideHeader: []string{"MESSAGE"},
			wideRow:    func(r *mpfleetv1.Rollout) []string { return []string{oneLine(r.GetMessage())} },
		}.print(a)
	}))
}

// rolloutControlCommand is pause, resume or cancel.
func (a *app) rolloutControlCommand(verb, done, short, long string) *cobra.Command {
	var reason string
	// control calls the method of verb on the rollout name.
	control := func(rc mpfleetv1.RolloutServiceClient, ctx context.Context, name string, opts ...grpc.CallOption) (*mpfleetv1.Rollout, error) {
		switch verb {
		case "pause":
			return rc.PauseRollout(ctx, &mpfleetv1.PauseRolloutRequest{Name: name, Reason: reason}, opts...)
		case "resume":
			return rc.ResumeRollout(ctx, &mpfleetv1.ResumeRolloutRequest{Name: name, Reason: reason}, opts...)
		}
		return rc.CancelRollout(ctx, &mpfleetv1.CancelRolloutRequest{Name: name, Reason: reason}, opts...)
	}
	cmd := &cobra.Command{
		Use:     verb + " ROLLOUT",
		Short:   short,
		Long:    long + "\n\nIt prints the rollout's state afterwards: rollout/r-7f3a " + done + " (state …).",
		Example: fmt.Sprintf("  mpfleetctl rollout %s r-7f3a --reason \"...\"", verb),
		Args:    exactArgs(1, "ROLLOUT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := rolloutName(args[0])
			r, err := callService(cmd.Context(), a, fmt.Sprintf("rollout %q", trimName(name)), mpfleetv1.NewRolloutServiceClient, control, name)
			if err != nil {
				return err
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
