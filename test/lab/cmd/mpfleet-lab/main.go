//go:build linux

// Command mpfleet-lab brings the mpfleet network lab up and down:
//
//	go run ./test/lab/cmd/mpfleet-lab up      # prefix "mpfl", prints the topology
//	go run ./test/lab/cmd/mpfleet-lab up --hosts 6 --ipv6  # with extra hosts h1..h6
//	go run ./test/lab/cmd/mpfleet-lab status
//	go run ./test/lab/cmd/mpfleet-lab down
//	go run ./test/lab/cmd/mpfleet-lab cleanup # every lab's leftovers
//
// It needs root. See package github.com/mpfleet/mpfleet/test/lab.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/mpfleet/mpfleet/test/lab"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := lab.Run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "mpfleet-lab:", err)
		os.Exit(1)
	}
}
