package agent

// The controller addresses. --controller lists one or more host:port
// addresses of controller replicas, and a name among them may resolve to
// several. The agent keeps one stream, to one replica at a time: each round
// it resolves the names afresh, shuffles every address it got (so that a
// fleet spreads over the replicas) and tries them in turn, moving to the
// next when one cannot be reached or refuses the stream (another replica
// still holds the host, the replica is shutting down). A round in which
// none took the stream is followed by the jittered exponential backoff; the
// round after a stream that ended starts with the other replicas, the one
// that served it last.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/mpfleet/mpfleet/internal/transport"
)

// resolveTimeout bounds the resolution of one controller name.
const resolveTimeout = 5 * time.Second

// parseControllers splits a comma-separated list of controller addresses,
// each host:port (a name, an IPv4 address or a bracketed IPv6 address, and a
// port number), and checks each.
func parseControllers(list string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, e := range strings.Split(list, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			return nil, fmt.Errorf("controller addresses %q: an empty entry; list host:port addresses separated by commas", list)
		}
		host, port, err := net.SplitHostPort(e)
		if err != nil {
			return nil, fmt.Errorf("controller address %q: want host:port ([v6]:port for IPv6): %w", e, err)
		}
		if host == "" {
			return nil, fmt.Errorf("controller address %q: no host", e)
		}
		if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
			return nil, fmt.Errorf("controller address %q: port %q is not a number from 1 to 65535", e, port)
		}
		if strings.ContainsAny(host, " /") {
			return nil, fmt.Errorf("controller address %q: %q is neither a host name nor an IP address", e, host)
		}
		if seen[e] {
			return nil, fmt.Errorf("controller address %q is listed twice", e)
		}
		seen[e] = true
		out = append(out, e)
	}
	return out, nil
}

// allLoopback reports whether every address stays on this machine.
func allLoopback(addrs []string) bool {
	for _, a := range addrs {
		if !transport.IsLoopback(a) {
			return false
		}
	}
	return true
}

// target is one address to dial in a round.
type target struct {
	// entry is the address as listed, host:port: the stream's authority,
	// so that TLS verifies the controller's certificate against its host
	// (unless a server name is given).
	entry string
	// addr is what is dialed: an address entry's name resolved to, or the
	// entry itself.
	addr string
}

// lookupFunc resolves a host name to its addresses.
type lookupFunc func(ctx context.Context, host string) ([]netip.Addr, error)

func defaultLookup(ctx context.Context, host string) ([]netip.Addr, error) {
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}

// rotation walks the controller addresses round after round.
type rotation struct {
	entries []string
	lookup  lookupFunc
	// warn logs a name that could not be resolved (it is dialed as it
	// is, and fails with the reason).
	warn func(entry string, err error)

	round []target
	next  int
}

// newRound resolves the entries and orders the round's targets at random,
// with the address last dialed, last (if it is still among them), so that
// an agent whose replica went away tries the others first.
func (r *rotation) newRound(ctx context.Context, last string) {
	r.round, r.next = r.round[:0], 0
	seen := map[string]bool{}
	add := func(t target) {
		if !seen[t.addr] {
			seen[t.addr] = true
			r.round = append(r.round, t)
		}
	}
	for _, e := range r.entries {
		host, port, _ := net.SplitHostPort(e) // checked by parseControllers
		if _, err := netip.ParseAddr(host); err == nil {
			add(target{entry: e, addr: e})
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, resolveTimeout)
		ips, err := r.lookup(lctx, host)
		cancel()
		if err != nil || len(ips) == 0 {
			if err == nil {
				err = fmt.Errorf("%s has no addresses", host)
			}
			if r.warn != nil && ctx.Err() == nil {
				r.warn(e, err)
			}
			add(target{entry: e, addr: e})
			continue
		}
		for _, ip := range ips {
			add(target{entry: e, addr: net.JoinHostPort(ip.Unmap().String(), port)})
		}
	}
	rand.Shuffle(len(r.round), func(i, j int) { r.round[i], r.round[j] = r.round[j], r.round[i] })
	for i, t := range r.round {
		if t.addr == last && i != len(r.round)-1 {
			copy(r.round[i:], r.round[i+1:])
			r.round[len(r.round)-1] = t
			break
		}
	}
}

// take returns the round's next target, or false when the round is over.
func (r *rotation) take() (target, bool) {
	if r.next >= len(r.round) {
		return target{}, false
	}
	t := r.round[r.next]
	r.next++
	return t, true
}
