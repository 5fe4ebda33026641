package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

func (a *app) deleteCommand() *cobra.Command {
	var etag string
	group := a.deleteSubcommand("group", &cobra.Command{
		Use:               "group NAME",
		ValidArgsFunction: firstArg(a.completeGroups),
		Aliases:           []string{"groups"},
		Short:             "Delete a group and its policy revisions",
		Long: `delete group deletes a group and its policy revisions. Its hosts become
UNMANAGED and keep their kernel state as it is. With --etag the delete fails
if the group changed since that etag was read.`,
		Example: `  mpfleetctl delete group web --reason "tier retired"
  mpfleetctl delete group web --etag "$(mpfleetctl get group web -o json | jq -r .etag)"`,
	}, func(ctx context.Context, id, reason string) error {
		_, err := callService(ctx, a, fmt.Sprintf("group %q", id), mpfleetv1.NewGroupServiceClient, mpfleetv1.GroupServiceClient.DeleteGroup,
			&mpfleetv1.DeleteGroupRequest{Name: groupName(id), Etag: etag, Reason: reason})
		return err
	})
	group.Flags().StringVar(&etag, "etag", "", "delete only if the group's etag still is this")
	host := a.deleteSubcommand("host", &cobra.Command{
		Use:               "host NAME",
		ValidArgsFunction: firstArg(a.completeHosts),
		Aliases:           []string{"hosts"},
		Short:             "Delete a host that is not connected (admin)",
		Long: `delete host removes a decommissioned (or forged) host from the fleet: its
stored status, so that it no longer shows, counts or takes part in rollouts.
A connected host is refused: stop its agent or revoke its credential first.
It needs the admin role and is recorded in the audit log.`,
		Example: `  mpfleetctl delete host web-7 --reason "decommissioned"`,
	}, func(ctx context.Context, id, reason string) error {
		_, err := callService(ctx, a, fmt.Sprintf("host %q", id), mpfleetv1.NewHostServiceClient, mpfleetv1.HostServiceClient.DeleteHost,
			&mpfleetv1.DeleteHostRequest{Name: hostName(id), Reason: reason})
		return err
	})
	return parentCommand(&cobra.Command{
		Use:     "delete RESOURCE NAME",
		Short:   "Delete a group or a host",
		Example: "  mpfleetctl delete group web\n  mpfleetctl delete host web-7",
	}, "resource type", group, host)
}

// deleteSubcommand completes cmd as "delete KIND NAME": with --reason, it
// deletes the resource with del and says so.
func (a *app) deleteSubcommand(kind string, cmd *cobra.Command, del func(ctx context.Context, id, reason string) error) *cobra.Command {
	var reason string
	cmd.Args = exactArgs(1, "NAME")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		id := trimName(args[0])
		if err := del(cmd.Context(), id, reason); err != nil {
			return err
		}
		a.printf("%s/%s deleted\n", kind, id)
		return nil
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why the "+kind+" is deleted (recorded in the audit log)")
	return cmd
}
