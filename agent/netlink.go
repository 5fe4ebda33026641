package agent

import (
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/reconcile/nlkernel"
	"github.com/mpfleet/mpfleet/internal/route"
)

// NetlinkKernels returns a KernelOpener of nlkernel.Kernel for the
// network namespace netnsFD (as from /run/netns/NAME; 0 is the caller's).
func NetlinkKernels(netnsFD int) KernelOpener {
	return func(rng route.Range) (reconcile.Kernel, error) {
		return nlkernel.Open(&nlkernel.Options{NetNS: netnsFD, Range: rng})
	}
}
