package transport_test

import (
	"testing"

	"github.com/mpfleet/mpfleet/internal/transport"
)

func TestIsLoopback(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want bool
	}{
		{"127.0.0.1:7400", true},
		{"127.0.0.2", true},
		{"127.255.255.254:1", true},
		{"[::1]:7400", true},
		{"::1", true},
		{"[::1]", true},
		{"[::ffff:127.0.0.1]:7400", true},
		{"localhost", true},
		{"localhost:7400", true},
		{"LocalHost:7400", true},
		{"unix:/run/mpfleet.sock", true},
		{"unix:///run/mpfleet.sock", true},
		{"unix-abstract:mpfleet", true},
		{"198.18.0.1:7400", false},
		{"198.18.0.1", false},
		{"[2001:db8::1]:7400", false},
		{"2001:db8::1", false},
		{"[::ffff:198.18.0.1]:7400", false},
		{"0.0.0.0:7400", false},
		{"[::]:7400", false},
		{":7400", false},
		{"", false},
		{"localhost.example:7400", false},
		{"ctl.example:7400", false},
		{"127.0.0.1.example:7400", false},
		{"[fe80::1%lo]:7400", false},
	} {
		if got := transport.IsLoopback(tc.addr); got != tc.want {
			t.Errorf("IsLoopback(%q) = %v, want %v", tc.addr, got, tc.want)
		}
	}
}
