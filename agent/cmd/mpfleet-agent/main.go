// Command mpfleet-agent applies its group's MPTCP policy to the network
// namespace it runs in; see agent.Usage.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/mpfleet/mpfleet/agent"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := agent.Run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "mpfleet-agent:", err)
		os.Exit(1)
	}
}
