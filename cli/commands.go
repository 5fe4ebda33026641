package cli

import (
	"strings"

	"github.com/spf13/cobra"
)

// parentCommand completes cmd as the parent of children: run without one
// of them, it is a usage error that names them; what says what they are
// ("resource type", "command").
func parentCommand(cmd *cobra.Command, what string, children ...*cobra.Command) *cobra.Command {
	names := make([]string, len(children))
	for i, c := range children {
		names[i] = c.Name()
	}
	cmd.RunE = parentRunE(what, strings.Join(names, ", "))
	cmd.AddCommand(children...)
	return cmd
}

// parentRunE rejects a parent command run without a known subcommand.
func parentRunE(what, valid string) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return usagef("%s: missing %s (one of: %s)", cmd.Name(), what, valid)
		}
		return usagef("%s: unknown %s %q (one of: %s)", cmd.Name(), what, args[0], valid)
	}
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

// listCommand completes cmd as a command that lists resources, following
// all pages unless --limit N; run gets the limit (0: all). what names the
// resources in the flag's usage.
func listCommand(cmd *cobra.Command, what string, run func(cmd *cobra.Command, args []string, limit int) error) *cobra.Command {
	var limit int
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return run(cmd, args, limit)
	}
	cmd.Flags().IntVar(&limit, "limit", 0, "list at most N "+what+" (0: all)")
	return cmd
}
