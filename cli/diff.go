package cli

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

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
			_, err = io.WriteString(a.io.out, unifiedDiff(
				fmt.Sprintf("%s/revisions/%d", groupName(id), revs[0]),
				fmt.Sprintf("%s/revisions/%d", groupName(id), revs[1]),
				texts[0], texts[1], 3))
			return err
		},
	}
}
