package mptcpnl_test

import (
	"errors"
	"fmt"
	"log"
	"net/netip"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/mptcp/mptcpnl"
)

// Make a second link carry subflows, as `ip mptcp endpoint add 198.18.2.1
// dev eth1 subflow` and `ip mptcp limits set subflow 2 add_addr_accepted 2`
// would.
func ExampleClient_AddEndpoint() {
	c, err := mptcpnl.Dial(nil) // the calling thread's namespace
	if errors.Is(err, mptcp.ErrUnsupported) {
		log.Fatal("this kernel has no MPTCP")
	}
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	if err := c.SetLimits(mptcp.Limits{Subflows: 2, AddAddrAccepted: 2}); err != nil {
		log.Fatal(err)
	}
	err = c.AddEndpoint(mptcp.Endpoint{
		Addr:    netip.MustParseAddr("198.18.2.1"),
		Flags:   mptcp.FlagSubflow,
		IfIndex: 3,
	})
	switch {
	case errors.Is(err, mptcp.ErrEndpointExists):
		// Already there: compare with c.Endpoints() and fix what differs.
	case errors.Is(err, mptcp.ErrTooManyEndpoints):
		log.Fatalf("the namespace already holds %d endpoints", mptcp.MaxEndpoints)
	case err != nil:
		log.Fatal(err)
	}
}

// Watch connections and subflows come and go, as `ip mptcp monitor` does.
func ExampleDialEvents() {
	ec, err := mptcpnl.DialEvents(nil)
	if err != nil {
		log.Fatal(err)
	}
	defer ec.Close()
	for {
		evs, err := ec.Receive()
		if errors.Is(err, mptcp.ErrEventsLost) {
			// Resynchronise from Client.Connections, then go on.
			continue
		}
		if err != nil {
			log.Fatal(err)
		}
		for _, e := range evs {
			fmt.Printf("%s token %08x %s:%d -> %s:%d\n", e.Type, e.Token, e.Saddr, e.Sport, e.Daddr, e.Dport)
		}
	}
}
