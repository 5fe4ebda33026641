package reconcile

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"sync"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/route"
)

// KernelOptions configure OpenKernel.
type KernelOptions struct {
	// NetNS is a file descriptor of the network namespace to manage (as from
	// /run/netns/NAME); 0 means the caller's. OpenKernel keeps its own
	// duplicate of the descriptor.
	NetNS int
	// Range is the owned table and priority range; zero means
	// route.DefaultRange.
	Range route.Range
}

// NetlinkKernel is the real Kernel of one network namespace: endpoints and
// limits through the mptcp_pm generic netlink family (mptcp.Client), rules
// and routes through rtnetlink (route.Manager), sysctls through
// /proc/sys/net/mptcp read and written from a thread inside the namespace.
// It never runs a command.
type NetlinkKernel struct {
	mp *mptcp.Client
	rt *route.Manager
	ns netNS

	mu    sync.Mutex
	names map[int]string // interface names by index, refreshed on a miss
}

// OpenKernel opens the sockets of a NetlinkKernel; Close releases them.
func OpenKernel(opts *KernelOptions) (*NetlinkKernel, error) {
	if opts == nil {
		opts = &KernelOptions{}
	}
	ns, err := openNetNS(opts.NetNS)
	if err != nil {
		return nil, err
	}
	mp, err := mptcp.Dial(&mptcp.DialOptions{NetNS: opts.NetNS})
	if err != nil {
		ns.close()
		return nil, fmt.Errorf("reconcile: open kernel: %w", err)
	}
	rt, err := route.Open(&route.Options{NetNS: opts.NetNS, Range: opts.Range})
	if err != nil {
		_ = mp.Close()
		ns.close()
		return nil, fmt.Errorf("reconcile: open kernel: %w", err)
	}
	return &NetlinkKernel{mp: mp, rt: rt, ns: ns}, nil
}

// Close releases the sockets.
func (k *NetlinkKernel) Close() error {
	err := errors.Join(k.mp.Close(), k.rt.Close())
	k.ns.close()
	return err
}

// Read implements Kernel. Its three independent parts — the mptcp_pm dumps,
// the rtnetlink dumps and the sysctl files — run concurrently.
func (k *NetlinkKernel) Read(ctx context.Context, desired HostConfig) (State, error) {
	if err := ctx.Err(); err != nil {
		return State{}, err
	}
	sysctls := desired.SysctlNames()
	var s State
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
		var d route.Dump
		if d, rtErr = k.rt.Dump(); rtErr == nil {
			s.Rules, s.Routes, s.Foreign, s.ForeignRoutes = d.Rules, d.Routes, d.ForeignRules, d.ForeignRoutes
		}
	})
	s.Sysctls = make(map[string]string, len(sysctls))
	sysErr = k.ns.do(func() error {
		v, err := mptcp.ReadSysctl(SysctlEnabled)
		switch {
		case err == nil:
			s.Enabled = ptr(normValue(v) != "0")
		case !errors.Is(err, os.ErrNotExist):
			return err
		}
		for _, name := range sysctls {
			v, err := mptcp.ReadSysctl(name)
			switch {
			case err == nil:
				s.Sysctls[name] = normValue(v)
			case !errors.Is(err, os.ErrNotExist):
				return err
			}
		}
		return nil
	})
	wg.Wait()
	if err := errors.Join(mpErr, rtErr, sysErr); err != nil {
		return State{}, err
	}
	var err error
	if s.Links, err = k.linkNames(s, desired); err != nil {
		return State{}, err
	}
	return s, nil
}

// linkNames names the interfaces s and desired refer to. Names are for
// display only, so they come from a cache that is refreshed (one link dump)
// only when an index is missing from it; a renamed interface may show its
// old name until then.
func (k *NetlinkKernel) linkNames(s State, desired HostConfig) (map[int]string, error) {
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

// Do implements Kernel. The undo it returns is built from the kernel's
// state read just before the change.
func (k *NetlinkKernel) Do(ctx context.Context, op Op) (Op, error) {
	if err := ctx.Err(); err != nil {
		return Op{}, err
	}
	undo, err := k.do(op)
	if err != nil {
		return Op{}, fmt.Errorf("reconcile: %s: %w", op, err)
	}
	return undo, nil
}

func (k *NetlinkKernel) do(op Op) (Op, error) {
	undo := op
	switch op.Kind {
	case SetSysctl:
		err := k.ns.do(func() error {
			old, err := mptcp.ReadSysctl(op.Sysctl)
			if err != nil {
				return err
			}
			if err := mptcp.WriteSysctl(op.Sysctl, op.Value); err != nil {
				return err
			}
			undo.Value, undo.Old = normValue(old), op.Value
			return nil
		})
		return undo, err
	case SetLimits:
		if op.Limits == nil {
			return Op{}, ErrInvalid
		}
		old, err := k.mp.Limits()
		if err != nil {
			return Op{}, err
		}
		if err := k.mp.SetLimits(*op.Limits); err != nil {
			return Op{}, err
		}
		undo.Limits, undo.OldLimits = &old, ptr(*op.Limits)
		return undo, nil
	case AddEndpoint:
		if op.Endpoint == nil {
			return Op{}, ErrInvalid
		}
		e := *op.Endpoint
		if err := k.mp.AddEndpoint(e); err != nil {
			return Op{}, err
		}
		if e.ID == 0 {
			// The kernel chose the ID; the undo needs it.
			cur, err := k.endpointBy(func(x mptcp.Endpoint) bool { return x.Addr == e.Addr })
			if err != nil {
				return Op{}, err
			}
			e.ID = cur.ID
		}
		undo.Kind, undo.Endpoint = DelEndpoint, &e
		return undo, nil
	case DelEndpoint:
		if op.Endpoint == nil {
			return Op{}, ErrInvalid
		}
		cur, err := k.endpointBy(func(x mptcp.Endpoint) bool { return x.ID == op.Endpoint.ID })
		if err != nil {
			return Op{}, err
		}
		if err := k.mp.DeleteEndpoint(cur.ID); err != nil {
			return Op{}, err
		}
		cur.Flags &^= mptcp.FlagImplicit // made by the kernel; cannot be added back as such
		undo.Kind, undo.Endpoint = AddEndpoint, &cur
		return undo, nil
	case SetEndpointFlags:
		if op.Endpoint == nil {
			return Op{}, ErrInvalid
		}
		cur, err := k.endpointBy(func(x mptcp.Endpoint) bool { return x.ID == op.Endpoint.ID })
		if err != nil {
			return Op{}, err
		}
		if err := k.mp.SetEndpointFlags(cur.ID, op.Flags); err != nil {
			return Op{}, err
		}
		n := cur
		n.Flags = cur.Flags&^mutableFlags | op.Flags&mutableFlags
		undo.Endpoint, undo.Flags = &n, cur.Flags
		return undo, nil
	case AddRule:
		return k.ruleOp(op, k.rt.AddRule, DelRule)
	case DelRule:
		return k.ruleOp(op, k.rt.DeleteRule, AddRule)
	case AddRoute:
		return k.routeOp(op, k.rt.AddRoute, DelRoute)
	case DelRoute:
		return k.routeOp(op, k.rt.DeleteRoute, AddRoute)
	case SetRuleProtocol:
		if op.Rule == nil {
			return Op{}, ErrInvalid
		}
		if err := k.rt.SetRuleProtocol(*op.Rule, op.OldProtocol, op.Protocol); err != nil {
			return Op{}, err
		}
		return op.Inverse()
	case SetRouteProtocol:
		if op.Route == nil {
			return Op{}, ErrInvalid
		}
		if err := k.rt.SetRouteProtocol(*op.Route, op.OldProtocol, op.Protocol); err != nil {
			return Op{}, err
		}
		return op.Inverse()
	}
	return Op{}, fmt.Errorf("op kind %q: %w", op.Kind, ErrInvalid)
}

func (k *NetlinkKernel) ruleOp(op Op, fn func(route.Rule) error, inverse Kind) (Op, error) {
	if op.Rule == nil {
		return Op{}, ErrInvalid
	}
	if err := fn(*op.Rule); err != nil {
		return Op{}, err
	}
	op.Kind = inverse
	return op, nil
}

func (k *NetlinkKernel) routeOp(op Op, fn func(route.Route) error, inverse Kind) (Op, error) {
	if op.Route == nil {
		return Op{}, ErrInvalid
	}
	if err := fn(*op.Route); err != nil {
		return Op{}, err
	}
	op.Kind = inverse
	return op, nil
}

func (k *NetlinkKernel) endpointBy(match func(mptcp.Endpoint) bool) (mptcp.Endpoint, error) {
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

var _ Kernel = (*NetlinkKernel)(nil)
