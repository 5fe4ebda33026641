// Command mpfleetctl is the command-line client of the mpfleet controller.
// See package github.com/mpfleet/mpfleet/cli, or run "mpfleetctl --help".
package main

import (
	"os"

	"github.com/mpfleet/mpfleet/cli"
	"github.com/mpfleet/mpfleet/internal/program"
)

func main() {
	ctx, stop := program.SignalContext()
	err := cli.Run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(cli.ExitCode(err))
}
