package cli

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// completionTimeout bounds the call a shell completion makes: a slow or
// unreachable controller must not hang the shell.
const completionTimeout = 2 * time.Second

// completionLimit is the most names a completion lists.
const completionLimit = 1000

// Dynamic completion of group and host names ("mpfleetctl completion bash"
// installs it): the names come from the controller, up to completionLimit of them. A
// controller that cannot be reached, or refuses, gives no completions and
// never an error.

// completeGroups completes group names, every argument.
func (a *app) completeGroups(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	return a.completeNames(cmd.Context(), args, toComplete, func(ctx context.Context) ([]string, error) {
		gc, err := a.groups()
		if err != nil {
			return nil, err
		}
		groups, err := listPages(ctx, a, "list groups", completionLimit, gc.ListGroups, &mpfleetv1.ListGroupsRequest{}, (*mpfleetv1.ListGroupsResponse).GetGroups)
		return namesOf(groups, (*mpfleetv1.Group).GetName), err
	})
}

// completeHosts completes host names, every argument.
func (a *app) completeHosts(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	return a.completeNames(cmd.Context(), args, toComplete, func(ctx context.Context) ([]string, error) {
		hc, err := a.hosts()
		if err != nil {
			return nil, err
		}
		hosts, err := listPages(ctx, a, "list hosts", completionLimit, hc.ListHosts, &mpfleetv1.ListHostsRequest{}, (*mpfleetv1.ListHostsResponse).GetHosts)
		return namesOf(hosts, (*mpfleetv1.Host).GetName), err
	})
}

// firstArg limits a completion to the first argument: the others are not
// names (revisions, labels).
func firstArg(complete cobra.CompletionFunc) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return complete(cmd, args, toComplete)
	}
}

// completeNames lists names with list, within completionTimeout, and
// returns those starting with toComplete that args do not hold yet, without
// their collection prefix.
func (a *app) completeNames(ctx context.Context, args []string, toComplete string, list func(context.Context) ([]string, error)) ([]string, cobra.ShellCompDirective) {
	if ctx == nil {
		ctx = context.Background()
	}
	timeout := completionTimeout
	if a.timeout > 0 && a.timeout < timeout {
		timeout = a.timeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	names, err := list(ctx)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for _, n := range names {
		id := trimName(n)
		if strings.HasPrefix(id, toComplete) && !slices.Contains(args, id) && terminalSafe(id) == id {
			out = append(out, id)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// namesOf returns the name of each item.
func namesOf[T any](items []T, name func(T) string) []string {
	names := make([]string, 0, len(items))
	for _, it := range items {
		names = append(names, name(it))
	}
	return names
}
