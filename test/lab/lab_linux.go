package lab

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/mpfleet/mpfleet/internal/nstest"
)

// BasePrefix starts the prefix of every lab. [Cleanup] with BasePrefix
// removes the leftovers of every lab, and nothing else: other tests'
// namespaces ("mpft" and a hex suffix) do not have the lab's
// "<prefix>-<host>" form.
const BasePrefix = "mpf"

// CommandPrefix is the fixed prefix of the lab that the mpfleet-lab command
// brings up and down.
const CommandPrefix = "mpfl"

// DefaultRate is the default rate of each direction of each data link, in
// bit/s.
const DefaultRate = 100_000_000

// DefaultQueue is how long a packet may wait in a data link's queue by
// default before tbf drops it.
const DefaultQueue = 20 * time.Millisecond

// Config says how to build a lab. The zero Config is a valid one.
type Config struct {
	// Prefix starts the name of every namespace of the lab: 1 to 5
	// lowercase letters or digits, starting with a letter. By default
	// BasePrefix and two random characters, unique on this machine.
	Prefix string
	// Rate is the rate of each direction of each data link in bit/s
	// (tbf on both ends of the veth pair). By default DefaultRate.
	Rate uint64
	// Burst is the size of tbf's token bucket in bytes. By default 1/250
	// of a second at Rate (50 kB at 100 Mbit/s), at least 16 kB.
	Burst uint32
	// Queue is the longest a packet waits in a data link's tbf queue; it
	// sets tbf's limit. By default DefaultQueue.
	Queue time.Duration
	// IPv6 adds the IPv6 addresses and default routes of the plan.
	// Without it IPv6 is disabled in every namespace.
	IPv6 bool
	// CongestionControl is the TCP congestion control of every namespace
	// (net.ipv4.tcp_congestion_control, which MPTCP subflows use too).
	// By default "reno": a namespace other than the root one may only
	// choose an algorithm the root namespace allows, and reno is always
	// allowed; otherwise the root namespace's default (bbr on some
	// machines, whose pacing over tbf gives erratic figures) leaks in.
	CongestionControl string
	// Hosts is the number of extra hosts, 0 to MaxFleetHosts, named h1 to
	// hN (see [FleetHosts]) and built like the client: data links eth1 and
	// eth2 through the router, each in a subnet of its own, a default
	// route through eth1 only, and mgmt0 on the management network. By
	// default none: the lab is the client, the server, the router and the
	// controller.
	Hosts int
}

func (c Config) withDefaults() Config {
	if c.Rate == 0 {
		c.Rate = DefaultRate
	}
	if c.Burst == 0 {
		c.Burst = max(uint32(c.Rate/8/250), 16<<10)
	}
	if c.Queue == 0 {
		c.Queue = DefaultQueue
	}
	if c.CongestionControl == "" {
		c.CongestionControl = "reno"
	}
	return c
}

var prefixRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,4}$`)

// Lab is a running lab. Its methods are safe for concurrent use.
type Lab struct {
	cfg    Config
	prefix string
	hosts  []Host // every namespace: Hosts, then the extra hosts
	ns     map[Host]netns.NsHandle
	nl     map[Host]*netlink.Handle

	mu     sync.Mutex
	procs  []*Process
	closed bool
}

// errPrefixTaken says that a namespace of the lab already exists.
var errPrefixTaken = errors.New("prefix in use")

// Up builds a lab as cfg says. On failure it removes whatever it built.
// The caller's namespace is never changed.
func Up(ctx context.Context, cfg Config) (*Lab, error) {
	cfg = cfg.withDefaults()
	if cfg.Hosts < 0 || cfg.Hosts > MaxFleetHosts {
		return nil, fmt.Errorf("lab: Hosts %d: want 0 to %d extra hosts", cfg.Hosts, MaxFleetHosts)
	}
	if cfg.Prefix != "" {
		if !prefixRE.MatchString(cfg.Prefix) {
			return nil, fmt.Errorf("lab: prefix %q: want 1-5 lowercase letters or digits starting with a letter", cfg.Prefix)
		}
		return up(ctx, cfg)
	}
	for range 20 {
		c := cfg
		c.Prefix = randomPrefix()
		l, err := up(ctx, c)
		if errors.Is(err, errPrefixTaken) {
			continue
		}
		return l, err
	}
	return nil, errors.New("lab: no free random prefix; run Cleanup(BasePrefix)?")
}

// New brings up a lab for the test t with a unique prefix (cfg.Prefix is
// ignored) and removes it when the test ends, also on failure. It skips the
// test without root, or fails it under CI=true.
func New(t testing.TB, cfg Config) *Lab {
	t.Helper()
	nstest.RequireRoot(t)
	cfg.Prefix = ""
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := Up(ctx, cfg)
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Down(); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	return l
}

func randomPrefix() string {
	const alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
	var b [2]byte
	_, _ = rand.Read(b[:])
	return BasePrefix + string(alphabet[int(b[0])%len(alphabet)]) + string(alphabet[int(b[1])%len(alphabet)])
}

func up(ctx context.Context, cfg Config) (*Lab, error) {
	if err := nstest.PrepareRunDir(); err != nil {
		return nil, fmt.Errorf("lab: prepare /run/netns: %w", err)
	}
	l := &Lab{
		cfg:    cfg,
		prefix: cfg.Prefix,
		hosts:  append(slices.Clone(Hosts), FleetHosts(cfg.Hosts)...),
		ns:     make(map[Host]netns.NsHandle),
		nl:     make(map[Host]*netlink.Handle),
	}
	for i, h := range l.hosts {
		ns, err := nstest.Create(l.NSName(h))
		if err != nil {
			if errors.Is(err, fs.ErrExist) {
				err = fmt.Errorf("lab %s: namespace %s exists: %w", l.prefix, l.NSName(h), errPrefixTaken)
			} else {
				err = fmt.Errorf("lab %s: %w", l.prefix, err)
			}
			if i == 0 {
				// Nothing of ours exists yet; the namespace belongs to
				// another lab, leave it alone.
				return nil, err
			}
			return nil, errors.Join(err, l.Down())
		}
		l.ns[h] = ns.Handle
		nh, err := netlink.NewHandleAt(ns.Handle)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("lab %s: netlink handle in %s: %w", l.prefix, h, err), l.Down())
		}
		l.nl[h] = nh
	}
	if err := l.build(ctx); err != nil {
		return nil, errors.Join(fmt.Errorf("lab %s: %w", l.prefix, err), l.Down())
	}
	return l, nil
}

// Attach opens the running lab with exactly the given prefix, for example
// one that the mpfleet-lab command brought up. Rate, Burst and Queue of its
// Config are unknown (zero); IPv6 is read from the kernel, Hosts from the
// extra hosts' namespaces that exist.
func Attach(prefix string) (*Lab, error) {
	if !prefixRE.MatchString(prefix) {
		return nil, fmt.Errorf("lab: prefix %q: want 1-5 lowercase letters or digits starting with a letter", prefix)
	}
	l := &Lab{
		cfg:    Config{Prefix: prefix},
		prefix: prefix,
		hosts:  slices.Clone(Hosts),
		ns:     make(map[Host]netns.NsHandle),
		nl:     make(map[Host]*netlink.Handle),
	}
	for _, h := range FleetHosts(MaxFleetHosts) {
		if _, err := os.Stat(l.NSPath(h)); err != nil {
			break
		}
		l.hosts = append(l.hosts, h)
		l.cfg.Hosts++
	}
	for _, h := range l.hosts {
		ns, err := netns.GetFromName(l.NSName(h))
		if err != nil {
			return nil, errors.Join(fmt.Errorf("lab %s: open namespace %s: %w", prefix, l.NSName(h), err), l.Close())
		}
		l.ns[h] = ns
		nh, err := netlink.NewHandleAt(ns)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("lab %s: netlink handle in %s: %w", prefix, h, err), l.Close())
		}
		l.nl[h] = nh
	}
	if link, err := l.nl[Client].LinkByName(Iface(Client, Link1)); err == nil {
		addrs, _ := l.nl[Client].AddrList(link, netlink.FAMILY_V6)
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && ip == Addr6(Client, Link1) {
				l.cfg.IPv6 = true
			}
		}
	}
	return l, nil
}

// Prefix returns the lab's prefix.
func (l *Lab) Prefix() string { return l.prefix }

// Config returns the configuration the lab was built with, defaults filled
// in.
func (l *Lab) Config() Config { return l.cfg }

// FleetHosts returns the lab's extra hosts, h1 to hN for Config.Hosts N.
func (l *Lab) FleetHosts() []Host { return FleetHosts(l.cfg.Hosts) }

// NSName returns the name of the namespace of h, "<prefix>-<h>".
func (l *Lab) NSName(h Host) string { return l.prefix + "-" + string(h) }

// NSPath returns the path of the namespace of h under /run/netns, for
// `nsenter --net=PATH` or `ip netns exec`.
func (l *Lab) NSPath(h Host) string { return filepath.Join("/run/netns", l.NSName(h)) }

// NS returns a handle to the namespace of h, owned by the lab and valid
// until Down or Close.
func (l *Lab) NS(h Host) netns.NsHandle { return l.ns[h] }

// Netlink returns a netlink handle whose sockets live in the namespace of h,
// owned by the lab and valid until Down or Close. Tests use it to change
// links, addresses, routes and rules of a host by hand.
func (l *Lab) Netlink(h Host) *netlink.Handle { return l.nl[h] }

// ControllerAddr returns the controller's address on the management
// network (IPv4).
func (l *Lab) ControllerAddr() netip.Addr { return Addr(Controller, Mgmt) }

// Do runs fn on a locked OS thread inside the namespace of h. Sockets fn
// creates stay in that namespace after fn returns.
func (l *Lab) Do(h Host, fn func() error) error {
	ns, ok := l.ns[h]
	if !ok {
		return fmt.Errorf("lab %s: no host %q", l.prefix, h)
	}
	return nstest.Do(ns, fn)
}

// build creates links, addresses, qdiscs, routes and sysctls.
func (l *Lab) build(ctx context.Context) error {
	for _, h := range l.hosts {
		if err := l.Do(h, func() error { return l.sysctls(h) }); err != nil {
			return fmt.Errorf("%s: %w", h, err)
		}
		lo, err := l.nl[h].LinkByName("lo")
		if err == nil {
			err = l.nl[h].LinkSetUp(lo)
		}
		if err != nil {
			return fmt.Errorf("%s: lo up: %w", h, err)
		}
	}
	for _, h := range l.endHosts() {
		for _, k := range DataLinks {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := l.dataLink(h, k); err != nil {
				return fmt.Errorf("%s %s: %w", h, k, err)
			}
		}
	}
	if err := l.mgmtNet(); err != nil {
		return fmt.Errorf("management network: %w", err)
	}
	for _, h := range l.endHosts() {
		if err := l.defaultRoutes(h); err != nil {
			return fmt.Errorf("%s: default route: %w", h, err)
		}
	}
	if l.cfg.IPv6 {
		if err := l.ingressFilter6(); err != nil {
			return fmt.Errorf("router: ipv6 ingress filter: %w", err)
		}
	}
	for _, h := range l.hosts {
		for _, k := range []Link{Link1, Link2, Mgmt} {
			if Iface(h, k) == "" {
				continue
			}
			if err := l.waitUp(ctx, h, k); err != nil {
				return err
			}
		}
	}
	if l.cfg.IPv6 {
		return l.waitNotTentative(ctx)
	}
	return nil
}

// waitNotTentative waits until no IPv6 address of the lab is tentative.
// With duplicate-address detection off an address is still marked so until
// a kernel work item runs, which can wait behind the cleanup of namespaces
// deleted just before (another lab's); a lab is ready when none is.
func (l *Lab) waitNotTentative(ctx context.Context) error {
	for {
		var left []string
		for h, nh := range l.nl {
			addrs, err := nh.AddrList(nil, netlink.FAMILY_V6)
			if err != nil {
				return fmt.Errorf("%s: list addresses: %w", h, err)
			}
			for _, a := range addrs {
				if a.Flags&unix.IFA_F_TENTATIVE != 0 {
					left = append(left, string(h)+" "+a.IPNet.String())
				}
			}
		}
		if len(left) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("IPv6 addresses still tentative: %s: %w", strings.Join(left, ", "), ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// endHosts returns the lab's hosts with data links: the client, the server
// and the extra hosts.
func (l *Lab) endHosts() []Host {
	return append([]Host{Client, Server}, l.FleetHosts()...)
}

// waitUp waits until both ends of the link of h are operationally up:
// veth carrier comes up asynchronously after both ends are set up.
func (l *Lab) waitUp(ctx context.Context, h Host, k Link) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		hl, err := l.nl[h].LinkByName(Iface(h, k))
		if err != nil {
			return err
		}
		rl, err := l.nl[Router].LinkByName(RouterIface(h, k))
		if err != nil {
			return err
		}
		if hl.Attrs().OperState == netlink.OperUp && rl.Attrs().OperState == netlink.OperUp {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s %s: carrier not up (%s, router end %s): %w", h, k, hl.Attrs().OperState, rl.Attrs().OperState, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// sysctls runs inside the namespace of h.
func (l *Lab) sysctls(h Host) error {
	s := [][2]string{{"net/ipv4/tcp_congestion_control", l.cfg.CongestionControl}}
	if l.cfg.IPv6 {
		s = append(s,
			// Keep static addresses over LinkDown/LinkUp, as IPv4 does.
			[2]string{"net/ipv6/conf/all/keep_addr_on_down", "1"},
			[2]string{"net/ipv6/conf/default/keep_addr_on_down", "1"},
			[2]string{"net/ipv6/conf/default/accept_ra", "0"},
			// No duplicate address detection: the lab's addresses are
			// unique by plan, and DAD kept every link-local address
			// tentative for about 2 s after Up, during which the first
			// connection through a gateway took 2 s (its SYN sent
			// three times; TestIntegrationIPv6Ready).
			[2]string{"net/ipv6/conf/all/accept_dad", "0"},
			[2]string{"net/ipv6/conf/default/accept_dad", "0"},
		)
	} else {
		s = append(s,
			[2]string{"net/ipv6/conf/all/disable_ipv6", "1"},
			[2]string{"net/ipv6/conf/default/disable_ipv6", "1"},
		)
	}
	switch h {
	case Router:
		// Strict reverse-path filtering: a packet whose source belongs to
		// another link than the one it came in on is dropped.
		s = append(s,
			[2]string{"net/ipv4/ip_forward", "1"},
			[2]string{"net/ipv4/conf/all/rp_filter", "1"},
			[2]string{"net/ipv4/conf/default/rp_filter", "1"},
		)
		if l.cfg.IPv6 {
			s = append(s, [2]string{"net/ipv6/conf/all/forwarding", "1"})
		}
	default:
		// IPv4 devconf is inherited from the root namespace; pin what
		// matters. Loose reverse-path filtering, as most distributions
		// set, lets a multihomed host receive on either link.
		s = append(s,
			[2]string{"net/ipv4/ip_forward", "0"},
			[2]string{"net/ipv4/conf/all/rp_filter", "2"},
			[2]string{"net/ipv4/conf/default/rp_filter", "2"},
		)
	}
	for _, kv := range s {
		if err := os.WriteFile(filepath.Join("/proc/sys", kv[0]), []byte(kv[1]), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", kv[0], kv[1], err)
		}
	}
	return nil
}

// veth creates a veth pair with one end, rname, in the router's namespace
// and the other, hname, in the namespace of h, brings both up and returns
// them. Nothing passes through the root namespace.
func (l *Lab) veth(rname string, h Host, hname string) (netlink.Link, netlink.Link, error) {
	rh, hh := l.nl[Router], l.nl[h]
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: rname},
		PeerName:      hname,
		PeerNamespace: netlink.NsFd(l.ns[h]),
	}
	if err := rh.LinkAdd(v); err != nil {
		return nil, nil, fmt.Errorf("add veth %s/%s: %w", rname, hname, err)
	}
	rl, err := rh.LinkByName(rname)
	if err != nil {
		return nil, nil, err
	}
	hl, err := hh.LinkByName(hname)
	if err != nil {
		return nil, nil, err
	}
	return rl, hl, nil
}

func (l *Lab) addAddrs(nh *netlink.Handle, link netlink.Link, v4, v6 netip.Addr, bits4, bits6 int) error {
	a := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(v4, bits4))}
	if err := nh.AddrAdd(link, a); err != nil {
		return fmt.Errorf("add %s to %s: %w", a.IPNet, link.Attrs().Name, err)
	}
	if l.cfg.IPv6 {
		a := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(v6, bits6)), Flags: unix.IFA_F_NODAD}
		if err := nh.AddrAdd(link, a); err != nil {
			return fmt.Errorf("add %s to %s: %w", a.IPNet, link.Attrs().Name, err)
		}
	}
	return nil
}

func (l *Lab) dataLink(h Host, k Link) error {
	rl, hl, err := l.veth(RouterIface(h, k), h, Iface(h, k))
	if err != nil {
		return err
	}
	if err := l.addAddrs(l.nl[Router], rl, Gateway(h, k), Gateway6(h, k), 24, 64); err != nil {
		return err
	}
	if err := l.addAddrs(l.nl[h], hl, Addr(h, k), Addr6(h, k), 24, 64); err != nil {
		return err
	}
	if err := l.shape(l.nl[Router], rl); err != nil {
		return err
	}
	if err := l.shape(l.nl[h], hl); err != nil {
		return err
	}
	if err := l.nl[Router].LinkSetUp(rl); err != nil {
		return err
	}
	return l.nl[h].LinkSetUp(hl)
}

// shape puts a tbf qdisc on link's egress, limiting it to the lab's rate.
func (l *Lab) shape(nh *netlink.Handle, link netlink.Link) error {
	rate := l.cfg.Rate / 8 // bytes per second
	q := &netlink.Tbf{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: link.Attrs().Index,
			Handle:    netlink.MakeHandle(1, 0),
			Parent:    netlink.HANDLE_ROOT,
		},
		Rate:   rate,
		Buffer: netlink.Xmittime(rate, l.cfg.Burst),
		Limit:  uint32(float64(rate)*l.cfg.Queue.Seconds()) + l.cfg.Burst,
	}
	if err := nh.QdiscAdd(q); err != nil {
		return fmt.Errorf("tbf on %s: %w", link.Attrs().Name, err)
	}
	return nil
}

func (l *Lab) mgmtNet() error {
	rh := l.nl[Router]
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: mgmtBridge}}
	if err := rh.LinkAdd(br); err != nil {
		return fmt.Errorf("add bridge: %w", err)
	}
	brl, err := rh.LinkByName(mgmtBridge)
	if err != nil {
		return err
	}
	if err := rh.LinkSetUp(brl); err != nil {
		return err
	}
	for _, h := range append([]Host{Controller}, l.endHosts()...) {
		rl, hl, err := l.veth(RouterIface(h, Mgmt), h, Iface(h, Mgmt))
		if err != nil {
			return err
		}
		if err := rh.LinkSetMaster(rl, brl); err != nil {
			return fmt.Errorf("enslave %s: %w", rl.Attrs().Name, err)
		}
		if err := l.addAddrs(l.nl[h], hl, Addr(h, Mgmt), Addr6(h, Mgmt), 24, 64); err != nil {
			return err
		}
		if err := rh.LinkSetUp(rl); err != nil {
			return err
		}
		if err := l.nl[h].LinkSetUp(hl); err != nil {
			return err
		}
	}
	return nil
}

// defaultRoutes sets the one default route of h, through link 1, in the
// main table.
func (l *Lab) defaultRoutes(h Host) error {
	nh := l.nl[h]
	link, err := nh.LinkByName(Iface(h, Link1))
	if err != nil {
		return err
	}
	r := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       ipNet(netip.PrefixFrom(netip.IPv4Unspecified(), 0)),
		Gw:        net.IP(Gateway(h, Link1).AsSlice()),
	}
	if err := nh.RouteReplace(r); err != nil {
		return fmt.Errorf("%s: %w", r, err)
	}
	if l.cfg.IPv6 {
		r := &netlink.Route{
			LinkIndex: link.Attrs().Index,
			Dst:       ipNet(netip.PrefixFrom(netip.IPv6Unspecified(), 0)),
			Gw:        net.IP(Gateway6(h, Link1).AsSlice()),
		}
		if err := nh.RouteReplace(r); err != nil {
			return fmt.Errorf("%s: %w", r, err)
		}
	}
	return nil
}

// Rule priorities of the router's IPv6 ingress filter.
const (
	ingressAllowPriority = 1000
	ingressDropPriority  = 1001
)

// ingressFilter6 is the router's IPv6 stand-in for strict rp_filter, which
// IPv6 lacks: a packet to be forwarded that arrives on a data link is
// routed only if its source is in that link's subnet, and dropped
// otherwise. Packets for the router itself match the local table first.
func (l *Lab) ingressFilter6() error {
	rh := l.nl[Router]
	for _, h := range l.endHosts() {
		for _, k := range DataLinks {
			allow := netlink.NewRule()
			allow.Family = unix.AF_INET6
			allow.Priority = ingressAllowPriority
			allow.IifName = RouterIface(h, k)
			allow.Src = ipNet(Subnet6(h, k))
			allow.Table = unix.RT_TABLE_MAIN
			if err := rh.RuleAdd(allow); err != nil {
				return fmt.Errorf("%s: %w", allow, err)
			}
			drop := netlink.NewRule()
			drop.Family = unix.AF_INET6
			drop.Priority = ingressDropPriority
			drop.IifName = RouterIface(h, k)
			drop.Type = unix.RTN_BLACKHOLE
			if err := rh.RuleAdd(drop); err != nil {
				return fmt.Errorf("%s: %w", drop, err)
			}
		}
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

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

// Close releases the lab's handles and leaves the lab running, for a
// command that brings a lab up and exits. It does not stop processes.
func (l *Lab) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.release()
	return nil
}

func (l *Lab) release() {
	if l.closed {
		return
	}
	l.closed = true
	for _, h := range l.nl {
		h.Close()
	}
	for _, ns := range l.ns {
		ns.Close()
	}
}

// Down stops the processes started in the lab (and any other process left
// in its namespaces), then removes the namespaces, which takes their links
// with them.
func (l *Lab) Down() error {
	l.mu.Lock()
	procs := l.procs
	l.procs = nil
	l.mu.Unlock()
	var errs []error
	for _, p := range procs {
		p.stop(time.Second)
	}
	l.mu.Lock()
	l.release()
	l.mu.Unlock()
	if err := removeLabs(func(p string) bool { return p == l.prefix }); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
