// Command mpfleet-floor is the least a gRPC server can do to hold mpfleet
// agent streams, for the scale benchmark's grpc-go floor; see floor.Usage.
package main

import (
	"github.com/mpfleet/mpfleet/internal/program"
	"github.com/mpfleet/mpfleet/test/scale/floor"
)

func main() { program.Main("mpfleet-floor", floor.Run) }
