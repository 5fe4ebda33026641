// Command mpfleet-agent applies its group's MPTCP policy to the network
// namespace it runs in; see agent.Usage.
package main

import (
	"github.com/mpfleet/mpfleet/agent"
	"github.com/mpfleet/mpfleet/internal/program"
)

func main() { program.Main("mpfleet-agent", agent.Run) }
