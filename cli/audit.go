package cli

import (
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// auditFilter holds the filter flags shared by audit list and audit watch.
type auditFilter struct {
	actor, resource, action, host string
}

func (f *auditFilter) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.actor, "actor", "", "only events by this actor, e.g. alice or agent:web-1")
	cmd.Flags().StringVar(&f.resource, "resource", "", `only events on this resource, or under it when it ends in "/" (e.g. groups/)`)
	cmd.Flags().StringVar(&f.action, "action", "", `only events with this action, or this prefix when it ends in "." (e.g. agent.)`)
	cmd.Flags().StringVar(&f.host, "host", "", "only events concerning this host")
}

func (f *auditFilter) hostName() string {
	if f.host == "" {
		return ""
	}
	return hostName(f.host)
}

func (a *app) auditCommand() *cobra.Command {
	return parentCommand(&cobra.Command{
		Use:   "audit COMMAND",
		Short: "Read, export, verify and watch the audit log",
		Long: `The audit log records every mutating API call and every agent event of note,
hash-chained so that tampering is detectable.`,
		Example: `  mpfleetctl audit list --since 24h --resource groups/
  mpfleetctl audit list -o json > audit.jsonl
  mpfleetctl audit verify
  mpfleetctl audit watch --action agent.`,
	}, "command", a.auditListCommand(), a.auditVerifyCommand(), a.auditWatchCommand())
}

func (a *app) auditListCommand() *cobra.Command {
	var (
		f            auditFilter
		since, until string
	)
	cmd := listCommand(&cobra.Command{
		Use:   "list",
		Short: "List audit events, oldest first",
		Long: `audit list prints the audit events matching every filter given, oldest
first, following all pages unless --limit. The table has SEQ, TIME, ACTOR,
ACTION, RESOURCE, RESULT and REASON; -o json prints JSON lines, one event per
line, for export; -o yaml prints {"events": [...]}.

--since and --until take a duration back from now (90m, 24h) or an RFC 3339
time (2025-01-02T15:04:05Z).`,
		Example: `  mpfleetctl audit list --actor alice --since 24h
  mpfleetctl audit list --host web-1 --action agent.
  mpfleetctl audit list --since 2025-01-01T00:00:00Z -o json > audit.jsonl`,
		Args: cobra.NoArgs,
	}, "events", func(cmd *cobra.Command, _ []string, limit int) error {
		if limit < 0 {
			return usagef("--limit %d: must not be negative", limit)
		}
		start, err := a.parseTimeFlag("--since", since)
		if err != nil {
			return err
		}
		end, err := a.parseTimeFlag("--until", until)
		if err != nil {
			return err
		}
		ac, err := a.audit()
		if err != nil {
			return err
		}
		req := &mpfleetv1.ListAuditEventsRequest{
			Actor: f.actor, Resource: f.resource, Action: f.action, Host: f.hostName(),
			StartTime: start, EndTime: end,
		}
		events, err := listPages(cmd.Context(), a, "list audit events", limit, ac.ListAuditEvents, req, (*mpfleetv1.ListAuditEventsResponse).GetEvents)
		if err != nil {
			return err
		}
		if a.output == "json" {
			for _, e := range events {
				if err := a.printJSONLine(e); err != nil {
					return err
				}
			}
			return nil
		}
		return printList(a, &mpfleetv1.ListAuditEventsResponse{Events: events}, events,
			[]string{"SEQ", "TIME", "ACTOR", "ACTION", "RESOURCE", "RESULT", "REASON"}, auditRow)
	})
	f.register(cmd)
	cmd.Flags().StringVar(&since, "since", "", "only events at or after this time (duration back from now, or RFC 3339)")
	cmd.Flags().StringVar(&until, "until", "", "only events before this time (duration back from now, or RFC 3339)")
	return cmd
}

// parseTimeFlag parses a --since/--until value: a duration back from now or
// an RFC 3339 time; "" is no bound.
func (a *app) parseTimeFlag(flag, s string) (*timestamppb.Timestamp, error) {
	if s == "" {
		return nil, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return nil, usagef("%s %q: want a positive duration", flag, s)
		}
		return timestamppb.New(a.now().Add(-d)), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return nil, usagef("%s %q: want a duration (90m, 24h) or an RFC 3339 time (2025-01-02T15:04:05Z)", flag, s)
	}
	return timestamppb.New(t), nil
}

func auditRow(e *mpfleetv1.AuditEvent) []string {
	result := shortEnum(e.GetResult())
	if e.GetResult() == mpfleetv1.AuditResult_AUDIT_RESULT_FAILURE && e.GetStatusCode() != "" {
		result += " (" + e.GetStatusCode() + ")"
	}
	resource := e.GetResource()
	if e.GetHost() != "" && e.GetHost() != resource {
		resource = strings.TrimSpace(resource + " " + e.GetHost())
	}
	reason := e.GetReason()
	if reason == "" {
		reason = e.GetError()
	}
	return []string{strconv.FormatUint(e.GetSequence(), 10), formatTime(e.GetTime()), e.GetActor(),
		e.GetAction(), resource, result, reason}
}

func (a *app) auditWatchCommand() *cobra.Command {
	var (
		f     auditFilter
		after uint64
	)
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Print audit events as they are recorded",
		Long: `audit watch prints each audit event matching the filters as it is recorded,
one line per event (-o json: one JSON object per line), until interrupted.
With --after it first prints the retained events after that sequence.`,
		Example: `  mpfleetctl audit watch
  mpfleetctl audit watch --resource groups/web --after 120 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ac, err := a.audit()
			if err != nil {
				return err
			}
			req := &mpfleetv1.WatchAuditEventsRequest{
				AfterSequence: after, Actor: f.actor, Resource: f.resource, Action: f.action, Host: f.hostName(),
			}
			return watchStream(cmd.Context(), a, "watch audit events", ac.WatchAuditEvents, req, func(e *mpfleetv1.AuditEvent) error {
				if a.output == "table" {
					a.printf("%s\n", strings.Join(quoteEmpty(auditRow(e)), "  "))
					return nil
				}
				return a.printStreamItem(e)
			})
		},
	}
	f.register(cmd)
	cmd.Flags().Uint64Var(&after, "after", 0, "first print the retained events after this sequence (0: only new events)")
	return cmd
}
