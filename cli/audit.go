package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
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

func (a *app) audit() (mpfleetv1.AuditServiceClient, error) {
	conn, err := a.client()
	if err != nil {
		return nil, err
	}
	return mpfleetv1.NewAuditServiceClient(conn), nil
}

func (a *app) auditCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit COMMAND",
		Short: "Read, export, verify and watch the audit log",
		Long: `The audit log records every mutating API call and every agent event of note,
hash-chained so that tampering is detectable.`,
		Example: `  mpfleetctl audit list --since 24h --resource groups/
  mpfleetctl audit list -o json > audit.jsonl
  mpfleetctl audit verify
  mpfleetctl audit watch --action agent.`,
		RunE: parentRunE("command", "list, verify, watch"),
	}
	cmd.AddCommand(a.auditListCommand(), a.auditVerifyCommand(), a.auditWatchCommand())
	return cmd
}

func (a *app) auditListCommand() *cobra.Command {
	var (
		f            auditFilter
		since, until string
		limit        int
	)
	cmd := &cobra.Command{
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
		RunE: func(cmd *cobra.Command, _ []string) error {
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
			events, err := collectPages(cmd.Context(), a, limit, func(ctx context.Context, size int32, token string) ([]*mpfleetv1.AuditEvent, string, error) {
				req.PageSize, req.PageToken = size, token
				resp, err := ac.ListAuditEvents(ctx, req)
				return resp.GetEvents(), resp.GetNextPageToken(), err
			})
			if err != nil {
				return fmt.Errorf("list audit events: %w", err)
			}
			if a.output == "json" {
				for _, e := range events {
					if err := a.printJSONLine(e); err != nil {
						return err
					}
				}
				return nil
			}
			return a.printObject(&mpfleetv1.ListAuditEventsResponse{Events: events}, func(w io.Writer) error {
				t := newTable(w, "SEQ", "TIME", "ACTOR", "ACTION", "RESOURCE", "RESULT", "REASON")
				for _, e := range events {
					t.row(auditRow(e)...)
				}
				return t.flush()
			})
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&since, "since", "", "only events at or after this time (duration back from now, or RFC 3339)")
	cmd.Flags().StringVar(&until, "until", "", "only events before this time (duration back from now, or RFC 3339)")
	cmd.Flags().IntVar(&limit, "limit", 0, "list at most N events (0: all)")
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

// errAuditBroken is returned by audit verify when the chain does not verify.
var errAuditBroken = errors.New("audit log does not verify")

func (a *app) auditVerifyCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "verify",
		Short: "Verify the audit log's hash chain",
		Long: `audit verify has the controller recompute the hash chain over the retained
events. It prints OK with the number of events checked and the chain's head
hash, then two properties of the log:

  keyed   how many events are keyed (their hash is an HMAC with the
          controller's audit key, so rewriting them takes the key, not just
          access to etcd), and how many older ones are unkeyed (plain
          SHA-256, written before the key was introduced);
  pruned  which of the oldest events are gone, and the checkpoint event
          that retention wrote when it removed them.

Or it prints BROKEN with the first sequence that does not verify and why
(an altered event, a missing one, events deleted by hand from the start or
the end of the log, an event keyed with another key), and then exits 1.`,
		Example: `  mpfleetctl audit verify`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ac, err := a.audit()
			if err != nil {
				return err
			}
			ctx, cancel := a.callCtx(cmd.Context())
			defer cancel()
			resp, err := ac.VerifyAuditLog(ctx, &mpfleetv1.VerifyAuditLogRequest{})
			if err != nil {
				return fmt.Errorf("verify audit log: %w", a.rpcErr(err))
			}
			err = a.printObject(resp, func(w io.Writer) error {
				if resp.GetOk() {
					_, err := fmt.Fprintf(w, "OK: %d events verified (sequences %d to %d), head %s\n  keyed: %s\n  pruned: %s\n",
						resp.GetEventsChecked(), resp.GetFirstSequence(), resp.GetLastSequence(), orDefault(terminalSafe(resp.GetHeadHash()), "-"),
						keyedSummary(resp), prunedSummary(resp))
					return err
				}
				_, err := fmt.Fprintf(w, "BROKEN: sequence %d: %s (%d events checked from sequence %d)\n",
					resp.GetFirstBadSequence(), orDefault(terminalSafe(resp.GetReason()), "does not verify"), resp.GetEventsChecked(), resp.GetFirstSequence())
				return err
			})
			if err != nil {
				return err
			}
			if !resp.GetOk() {
				return fmt.Errorf("%w: first bad sequence %d: %s", errAuditBroken, resp.GetFirstBadSequence(), orDefault(resp.GetReason(), "does not verify"))
			}
			return nil
		},
	}
}

// keyedSummary says which verified events are keyed.
func keyedSummary(r *mpfleetv1.VerifyAuditLogResponse) string {
	keyed, unkeyed := r.GetKeyedEvents(), r.GetUnkeyedEvents()
	key := terminalSafe(r.GetKeyId())
	switch {
	case r.GetKeyId() == "" && keyed+unkeyed == 0 && r.GetEventsChecked() > 0:
		return "not reported (the controller predates audit keys: plain SHA-256 hashes, which anyone who can write etcd can recompute)"
	case r.GetKeyId() == "":
		return fmt.Sprintf("no (the controller has no audit key): %d events unkeyed (plain SHA-256)", unkeyed)
	case r.GetEventsChecked() == 0:
		return fmt.Sprintf("every event will be, with audit key %s", key)
	case unkeyed == 0:
		return fmt.Sprintf("all %d events, with audit key %s", keyed, key)
	default:
		return fmt.Sprintf("%d events from sequence %d, with audit key %s; %d older events unkeyed (plain SHA-256, written before the key was introduced)",
			keyed, r.GetFirstKeyedSequence(), key, unkeyed)
	}
}

// prunedSummary says which of the oldest events are gone and what accounts
// for them.
func prunedSummary(r *mpfleetv1.VerifyAuditLogResponse) string {
	n := r.GetPrunedEvents()
	switch {
	case n == 0 && r.GetFirstSequence() > 1: // a controller that predates checkpoints
		return fmt.Sprintf("events 1..%d (not checked against a checkpoint: the controller predates them)", r.GetFirstSequence()-1)
	case n == 0 && r.GetFirstSequence() == 1:
		return "none (the log starts at sequence 1)"
	case n == 0:
		return "none"
	case r.GetCheckpointSequence() == 0:
		return fmt.Sprintf("events 1..%d, not accounted for by a checkpoint", n)
	default:
		return fmt.Sprintf("events 1..%d, removed by retention as the checkpoint at sequence %d records", n, r.GetCheckpointSequence())
	}
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
			ctx := cmd.Context()
			stream, err := ac.WatchAuditEvents(ctx, &mpfleetv1.WatchAuditEventsRequest{
				AfterSequence: after, Actor: f.actor, Resource: f.resource, Action: f.action, Host: f.hostName(),
			})
			if err != nil {
				return fmt.Errorf("watch audit events: %w", a.rpcErr(err))
			}
			for {
				e, err := stream.Recv()
				switch {
				case err != nil && isCanceled(ctx, err):
					return nil
				case errors.Is(err, io.EOF):
					return errStreamEnded("watch audit events")
				case err != nil:
					return fmt.Errorf("watch audit events: %w", a.rpcErr(err))
				}
				if a.output == "table" {
					a.printf("%s\n", strings.Join(quoteEmpty(auditRow(e)), "  "))
					continue
				}
				if err := a.printStreamItem(e); err != nil {
					return err
				}
			}
		},
	}
	f.register(cmd)
	cmd.Flags().Uint64Var(&after, "after", 0, "first print the retained events after this sequence (0: only new events)")
	return cmd
}

// errStreamEnded is the error of a watch the controller ended: a watch
// runs until interrupted, so a script sees the end and can start again.
func errStreamEnded(what string) error {
	return fmt.Errorf("%s: the controller ended the stream", what)
}

// quoteEmpty replaces empty cells by "-" and folds each cell onto one line.
func quoteEmpty(cells []string) []string {
	for i, c := range cells {
		cells[i] = orDefault(terminalSafe(oneLine(c)), "-")
	}
	return cells
}
