// Package mptcp talks to the kernel's MPTCP path manager through the mptcp_pm
// generic netlink family, reads MPTCP connection state through sock_diag and the
// MPTcpExt counters, and reads and writes the net.mptcp sysctls.
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
