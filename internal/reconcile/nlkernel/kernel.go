// Package nlkernel is the real reconcile.Kernel of one network namespace:
// endpoints and limits through the mptcp_pm generic netlink family
// (mptcpnl), rules and routes through rtnetlink (routenl), sysctls through
// /proc/sys/net/mptcp read and written from a thread inside the namespace.
// It never runs a command.
package nlkernel

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"sync"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/mptcp/mptcpnl"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/route"
	"github.com/mpfleet/mpfleet/internal/route/routenl"
)

// Options configure Open.
type Options struct {
	// NetNS is a file descriptor of the network namespace to manage (as from
	// /run/netns/NAME); 0 means the caller's. Open keeps its own
	// duplicate of the descriptor.
	NetNS int
	// Range is the owned table and priority range; zero means
	// route.DefaultRange.
	Range route.Range
}

// Kernel is the real reconcile.Kernel of one network namespace: endpoints
// and limits through the mptcp_pm generic netlink family (mptcpnl.Client),
// rules and routes through rtnetlink (routenl.Manager), sysctls through
// /proc/sys/net/mptcp read and written from a thread inside the namespace.
// It never runs a command.
type Kernel struct {
	mp *mptcpnl.Client
	rt *routenl.Manager
	ns netNS

	mu    sync.Mutex
	names map[int]string // interface names by index, refreshed on a miss
}

// Open opens the sockets of a Kernel; Close releases them.
func Open(opts *Options) (*Kernel, error) {
	if opts == nil {
		opts = &Options{}
	}
	ns, err := openNetNS(opts.NetNS)
	if err != nil {
		return nil, err
	}
	mp, err := mptcpnl.Dial(&mptcpnl.DialOptions{NetNS: opts.NetNS})
	if err != nil {
		ns.close()
		return nil, fmt.Errorf("reconcile: open kernel: %w", err)
	}
	rt, err := routenl.Open(&routenl.Options{NetNS: opts.NetNS, Range: opts.Range})
	if err != nil {
		_ = mp.Close()
		ns.close()
		return nil, fmt.Errorf("reconcile: open kernel: %w", err)
	}
	return &Kernel{mp: mp, rt: rt, ns: ns}, nil
}

// Close releases the sockets.
func (k *Kernel) Close() error {
	err := errors.Join(k.mp.Close(), k.rt.Close())
	k.ns.close()
	return err
}

// Read implements reconcile.Kernel. Its three independent parts — the mptcp_pm dumps,
// the rtnetlink dumps and the sysctl files — run concurrently.
func (k *Kernel) Read(ctx context.Context, desired reconcile.HostConfig) (reconcile.State, error) {
	if err := ctx.Err(); err != nil {
		return reconcile.State{}, err
	}
	sysctls := desired.SysctlNames()
	var s reconcile.State
	var wg sync.WaitGroup
	var mpErr, rtErr, sysErr error
	wg.Go(func() {
		if s.Endpoints, mpErr = k.mp.Endpoints(); mpErr != nil {
			return
		}
		var lim mptcp.Limits
		if lim, mpErr = k.mp.Limits(); mpErr == nil {
			s.Limits = &lim
		}
	})
	wg.Go(func() {
		var d routenl.Dump
		if d, rtErr = k.rt.Dump(); rtErr == nil {
			s.Rules, s.Routes, s.Foreign, s.ForeignRoutes = d.Rules, d.Routes, d.ForeignRules, d.ForeignRoutes
		}
	})
	s.Sysctls = make(map[string]string, len(sysctls))
	sysErr = k.ns.do(func() error {
		v, err := mptcp.ReadSysctl(reconcile.SysctlEnabled)
		switch {
		case err == nil:
			s.Enabled = ptr(reconcile.NormValue(v) != "0")
		case !errors.Is(err, os.ErrNotExist):
			return err
		}
		for _, name := range sysctls {
			v, err := mptcp.ReadSysctl(name)
			switch {
			case err == nil:
				s.Sysctls[name] = reconcile.NormValue(v)
			case !errors.Is(err, os.ErrNotExist):
				return err
			}
		}
		return nil
	})
	wg.Wait()
	if err := errors.Join(mpErr, rtErr, sysErr); err != nil {
		return reconcile.State{}, err
	}
	var err error
	if s.Links, err = k.linkNames(s, desired); err != nil {
		return reconcile.State{}, err
	}
	return s, nil
}

// linkNames names the interfaces s and desired refer to. Names are for
// display only, so they come from a cache that is refreshed (one link dump)
// only when an index is missing from it; a renamed interface may show its
// old name until then.
func (k *Kernel) linkNames(s reconcile.State, desired reconcile.HostConfig) (map[int]string, error) {
	var idx []int
	for _, e := range slices.Concat(s.Endpoints, desired.Endpoints) {
		if e.IfIndex != 0 {
			idx = append(idx, e.IfIndex)
		}
	}
	for _, r := range slices.Concat(s.Routes, desired.Routes) {
		idx = append(idx, r.LinkIndex)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, i := range idx {
		if _, ok := k.names[i]; !ok {
			names, err := k.rt.LinkNames()
			if err != nil {
				return nil, err
			}
			k.names = names
			break
		}
	}
	return maps.Clone(k.names), nil
}

// Do implements reconcile.Kernel. The undo it returns is built from the kernel's
// state read just before the change.
func (k *Kernel) Do(ctx context.Context, op reconcile.Op) (reconcile.Op, error) {
	if err := cmp.Or(ctx.Err(), op.Check()); err != nil {
		return reconcile.Op{}, err
	}
	undo, err := k.do(op)
	if err != nil {
		return reconcile.Op{}, fmt.Errorf("reconcile: %s: %w", op, err)
	}
	return undo, nil
}

// do applies op, which Check passed.
func (k *Kernel) do(op reconcile.Op) (reconcile.Op, error) {
	undo := op
	switch op.Kind {
	case reconcile.SetSysctl:
		err := k.ns.do(func() error {
			old, err := mptcp.ReadSysctl(op.Sysctl)
			if err != nil {
				return err
			}
			if err := mptcp.WriteSysctl(op.Sysctl, op.Value); err != nil {
				return err
			}
			undo.Value, undo.Old = reconcile.NormValue(old), op.Value
			return nil
		})
		return undo, err
	case reconcile.SetLimits:
		old, err := k.mp.Limits()
		if err != nil {
			return reconcile.Op{}, err
		}
		undo.Limits, undo.OldLimits = &old, ptr(*op.Limits)
		return undo, k.mp.SetLimits(*op.Limits)
	case reconcile.AddEndpoint:
		e := *op.Endpoint
		if err := k.mp.AddEndpoint(e); err != nil {
			return reconcile.Op{}, err
		}
		if e.ID == 0 {
			// The kernel chose the ID; the undo needs it.
			cur, err := k.endpointBy(func(x mptcp.Endpoint) bool { return x.Addr == e.Addr })
			if err != nil {
				return reconcile.Op{}, err
			}
			e.ID = cur.ID
		}
		undo.Kind, undo.Endpoint = reconcile.DelEndpoint, &e
		return undo, nil
	case reconcile.DelEndpoint, reconcile.SetEndpointFlags:
		cur, err := k.endpointBy(func(x mptcp.Endpoint) bool { return x.ID == op.Endpoint.ID })
		if err != nil {
			return reconcile.Op{}, err
		}
		n := cur
		if op.Kind == reconcile.DelEndpoint {
			n.Flags &^= mptcp.FlagImplicit // made by the kernel; cannot be added back as such
			undo.Kind, undo.Endpoint = reconcile.AddEndpoint, &n
			return undo, k.mp.DeleteEndpoint(cur.ID)
		}
		n.Flags = cur.Flags&^mptcp.MutableFlags | op.Flags&mptcp.MutableFlags
		undo.Endpoint, undo.Flags = &n, cur.Flags
		return undo, k.mp.SetEndpointFlags(cur.ID, op.Flags)
	case reconcile.AddRule:
		return inverse(op, k.rt.AddRule(*op.Rule))
	case reconcile.DelRule:
		return inverse(op, k.rt.DeleteRule(*op.Rule))
	case reconcile.AddRoute:
		return inverse(op, k.rt.AddRoute(*op.Route))
	case reconcile.DelRoute:
		return inverse(op, k.rt.DeleteRoute(*op.Route))
	case reconcile.SetRuleProtocol:
		return inverse(op, k.rt.SetRuleProtocol(*op.Rule, op.OldProtocol, op.Protocol))
	case reconcile.SetRouteProtocol:
		return inverse(op, k.rt.SetRouteProtocol(*op.Route, op.OldProtocol, op.Protocol))
	}
	return reconcile.Op{}, fmt.Errorf("op kind %q: %w", op.Kind, reconcile.ErrInvalid)
}

// inverse is the undo of op, which the kernel did unless err says otherwise.
func inverse(op reconcile.Op, err error) (reconcile.Op, error) {
	if err != nil {
		return reconcile.Op{}, err
	}
	return op.Inverse()
}

func (k *Kernel) endpointBy(match func(mptcp.Endpoint) bool) (mptcp.Endpoint, error) {
	eps, err := k.mp.Endpoints()
	if err != nil {
		return mptcp.Endpoint{}, err
	}
	for _, e := range eps {
		if match(e) {
			return e, nil
		}
	}
	return mptcp.Endpoint{}, mptcp.ErrEndpointNotFound
}

var _ reconcile.Kernel = (*Kernel)(nil)

func ptr[T any](v T) *T { return &v }
