package transport

import (
	"net"
	"net/netip"
	"strings"
)

// IsLoopback reports whether addr — host:port, [v6]:port, a bare host, or
// a unix:/unix-abstract: socket — stays on this machine: a loopback
// address (127.0.0.0/8, ::1, also IPv4-mapped), "localhost" or a Unix
// socket. Other names are not resolved: what a name resolves to when
// checked need not be what it resolves to when dialed.
func IsLoopback(addr string) bool {
	if strings.HasPrefix(addr, "unix:") || strings.HasPrefix(addr, "unix-abstract:") {
		return true
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = strings.TrimSuffix(strings.TrimPrefix(addr, "["), "]")
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}
