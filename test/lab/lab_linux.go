package lab

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

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
