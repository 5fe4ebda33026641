package agent

import (
	"errors"
	"fmt"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/mptcp/mptcpnl"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/reconcile/nlkernel"
	"github.com/mpfleet/mpfleet/internal/route"
)

// NetlinkKernels returns a KernelOpener of nlkernel.Kernel for the
// network namespace netnsFD (as from /run/netns/NAME; 0 is the caller's),
// each with an mptcpnl.EndpointAdder of its own for the fast path
// (hotplug.go).
func NetlinkKernels(netnsFD int) KernelOpener { return netlinkKernels(netnsFD, true) }

// netlinkKernels is NetlinkKernels, with the fast path's adder only when
// fastPath is set: --cleanup and --dry-run, which never take the fast path,
// open no socket for it.
func netlinkKernels(netnsFD int, fastPath bool) KernelOpener {
	return func(rng route.Range) (reconcile.Kernel, error) {
		k, err := nlkernel.Open(&nlkernel.Options{NetNS: netnsFD, Range: rng})
		if err != nil {
			return nil, err
		}
		if !fastPath {
			return k, nil
		}
		add, err := mptcpnl.DialEndpointAdder(&mptcpnl.DialOptions{NetNS: netnsFD})
		if err != nil {
			_ = k.Close()
			return nil, fmt.Errorf("reconcile: open kernel: %w", err)
		}
		return &netlinkKernel{Kernel: k, add: add}, nil
	}
}

// netlinkKernel is an nlkernel.Kernel that adds an endpoint for the fast
// path with one request on a socket of its own.
type netlinkKernel struct {
	*nlkernel.Kernel
	add *mptcpnl.EndpointAdder
}

// addEndpointNow implements endpointAdder. Only the fast path calls it,
// under its lock.
func (k *netlinkKernel) addEndpointNow(e mptcp.Endpoint) error {
	if err := k.add.AddEndpoint(e); err != nil {
		return addError(e, err)
	}
	return nil
}

// addError is the error of an endpoint addition, as nlkernel's. (Apart,
// so that e is copied to the heap only on an error.)
func addError(e mptcp.Endpoint, err error) error {
	return fmt.Errorf("reconcile: %s: %w", reconcile.Op{Kind: reconcile.AddEndpoint, Endpoint: &e}, err)
}

// Close releases both.
func (k *netlinkKernel) Close() error { return errors.Join(k.add.Close(), k.Kernel.Close()) }

var _ endpointAdder = (*netlinkKernel)(nil)
