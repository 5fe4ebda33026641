// Package mptcp is the MPTCP model: endpoints, their flags and the kernel's
// rules for them, the path manager's limits, connections and events, and the
// error classes of the kernel's answers. It also reads the MPTcpExt counters
// and reads and writes the net.mptcp sysctls (plain files). The mptcp_pm
// generic netlink and sock_diag client is in package mptcpnl, so that code
// that only models MPTCP links no netlink code.
package mptcp

import (
	"net/netip"
	"strings"
)

// Flags are MPTCP endpoint flags (MPTCP_PM_ADDR_FLAG_*).
type Flags uint32

// Endpoint flags as the kernel defines them.
const (
	FlagSignal   Flags = 1 << 0
	FlagSubflow  Flags = 1 << 1
	FlagBackup   Flags = 1 << 2
	FlagFullmesh Flags = 1 << 3
	FlagImplicit Flags = 1 << 4 // made by the kernel; display only
	FlagLaminar  Flags = 1 << 5 // kernel 6.18+
)

// MaxEndpoints is the most endpoints the kernel keeps in one network namespace
// (MPTCP_PM_ADDR_MAX); the next ADD_ADDR fails with ERANGE.
const MaxEndpoints = 8

// MaxLimit is the largest value the kernel accepts for either limit.
const MaxLimit = 8

var flagNames = []struct {
	f    Flags
	name string
}{
	{FlagSignal, "signal"},
	{FlagSubflow, "subflow"},
	{FlagBackup, "backup"},
	{FlagFullmesh, "fullmesh"},
	{FlagImplicit, "implicit"},
	{FlagLaminar, "laminar"},
}

// String renders the flags as `ip mptcp` does: space-separated names.
func (f Flags) String() string {
	var parts []string
	for _, n := range flagNames {
		if f&n.f != 0 {
			parts = append(parts, n.name)
			f &^= n.f
		}
	}
	if f != 0 {
		parts = append(parts, "0x"+strings.ToLower(strings.TrimLeft(hex32(uint32(f)), "0")))
	}
	return strings.Join(parts, " ")
}

func hex32(v uint32) string {
	const digits = "0123456789ABCDEF"
	var b [8]byte
	for i := 7; i >= 0; i-- {
		b[i] = digits[v&0xf]
		v >>= 4
	}
	return string(b[:])
}

// Endpoint is one MPTCP path-manager endpoint (`ip mptcp endpoint`).
type Endpoint struct {
	ID      uint8      // kernel endpoint id; 0 on add lets the kernel choose
	Addr    netip.Addr // IPv4 or IPv6 local address
	Port    uint16     // optional; 0 for none
	Flags   Flags
	IfIndex int // optional; 0 for none
}

// Limits are the in-kernel path manager's limits (`ip mptcp limits`).
type Limits struct {
	Subflows        uint32
	AddAddrAccepted uint32
}

// KnownFlags are the endpoint flags this package knows about.
const KnownFlags = FlagSignal | FlagSubflow | FlagBackup | FlagFullmesh | FlagImplicit | FlagLaminar

// MutableFlags are the flags SET_FLAGS can change on an existing endpoint.
// Changing any other flag needs the endpoint deleted and added again.
const MutableFlags = FlagBackup | FlagFullmesh

// Validate reports whether the kernel would accept e in ADD_ADDR, following
// the checks of net/mptcp/pm_kernel.c (Linux 6.18). Errors match ErrInvalid.
func (e Endpoint) Validate() error {
	switch {
	case !e.Addr.IsValid():
		return invalidf("endpoint has no address")
	case e.Addr.Zone() != "":
		return invalidf("endpoint address %s: zones are not supported", e.Addr)
	case e.Flags&^KnownFlags != 0:
		return invalidf("endpoint %s: unknown flags %s", e.Addr, e.Flags&^KnownFlags)
	case e.Flags&FlagImplicit != 0:
		return invalidf("endpoint %s: implicit endpoints are made by the kernel only", e.Addr)
	case e.Flags&FlagSignal != 0 && e.Flags&FlagFullmesh != 0:
		return invalidf("endpoint %s: flags signal and fullmesh cannot be combined", e.Addr)
	case e.Port != 0 && e.Flags&(FlagSignal|FlagSubflow) != FlagSignal:
		return invalidf("endpoint %s port %d: a port needs flag signal without subflow", e.Addr, e.Port)
	case e.IfIndex < 0 || int64(e.IfIndex) > 1<<31-1:
		return invalidf("endpoint %s: interface index %d out of range", e.Addr, e.IfIndex)
	}
	return nil
}
