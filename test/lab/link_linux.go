package lab

import (
	"context"
	"fmt"

	"github.com/vishvananda/netlink"
)

// LinkDown sets the interface of link on h administratively down, as if its
// cable were pulled: the kernel deletes every route through it, in every
// table.
func (l *Lab) LinkDown(h Host, link Link) error {
	nl, err := l.link(h, link)
	if err != nil {
		return err
	}
	if err := l.nl[h].LinkSetDown(nl); err != nil {
		return fmt.Errorf("lab %s: %s %s down: %w", l.prefix, h, link, err)
	}
	return nil
}

// LinkUp sets the interface of link on h up again and, for link 1, puts
// back the main table's default route, as the host's network configuration
// would. Routes in other tables (policy routing) are not restored: that is
// the agent's job.
func (l *Lab) LinkUp(h Host, link Link) error {
	nl, err := l.link(h, link)
	if err != nil {
		return err
	}
	if err := l.nl[h].LinkSetUp(nl); err != nil {
		return fmt.Errorf("lab %s: %s %s up: %w", l.prefix, h, link, err)
	}
	if err := l.waitUp(context.Background(), h, link); err != nil {
		return fmt.Errorf("lab %s: %w", l.prefix, err)
	}
	if link == Link1 {
		if err := l.defaultRoutes(h); err != nil {
			return fmt.Errorf("lab %s: %s default route: %w", l.prefix, h, err)
		}
	}
	return nil
}

// Stats are an interface's counters.
type Stats struct {
	RxBytes, TxBytes     uint64
	RxPackets, TxPackets uint64
	RxDropped, TxDropped uint64
}

// LinkStats returns the counters of the interface of link on h (the host's
// end of the veth pair).
func (l *Lab) LinkStats(h Host, link Link) (Stats, error) {
	nl, err := l.link(h, link)
	if err != nil {
		return Stats{}, err
	}
	s := nl.Attrs().Statistics
	if s == nil {
		return Stats{}, fmt.Errorf("lab %s: %s %s: no statistics", l.prefix, h, link)
	}
	return Stats{
		RxBytes: s.RxBytes, TxBytes: s.TxBytes,
		RxPackets: s.RxPackets, TxPackets: s.TxPackets,
		RxDropped: s.RxDropped, TxDropped: s.TxDropped,
	}, nil
}

func (l *Lab) link(h Host, link Link) (netlink.Link, error) {
	name := Iface(h, link)
	nh := l.nl[h]
	if name == "" || nh == nil {
		return nil, fmt.Errorf("lab %s: %s has no %s", l.prefix, h, link)
	}
	nl, err := nh.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("lab %s: %s %s: %w", l.prefix, h, name, err)
	}
	return nl, nil
}
