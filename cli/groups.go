package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// updatePaths are the fields apply replaces on an existing group.
var updatePaths = []string{"description", "selector", "policy"}

func (a *app) groups() (mpfleetv1.GroupServiceClient, error) {
	conn, err := a.client()
	if err != nil {
		return nil, err
	}
	return mpfleetv1.NewGroupServiceClient(conn), nil
}

// readManifests reads and parses the file given with -f ("-": stdin).
func (a *app) readManifests(file string) ([]*manifest, error) {
	var (
		data   []byte
		err    error
		source = file
	)
	switch file {
	case "":
		return nil, usagef("-f FILE is required (-f - reads stdin)")
	case "-":
		source = "stdin"
		data, err = io.ReadAll(a.io.in)
	default:
		data, err = os.ReadFile(file)
	}
	if err != nil {
		return nil, err
	}
	return parseManifests(source, data)
}

func (a *app) applyCommand() *cobra.Command {
	var (
		file, reason string
		dryRun       bool
	)
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Create or update groups from a YAML file",
		Long: `apply makes the controller's groups match the Group documents of a YAML
file (several documents separated by "---"; "-f -" reads stdin). A group
that does not exist is created; one that exists is updated (description,
selector and policy, guarded by its etag) unless it already equals the
document, in which case nothing is written. Every document is parsed and
validated by the controller before any group is written, so a bad document
changes nothing. See docs/cli.md for the format.

It prints one line per group:
  group/web created (revision 1)
  group/web configured (revision 2)
  group/web unchanged`,
		Example: `  mpfleetctl apply -f deploy/examples/two-links.yaml --reason "add second uplink"
  mpfleetctl apply -f groups.yaml --dry-run
  cat groups.yaml | mpfleetctl apply -f -`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ms, err := a.readManifests(file)
			if err != nil {
				return err
			}
			return a.apply(cmd.Context(), ms, reason, dryRun)
		},
	}
	cmd.Flags().StringVarP(&file, "filename", "f", "", "YAML file of Group documents (- for stdin)")
	cmd.Flags().StringVar(&reason, "reason", "", "why the change is made (recorded in the audit log and the new revision)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "validate on the controller and print what would change; write nothing")
	return cmd
}

// groupChange is what apply does to one group.
type groupChange struct {
	m       *manifest
	current *mpfleetv1.Group // nil: the group does not exist
	verb    string           // created, configured or unchanged
}

func (a *app) apply(ctx context.Context, ms []*manifest, reason string, dryRun bool) error {
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
		case sameSpec(cur, m.Group):
			c.verb = "unchanged"
		}
		if c.verb != "unchanged" {
			if _, err := a.writeGroup(ctx, gc, c, reason, true); err != nil {
				return fmt.Errorf("group %q (document %d, line %d): %w", m.ID, m.Index, m.Line, err)
			}
		}
		changes = append(changes, c)
	}
	for _, c := range changes {
		switch {
		case c.verb == "unchanged":
			a.printf("group/%s unchanged\n", c.m.ID)
		case dryRun:
			a.printf("group/%s %s (dry run)\n", c.m.ID, c.verb)
		default:
			g, err := a.writeGroup(ctx, gc, c, reason, false)
			if err != nil {
				return fmt.Errorf("group %q: %w", c.m.ID, err)
			}
			a.printf("group/%s %s (revision %d)\n", c.m.ID, c.verb, g.GetPolicyRevision())
		}
	}
	return nil
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
	var (
		g   *mpfleetv1.Group
		err error
	)
	if c.current == nil {
		g, err = gc.CreateGroup(cctx, &mpfleetv1.CreateGroupRequest{
			GroupId: c.m.ID,
			Group: &mpfleetv1.Group{
				Description: want.GetDescription(),
				Selector:    want.GetSelector(),
				Policy:      want.GetPolicy(),
			},
			Reason:       reason,
			ValidateOnly: validateOnly,
		})
	} else {
		g, err = gc.UpdateGroup(cctx, &mpfleetv1.UpdateGroupRequest{
			Group: &mpfleetv1.Group{
				Name:        groupName(c.m.ID),
				Description: want.GetDescription(),
				Selector:    want.GetSelector(),
				Policy:      want.GetPolicy(),
				Etag:        c.current.GetEtag(),
			},
			UpdateMask:   &fieldmaskpb.FieldMask{Paths: updatePaths},
			Reason:       reason,
			ValidateOnly: validateOnly,
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

// getCommand is the parent of the get commands.
func (a *app) getCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "get RESOURCE",
		Short: "List or show groups and hosts",
		Long:  `get lists groups or hosts, or shows the ones named.`,
		Example: `  mpfleetctl get groups
  mpfleetctl get group web -o yaml
  mpfleetctl get hosts -l role=web --state drifted`,
		RunE: parentRunE("resource type", "groups, hosts"),
	}
	cmd.AddCommand(a.getGroupsCommand(), a.getHostsCommand())
	return cmd
}

// parentRunE rejects a parent command run without a known subcommand;
// what names the subcommands ("resource type", "command").
func parentRunE(what, valid string) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return usagef("%s: missing %s (one of: %s)", cmd.Name(), what, valid)
		}
		return usagef("%s: unknown %s %q (one of: %s)", cmd.Name(), what, args[0], valid)
	}
}

func (a *app) getGroupsCommand() *cobra.Command {
	var limit int
	cmd := &cobra.Command{
		Use:     "groups [NAME...]",
		Aliases: []string{"group"},
		Short:   "List groups, or show the named ones",
		Long: `get groups lists every group (following all pages unless --limit), or shows
the named groups. The table has NAME, REVISION (of the current policy),
SELECTOR, ENDPOINT RULES, ROUTING and UPDATED; -o json and -o yaml print the
API's form (one Group when one is named, else {"groups": [...]}).`,
		Example: `  mpfleetctl get groups
  mpfleetctl get group web -o json`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.getGroups(cmd.Context(), args, limit)
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 0, "list at most N groups (0: all)")
	return cmd
}

func (a *app) getGroups(ctx context.Context, names []string, limit int) error {
	gc, err := a.groups()
	if err != nil {
		return err
	}
	var groups []*mpfleetv1.Group
	if len(names) == 0 {
		groups, err = collectPages(ctx, a, limit, func(ctx context.Context, size int32, token string) ([]*mpfleetv1.Group, string, error) {
			resp, err := gc.ListGroups(ctx, &mpfleetv1.ListGroupsRequest{PageSize: size, PageToken: token})
			return resp.GetGroups(), resp.GetNextPageToken(), err
		})
		if err != nil {
			return fmt.Errorf("list groups: %w", err)
		}
	} else {
		for _, n := range names {
			cctx, cancel := a.callCtx(ctx)
			g, err := gc.GetGroup(cctx, &mpfleetv1.GetGroupRequest{Name: groupName(n)})
			cancel()
			if err != nil {
				return fmt.Errorf("group %q: %w", trimName(n), a.rpcErr(err))
			}
			groups = append(groups, g)
		}
	}
	var obj proto.Message = &mpfleetv1.ListGroupsResponse{Groups: groups}
	if len(names) == 1 {
		obj = groups[0]
	}
	return a.printObject(obj, func(w io.Writer) error {
		t := newTable(w, "NAME", "REVISION", "SELECTOR", "ENDPOINT RULES", "ROUTING", "UPDATED")
		for _, g := range groups {
			t.row(trimName(g.GetName()), strconv.FormatInt(g.GetPolicyRevision(), 10),
				formatLabels(g.GetSelector().GetMatchLabels()), formatRules(g.GetPolicy().GetEndpoints()),
				onOff(g.GetPolicy().GetRouting().GetEnabled()), a.age(g.GetUpdateTime()))
		}
		return t.flush()
	})
}

// formatRules summarizes endpoint rules: `eth* 198.18.0.0/15 [subflow,backup]`.
func formatRules(rules []*mpfleetv1.EndpointRule) string {
	parts := make([]string, 0, len(rules))
	for _, r := range rules {
		var f []string
		if r.GetInterface() != "" {
			f = append(f, r.GetInterface())
		}
		if r.GetCidr() != "" {
			f = append(f, r.GetCidr())
		}
		if r.GetFamily() != mpfleetv1.AddressFamily_ADDRESS_FAMILY_UNSPECIFIED {
			f = append(f, shortEnum(r.GetFamily()))
		}
		f = append(f, "["+formatFlags(r.GetFlags())+"]")
		if r.GetPort() != 0 {
			f = append(f, fmt.Sprintf("port %d", r.GetPort()))
		}
		parts = append(parts, strings.Join(f, " "))
	}
	return strings.Join(parts, "; ")
}

func formatFlags(flags []mpfleetv1.EndpointFlag) string {
	s := make([]string, len(flags))
	for i, f := range flags {
		s[i] = shortEnum(f)
	}
	return strings.Join(s, ",")
}

// shortEnum renders an enum value by its short name: subflow, ipv4, in_sync.
func shortEnum(e protoreflect.Enum) string {
	return enumShortName(e.Descriptor(), e.Number())
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func (a *app) deleteCommand() *cobra.Command {
	var etag, reason string
	group := &cobra.Command{
		Use:     "group NAME",
		Aliases: []string{"groups"},
		Short:   "Delete a group and its policy revisions",
		Long: `delete group deletes a group and its policy revisions. Its hosts become
UNMANAGED and keep their kernel state as it is. With --etag the delete fails
if the group changed since that etag was read.`,
		Example: `  mpfleetctl delete group web --reason "tier retired"
  mpfleetctl delete group web --etag "$(mpfleetctl get group web -o json | jq -r .etag)"`,
		Args: exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			gc, err := a.groups()
			if err != nil {
				return err
			}
			ctx, cancel := a.callCtx(cmd.Context())
			defer cancel()
			id := trimName(args[0])
			_, err = gc.DeleteGroup(ctx, &mpfleetv1.DeleteGroupRequest{Name: groupName(id), Etag: etag, Reason: reason})
			if err != nil {
				return fmt.Errorf("group %q: %w", id, a.rpcErr(err))
			}
			a.printf("group/%s deleted\n", id)
			return nil
		},
	}
	group.Flags().StringVar(&etag, "etag", "", "delete only if the group's etag still is this")
	group.Flags().StringVar(&reason, "reason", "", "why the group is deleted (recorded in the audit log)")
	cmd := &cobra.Command{
		Use:     "delete RESOURCE NAME",
		Short:   "Delete a group",
		Example: `  mpfleetctl delete group web`,
		RunE:    parentRunE("resource type", "group"),
	}
	cmd.AddCommand(group)
	return cmd
}

// exactArgs is cobra.ExactArgs with a message naming the arguments.
func exactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s: want %s, got %d argument(s)", cmd.Name(), names, len(args))
		}
		return nil
	}
}

func (a *app) revisionsCommand() *cobra.Command {
	var limit int
	cmd := &cobra.Command{
		Use:   "revisions GROUP",
		Short: "List a group's policy revisions, newest first",
		Long: `revisions lists a group's immutable policy revisions, newest first: REVISION,
CREATED, ACTOR and REASON. Compare two of them with "mpfleetctl diff".`,
		Example: `  mpfleetctl revisions web
  mpfleetctl revisions web -o yaml`,
		Args: exactArgs(1, "GROUP"),
		RunE: func(cmd *cobra.Command, args []string) error {
			gc, err := a.groups()
			if err != nil {
				return err
			}
			id := trimName(args[0])
			revs, err := collectPages(cmd.Context(), a, limit, func(ctx context.Context, size int32, token string) ([]*mpfleetv1.PolicyRevision, string, error) {
				resp, err := gc.ListPolicyRevisions(ctx, &mpfleetv1.ListPolicyRevisionsRequest{Parent: groupName(id), PageSize: size, PageToken: token})
				return resp.GetRevisions(), resp.GetNextPageToken(), err
			})
			if err != nil {
				return fmt.Errorf("group %q: %w", id, err)
			}
			return a.printObject(&mpfleetv1.ListPolicyRevisionsResponse{Revisions: revs}, func(w io.Writer) error {
				t := newTable(w, "REVISION", "CREATED", "ACTOR", "REASON")
				for _, r := range revs {
					t.row(strconv.FormatInt(r.GetRevision(), 10), formatTime(r.GetCreateTime()), r.GetActor(), r.GetReason())
				}
				return t.flush()
			})
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 0, "list at most N revisions (0: all)")
	return cmd
}

func (a *app) diffCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "diff GROUP REV1 REV2",
		Short: "Show how a group's policy changed between two revisions",
		Long: `diff prints a unified diff of two policy revisions of a group, each rendered
as YAML in the API's form. It prints nothing when they are equal. --output
does not apply.`,
		Example: `  mpfleetctl diff web 1 2`,
		Args:    exactArgs(3, "GROUP REV1 REV2"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := trimName(args[0])
			var revs [2]int64
			for i, s := range args[1:] {
				n, err := strconv.ParseInt(s, 10, 64)
				if err != nil || n < 1 {
					return usagef("diff: revision %q: want a number from 1", s)
				}
				revs[i] = n
			}
			gc, err := a.groups()
			if err != nil {
				return err
			}
			var texts [2]string
			for i, n := range revs {
				ctx, cancel := a.callCtx(cmd.Context())
				name := fmt.Sprintf("%s/revisions/%d", groupName(id), n)
				r, err := gc.GetPolicyRevision(ctx, &mpfleetv1.GetPolicyRevisionRequest{Name: name})
				cancel()
				if err != nil {
					return fmt.Errorf("group %q revision %d: %w", id, n, a.rpcErr(err))
				}
				b, err := marshalYAML(r.GetPolicy())
				if err != nil {
					return err
				}
				if strings.TrimSpace(string(b)) == "{}" {
					b = nil
				}
				texts[i] = string(b)
			}
			_, err = io.WriteString(a.io.out, unifiedDiff(
				fmt.Sprintf("%s/revisions/%d", groupName(id), revs[0]),
				fmt.Sprintf("%s/revisions/%d", groupName(id), revs[1]),
				texts[0], texts[1], 3))
			return err
		},
	}
}
