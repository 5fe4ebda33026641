//go:build linux

package main

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/mpfleet/mpfleet/internal/mptcp/mptcpnl"
	"github.com/mpfleet/mpfleet/internal/route"
	"github.com/mpfleet/mpfleet/internal/route/routenl"
	"github.com/mpfleet/mpfleet/test/lab"
	"github.com/mpfleet/mpfleet/test/lab/traffic"
)

// serve starts the traffic receiver in the server namespace on the wildcard
// address (joins to the announced eth2 address need a listener there).
func (d *demo) serve() error {
	var ln net.Listener
	if err := d.lab.Do(lab.Server, func() (err error) { ln, err = traffic.Listen(d.ctx, ":5201"); return err }); err != nil {
		return err
	}
	go func() { _ = traffic.Serve(d.ctx, ln, nil) }()
	d.addr = net.JoinHostPort(lab.Addr(lab.Server, lab.Link1).String(), "5201")
	d.say("A receiver listens in the server namespace; the client sends to %s over one MPTCP\n"+
		"connection, every byte checked against a seeded pseudo-random stream. Every half second:\n"+
		"what each client link sent, and the connection's subflows as sock_diag (ss -M) sees them.", d.addr)
	return nil
}

// transfer sends n bytes from the client, printing the links' rates and the
// connection's subflows every 500 ms; after each line it calls at (if set)
// with the line's number, from 1, the links' rates in Mbit/s and the
// subflows (-1: unknown).
func (d *demo) transfer(n int64, at func(tick int, eth1, eth2 float64, subflows int)) (traffic.Report, error) {
	fmt.Printf("\n  send %d MB from the client to %s\n", n/1_000_000, d.addr)
	dctx, cancel := context.WithTimeout(d.ctx, 5*time.Second)
	defer cancel()
	var c net.Conn
	if err := d.lab.Do(lab.Client, func() (err error) { c, err = traffic.Dial(dctx, d.addr, traffic.DialOptions{}); return err }); err != nil {
		return traffic.Report{}, err
	}
	mc, err := mptcpnl.Dial(&mptcpnl.DialOptions{NetNS: int(d.lab.NS(lab.Client))})
	if err != nil {
		c.Close()
		return traffic.Report{}, err
	}
	defer func() { _ = mc.Close() }()
	local := c.LocalAddr().String()

	type res struct {
		r   traffic.Report
		err error
	}
	done := make(chan res, 1)
	go func() {
		ctx, cancel := context.WithTimeout(d.ctx, 2*time.Minute)
		defer cancel()
		r, err := traffic.Send(ctx, c, traffic.SendOptions{Bytes: n})
		done <- res{r, err}
	}()
	start := time.Now()
	prev := d.tx()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case r := <-done:
			fmt.Printf("    %s\n", r.r)
			return r.r, r.err
		case <-tick.C:
			now := d.tx()
			eth1, eth2 := mbps(now[0]-prev[0]), mbps(now[1]-prev[1])
			sf := subflows(mc, local)
			sfs := "?"
			if sf >= 0 {
				sfs = fmt.Sprint(sf)
			}
			fmt.Printf("    %5.1f s   eth1 %s   eth2 %s   subflows %s\n", time.Since(start).Seconds(),
				meter(eth1), meter(eth2), sfs)
			prev = now
			if at != nil {
				at(n, eth1, eth2, sf)
			}
		}
	}
}

// policyRouting renders the policy routing of h (rules and routes in
// mpfleet's range), as `ip rule` and `ip route show table T` would show it.
func (d *demo) policyRouting(h lab.Host) string {
	m, err := routenl.Open(&routenl.Options{NetNS: int(d.lab.NS(h))})
	if err != nil {
		return err.Error()
	}
	defer func() { _ = m.Close() }()
	rules, err := m.Rules()
	if err != nil {
		return err.Error()
	}
	routes, err := m.Routes()
	if err != nil {
		return err.Error()
	}
	return strings.ReplaceAll(strings.TrimSpace(route.Render(rules, routes)), "\n", "; ")
}

// tx returns the bytes the client's eth1 and eth2 have sent.
func (d *demo) tx() [2]uint64 {
	var out [2]uint64
	for i, k := range lab.DataLinks {
		if s, err := d.lab.LinkStats(lab.Client, k); err == nil {
			out[i] = s.TxBytes
		}
	}
	return out
}

// mbps converts bytes sent in 500 ms to Mbit/s.
func mbps(b uint64) float64 { return float64(b) * 8 / 0.5 / 1e6 }

// meter renders a rate in Mbit/s and as a bar (# = 10 Mbit/s).
func meter(mbps float64) string {
	bar := strings.Repeat("#", min(int(mbps/10+0.5), 12))
	return fmt.Sprintf("%5.1f Mbit/s %-12s", mbps, bar)
}

// subflows returns the subflows of the client's connection from local,
// the initial one included, as sock_diag reports them; -1 if unknown.
func subflows(mc *mptcpnl.Client, local string) int {
	conns, err := mc.Connections()
	if err != nil {
		return -1
	}
	for _, c := range conns {
		if c.Local.String() == local {
			if n := int(c.Info.SubflowsTotal); n > 0 {
				return n
			}
			return int(c.Info.Subflows) + 1
		}
	}
	return -1
}
