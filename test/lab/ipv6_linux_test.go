package lab_test

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/mpfleet/mpfleet/test/lab"
)

// TestIntegrationIPv6Ready: a dual-stack lab is ready for IPv6 when Up
// returns. No address of any namespace is tentative (duplicate address
// detection would hold the link-local ones for about 2 s), and the first
// connection from the client's eth2 address through its own gateway — the
// first packet ever on that path — is established at once. Before the lab
// turned DAD off, that first connection took 2 s: an agent's first probe
// of the path timed out and the host showed a broken path that was not.
func TestIntegrationIPv6Ready(t *testing.T) {
	l := newLab(t, lab.Config{IPv6: true})
	for _, h := range []lab.Host{lab.Client, lab.Server, lab.Router, lab.Controller} {
		addrs, err := l.Netlink(h).AddrList(nil, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		var tentative []string
		for _, a := range addrs {
			if a.Flags&unix.IFA_F_TENTATIVE != 0 {
				tentative = append(tentative, a.IPNet.String())
			}
		}
		if len(tentative) > 0 {
			t.Errorf("%s: tentative addresses after Up: %s", h, strings.Join(tentative, ", "))
		}
	}
	_, port, _ := net.SplitHostPort(listen(t, l, lab.Server, ":5201"))
	addSourceRoute(t, l, lab.Client, lab.Link2, true)
	src, to := lab.Addr6(lab.Client, lab.Link2).String(), hostPort(lab.Addr6(lab.Server, lab.Link1), port)
	start := time.Now()
	c, err := dial(l, lab.Client, src, to, 5*time.Second)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("first connection from %s to %s: %v", src, to, err)
	}
	c.Close()
	t.Logf("first connection from %s to %s over eth2: %v", src, to, took.Round(time.Microsecond))
	if took > 500*time.Millisecond {
		t.Errorf("first connection from %s to %s took %v, want well under the SYN's 1 s retransmission timeout", src, to, took)
	}
}
