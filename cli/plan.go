package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

func planLine(op *mpfleetv1.PlanOperation) string {
	if op.GetDescription() != "" {
		return op.GetDescription()
	}
	return op.GetKind()
}

func (a *app) planCommand() *cobra.Command {
	var files fileFlags
	cmd := &cobra.Command{
		Use:   "plan -f FILE|DIR [-f ...] [-R]",
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
			ms, err := a.readManifests(files)
			if err != nil {
				return err
			}
			return a.plan(cmd.Context(), ms)
		},
	}
	files.add(cmd)
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
			return fmt.Errorf("group %q (%s): %w", m.ID, m.where(), a.rpcErr(err))
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
