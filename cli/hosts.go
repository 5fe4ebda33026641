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
The table has NAME, GROUP, STATE, DESIRED and APPLIED revision, ENDPOINTS
applied, open MPTCP CONNS and their SUBFLOWS, and LAST SEEN. Use
"mpfleetctl describe host NAME" for everything about one host.

States: in_sync, applying, drifted, failed, conflict, unmanaged, disconnected.`,
		Example: `  mpfleetctl get hosts
  mpfleetctl get hosts -l role=web,zone=a --state drifted
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
	cmd.Flags().StringVar(&state, "state", "", "only hosts in this sync state (in_sync, drifted, failed, …)")
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
		t := newTable(w, "NAME", "GROUP", "STATE", "DESIRED", "APPLIED", "ENDPOINTS", "CONNS", "SUBFLOWS", "LAST SEEN")
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

func hostRow(a *app, h *mpfleetv1.Host) []string {
	lastSeen := a.age(h.GetLastSeenTime())
	if lastSeen == "" {
		lastSeen = "never"
	}
	return []string{
		trimName(h.GetName()), hostGroup(h), shortEnum(h.GetSyncState()),
		revision(h.GetDesiredRevision()), revision(h.GetAppliedRevision()),
		strconv.Itoa(len(h.GetApplied().GetEndpoints())),
		strconv.FormatUint(uint64(h.GetHealth().GetConnections()), 10),
		strconv.FormatUint(uint64(h.GetHealth().GetSubflows()), 10),
		lastSeen,
	}
}

func (a *app) describeCommand() *cobra.Command {
	host := &cobra.Command{
		Use:     "host NAME",
		Aliases: []string{"hosts"},
		Short:   "Show everything about one host",
		Long: `describe host shows a host's labels and facts (kernel, MPTCP support,
interfaces with addresses and gateways), its group and sync state, what the
agent read back from the kernel (MPTCP endpoints and limits, policy routing
rules and routes, sysctls), its MPTCP health (the fleet's "ss -M": open
connections, subflows, fallbacks to TCP, MPTcpExt counters) and the agent's
last plan.`,
		Example: `  mpfleetctl describe host web-1`,
		Args:    exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			hc, err := a.hosts()
			if err != nil {
				return err
			}
			h, err := a.getHost(cmd.Context(), hc, args[0])
			if err != nil {
				return err
			}
			return a.printObject(h, func(w io.Writer) error { return a.describeHost(w, h) })
		},
	}
	cmd := &cobra.Command{
		Use:     "describe RESOURCE NAME",
		Short:   "Show one host in detail",
		Example: `  mpfleetctl describe host web-1`,
		RunE:    parentRunE("resource type", "host"),
	}
	cmd.AddCommand(host)
	return cmd
}

// describeHost lays out one host for people.
func (a *app) describeHost(w io.Writer, h *mpfleetv1.Host) error {
	d := &describer{w: w}
	d.field(0, "Name", trimName(h.GetName()))
	group := trimName(h.GetGroup())
	if len(h.GetConflictingGroups()) > 0 {
		group = "conflict between " + joinTrimmed(h.GetConflictingGroups())
	}
	d.field(0, "Group", group)
	d.field(0, "State", shortEnum(h.GetSyncState()))
	d.field(0, "Revision", fmt.Sprintf("desired %s, applied %s", revision(h.GetDesiredRevision()), revision(h.GetAppliedRevision())))
	conn := "no"
	if h.GetConnected() {
		conn = "yes"
	}
	if seen := a.age(h.GetLastSeenTime()); seen != "" {
		conn += fmt.Sprintf(", last seen %s ago (%s)", seen, formatTime(h.GetLastSeenTime()))
	}
	d.field(0, "Connected", conn)
	agent := h.GetAgentVersion()
	if h.GetDryRun() {
		agent += " (dry run: plans, applies nothing)"
	}
	d.field(0, "Agent", agent)
	d.field(0, "Labels", formatLabels(h.GetLabels()))
	d.field(0, "Last error", h.GetLastError())
	d.flush()

	f := h.GetFacts()
	d.section(0, "Facts")
	d.field(1, "Hostname", f.GetHostname())
	kernel := f.GetKernelVersion()
	if f.GetMptcpSupported() {
		kernel += " (MPTCP supported)"
	} else {
		kernel += " (no MPTCP)"
	}
	d.field(1, "Kernel", kernel)
	d.field(1, "Schedulers", strings.Join(f.GetAvailableSchedulers(), ", "))
	d.field(1, "Path managers", strings.Join(f.GetAvailablePathManagers(), ", "))
	d.field(1, "Sysctls", strings.Join(f.GetAvailableSysctls(), ", "))
	d.flush()
	d.section(0, "Interfaces")
	if len(f.GetInterfaces()) == 0 {
		d.line(1, "none reported")
	} else {
		t := d.table(1, "NAME", "INDEX", "STATE", "ADDRESSES", "GATEWAYS")
		for _, i := range f.GetInterfaces() {
			state := "down"
			if i.GetUp() {
				state = "up"
			}
			t.row(i.GetName(), strconv.Itoa(int(i.GetIndex())), state, strings.Join(i.GetAddresses(), ","), strings.Join(i.GetGateways(), ","))
		}
		d.flushTable(t)
	}

	ap := h.GetApplied()
	d.section(0, "Applied")
	limits := "-"
	if l := ap.GetLimits(); l != nil {
		limits = fmt.Sprintf("subflows %s, add_addr_accepted %s", optUint(l.Subflows), optUint(l.AddAddrAccepted))
	}
	d.field(1, "Limits", limits)
	d.flush()
	d.section(1, "Endpoints")
	if len(ap.GetEndpoints()) == 0 {
		d.line(2, "none")
	} else {
		t := d.table(2, "ID", "ADDRESS", "PORT", "FLAGS", "INTERFACE")
		for _, e := range ap.GetEndpoints() {
			port := ""
			if e.GetPort() != 0 {
				port = strconv.Itoa(int(e.GetPort()))
			}
			t.row(strconv.Itoa(int(e.GetId())), e.GetAddress(), port, formatFlags(e.GetFlags()), e.GetInterface())
		}
		d.flushTable(t)
	}
	if len(h.GetExcludedAddresses()) > 0 {
		d.line(2, "excluded (8-endpoint kernel maximum): "+strings.Join(h.GetExcludedAddresses(), ", "))
	}
	d.section(1, "Rules")
	if len(ap.GetRules()) == 0 {
		d.line(2, "none")
	} else {
		t := d.table(2, "PRIORITY", "FROM", "TABLE")
		for _, r := range ap.GetRules() {
			t.row(strconv.Itoa(int(r.GetPriority())), r.GetFrom(), strconv.Itoa(int(r.GetTable())))
		}
		d.flushTable(t)
	}
	d.section(1, "Routes")
	if len(ap.GetRoutes()) == 0 {
		d.line(2, "none")
	} else {
		t := d.table(2, "TABLE", "DESTINATION", "GATEWAY", "INTERFACE", "SOURCE")
		for _, r := range ap.GetRoutes() {
			t.row(strconv.Itoa(int(r.GetTable())), r.GetDestination(), r.GetGateway(), r.GetInterface(), r.GetSource())
		}
		d.flushTable(t)
	}
	d.section(1, "Sysctls")
	if len(ap.GetSysctls()) == 0 {
		d.line(2, "none managed")
	} else {
		t := d.table(2)
		for _, k := range sortedKeys(ap.GetSysctls()) {
			t.row("net.mptcp." + k + " = " + ap.GetSysctls()[k])
		}
		d.flushTable(t)
	}

	hl := h.GetHealth()
	title := "MPTCP health"
	if seen := a.age(hl.GetReadTime()); seen != "" {
		title += " (read " + seen + " ago)"
	}
	d.section(0, title)
	d.field(1, "Connections", fmt.Sprintf("%d open, %d subflows, %d fell back to TCP", hl.GetConnections(), hl.GetSubflows(), hl.GetFallbacks()))
	d.flush()
	if len(hl.GetConnectionsList()) > 0 {
		t := d.table(1, "LOCAL", "REMOTE", "SUBFLOWS", "FALLBACK", "TOKEN")
		for _, c := range hl.GetConnectionsList() {
			fb := "no"
			if c.GetFallback() {
				fb = "yes"
			}
			t.row(c.GetLocal(), c.GetRemote(), strconv.Itoa(int(c.GetSubflows())), fb, fmt.Sprintf("%08x", c.GetToken()))
		}
		d.flushTable(t)
	}
	if len(hl.GetCounters()) > 0 {
		d.section(1, "Counters")
		t := d.table(2)
		for _, k := range sortedKeys(hl.GetCounters()) {
			t.row(k, strconv.FormatUint(hl.GetCounters()[k], 10))
		}
		d.flushTable(t)
	}
	if len(h.GetLastPlan()) > 0 {
		d.section(0, "Last plan")
		for _, op := range h.GetLastPlan() {
			d.line(1, planLine(op))
		}
	}
	return d.err
}

func optUint(p *uint32) string {
	if p == nil {
		return "unset"
	}
	return strconv.FormatUint(uint64(*p), 10)
}

func planLine(op *mpfleetv1.PlanOperation) string {
	if op.GetDescription() != "" {
		return op.GetDescription()
	}
	return op.GetKind()
}

// describer writes the indented sections of describe host. Fields of one
// block are aligned together until flush.
type describer struct {
	w      io.Writer
	fields [][3]string // indent, label, value
	err    error
}

const indentUnit = "  "

func (d *describer) printf(format string, args ...any) {
	if d.err == nil {
		_, d.err = fmt.Fprintf(d.w, format, args...)
	}
}

func (d *describer) field(level int, label, value string) {
	if value == "" {
		value = "-"
	}
	d.fields = append(d.fields, [3]string{strings.Repeat(indentUnit, level), label + ":", value})
}

func (d *describer) flush() {
	width := 0
	for _, f := range d.fields {
		width = max(width, len(f[1]))
	}
	for _, f := range d.fields {
		d.printf("%s%-*s %s\n", f[0], width, f[1], f[2])
	}
	d.fields = nil
}

func (d *describer) section(level int, title string) {
	d.flush()
	d.printf("%s%s:\n", strings.Repeat(indentUnit, level), title)
}

func (d *describer) line(level int, s string) {
	d.flush()
	d.printf("%s%s\n", strings.Repeat(indentUnit, level), s)
}

// indentWriter prefixes every line written through it.
type indentWriter struct {
	w       io.Writer
	prefix  string
	midLine bool
}

func (iw *indentWriter) Write(p []byte) (int, error) {
	var b strings.Builder
	for _, c := range string(p) {
		if !iw.midLine {
			b.WriteString(iw.prefix)
			iw.midLine = true
		}
		b.WriteRune(c)
		if c == '\n' {
			iw.midLine = false
		}
	}
	if _, err := io.WriteString(iw.w, b.String()); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (d *describer) table(level int, header ...string) *table {
	d.flush()
	return newTable(&indentWriter{w: d.w, prefix: strings.Repeat(indentUnit, level)}, header...)
}

func (d *describer) flushTable(t *table) {
	if err := t.flush(); err != nil && d.err == nil {
		d.err = err
	}
}

func (a *app) planCommand() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "plan -f FILE",
		Short: "Show what the policies of a file would change on each host",
		Long: `plan asks the controller, for each Group document of the file, which kernel
operations its policy would cause on each host of the group (computed from
the hosts' last reported facts; nothing is applied), and prints them per
host. A group that does not exist yet has no hosts to plan.`,
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
			name := trimName(h.GetHost())
			switch {
			case h.GetError() != "":
				a.printf("  host/%s: cannot plan: %s\n", name, oneLine(h.GetError()))
			case len(h.GetOperations()) == 0:
				a.printf("  host/%s: no changes\n", name)
			default:
				a.printf("  host/%s: %d operations\n", name, len(h.GetOperations()))
				for _, op := range h.GetOperations() {
					a.printf("    %s\n", planLine(op))
				}
			}
			if len(h.GetExcludedAddresses()) > 0 {
				a.printf("    excluded (8-endpoint kernel maximum): %s\n", strings.Join(h.GetExcludedAddresses(), ", "))
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
	_, err = fmt.Fprintf(a.io.out, "%s\n", b)
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
		a.printf("%s %s\n", a.now().UTC().Format("15:04:05"), line)
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
