//go:build linux

package mptcpnl

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/nstest"
)

// The adder's wire values are the client's.
func TestAdderWireValues(t *testing.T) {
	if cmdAddAddrWire != cmdAddAddr || flagsMutateWire != uint16(flagsMutate) {
		t.Errorf("adder sends command %d flags %#x; the client %d %#x", cmdAddAddrWire, flagsMutateWire, cmdAddAddr, flagsMutate)
	}
}

// dialAdderNS opens an EndpointAdder in ns.
func dialAdderNS(t *testing.T, ns *nstest.NS) *EndpointAdder {
	t.Helper()
	a, err := DialEndpointAdder(&DialOptions{NetNS: int(ns.Handle)})
	if err != nil {
		if errors.Is(err, mptcp.ErrUnsupported) {
			nstest.Skip(t, fmt.Sprintf("kernel without MPTCP: %v", err))
		}
		t.Fatalf("DialEndpointAdder: %v", err)
	}
	t.Cleanup(func() {
		if err := a.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return a
}

// TestIntegrationEndpointAdder: the adder adds what the client reads back,
// and its errors are the client's, in a namespace of its own.
func TestIntegrationEndpointAdder(t *testing.T) {
	ns := nstest.New(t)
	idx := veth(t, ns, "m0", "m1", nil)
	addAddr(t, ns, "m0", "2001:db8:1::1/64") // a port needs the address
	c := dialNS(t, ns)
	a := dialAdderNS(t, ns)

	v4 := mptcp.Endpoint{ID: 3, Addr: netip.MustParseAddr("198.18.1.1"), Flags: mptcp.FlagSubflow, IfIndex: idx}
	v6 := mptcp.Endpoint{ID: 9, Addr: netip.MustParseAddr("2001:db8:1::1"), Port: 8080, Flags: mptcp.FlagSignal | mptcp.FlagBackup}
	for _, e := range []mptcp.Endpoint{v4, v6} {
		if err := a.AddEndpoint(e); err != nil {
			t.Fatal(err)
		}
	}
	eps, err := c.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]mptcp.Endpoint{v4, v6}, eps, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Errorf("endpoints (-want +got):\n%s", diff)
	}

	err = a.AddEndpoint(mptcp.Endpoint{Addr: v4.Addr, Flags: mptcp.FlagSignal})
	if !errors.Is(err, os.ErrExist) || !errors.Is(err, mptcp.ErrEndpointExists) || err.Error() != "mptcp add endpoint 198.18.1.1: file exists" {
		t.Errorf("duplicate address: %v", err)
	}
	err = a.AddEndpoint(mptcp.Endpoint{ID: 3, Addr: netip.MustParseAddr("198.18.1.7"), Flags: mptcp.FlagSubflow})
	if !errors.Is(err, mptcp.ErrEndpointExists) || !errors.Is(err, syscall.EBUSY) {
		t.Errorf("duplicate id: %v", err)
	}
	if err := a.AddEndpoint(mptcp.Endpoint{Addr: netip.MustParseAddr("198.18.1.8"), Flags: mptcp.FlagSignal | mptcp.FlagFullmesh}); !errors.Is(err, mptcp.ErrInvalid) {
		t.Errorf("signal+fullmesh: %v", err)
	}

	// Fill the namespace (IDs chosen by the kernel), nothing allocated per
	// endpoint added; the 9th does not fit.
	next := byte(10)
	allocs := testing.AllocsPerRun(mptcp.MaxEndpoints-3, func() {
		next++
		if err := a.AddEndpoint(mptcp.Endpoint{Addr: netip.AddrFrom4([4]byte{198, 18, 1, next}), Flags: mptcp.FlagSubflow, IfIndex: idx}); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per endpoint added", allocs)
	}
	err = a.AddEndpoint(mptcp.Endpoint{Addr: netip.MustParseAddr("198.18.1.99"), Flags: mptcp.FlagSubflow})
	if !errors.Is(err, mptcp.ErrTooManyEndpoints) || !errors.Is(err, syscall.ERANGE) {
		t.Errorf("9th endpoint: %v", err)
	}
	// After errors, the next request still finds its own acknowledgement.
	if err := c.DeleteEndpoint(3); err != nil {
		t.Fatal(err)
	}
	if err := a.AddEndpoint(v4); err != nil {
		t.Errorf("after the errors: %v", err)
	}
	if eps, err := c.Endpoints(); err != nil || len(eps) != mptcp.MaxEndpoints {
		t.Errorf("%d endpoints, %v; want %d", len(eps), err, mptcp.MaxEndpoints)
	}
}
