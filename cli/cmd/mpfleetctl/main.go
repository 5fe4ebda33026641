// Command mpfleetctl is the command-line client of the mpfleet controller.
// See package github.com/mpfleet/mpfleet/cli, or run "mpfleetctl --help".
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/mpfleet/mpfleet/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cli.Run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(cli.ExitCode(err))
}
