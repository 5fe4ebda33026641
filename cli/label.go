package cli

import (
	"context"
	"fmt"
	"maps"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

func (a *app) labelCommand() *cobra.Command {
	var e labelEdit
	host := &cobra.Command{
		Use:               "host NAME KEY=VALUE... [KEY-]...",
		ValidArgsFunction: firstArg(a.completeHosts),
		Aliases:           []string{"hosts"},
		Short:             "Set or remove a host's labels, which choose its group",
		Long: `label host sets the labels of a host (KEY=VALUE) or removes them (KEY-).
With authentication on, these labels — set by an operator, audited — and the
labels bound in the agent's certificate or token are what choose a host's
group; the labels an agent reports itself are facts (REPORTED LABELS in
describe host). Once an operator labels a host, its labels are the
operator's: they replace the credential's. A host may be labelled before its
agent first connects. Changing a label that has a value needs --overwrite.`,
		Example: `  mpfleetctl label host web-7 role=web zone=fra-1
  mpfleetctl label host web-7 role=db --overwrite --reason "now a database host"
  mpfleetctl label host web-7 zone-`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 {
				return usagef("label host: want NAME and at least one KEY=VALUE or KEY- (see 'mpfleetctl label host --help')")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := e.parse(args[1:]); err != nil {
				return err
			}
			return a.labelHost(cmd.Context(), trimName(args[0]), &e)
		},
	}
	host.Flags().StringVar(&e.reason, "reason", "", "why (recorded in the audit log)")
	host.Flags().BoolVar(&e.overwrite, "overwrite", false, "allow changing the value of a label the host has")
	return parentCommand(&cobra.Command{
		Use:     "label RESOURCE NAME KEY=VALUE...",
		Short:   "Label a host",
		Example: "  mpfleetctl label host web-7 role=web",
	}, "resource type", host)
}

// labelEdit is what label host does to a host's labels.
type labelEdit struct {
	set       map[string]string // KEY=VALUE
	del       map[string]bool   // KEY-
	overwrite bool              // a label the host has may change its value
	reason    string            // recorded in the audit log
}

// parse reads the KEY=VALUE and KEY- arguments of label host.
func (e *labelEdit) parse(args []string) error {
	e.set, e.del = map[string]string{}, map[string]bool{}
	for _, arg := range args {
		if k, ok := strings.CutSuffix(arg, "-"); ok && !strings.Contains(arg, "=") {
			e.del[k] = true
			continue
		}
		k, v, ok := strings.Cut(arg, "=")
		if !ok || k == "" {
			return usagef("label host: %q: want KEY=VALUE or KEY-", arg)
		}
		e.set[k] = v
	}
	return nil
}

// apply edits labels, those of host id. Changing the value of a label
// needs overwrite.
func (e *labelEdit) apply(id string, labels map[string]string) error {
	for k, v := range e.set {
		if old, ok := labels[k]; ok && old != v && !e.overwrite {
			return usagef("label host: %s already has %s=%s: give --overwrite to change it", id, k, old)
		}
		labels[k] = v
	}
	for k := range e.del {
		delete(labels, k)
	}
	return nil
}

// labelHost reads the labels of host id (none if the controller does not
// know it yet), edits them and writes them back, both calls within one
// --timeout.
func (a *app) labelHost(ctx context.Context, id string, e *labelEdit) error {
	hc, err := a.hosts()
	if err != nil {
		return err
	}
	ctx, cancel := a.callCtx(ctx)
	defer cancel()
	labels := map[string]string{}
	cur, err := hc.GetHost(ctx, &mpfleetv1.GetHostRequest{Name: hostName(id)})
	switch {
	case status.Code(err) == codes.NotFound:
	case err != nil:
		return fmt.Errorf("host %q: %w", id, a.rpcErr(err))
	default:
		maps.Copy(labels, cur.GetLabels())
	}
	if err := e.apply(id, labels); err != nil {
		return err
	}
	h, err := hc.UpdateHost(ctx, &mpfleetv1.UpdateHostRequest{
		Host:       &mpfleetv1.Host{Name: hostName(id), Labels: labels},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"labels"}},
		Reason:     e.reason,
	})
	if err != nil {
		return fmt.Errorf("host %q: %w", id, a.rpcErr(err))
	}
	a.printf("host/%s labeled (%s)\n", terminalSafe(trimName(h.GetName())), terminalSafe(formatLabels(h.GetLabels())))
	return nil
}
