package cli

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// getter is how get lists or shows one kind of resource.
type getter[T proto.Message] struct {
	list   func(ctx context.Context) ([]T, error) // every one, up to --limit
	get    func(ctx context.Context, name string) (T, error)
	wrap   func([]T) proto.Message // the API's list response
	header []string                // of the table
	row    func(T) []string
}

// getResources lists every resource of a kind, or gets the named ones, and
// prints them: one named resource as itself with -o json or yaml, else as
// the API's list response.
func getResources[T proto.Message](ctx context.Context, a *app, names []string, g getter[T]) error {
	var items []T
	if len(names) == 0 {
		var err error
		if items, err = g.list(ctx); err != nil {
			return err
		}
	}
	for _, n := range names {
		it, err := g.get(ctx, n)
		if err != nil {
			return err
		}
		items = append(items, it)
	}
	list := g.wrap(items)
	if len(names) == 1 {
		list = items[0]
	}
	return printList(a, list, items, g.header, g.row)
}

// getCommand is the parent of the get commands.
func (a *app) getCommand() *cobra.Command {
	return parentCommand(&cobra.Command{
		Use:   "get RESOURCE",
		Short: "List or show groups and hosts",
		Long:  `get lists groups or hosts, or shows the ones named.`,
		Example: `  mpfleetctl get groups
  mpfleetctl get group web -o yaml
  mpfleetctl get hosts -l role=web --state drifted`,
	}, "resource type", a.getGroupsCommand(), a.getHostsCommand())
}

func (a *app) getGroupsCommand() *cobra.Command {
	return listCommand(&cobra.Command{
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
	}, "groups", func(cmd *cobra.Command, args []string, limit int) error {
		return a.getGroups(cmd.Context(), args, limit)
	})
}

func (a *app) getGroups(ctx context.Context, names []string, limit int) error {
	gc, err := a.groups()
	if err != nil {
		return err
	}
	return getResources(ctx, a, names, getter[*mpfleetv1.Group]{
		list: func(ctx context.Context) ([]*mpfleetv1.Group, error) {
			return listPages(ctx, a, "list groups", limit, gc.ListGroups, &mpfleetv1.ListGroupsRequest{}, (*mpfleetv1.ListGroupsResponse).GetGroups)
		},
		get: func(ctx context.Context, name string) (*mpfleetv1.Group, error) {
			return unary(ctx, a, fmt.Sprintf("group %q", trimName(name)), gc.GetGroup, &mpfleetv1.GetGroupRequest{Name: groupName(name)})
		},
		wrap:   func(groups []*mpfleetv1.Group) proto.Message { return &mpfleetv1.ListGroupsResponse{Groups: groups} },
		header: []string{"NAME", "REVISION", "DEPLOYED", "ROLLOUT", "SELECTOR", "ENDPOINT RULES", "ROUTING", "UPDATED"},
		row: func(g *mpfleetv1.Group) []string {
			return []string{trimName(g.GetName()), strconv.FormatInt(g.GetPolicyRevision(), 10),
				revision(g.GetDeployedRevision()), trimName(g.GetActiveRollout()),
				formatLabels(g.GetSelector().GetMatchLabels()), formatRules(g.GetPolicy().GetEndpoints()),
				onOff(g.GetPolicy().GetRouting().GetEnabled()), a.age(g.GetUpdateTime())}
		},
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

func (a *app) getHostsCommand() *cobra.Command {
	var labels, group, state string
	cmd := listCommand(&cobra.Command{
		Use:     "hosts [NAME...]",
		Aliases: []string{"host"},
		Short:   "List hosts, or show the named ones",
		Long: `get hosts lists the hosts that run an agent (following all pages unless
--limit), filtered by labels, group and sync state, or shows the named hosts.
The table has NAME, GROUP, STATE, HEALTH, DESIRED and APPLIED revision,
ENDPOINTS applied, open MPTCP CONNS and their SUBFLOWS, and LAST SEEN. Use
"mpfleetctl describe host NAME" for everything about one host, its problems
and the state of each managed path among them.

HEALTH is "ok" when the host reports no problem and none of its managed paths
is failed, link down or without a gateway; "degraded: N problems" when it
reports problems (what of the policy could not be realized, and broken
paths); "-" when it never reported its health. A disconnected host shows the
health it last reported, which the controller keeps: STATE says the agent is
gone and LAST SEEN how old that report is.

States: in_sync, applying, drifted, failed, conflict, unmanaged, disconnected,
degraded (the revision is applied, but part of the policy could not be
realized or a managed path is broken).`,
		Example: `  mpfleetctl get hosts
  mpfleetctl get hosts -l role=web,zone=a --state drifted
  mpfleetctl get hosts --state degraded
  mpfleetctl get hosts --group lab -o json`,
	}, "hosts", func(cmd *cobra.Command, args []string, limit int) error {
		if len(args) > 0 && (labels != "" || group != "" || state != "") {
			return usagef("get hosts: filters do not apply to named hosts")
		}
		req := &mpfleetv1.ListHostsRequest{LabelSelector: labels}
		if err := checkLabelSelector(labels); err != nil {
			return err
		}
		if group != "" {
			req.Group = groupName(group)
		}
		if state != "" {
			st, err := parseSyncState(state)
			if err != nil {
				return err
			}
			req.SyncState = st
		}
		return a.getHosts(cmd.Context(), args, req, limit)
	})
	cmd.Flags().StringVarP(&labels, "selector", "l", "", "only hosts with these labels: k=v,k2=v2")
	cmd.Flags().StringVar(&group, "group", "", "only hosts of this group")
	cmd.Flags().StringVar(&state, "state", "", "only hosts in this sync state (in_sync, degraded, drifted, failed, disconnected, …)")
	return cmd
}

func (a *app) getHosts(ctx context.Context, names []string, req *mpfleetv1.ListHostsRequest, limit int) error {
	hc, err := a.hosts()
	if err != nil {
		return err
	}
	return getResources(ctx, a, names, getter[*mpfleetv1.Host]{
		list: func(ctx context.Context) ([]*mpfleetv1.Host, error) {
			return listPages(ctx, a, "list hosts", limit, hc.ListHosts, req, (*mpfleetv1.ListHostsResponse).GetHosts)
		},
		get: func(ctx context.Context, name string) (*mpfleetv1.Host, error) {
			return a.getHost(ctx, hc, name)
		},
		wrap:   func(hosts []*mpfleetv1.Host) proto.Message { return &mpfleetv1.ListHostsResponse{Hosts: hosts} },
		header: []string{"NAME", "GROUP", "STATE", "HEALTH", "DESIRED", "APPLIED", "ENDPOINTS", "CONNS", "SUBFLOWS", "LAST SEEN"},
		row:    func(h *mpfleetv1.Host) []string { return hostRow(a, h) },
	})
}

func hostRow(a *app, h *mpfleetv1.Host) []string {
	lastSeen := a.age(h.GetLastSeenTime())
	if lastSeen == "" {
		lastSeen = "never"
	}
	return []string{
		trimName(h.GetName()), hostGroup(h), shortEnum(h.GetSyncState()), hostHealth(h),
		revision(h.GetDesiredRevision()), revision(h.GetAppliedRevision()),
		strconv.Itoa(len(h.GetApplied().GetEndpoints())),
		strconv.FormatUint(uint64(h.GetHealth().GetConnections()), 10),
		strconv.FormatUint(uint64(h.GetHealth().GetSubflows()), 10),
		lastSeen,
	}
}

// parseSyncState parses a --state value: in_sync, IN_SYNC, in-sync or
// SYNC_STATE_IN_SYNC.
func parseSyncState(s string) (mpfleetv1.SyncState, error) {
	ed := mpfleetv1.SyncState(0).Descriptor()
	ev, ok := enumByName(ed, s)
	if !ok || ev.Number() == 0 {
		return 0, usagef("--state %q: want one of %s", s, strings.Join(enumShortNames(ed), ", "))
	}
	return mpfleetv1.SyncState(ev.Number()), nil
}

// checkLabelSelector checks a -l value: "k=v,k2=v2".
func checkLabelSelector(s string) error {
	if s == "" {
		return nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return usagef("-l %q: want key=value[,key=value...]", s)
		}
	}
	return nil
}
