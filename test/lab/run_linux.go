package lab

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Describe writes the lab's topology: namespaces, interfaces, addresses,
// gateways and shaping.
func (l *Lab) Describe(w io.Writer) {
	c := l.cfg
	fmt.Fprintf(w, "lab %s: IPv6 %v", l.prefix, c.IPv6)
	if c.Hosts > 0 {
		fmt.Fprintf(w, ", extra hosts %s", hostRange(c.Hosts))
	}
	if c.Rate != 0 {
		fmt.Fprintf(w, ", data links %s each way (tbf burst %d B, queue %v)", FormatRate(c.Rate), c.Burst, c.Queue)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "namespace\tinterface\taddress\tgateway\trouter end")
	for _, h := range append([]Host{Client, Server, Controller}, l.FleetHosts()...) {
		ns := l.NSName(h)
		for _, k := range []Link{Link1, Link2, Mgmt} {
			if Iface(h, k) == "" {
				continue
			}
			addr := netipString(Addr(h, k).String(), 24)
			gw := "-"
			if g := Gateway(h, k); g.IsValid() {
				gw = g.String()
			}
			peer := RouterIface(h, k)
			if k == Mgmt {
				peer += " (bridge " + mgmtBridge + ", no address)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", ns, Iface(h, k), addr, gw, peer)
			if c.IPv6 {
				gw6 := "-"
				if g := Gateway6(h, k); g.IsValid() {
					gw6 = g.String()
				}
				fmt.Fprintf(tw, "\t\t%s\t%s\t\n", netipString(Addr6(h, k).String(), 64), gw6)
			}
			ns = ""
		}
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "%s forwards between the data links and drops packets whose source is not in the subnet of the link they arrive on (rp_filter=1", l.NSName(Router))
	if c.IPv6 {
		fmt.Fprint(w, "; IPv6: ingress rules")
	}
	fmt.Fprintln(w, ").")
	if n := c.Hosts; n > 0 {
		fmt.Fprintf(w, "client, server and %s: one default route, through eth1, in the main table; eth2 needs policy routing.\n", hostRange(n))
	} else {
		fmt.Fprintln(w, "client and server: one default route, through eth1, in the main table; eth2 needs policy routing.")
	}
	fmt.Fprintf(w, "run a command in a namespace: nsenter --net=%s -- CMD  (or: ip netns exec %s CMD)\n", l.NSPath(Client), l.NSName(Client))
}

// hostRange names the extra hosts of a lab with n of them: "h1" or "h1-h6".
func hostRange(n int) string {
	if n == 1 {
		return string(FleetHost(1))
	}
	return fmt.Sprintf("%s-%s", FleetHost(1), FleetHost(n))
}

func netipString(addr string, bits int) string { return addr + "/" + strconv.Itoa(bits) }

// FormatRate formats a rate in bit/s, for example "100 Mbit/s".
func FormatRate(bps uint64) string {
	switch {
	case bps >= 1e9 && bps%1e9 == 0:
		return fmt.Sprintf("%d Gbit/s", bps/1e9)
	case bps >= 1e6 && bps%1e6 == 0:
		return fmt.Sprintf("%d Mbit/s", bps/1e6)
	case bps >= 1e3 && bps%1e3 == 0:
		return fmt.Sprintf("%d kbit/s", bps/1e3)
	}
	return fmt.Sprintf("%d bit/s", bps)
}

// ParseRate parses a rate in bit/s: a number with an optional k, M or G
// (powers of 1000) and an optional "bit" or "bit/s", as in "100M" or
// "1.5Gbit".
func ParseRate(s string) (uint64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSpace(s), "/s"), "bit")
	mult := 1.0
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'k', 'K':
			mult, t = 1e3, t[:n-1]
		case 'm', 'M':
			mult, t = 1e6, t[:n-1]
		case 'g', 'G':
			mult, t = 1e9, t[:n-1]
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f <= 0 {
		return 0, fmt.Errorf("rate %q: want a positive number of bit/s such as 100M", s)
	}
	return uint64(f * mult), nil
}

// Run is the mpfleet-lab command: "up", "down", "status" or "cleanup",
// with the flags each prints for -h.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	usage := func() {
		fmt.Fprintf(stderr, `usage: mpfleet-lab up|down|status|cleanup [flags]

  up       build the lab (prefix %q) and leave it running; prints the topology
  down     remove the lab (stops processes in it, deletes its namespaces)
  status   print the topology of the running lab
  cleanup  remove every lab whose prefix starts with --prefix (default %q:
           all labs, including other runs' running ones), e.g. after a crash

Run "mpfleet-lab COMMAND -h" for the flags of a command. Needs root.
`, CommandPrefix, BasePrefix)
	}
	if len(args) == 0 {
		usage()
		return errors.New("no command")
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("mpfleet-lab "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	switch cmd {
	case "up":
		prefix := fs.String("prefix", CommandPrefix, "prefix of the lab's namespaces")
		rate := fs.String("rate", FormatRate(DefaultRate), "rate of each direction of each data link, bit/s (k, M, G suffixes)")
		ipv6 := fs.Bool("ipv6", false, "add IPv6 addresses and routes")
		hosts := fs.Int("hosts", 0, fmt.Sprintf("number of extra hosts h1..hN (0 to %d), each built like the client", MaxFleetHosts))
		if err := fs.Parse(args); err != nil {
			return err
		}
		r, err := ParseRate(strings.ReplaceAll(*rate, " ", ""))
		if err != nil {
			return err
		}
		l, err := Up(ctx, Config{Prefix: *prefix, Rate: r, IPv6: *ipv6, Hosts: *hosts})
		if errors.Is(err, errPrefixTaken) {
			return fmt.Errorf("%w (is the lab up already? run mpfleet-lab down)", err)
		}
		if err != nil {
			return err
		}
		l.Describe(stdout)
		return l.Close()
	case "down":
		prefix := fs.String("prefix", CommandPrefix, "prefix of the lab to remove (exactly)")
		if err := fs.Parse(args); err != nil {
			return err
		}
		if !prefixRE.MatchString(*prefix) {
			return fmt.Errorf("prefix %q: want 1-5 lowercase letters or digits starting with a letter", *prefix)
		}
		return removeLabs(func(p string) bool { return p == *prefix })
	case "status":
		prefix := fs.String("prefix", CommandPrefix, "prefix of the lab")
		if err := fs.Parse(args); err != nil {
			return err
		}
		l, err := Attach(*prefix)
		if err != nil {
			return err
		}
		l.Describe(stdout)
		return l.Close()
	case "cleanup":
		prefix := fs.String("prefix", BasePrefix, "remove every lab whose prefix starts with this")
		if err := fs.Parse(args); err != nil {
			return err
		}
		return Cleanup(*prefix)
	case "-h", "-help", "--help", "help":
		usage()
		return nil
	}
	usage()
	return fmt.Errorf("unknown command %q", cmd)
}
