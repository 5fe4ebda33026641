package cli

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// updatePaths are the fields apply replaces on an existing group.
// A manifest without rolloutStrategy leaves the group's as it is.
var updatePaths = []string{"description", "selector", "policy"}

// maskFor is updatePaths, plus rollout_strategy when the manifest sets one.
func maskFor(want *mpfleetv1.Group) []string {
	if want.GetRolloutStrategy() != nil {
		return append(slices.Clone(updatePaths), "rollout_strategy")
	}
	return updatePaths
}

func (a *app) applyCommand() *cobra.Command {
	var opts applyOptions
	cmd := &cobra.Command{
		Use:   "apply -f FILE|DIR [-f ...] [-R]",
		Short: "Create or update groups from a YAML file",
		Long: `apply makes the controller's groups match the Group documents of a YAML
file (several documents separated by "---"; "-f -" reads stdin). -f may be
repeated, and may name a directory: its *.yaml, *.yml and *.json files, in
name order (with -R also its subdirectories'). A group
that does not exist is created; one that exists is updated (description,
selector and policy, guarded by its etag) unless it already equals the
document, in which case nothing is written. Every document is parsed and
validated by the controller before any group is written, so a bad document
changes nothing. See docs/cli.md for the format.

It prints one line per group:
  group/web created (revision 1)
  group/web configured (revision 2)
  group/web configured (revision 3; rollout/r-7f3a started)
  group/web unchanged
A group with a rollout_strategy does not send a policy change to every host
at once: the controller starts a rollout (see "mpfleetctl rollout --help"),
named on the line. While a rollout of the group runs, a policy change is
refused (failed precondition) and nothing is written.

With --wait apply then waits for what it changed to reach the hosts, group
by group, and exits non-zero if a group did not get there:
  - a group whose change started a rollout: the rollout is followed until it
    ends, as "rollout status --watch" shows it (plain lines when stdout is
    not a terminal); it must end succeeded.
  - any other group it created or configured: every host of the group must
    be connected, IN_SYNC and run the revision the group deploys. It prints
    a line each time the count changes:
      12:00:03 group/db 2/3 hosts in sync at revision 4
    and fails as soon as a host reports FAILED for that revision, or when
    --timeout (default 5m with --wait) passes first, naming the hosts not
    there and why. Rollouts are not bound by --timeout: they end by their
    own step timeouts.`,
		Example: `  mpfleetctl apply -f deploy/examples/two-links.yaml --reason "add second uplink"
  mpfleetctl apply -f groups.yaml --dry-run
  mpfleetctl apply -f groups.yaml --wait --timeout 10m
  cat groups.yaml | mpfleetctl apply -f -`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if opts.wait && opts.dryRun {
				return usagef("--wait cannot be combined with --dry-run: nothing is written to wait for")
			}
			// --timeout is the global deadline of each call; given on the
			// command line, it also bounds the wait for hosts.
			opts.waitTimeout = defaultWaitTimeout
			if fl := cmd.Flag("timeout"); fl != nil && fl.Changed {
				opts.waitTimeout = a.timeout
			}
			ms, err := a.readManifests(opts.files)
			if err != nil {
				return err
			}
			return a.apply(cmd.Context(), ms, opts)
		},
	}
	opts.files.add(cmd)
	cmd.Flags().StringVar(&opts.reason, "reason", "", "why the change is made (recorded in the audit log and the new revision)")
	cmd.Flags().BoolVar(&opts.dryRun, "dry-run", false, "validate on the controller and print what would change; write nothing")
	cmd.Flags().BoolVar(&opts.wait, "wait", false, "wait until the changed groups' hosts run the new revision (or their rollouts end); exit non-zero if one does not")
	return cmd
}

// defaultWaitTimeout bounds apply --wait's wait for hosts when --timeout is
// not given on the command line.
const defaultWaitTimeout = 5 * time.Minute

// applyOptions are the flags of apply.
type applyOptions struct {
	files       fileFlags // -f, -R: the manifests
	reason      string
	dryRun      bool
	wait        bool
	waitTimeout time.Duration // 0: no limit
}

// groupChange is what apply does to one group.
type groupChange struct {
	m       *manifest
	current *mpfleetv1.Group // nil: the group does not exist
	verb    string           // created, configured or unchanged
}

func (a *app) apply(ctx context.Context, ms []*manifest, opts applyOptions) error {
	gc, err := a.groups()
	if err != nil {
		return err
	}
	// First read every group and have the controller validate every
	// change; only then write.
	changes := make([]groupChange, 0, len(ms))
	for _, m := range ms {
		cur, err := a.getGroupIfExists(ctx, gc, m.ID)
		if err != nil {
			return fmt.Errorf("group %q: %w", m.ID, err)
		}
		c := groupChange{m: m, current: cur, verb: "configured"}
		switch {
		case cur == nil:
			c.verb = "created"
		case sameSpec(cur, m.Group) && (m.Group.GetRolloutStrategy() == nil || proto.Equal(cur.GetRolloutStrategy(), m.Group.GetRolloutStrategy())):
			c.verb = "unchanged"
		}
		if c.verb != "unchanged" {
			if _, err := a.writeGroup(ctx, gc, c, opts.reason, true); err != nil {
				return fmt.Errorf("group %q (%s): %w", m.ID, m.where(), err)
			}
		}
		changes = append(changes, c)
	}
	var written []*mpfleetv1.Group
	for _, c := range changes {
		switch {
		case c.verb == "unchanged":
			a.printf("group/%s unchanged\n", c.m.ID)
		case opts.dryRun:
			a.printf("group/%s %s (dry run)\n", c.m.ID, c.verb)
		default:
			g, err := a.writeGroup(ctx, gc, c, opts.reason, false)
			if err != nil {
				return fmt.Errorf("group %q: %w", c.m.ID, err)
			}
			rollout := ""
			if r := g.GetActiveRollout(); r != "" {
				verb := "started"
				if r == c.current.GetActiveRollout() {
					verb = "running" // started before, by another change
				}
				rollout = fmt.Sprintf("; rollout/%s %s", terminalSafe(trimName(r)), verb)
			}
			a.printf("group/%s %s (revision %d%s)\n", c.m.ID, c.verb, g.GetPolicyRevision(), rollout)
			written = append(written, g)
		}
	}
	if !opts.wait || len(written) == 0 {
		return nil
	}
	return a.waitApplied(ctx, written, opts.waitTimeout)
}

// getGroupIfExists returns the group, or nil if it does not exist.
func (a *app) getGroupIfExists(ctx context.Context, gc mpfleetv1.GroupServiceClient, id string) (*mpfleetv1.Group, error) {
	cctx, cancel := a.callCtx(ctx)
	defer cancel()
	g, err := gc.GetGroup(cctx, &mpfleetv1.GetGroupRequest{Name: groupName(id)})
	if status.Code(err) == codes.NotFound {
		return nil, nil
	}
	return g, a.rpcErr(err)
}

// writeGroup creates or updates one group.
func (a *app) writeGroup(ctx context.Context, gc mpfleetv1.GroupServiceClient, c groupChange, reason string, validateOnly bool) (*mpfleetv1.Group, error) {
	cctx, cancel := a.callCtx(ctx)
	defer cancel()
	want := c.m.Group
	group := &mpfleetv1.Group{
		Description:     want.GetDescription(),
		Selector:        want.GetSelector(),
		Policy:          want.GetPolicy(),
		RolloutStrategy: want.GetRolloutStrategy(),
	}
	var (
		g   *mpfleetv1.Group
		err error
	)
	if c.current == nil {
		g, err = gc.CreateGroup(cctx, &mpfleetv1.CreateGroupRequest{
			GroupId: c.m.ID, Group: group, Reason: reason, ValidateOnly: validateOnly,
		})
	} else {
		group.Name, group.Etag = groupName(c.m.ID), c.current.GetEtag()
		g, err = gc.UpdateGroup(cctx, &mpfleetv1.UpdateGroupRequest{
			Group: group, UpdateMask: &fieldmaskpb.FieldMask{Paths: maskFor(want)}, Reason: reason, ValidateOnly: validateOnly,
		})
	}
	return g, a.rpcErr(err)
}

// sameSpec reports whether two groups have equal description, selector and
// policy. An empty message counts as unset: "limits: {}" says nothing more
// than no limits.
func sameSpec(x, y *mpfleetv1.Group) bool {
	spec := func(g *mpfleetv1.Group) *mpfleetv1.Group {
		s := proto.Clone(&mpfleetv1.Group{
			Description: g.GetDescription(),
			Selector:    g.GetSelector(),
			Policy:      g.GetPolicy(),
		}).(*mpfleetv1.Group)
		pruneEmpty(s.ProtoReflect())
		return s
	}
	return proto.Equal(spec(x), spec(y))
}

// pruneEmpty clears the singular message fields of m that hold nothing,
// recursively. It reports whether m is empty afterwards.
func pruneEmpty(m protoreflect.Message) bool {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := 0; i < v.List().Len(); i++ {
				pruneEmpty(v.List().Get(i).Message())
			}
		case !fd.IsMap() && !fd.IsList() && fd.Message() != nil:
			if pruneEmpty(v.Message()) {
				m.Clear(fd)
			}
		}
		return true
	})
	empty := true
	m.Range(func(protoreflect.FieldDescriptor, protoreflect.Value) bool {
		empty = false
		return false
	})
	return empty
}
