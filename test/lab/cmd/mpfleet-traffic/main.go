// Command mpfleet-traffic sends and verifies bulk transfers over Multipath
// TCP in the lab:
//
//	mpfleet-traffic serve --listen 198.18.11.2:5201
//	mpfleet-traffic send --to 198.18.11.2:5201 --bytes 100M --json
//
// See package github.com/mpfleet/mpfleet/test/lab/traffic.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/mpfleet/mpfleet/test/lab/traffic"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := traffic.Run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "mpfleet-traffic:", err)
		os.Exit(1)
	}
}
