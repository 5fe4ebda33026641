package cli

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

func (a *app) groups() (mpfleetv1.GroupServiceClient, error) {
	conn, err := a.client()
	if err != nil {
		return nil, err
	}
	return mpfleetv1.NewGroupServiceClient(conn), nil
}

// getCommand is the parent of the get commands.
func (a *app) getCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "get RESOURCE",
		Short: "List or show groups and hosts",
		Long:  `get lists groups or hosts, or shows the ones named.`,
		Example: `  mpfleetctl get groups
  mpfleetctl get group web -o yaml
  mpfleetctl get hosts -l role=web --state drifted`,
		RunE: parentRunE("resource type", "groups, hosts"),
	}
	cmd.AddCommand(a.getGroupsCommand(), a.getHostsCommand())
	return cmd
}

// parentRunE rejects a parent command run without a known subcommand;
// what names the subcommands ("resource type", "command").
func parentRunE(what, valid string) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return usagef("%s: missing %s (one of: %s)", cmd.Name(), what, valid)
		}
		return usagef("%s: unknown %s %q (one of: %s)", cmd.Name(), what, args[0], valid)
	}
}

func (a *app) getGroupsCommand() *cobra.Command {
	var limit int
	cmd := &cobra.Command{
		Use:     "groups [NAME...]",
		Aliases: []string{"group"},
		Short:   "List groups, or show the named ones",
		Long: `get groups lists every group (following all pages unless --limit), or shows
the named groups. The table has NAME, REVISION (of the current policy),
DEPLOYED (the revision the group's hosts run unless a rollout moved them:
behind REVISION while a rollout runs or after one was rolled back), ROLLOUT
(the rollout moving the group's hosts now, "-" when none), SELECTOR,
ENDPOINT RULES, ROUTING and UPDATED; -o json and -o yaml print the API's form
(one Group when one is named, else {"groups": [...]}), which also holds the
group's rollout_strategy.`,
		Example: `  mpfleetctl get groups
  mpfleetctl get group web -o json`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.getGroups(cmd.Context(), args, limit)
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 0, "list at most N groups (0: all)")
	return cmd
}

func (a *app) getGroups(ctx context.Context, names []string, limit int) error {
	gc, err := a.groups()
	if err != nil {
		return err
	}
	var groups []*mpfleetv1.Group
	if len(names) == 0 {
		groups, err = collectPages(ctx, a, limit, func(ctx context.Context, size int32, token string) ([]*mpfleetv1.Group, string, error) {
			resp, err := gc.ListGroups(ctx, &mpfleetv1.ListGroupsRequest{PageSize: size, PageToken: token})
			return resp.GetGroups(), resp.GetNextPageToken(), err
		})
		if err != nil {
			return fmt.Errorf("list groups: %w", err)
		}
	} else {
		for _, n := range names {
			cctx, cancel := a.callCtx(ctx)
			g, err := gc.GetGroup(cctx, &mpfleetv1.GetGroupRequest{Name: groupName(n)})
			cancel()
			if err != nil {
				return fmt.Errorf("group %q: %w", trimName(n), a.rpcErr(err))
			}
			groups = append(groups, g)
		}
	}
	var obj proto.Message = &mpfleetv1.ListGroupsResponse{Groups: groups}
	if len(names) == 1 {
		obj = groups[0]
	}
	return a.printObject(obj, func(w io.Writer) error {
		t := newTable(w, "NAME", "REVISION", "DEPLOYED", "ROLLOUT", "SELECTOR", "ENDPOINT RULES", "ROUTING", "UPDATED")
		for _, g := range groups {
			t.row(trimName(g.GetName()), strconv.FormatInt(g.GetPolicyRevision(), 10),
				revision(g.GetDeployedRevision()), trimName(g.GetActiveRollout()),
				formatLabels(g.GetSelector().GetMatchLabels()), formatRules(g.GetPolicy().GetEndpoints()),
				onOff(g.GetPolicy().GetRouting().GetEnabled()), a.age(g.GetUpdateTime()))
		}
		return t.flush()
	})
}

// formatRules summarizes endpoint rules: `eth* 198.18.0.0/15 [subflow,backup]`.
func formatRules(rules []*mpfleetv1.EndpointRule) string {
	parts := make([]string, 0, len(rules))
	for _, r := range rules {
		var f []string
		if r.GetInterface() != "" {
			f = append(f, r.GetInterface())
		}
		if r.GetCidr() != "" {
			f = append(f, r.GetCidr())
		}
		if r.GetFamily() != mpfleetv1.AddressFamily_ADDRESS_FAMILY_UNSPECIFIED {
			f = append(f, shortEnum(r.GetFamily()))
		}
		f = append(f, "["+formatFlags(r.GetFlags())+"]")
		if r.GetPort() != 0 {
			f = append(f, fmt.Sprintf("port %d", r.GetPort()))
		}
		parts = append(parts, strings.Join(f, " "))
	}
	return strings.Join(parts, "; ")
}

func formatFlags(flags []mpfleetv1.EndpointFlag) string {
	s := make([]string, len(flags))
	for i, f := range flags {
		s[i] = shortEnum(f)
	}
	return strings.Join(s, ",")
}

// shortEnum renders an enum value by its short name: subflow, ipv4, in_sync.
func shortEnum(e protoreflect.Enum) string {
	return enumShortName(e.Descriptor(), e.Number())
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func (a *app) deleteCommand() *cobra.Command {
	var etag, reason string
	group := &cobra.Command{
		Use:     "group NAME",
		Aliases: []string{"groups"},
		Short:   "Delete a group and its policy revisions",
		Long: `delete group deletes a group and its policy revisions. Its hosts become
UNMANAGED and keep their kernel state as it is. With --etag the delete fails
if the group changed since that etag was read.`,
		Example: `  mpfleetctl delete group web --reason "tier retired"
  mpfleetctl delete group web --etag "$(mpfleetctl get group web -o json | jq -r .etag)"`,
		Args: exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			gc, err := a.groups()
			if err != nil {
				return err
			}
			ctx, cancel := a.callCtx(cmd.Context())
			defer cancel()
			id := trimName(args[0])
			_, err = gc.DeleteGroup(ctx, &mpfleetv1.DeleteGroupRequest{Name: groupName(id), Etag: etag, Reason: reason})
			if err != nil {
				return fmt.Errorf("group %q: %w", id, a.rpcErr(err))
			}
			a.printf("group/%s deleted\n", id)
			return nil
		},
	}
	group.Flags().StringVar(&etag, "etag", "", "delete only if the group's etag still is this")
	group.Flags().StringVar(&reason, "reason", "", "why the group is deleted (recorded in the audit log)")
	var hostReason string
	host := &cobra.Command{
		Use:     "host NAME",
		Aliases: []string{"hosts"},
		Short:   "Delete a host that is not connected (admin)",
		Long: `delete host removes a decommissioned (or forged) host from the fleet: its
stored status, so that it no longer shows, counts or takes part in rollouts.
A connected host is refused: stop its agent or revoke its credential first.
It needs the admin role and is recorded in the audit log.`,
		Example: `  mpfleetctl delete host web-7 --reason "decommissioned"`,
		Args:    exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			hc, err := a.hosts()
			if err != nil {
				return err
			}
			ctx, cancel := a.callCtx(cmd.Context())
			defer cancel()
			id := trimName(args[0])
			if _, err := hc.DeleteHost(ctx, &mpfleetv1.DeleteHostRequest{Name: hostName(id), Reason: hostReason}); err != nil {
				return fmt.Errorf("host %q: %w", id, a.rpcErr(err))
			}
			a.printf("host/%s deleted\n", id)
			return nil
		},
	}
	host.Flags().StringVar(&hostReason, "reason", "", "why the host is deleted (recorded in the audit log)")
	cmd := &cobra.Command{
		Use:     "delete RESOURCE NAME",
		Short:   "Delete a group or a host",
		Example: "  mpfleetctl delete group web\n  mpfleetctl delete host web-7",
		RunE:    parentRunE("resource type", "group, host"),
	}
	cmd.AddCommand(group, host)
	return cmd
}

// exactArgs is cobra.ExactArgs with a message naming the arguments.
func exactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s: want %s, got %d argument(s)", cmd.Name(), names, len(args))
		}
		return nil
	}
}

func (a *app) revisionsCommand() *cobra.Command {
	var limit int
	cmd := &cobra.Command{
		Use:   "revisions GROUP",
		Short: "List a group's policy revisions, newest first",
		Long: `revisions lists a group's immutable policy revisions, newest first: REVISION,
CREATED, ACTOR and REASON. Compare two of them with "mpfleetctl diff".`,
		Example: `  mpfleetctl revisions web
  mpfleetctl revisions web -o yaml`,
		Args: exactArgs(1, "GROUP"),
		RunE: func(cmd *cobra.Command, args []string) error {
			gc, err := a.groups()
			if err != nil {
				return err
			}
			id := trimName(args[0])
			revs, err := collectPages(cmd.Context(), a, limit, func(ctx context.Context, size int32, token string) ([]*mpfleetv1.PolicyRevision, string, error) {
				resp, err := gc.ListPolicyRevisions(ctx, &mpfleetv1.ListPolicyRevisionsRequest{Parent: groupName(id), PageSize: size, PageToken: token})
				return resp.GetRevisions(), resp.GetNextPageToken(), err
			})
			if err != nil {
				return fmt.Errorf("group %q: %w", id, err)
			}
			return a.printObject(&mpfleetv1.ListPolicyRevisionsResponse{Revisions: revs}, func(w io.Writer) error {
				t := newTable(w, "REVISION", "CREATED", "ACTOR", "REASON")
				for _, r := range revs {
					t.row(strconv.FormatInt(r.GetRevision(), 10), formatTime(r.GetCreateTime()), r.GetActor(), r.GetReason())
				}
				return t.flush()
			})
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 0, "list at most N revisions (0: all)")
	return cmd
}

func (a *app) diffCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "diff GROUP REV1 REV2",
		Short: "Show how a group's policy changed between two revisions",
		Long: `diff prints a unified diff of two policy revisions of a group, each rendered
as YAML in the API's form. It prints nothing when they are equal. --output
does not apply.`,
		Example: `  mpfleetctl diff web 1 2`,
		Args:    exactArgs(3, "GROUP REV1 REV2"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := trimName(args[0])
			var revs [2]int64
			for i, s := range args[1:] {
				n, err := strconv.ParseInt(s, 10, 64)
				if err != nil || n < 1 {
					return usagef("diff: revision %q: want a number from 1", s)
				}
				revs[i] = n
			}
			gc, err := a.groups()
			if err != nil {
				return err
			}
			var texts [2]string
			for i, n := range revs {
				ctx, cancel := a.callCtx(cmd.Context())
				name := fmt.Sprintf("%s/revisions/%d", groupName(id), n)
				r, err := gc.GetPolicyRevision(ctx, &mpfleetv1.GetPolicyRevisionRequest{Name: name})
				cancel()
				if err != nil {
					return fmt.Errorf("group %q revision %d: %w", id, n, a.rpcErr(err))
				}
				b, err := marshalYAML(r.GetPolicy())
				if err != nil {
					return err
				}
				if strings.TrimSpace(string(b)) == "{}" {
					b = nil
				}
				texts[i] = string(b)
			}
			_, err = io.WriteString(a.io.out, unifiedDiff(
				fmt.Sprintf("%s/revisions/%d", groupName(id), revs[0]),
				fmt.Sprintf("%s/revisions/%d", groupName(id), revs[1]),
				texts[0], texts[1], 3))
			return err
		},
	}
}
