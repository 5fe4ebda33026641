package cli

import (
	"context"
	"fmt"
	"strconv"

	"github.com/spf13/cobra"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

func (a *app) watchCommand() *cobra.Command {
	var labels, group string
	hostsCmd := &cobra.Command{
		Use:     "hosts",
		Aliases: []string{"host"},
		Short:   "Print host changes as they happen",
		Long: `watch hosts prints every matching host, then one line per change (state,
revisions, endpoints, connections) until interrupted. Reports that change
nothing shown are not printed. -o json prints every HostEvent as one JSON
line, including the SYNCED marker that ends the initial list.`,
		Example: `  mpfleetctl watch hosts --group lab
  mpfleetctl watch hosts -l role=web -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sel, err := parseLabelSelector(labels)
			if err != nil {
				return err
			}
			server, rest := sel.split()
			req := &mpfleetv1.WatchHostsRequest{LabelSelector: server}
			if group != "" {
				req.Group = groupName(group)
			}
			return a.watchHosts(cmd.Context(), req, rest)
		},
	}
	hostsCmd.Flags().StringVarP(&labels, "selector", "l", "", "only hosts with matching labels: k=v, k!=v, k in (a,b), k notin (a,b), k, !k")
	hostsCmd.Flags().StringVar(&group, "group", "", "only hosts of this group")
	return parentCommand(&cobra.Command{
		Use:     "watch RESOURCE",
		Short:   "Follow hosts as they change",
		Example: `  mpfleetctl watch hosts`,
	}, "resource type", hostsCmd)
}

func (a *app) watchHosts(ctx context.Context, req *mpfleetv1.WatchHostsRequest, rest labelSelector) error {
	hc, err := a.hosts()
	if err != nil {
		return err
	}
	last := map[string]string{} // host → last line printed, without the time
	return watchStream(ctx, a, "watch hosts", hc.WatchHosts, req, func(ev *mpfleetv1.HostEvent) error {
		if !hostEventMatches(ev, rest) {
			return nil
		}
		if a.output != "table" {
			return a.printStreamItem(ev)
		}
		h := ev.GetHost()
		name := trimName(h.GetName())
		var line string
		switch ev.GetType() {
		case mpfleetv1.HostEvent_TYPE_SYNCED:
			_, _ = fmt.Fprintf(a.io.err, "mpfleetctl: %d hosts listed; watching for changes\n", len(last))
			return nil
		case mpfleetv1.HostEvent_TYPE_DELETED:
			delete(last, name)
			line = fmt.Sprintf("host/%s deleted", name)
		default:
			line = fmt.Sprintf("host/%s %s group=%s rev=%s/%s endpoints=%d conns=%d subflows=%d fallbacks=%d",
				name, shortEnum(h.GetSyncState()), orDefault(hostGroup(h), "-"),
				revision(h.GetAppliedRevision()), revision(h.GetDesiredRevision()),
				len(h.GetApplied().GetEndpoints()), h.GetHealth().GetConnections(),
				h.GetHealth().GetSubflows(), h.GetHealth().GetFallbacks())
			if h.GetLastError() != "" {
				line += " error=" + strconv.Quote(oneLine(h.GetLastError()))
			}
			if last[name] == line {
				return nil
			}
			last[name] = line
		}
		a.printf("%s %s\n", a.now().UTC().Format("15:04:05"), terminalSafe(line))
		return nil
	})
}

// hostEventMatches reports whether ev concerns a host rest matches (the
// part of -l the controller cannot check). A deletion and the SYNCED
// marker always pass.
func hostEventMatches(ev *mpfleetv1.HostEvent, rest labelSelector) bool {
	switch ev.GetType() {
	case mpfleetv1.HostEvent_TYPE_SYNCED, mpfleetv1.HostEvent_TYPE_DELETED:
		return true
	}
	return rest.matches(ev.GetHost().GetLabels())
}
