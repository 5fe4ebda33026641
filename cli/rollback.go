package cli

import (
	"github.com/spf13/cobra"
)

func (a *app) rollbackCommand() *cobra.Command {
	var f startFlags
	cmd := &cobra.Command{
		Use:               "rollback GROUP --to REV",
		ValidArgsFunction: firstArg(a.completeGroups),
		Short:             "Roll a group's hosts back to an older policy revision",
		Long: `rollback starts a rollout that moves the hosts of GROUP to the older policy
revision --to (required; "mpfleetctl revisions GROUP" lists them, "mpfleetctl
diff GROUP A B" compares two). It is "rollout start GROUP --to REV" under the
name an operator looks for: the rollout goes in steps like any other, with the
group's rollout_strategy unless strategy flags are given (see "mpfleetctl
rollout start --help"; --canary 100% puts every host in one step). The
group's policy, its latest revision, is not changed: "get groups" shows the
revision its hosts run in DEPLOYED.

It prints the new rollout's name:
  rollout/r-8c01 started (group web, revision 5 → 4)
With --wait it follows the rollout until it ends and exits non-zero unless it
succeeded.`,
		Example: `  mpfleetctl rollback web --to 4 --reason "fallbacks on the new uplink"
  mpfleetctl rollback web --to 4 --canary 100% --wait`,
		Args: exactArgs(1, "GROUP"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("to") {
				return usagef("rollback: --to REV is required (the revision to go back to; see mpfleetctl revisions %s)", trimName(args[0]))
			}
			rev, err := parseRevision(f.to)
			if err != nil {
				return err
			}
			st, err := f.strategy(cmd.Flags())
			if err != nil {
				return err
			}
			return a.startRollout(cmd.Context(), trimName(args[0]), rev, st, f.reason, f.wait)
		},
	}
	f.register(cmd.Flags(), "revision (`REV`) to go back to (required)")
	return cmd
}
