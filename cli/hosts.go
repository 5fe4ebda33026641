package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

func (a *app) hosts() (mpfleetv1.HostServiceClient, error) {
	conn, err := a.client()
	if err != nil {
		return nil, err
	}
	return mpfleetv1.NewHostServiceClient(conn), nil
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

func (a *app) getHostsCommand() *cobra.Command {
	var (
		labels, group, state string
		limit                int
	)
	cmd := &cobra.Command{
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
		RunE: func(cmd *cobra.Command, args []string) error {
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
		},
	}
	cmd.Flags().StringVarP(&labels, "selector", "l", "", "only hosts with these labels: k=v,k2=v2")
	cmd.Flags().StringVar(&group, "group", "", "only hosts of this group")
	cmd.Flags().StringVar(&state, "state", "", "only hosts in this sync state (in_sync, degraded, drifted, failed, disconnected, …)")
	cmd.Flags().IntVar(&limit, "limit", 0, "list at most N hosts (0: all)")
	return cmd
}

func (a *app) getHosts(ctx context.Context, names []string, req *mpfleetv1.ListHostsRequest, limit int) error {
	hc, err := a.hosts()
	if err != nil {
		return err
	}
	var hosts []*mpfleetv1.Host
	if len(names) == 0 {
		hosts, err = collectPages(ctx, a, limit, func(ctx context.Context, size int32, token string) ([]*mpfleetv1.Host, string, error) {
			req.PageSize, req.PageToken = size, token
			resp, err := hc.ListHosts(ctx, req)
			return resp.GetHosts(), resp.GetNextPageToken(), err
		})
		if err != nil {
			return fmt.Errorf("list hosts: %w", err)
		}
	} else {
		for _, n := range names {
			h, err := a.getHost(ctx, hc, n)
			if err != nil {
				return err
			}
			hosts = append(hosts, h)
		}
	}
	var obj proto.Message = &mpfleetv1.ListHostsResponse{Hosts: hosts}
	if len(names) == 1 {
		obj = hosts[0]
	}
	return a.printObject(obj, func(w io.Writer) error {
		t := newTable(w, "NAME", "GROUP", "STATE", "HEALTH", "DESIRED", "APPLIED", "ENDPOINTS", "CONNS", "SUBFLOWS", "LAST SEEN")
		for _, h := range hosts {
			t.row(hostRow(a, h)...)
		}
		return t.flush()
	})
}

func (a *app) getHost(ctx context.Context, hc mpfleetv1.HostServiceClient, name string) (*mpfleetv1.Host, error) {
	cctx, cancel := a.callCtx(ctx)
	defer cancel()
	h, err := hc.GetHost(cctx, &mpfleetv1.GetHostRequest{Name: hostName(name)})
	if err != nil {
		return nil, fmt.Errorf("host %q: %w", trimName(name), a.rpcErr(err))
	}
	return h, nil
}

func hostGroup(h *mpfleetv1.Host) string {
	if len(h.GetConflictingGroups()) > 0 {
		return joinTrimmed(h.GetConflictingGroups())
	}
	return trimName(h.GetGroup())
}

func revision(n int64) string {
	if n == 0 {
		return "-"
	}
	return strconv.FormatInt(n, 10)
}

// hostHealth sums up a host's health in a few words, for the HEALTH column
// of get hosts and the Health field of describe host: "ok", "degraded: 2
// problems", or "-" for a host that never reported its health. A
// disconnected host keeps the health it last reported.
func hostHealth(h *mpfleetv1.Host) string {
	broken := 0
	for _, p := range h.GetHealth().GetPaths() {
		if pathBroken(p.GetState()) {
			broken++
		}
	}
	switch {
	case len(h.GetProblems()) > 0:
		return "degraded: " + plural(len(h.GetProblems()), "problem")
	case broken > 0:
		// The controller names every broken path as a problem too; this
		// only guards against a report that does not.
		return "degraded: " + plural(broken, "broken path")
	case h.GetSyncState() == mpfleetv1.SyncState_SYNC_STATE_DEGRADED:
		return "degraded"
	case h.GetHealth().GetReadTime() == nil && len(h.GetHealth().GetPaths()) == 0:
		return "-"
	default:
		return "ok"
	}
}

// pathBroken reports whether a path state means the path does not carry
// traffic as the policy asks. UNPROBED passed every local check; it is only
// not known to carry MPTCP.
func pathBroken(s mpfleetv1.PathState) bool {
	switch s {
	case mpfleetv1.PathState_PATH_STATE_FAILED, mpfleetv1.PathState_PATH_STATE_LINK_DOWN, mpfleetv1.PathState_PATH_STATE_NO_GATEWAY:
		return true
	}
	return false
}

// plural renders "1 problem", "2 problems".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
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

func planLine(op *mpfleetv1.PlanOperation) string {
	if op.GetDescription() != "" {
		return op.GetDescription()
	}
	return op.GetKind()
}

func (a *app) planCommand() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "plan -f FILE",
		Short: "Show what the policies of a file would change on each host",
		Long: `plan asks the controller, for each Group document of the file, which kernel
operations its policy would cause on each host of the group (computed from
the hosts' last reported facts; nothing is applied), and prints them per
host, with what of the policy could not be rendered as asked on a host (it
would be degraded there: no gateway known for an address, a sysctl its
kernel lacks). A group that does not exist yet has no hosts to plan.`,
		Example: `  mpfleetctl plan -f deploy/examples/two-links.yaml
  mpfleetctl plan -f groups.yaml -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ms, err := a.readManifests(file)
			if err != nil {
				return err
			}
			return a.plan(cmd.Context(), ms)
		},
	}
	cmd.Flags().StringVarP(&file, "filename", "f", "", "YAML file of Group documents (- for stdin)")
	return cmd
}

func (a *app) plan(ctx context.Context, ms []*manifest) error {
	hc, err := a.hosts()
	if err != nil {
		return err
	}
	type result struct {
		m       *manifest
		resp    *mpfleetv1.PlanPolicyResponse
		missing bool
	}
	var results []result
	for _, m := range ms {
		cctx, cancel := a.callCtx(ctx)
		resp, err := hc.PlanPolicy(cctx, &mpfleetv1.PlanPolicyRequest{Group: groupName(m.ID), Policy: m.Group.GetPolicy()})
		cancel()
		if status.Code(err) == codes.NotFound {
			results = append(results, result{m: m, missing: true})
			continue
		}
		if err != nil {
			return fmt.Errorf("group %q (document %d, line %d): %w", m.ID, m.Index, m.Line, a.rpcErr(err))
		}
		results = append(results, result{m: m, resp: resp})
	}
	switch a.output {
	case "json", "yaml":
		// [{"group": "groups/web", "hosts": [...]}, ...]
		var list []map[string]any
		for _, r := range results {
			item := map[string]any{"group": groupName(r.m.ID)}
			if r.missing {
				item["error"] = "group does not exist"
			} else {
				b, err := marshalJSON(r.resp, false)
				if err != nil {
					return err
				}
				var fields map[string]any
				if err := json.Unmarshal(b, &fields); err != nil {
					return err
				}
				for k, v := range fields {
					item[k] = v
				}
			}
			list = append(list, item)
		}
		return a.printPlain(list)
	}
	for _, r := range results {
		if r.missing {
			a.printf("group/%s: does not exist yet, no hosts to plan\n", r.m.ID)
			continue
		}
		hosts := r.resp.GetHosts()
		sort.SliceStable(hosts, func(i, j int) bool { return hosts[i].GetHost() < hosts[j].GetHost() })
		changing := 0
		for _, h := range hosts {
			if len(h.GetOperations()) > 0 || h.GetError() != "" {
				changing++
			}
		}
		a.printf("group/%s: %d hosts, %d to change\n", r.m.ID, len(hosts), changing)
		for _, h := range hosts {
			name := terminalSafe(trimName(h.GetHost()))
			switch {
			case h.GetError() != "":
				a.printf("  host/%s: cannot plan: %s\n", name, terminalSafe(oneLine(h.GetError())))
			case len(h.GetOperations()) == 0:
				a.printf("  host/%s: no changes\n", name)
			default:
				a.printf("  host/%s: %d operations\n", name, len(h.GetOperations()))
				for _, op := range h.GetOperations() {
					a.printf("    %s\n", terminalSafe(planLine(op)))
				}
			}
			if len(h.GetExcludedAddresses()) > 0 {
				a.printf("    excluded (8-endpoint kernel maximum): %s\n", terminalSafe(strings.Join(h.GetExcludedAddresses(), ", ")))
			}
			// What cannot be rendered as asked: applied, the host would be
			// degraded.
			for _, p := range h.GetProblems() {
				a.printf("    problem: %s\n", terminalSafe(oneLine(p)))
			}
		}
	}
	return nil
}

// printPlain prints a plain Go value as JSON or YAML, per --output.
func (a *app) printPlain(v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if a.output == "yaml" {
		b, err = jsonToYAML(b)
		if err != nil {
			return err
		}
		_, err = a.io.out.Write(b)
		return err
	}
	_, err = fmt.Fprintf(a.io.out, "%s\n", escapeQuoted(b))
	return err
}

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
			if err := checkLabelSelector(labels); err != nil {
				return err
			}
			req := &mpfleetv1.WatchHostsRequest{LabelSelector: labels}
			if group != "" {
				req.Group = groupName(group)
			}
			return a.watchHosts(cmd.Context(), req)
		},
	}
	hostsCmd.Flags().StringVarP(&labels, "selector", "l", "", "only hosts with these labels: k=v,k2=v2")
	hostsCmd.Flags().StringVar(&group, "group", "", "only hosts of this group")
	cmd := &cobra.Command{
		Use:     "watch RESOURCE",
		Short:   "Follow hosts as they change",
		Example: `  mpfleetctl watch hosts`,
		RunE:    parentRunE("resource type", "hosts"),
	}
	cmd.AddCommand(hostsCmd)
	return cmd
}

func (a *app) watchHosts(ctx context.Context, req *mpfleetv1.WatchHostsRequest) error {
	hc, err := a.hosts()
	if err != nil {
		return err
	}
	stream, err := hc.WatchHosts(ctx, req)
	if err != nil {
		return fmt.Errorf("watch hosts: %w", a.rpcErr(err))
	}
	last := map[string]string{} // host → last line printed, without the time
	for {
		ev, err := stream.Recv()
		switch {
		case err != nil && isCanceled(ctx, err):
			return nil
		case errors.Is(err, io.EOF):
			return errStreamEnded("watch hosts")
		case err != nil:
			return fmt.Errorf("watch hosts: %w", a.rpcErr(err))
		}
		if a.output != "table" {
			if err := a.printStreamItem(ev); err != nil {
				return err
			}
			continue
		}
		h := ev.GetHost()
		name := trimName(h.GetName())
		var line string
		switch ev.GetType() {
		case mpfleetv1.HostEvent_TYPE_SYNCED:
			_, _ = fmt.Fprintf(a.io.err, "mpfleetctl: %d hosts listed; watching for changes\n", len(last))
			continue
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
				continue
			}
			last[name] = line
		}
		a.printf("%s %s\n", a.now().UTC().Format("15:04:05"), terminalSafe(line))
	}
}

// printStreamItem prints one streamed message: a JSON line, or a YAML
// document.
func (a *app) printStreamItem(m proto.Message) error {
	if a.output == "yaml" {
		b, err := marshalYAML(m)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(a.io.out, "---\n%s", b)
		return err
	}
	return a.printJSONLine(m)
}
