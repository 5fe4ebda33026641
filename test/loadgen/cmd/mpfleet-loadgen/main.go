// Command mpfleet-loadgen runs simulated mpfleet agents for scale
// benchmarks; see loadgen.Usage.
package main

import (
	"github.com/mpfleet/mpfleet/internal/program"
	"github.com/mpfleet/mpfleet/test/loadgen"
)

func main() { program.Main("mpfleet-loadgen", loadgen.Run) }
