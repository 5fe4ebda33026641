package cli

import (
	"fmt"
	"strconv"

	"github.com/spf13/cobra"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

func (a *app) revisionsCommand() *cobra.Command {
	return listCommand(&cobra.Command{
		Use:               "revisions GROUP",
		ValidArgsFunction: firstArg(a.completeGroups),
		Short:             "List a group's policy revisions, newest first",
		Long: `revisions lists a group's immutable policy revisions, newest first: REVISION,
CREATED, ACTOR and REASON. Compare two of them with "mpfleetctl diff".`,
		Example: `  mpfleetctl revisions web
  mpfleetctl revisions web -o yaml`,
		Args: exactArgs(1, "GROUP"),
	}, "revisions", func(cmd *cobra.Command, args []string, limit int) error {
		gc, err := a.groups()
		if err != nil {
			return err
		}
		id := trimName(args[0])
		revs, err := listPages(cmd.Context(), a, fmt.Sprintf("group %q", id), limit, gc.ListPolicyRevisions,
			&mpfleetv1.ListPolicyRevisionsRequest{Parent: groupName(id)}, (*mpfleetv1.ListPolicyRevisionsResponse).GetRevisions)
		if err != nil {
			return err
		}
		return printList(a, &mpfleetv1.ListPolicyRevisionsResponse{Revisions: revs}, revs, []string{"REVISION", "CREATED", "ACTOR", "REASON"},
			func(r *mpfleetv1.PolicyRevision) []string {
				return []string{strconv.FormatInt(r.GetRevision(), 10), formatTime(r.GetCreateTime()), r.GetActor(), r.GetReason()}
			})
	})
}
