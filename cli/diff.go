package cli

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

func (a *app) diffCommand() *cobra.Command {
	var files fileFlags
	cmd := &cobra.Command{
		Use:   "diff GROUP REV1 REV2 | diff -f FILE|DIR [-f ...] [-R]",
		Short: "Show how a group's policy changed between two revisions, or how a file differs from the live groups",
		Long: `diff GROUP REV1 REV2 prints a unified diff of two policy revisions of a
group, each rendered as YAML in the API's form. It prints nothing when they
are equal.

diff -f FILE compares the live groups with the Group documents of the files
(-f as apply takes it: repeatable, a directory, -R), the way apply decides
what it would change: description, selector and policy, and the rollout
strategy when the document sets one, empty sections dropped. It prints a
unified diff per group that differs (a group that does not exist yet is all
added) and exits like kubectl diff: 0 when nothing differs, 1 when
something does, 2 or more on an error. Nothing is written.

On a terminal the diff is coloured (removed red, added green), unless
NO_COLOR is set. --output does not apply.`,
		Example: `  mpfleetctl diff web 1 2
  mpfleetctl diff -f deploy/examples/two-links.yaml
  mpfleetctl diff -f groups/ && echo "no change"`,
		ValidArgsFunction: firstArg(a.completeGroups),
		Args: func(cmd *cobra.Command, args []string) error {
			if len(files.files) > 0 {
				if len(args) > 0 {
					return usagef("diff -f: takes no arguments, got %d", len(args))
				}
				return nil
			}
			return exactArgs(3, "GROUP REV1 REV2 (or -f FILE)")(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(files.files) > 0 {
				return a.diffFiles(cmd.Context(), files)
			}
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
				name := fmt.Sprintf("%s/revisions/%d", groupName(id), n)
				r, err := unary(cmd.Context(), a, fmt.Sprintf("group %q revision %d", id, n), gc.GetPolicyRevision, &mpfleetv1.GetPolicyRevisionRequest{Name: name})
				if err != nil {
					return err
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
			a.printDiff(unifiedDiff(
				fmt.Sprintf("%s/revisions/%d", groupName(id), revs[0]),
				fmt.Sprintf("%s/revisions/%d", groupName(id), revs[1]),
				texts[0], texts[1], 3))
			return nil
		},
	}
	files.add(cmd)
	return cmd
}
