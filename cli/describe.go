package cli

import (
	"fmt"
	"io"
	"maps"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/spf13/cobra"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

func (a *app) describeHostCommand() *cobra.Command {
	return &cobra.Command{
		Use:               "host NAME",
		ValidArgsFunction: firstArg(a.completeHosts),
		Aliases:           []string{"hosts"},
		Short:             "Show everything about one host",
		Long: `describe host shows a host's group, sync state and health, then what keeps
it from running its policy as asked and the paths it manages, then its labels
and facts (kernel, MPTCP support, interfaces with addresses and gateways),
what the agent read back from the kernel (MPTCP endpoints and limits, policy
routing rules and routes, sysctls), its MPTCP health (the fleet's "ss -M":
open connections, subflows, fallbacks to TCP, MPTcpExt counters) and the
agent's last plan.

Problems (shown only when there are some) are one line each, the kind of
problem, the interface and the address concerned, with what is wrong and how
to fix it indented on the next line. Paths is one row per managed path (an
interface and one of its endpoint addresses) as the agent last checked it:
the gateway and routing table of the path, its state (ok, failed, link_down,
no_gateway, unprobed: the local checks passed but no probe is configured), how
long ago it was checked, the latency of its slowest probe, and why it is not
ok. A disconnected host shows what it last reported.`,
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
}

func (a *app) describeCommand() *cobra.Command {
	return parentCommand(&cobra.Command{
		Use:     "describe RESOURCE NAME",
		Short:   "Show one host in detail",
		Example: `  mpfleetctl describe host web-1`,
	}, "resource type", a.describeHostCommand())
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
	health := hostHealth(h)
	if !h.GetConnected() && health != "-" {
		at := h.GetHealth().GetReadTime()
		if at == nil {
			at = h.GetLastSeenTime()
		}
		if ago := a.age(at); ago != "" {
			health += " (last reported " + ago + " ago)"
		}
	}
	d.field(0, "Health", health)
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
	if len(h.GetReportedLabels()) > 0 && !maps.Equal(h.GetReportedLabels(), h.GetLabels()) {
		d.field(0, "Reported labels", formatLabels(h.GetReportedLabels()))
	}
	d.field(0, "Last error", h.GetLastError())
	d.flush()
	if len(h.GetProblems()) > 0 {
		d.section(0, "Problems")
		d.problems(1, h.GetProblems())
	}
	a.describePaths(d, h.GetHealth().GetPaths())

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
	describeRows(d, 1, "none reported", f.GetInterfaces(), []string{"NAME", "INDEX", "STATE", "ADDRESSES", "GATEWAYS"}, func(i *mpfleetv1.Interface) []string {
		state := "down"
		if i.GetUp() {
			state = "up"
		}
		return []string{i.GetName(), strconv.Itoa(int(i.GetIndex())), state, strings.Join(i.GetAddresses(), ","), strings.Join(i.GetGateways(), ",")}
	})

	ap := h.GetApplied()
	d.section(0, "Applied")
	limits := "-"
	if l := ap.GetLimits(); l != nil {
		limits = fmt.Sprintf("subflows %s, add_addr_accepted %s", optUint(l.Subflows), optUint(l.AddAddrAccepted))
	}
	d.field(1, "Limits", limits)
	d.flush()
	d.section(1, "Endpoints")
	describeRows(d, 2, "none", ap.GetEndpoints(), []string{"ID", "ADDRESS", "PORT", "FLAGS", "INTERFACE"}, func(e *mpfleetv1.AppliedEndpoint) []string {
		port := ""
		if e.GetPort() != 0 {
			port = strconv.Itoa(int(e.GetPort()))
		}
		return []string{strconv.Itoa(int(e.GetId())), e.GetAddress(), port, formatFlags(e.GetFlags()), e.GetInterface()}
	})
	if len(h.GetExcludedAddresses()) > 0 {
		d.line(2, "excluded (8-endpoint kernel maximum): "+strings.Join(h.GetExcludedAddresses(), ", "))
	}
	d.section(1, "Rules")
	describeRows(d, 2, "none", ap.GetRules(), []string{"PRIORITY", "FROM", "TABLE"}, func(r *mpfleetv1.AppliedRule) []string {
		return []string{strconv.Itoa(int(r.GetPriority())), r.GetFrom(), strconv.Itoa(int(r.GetTable()))}
	})
	d.section(1, "Routes")
	describeRows(d, 2, "none", ap.GetRoutes(), []string{"TABLE", "DESTINATION", "GATEWAY", "INTERFACE", "SOURCE"}, func(r *mpfleetv1.AppliedRoute) []string {
		return []string{strconv.Itoa(int(r.GetTable())), r.GetDestination(), r.GetGateway(), r.GetInterface(), r.GetSource()}
	})
	d.section(1, "Sysctls")
	describeRows(d, 2, "none managed", sortedKeys(ap.GetSysctls()), nil, func(k string) []string {
		return []string{"net.mptcp." + k + " = " + ap.GetSysctls()[k]}
	})

	hl := h.GetHealth()
	title := "MPTCP health"
	if seen := a.age(hl.GetReadTime()); seen != "" {
		title += " (read " + seen + " ago)"
	}
	d.section(0, title)
	d.field(1, "Connections", fmt.Sprintf("%d open, %d subflows, %d fell back to TCP", hl.GetConnections(), hl.GetSubflows(), hl.GetFallbacks()))
	d.flush()
	describeRows(d, 1, "", hl.GetConnectionsList(), []string{"LOCAL", "REMOTE", "SUBFLOWS", "FALLBACK", "TOKEN"}, func(c *mpfleetv1.MptcpConnection) []string {
		fb := "no"
		if c.GetFallback() {
			fb = "yes"
		}
		return []string{c.GetLocal(), c.GetRemote(), strconv.Itoa(int(c.GetSubflows())), fb, fmt.Sprintf("%08x", c.GetToken())}
	})
	if len(hl.GetCounters()) > 0 {
		d.section(1, "Counters")
		describeRows(d, 2, "", sortedKeys(hl.GetCounters()), nil, func(k string) []string {
			return []string{k, strconv.FormatUint(hl.GetCounters()[k], 10)}
		})
	}
	if len(h.GetLastPlan()) > 0 {
		d.section(0, "Last plan")
		for _, op := range h.GetLastPlan() {
			d.line(1, planLine(op))
		}
	}
	return d.err
}

// problems writes one line per problem, its code, interface and address
// aligned, and its message on the next line, indented: messages run to a
// couple of sentences and would stretch any table.
func (d *describer) problems(level int, ps []*mpfleetv1.HostProblem) {
	rows := make([][3]string, len(ps))
	var codeW, ifW int
	for i, p := range ps {
		rows[i] = [3]string{
			shortEnum(p.GetCode()),
			orDefault(terminalSafe(p.GetInterface()), "-"),
			orDefault(terminalSafe(p.GetAddress()), "-"),
		}
		codeW = max(codeW, utf8.RuneCountInString(rows[i][0]))
		ifW = max(ifW, utf8.RuneCountInString(rows[i][1]))
	}
	indent := strings.Repeat(indentUnit, level)
	for i, p := range ps {
		d.printf("%s%-*s   %-*s   %s\n", indent, codeW, rows[i][0], ifW, rows[i][1], rows[i][2])
		if m := terminalSafe(p.GetMessage()); m != "" {
			d.printf("%s%s%s\n", indent, indentUnit, m)
		}
	}
}

// describePaths writes the Paths table: each managed path as the agent last
// checked it.
func (a *app) describePaths(d *describer, paths []*mpfleetv1.PathStatus) {
	d.section(0, "Paths")
	header := []string{"INTERFACE", "ADDRESS", "GATEWAY", "TABLE", "STATE", "LAST CHECK", "LATENCY", "MESSAGE"}
	describeRows(d, 1, "none reported", paths, header, func(p *mpfleetv1.PathStatus) []string {
		table := ""
		if p.GetTable() != 0 {
			table = strconv.FormatUint(uint64(p.GetTable()), 10)
		}
		state := "unchecked"
		if p.GetState() != mpfleetv1.PathState_PATH_STATE_UNSPECIFIED {
			state = shortEnum(p.GetState())
		}
		latency := ""
		if p.GetProbeLatency() != nil {
			latency = formatLatency(p.GetProbeLatency().AsDuration())
		}
		return []string{p.GetInterface(), p.GetAddress(), p.GetGateway(), table, state, a.age(p.GetLastCheckTime()), latency, p.GetMessage()}
	})
}

func optUint(p *uint32) string {
	if p == nil {
		return "unset"
	}
	return strconv.FormatUint(uint64(*p), 10)
}
