package cli

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

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
			resp, err := callService(cmd.Context(), a, "verify audit log", mpfleetv1.NewAuditServiceClient, mpfleetv1.AuditServiceClient.VerifyAuditLog,
				&mpfleetv1.VerifyAuditLogRequest{})
			if err != nil {
				return err
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
