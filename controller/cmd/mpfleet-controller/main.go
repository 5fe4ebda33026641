// Command mpfleet-controller serves the mpfleet API; see controller.Usage.
package main

import (
	"github.com/mpfleet/mpfleet/controller"
	"github.com/mpfleet/mpfleet/internal/program"
)

func main() { program.Main("mpfleet-controller", controller.Run) }
