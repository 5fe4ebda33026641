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
type getter[T named] struct {
	list   func(ctx context.Context) ([]T, error) // every one, up to --limit
	get    func(ctx context.Context, name string) (T, error)
	wrap   func([]T) proto.Message // the API's list response
	header []string                // of the table
	row    func(T) []string
	// wideHeader and wideRow are the columns -o wide adds.
	wideHeader []string
	wideRow    func(T) []string
}

// getResources lists every resource of a kind, or gets the named ones, and
// prints them: one named resource as itself with -o json, yaml or
// jsonpath, else as the API's list response.
func getResources[T named](ctx context.Context, a *app, names []string, g getter[T]) error {
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
	return g.resources(items, len(names) == 1).print(a)
}

// resources is what print needs of items.
func (g getter[T]) resources(items []T, single bool) resourceList[T] {
	return resourceList[T]{items: items, single: single, wrap: g.wrap, header: g.header, row: g.row,
		wideHeader: g.wideHeader, wideRow: g.wideRow}
}

// filterLimit keeps the items sel matches, at most limit of them (0: all).
func filterLimit[T any](items []T, limit int, match func(T) bool) []T {
	out := items[:0]
	for _, it := range items {
		if match(it) {
			out = append(out, it)
		}
	}
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out
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
	}, "resource type", withListFormats(a.getGroupsCommand()), withListFormats(a.getHostsCommand()))
}

func (a *app) getGroupsCommand() *cobra.Command {
	var (
		labels string
		watch  bool
	)
	cmd := listCommand(&cobra.Command{
		Use:     "groups [NAME...]",
		Aliases: []string{"group"},
		Short:   "List groups, or show the named ones",
		Long: `get groups lists every group (following all pages unless --limit), or shows
the named groups. The table has NAME, REVISION (of the current policy),
DEPLOYED (the revision the group's hosts run unless a rollout moved them:
behind REVISION while a rollout runs or after one was rolled back), ROLLOUT
(the rollout moving the group's hosts now, "-" when none), SELECTOR,
ENDPOINT RULES, ROUTING and UPDATED; -o wide adds STRATEGY (the rollout
strategy: canary, batch, step timeout) and DESCRIPTION. -o json and -o yaml
print the API's form (one Group when one is named, else {"groups": [...]}),
which also holds the group's rollout_strategy; -o name prints groups/NAME,
one a line; -o jsonpath=TEMPLATE is kubectl's (see docs/cli.md).

-l filters groups by the labels their selector matches (a group has no
labels of its own): -l role=web lists the groups that select role=web
hosts. The syntax is Kubernetes': k=v, k!=v, k in (a,b), k notin (a,b), k,
!k, joined by commas (all must hold).`,
		Example: `  mpfleetctl get groups
  mpfleetctl get group web -o json
  mpfleetctl get groups -l 'role in (web,db)' -o name`,
		ValidArgsFunction: a.completeGroups,
	}, "groups", func(cmd *cobra.Command, args []string, limit int) error {
		sel, err := parseLabelSelector(labels)
		if err != nil {
			return err
		}
		if len(args) > 0 && sel != nil {
			return usagef("get groups: -l does not apply to named groups")
		}
		if watch {
			return usagef("get groups --watch: the API has no watch of groups (get hosts --watch follows hosts)")
		}
		return a.getGroups(cmd.Context(), args, sel, limit)
	})
	cmd.Flags().StringVarP(&labels, "selector", "l", "", "only groups whose selector matches: k=v, k!=v, k in (a,b), k notin (a,b), k, !k")
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "not supported for groups (the API has no watch of groups)")
	return cmd
}

func (a *app) groupGetter(gc mpfleetv1.GroupServiceClient, sel labelSelector, limit int) getter[*mpfleetv1.Group] {
	return getter[*mpfleetv1.Group]{
		list: func(ctx context.Context) ([]*mpfleetv1.Group, error) {
			if sel == nil {
				return listPages(ctx, a, "list groups", limit, gc.ListGroups, &mpfleetv1.ListGroupsRequest{}, (*mpfleetv1.ListGroupsResponse).GetGroups)
			}
			// The API does not filter groups: filter every page here.
			all, err := listPages(ctx, a, "list groups", 0, gc.ListGroups, &mpfleetv1.ListGroupsRequest{}, (*mpfleetv1.ListGroupsResponse).GetGroups)
			return filterLimit(all, limit, func(g *mpfleetv1.Group) bool { return sel.matches(g.GetSelector().GetMatchLabels()) }), err
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
		wideHeader: []string{"STRATEGY", "DESCRIPTION"},
		wideRow: func(g *mpfleetv1.Group) []string {
			strategy := "" // every change at once
			if g.GetRolloutStrategy() != nil {
				strategy = formatStrategy(g.GetRolloutStrategy())
			}
			return []string{strategy, oneLine(g.GetDescription())}
		},
	}
}

func (a *app) getGroups(ctx context.Context, names []string, sel labelSelector, limit int) error {
	gc, err := a.groups()
	if err != nil {
		return err
	}
	return getResources(ctx, a, names, a.groupGetter(gc, sel, limit))
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
	var (
		labels, group, state string
		watch                bool
	)
	cmd := listCommand(&cobra.Command{
		Use:     "hosts [NAME...]",
		Aliases: []string{"host"},
		Short:   "List hosts, or show the named ones",
		Long: `get hosts lists the hosts that run an agent (following all pages unless
--limit), filtered by labels, group and sync state, or shows the named hosts.
The table has NAME, GROUP, STATE, HEALTH, DESIRED and APPLIED revision,
ENDPOINTS applied, open MPTCP CONNS and their SUBFLOWS, and LAST SEEN; -o
wide adds AGENT (its version), KERNEL and LABELS. Use "mpfleetctl describe
host NAME" for everything about one host, its problems and the state of each
managed path among them. -o name prints hosts/NAME, one a line; -o
jsonpath=TEMPLATE is kubectl's (see docs/cli.md).

-l takes Kubernetes' selector syntax: k=v (or k==v), k!=v, k in (a,b),
k notin (a,b), k (set), !k (not set), joined by commas (all must hold).
The controller filters on the k=v requirements; mpfleetctl checks the rest.

With -w (--watch) get hosts prints the table, then a row each time a
matching host changes, until interrupted.

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
  mpfleetctl get hosts -l 'zone in (a,b),role!=db' -o wide
  mpfleetctl get hosts --group lab -w
  mpfleetctl get hosts -o jsonpath='{range .items[*]}{.name}{"\t"}{.syncState}{"\n"}{end}'`,
		ValidArgsFunction: a.completeHosts,
	}, "hosts", func(cmd *cobra.Command, args []string, limit int) error {
		if len(args) > 0 && (labels != "" || group != "" || state != "" || watch) {
			return usagef("get hosts: filters and --watch do not apply to named hosts")
		}
		sel, err := parseLabelSelector(labels)
		if err != nil {
			return err
		}
		server, rest := sel.split()
		req := &mpfleetv1.ListHostsRequest{LabelSelector: server}
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
		if watch {
			if state != "" || limit != 0 {
				return usagef("get hosts --watch: --state and --limit do not apply")
			}
			return a.getHostsWatch(cmd.Context(), &mpfleetv1.WatchHostsRequest{Group: req.GetGroup(), LabelSelector: server}, rest)
		}
		return a.getHosts(cmd.Context(), args, req, rest, limit)
	})
	cmd.Flags().StringVarP(&labels, "selector", "l", "", "only hosts with matching labels: k=v, k!=v, k in (a,b), k notin (a,b), k, !k")
	cmd.Flags().StringVar(&group, "group", "", "only hosts of this group")
	cmd.Flags().StringVar(&state, "state", "", "only hosts in this sync state (in_sync, degraded, drifted, failed, disconnected, …)")
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "after the list, print a row each time a host changes, until interrupted")
	return cmd
}

// hostGetter lists with req, keeping the hosts rest matches (the part of
// -l the controller cannot check).
func (a *app) hostGetter(hc mpfleetv1.HostServiceClient, req *mpfleetv1.ListHostsRequest, rest labelSelector, limit int) getter[*mpfleetv1.Host] {
	return getter[*mpfleetv1.Host]{
		list: func(ctx context.Context) ([]*mpfleetv1.Host, error) {
			if rest == nil {
				return listPages(ctx, a, "list hosts", limit, hc.ListHosts, req, (*mpfleetv1.ListHostsResponse).GetHosts)
			}
			all, err := listPages(ctx, a, "list hosts", 0, hc.ListHosts, req, (*mpfleetv1.ListHostsResponse).GetHosts)
			return filterLimit(all, limit, func(h *mpfleetv1.Host) bool { return rest.matches(h.GetLabels()) }), err
		},
		get: func(ctx context.Context, name string) (*mpfleetv1.Host, error) {
			return a.getHost(ctx, hc, name)
		},
		wrap:       func(hosts []*mpfleetv1.Host) proto.Message { return &mpfleetv1.ListHostsResponse{Hosts: hosts} },
		header:     []string{"NAME", "GROUP", "STATE", "HEALTH", "DESIRED", "APPLIED", "ENDPOINTS", "CONNS", "SUBFLOWS", "LAST SEEN"},
		row:        func(h *mpfleetv1.Host) []string { return hostRow(a, h) },
		wideHeader: []string{"AGENT", "KERNEL", "LABELS"},
		wideRow: func(h *mpfleetv1.Host) []string {
			return []string{h.GetAgentVersion(), h.GetFacts().GetKernelVersion(), formatLabels(h.GetLabels())}
		},
	}
}

func (a *app) getHosts(ctx context.Context, names []string, req *mpfleetv1.ListHostsRequest, rest labelSelector, limit int) error {
	hc, err := a.hosts()
	if err != nil {
		return err
	}
	return getResources(ctx, a, names, a.hostGetter(hc, req, rest, limit))
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
