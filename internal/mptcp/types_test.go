package mptcp

import (
	"errors"
	"net/netip"
	"testing"
)

func TestFlagsString(t *testing.T) {
	tests := []struct {
		f    Flags
		want string
	}{
		{0, ""},
		{FlagSignal, "signal"},
		{FlagSubflow | FlagBackup | FlagFullmesh, "subflow backup fullmesh"},
		{FlagImplicit | FlagLaminar, "implicit laminar"},
		{FlagSignal | 1<<6 | 1<<12, "signal 0x1040"},
	}
	for _, tt := range tests {
		if got := tt.f.String(); got != tt.want {
			t.Errorf("Flags(%#x).String() = %q, want %q", uint32(tt.f), got, tt.want)
		}
	}
}

func TestEndpointValidate(t *testing.T) {
	a4 := netip.MustParseAddr("198.18.1.1")
	tests := []struct {
		name string
		e    Endpoint
		ok   bool
	}{
		{"no flags", Endpoint{Addr: a4}, true},
		{"subflow backup fullmesh", Endpoint{Addr: a4, Flags: FlagSubflow | FlagBackup | FlagFullmesh}, true},
		{"signal subflow backup", Endpoint{Addr: a4, Flags: FlagSignal | FlagSubflow | FlagBackup}, true},
		{"laminar", Endpoint{Addr: a4, Flags: FlagLaminar | FlagSubflow}, true},
		{"signal with port", Endpoint{Addr: a4, Port: 10000, Flags: FlagSignal | FlagBackup}, true},
		{"IPv6 with device", Endpoint{ID: 200, Addr: netip.MustParseAddr("2001:db8::1"), Flags: FlagSubflow, IfIndex: 7}, true},
		{"no address", Endpoint{Flags: FlagSubflow}, false},
		{"zone", Endpoint{Addr: netip.MustParseAddr("fe80::1%eth0")}, false},
		{"signal fullmesh", Endpoint{Addr: a4, Flags: FlagSignal | FlagFullmesh}, false},
		{"implicit", Endpoint{Addr: a4, Flags: FlagImplicit}, false},
		{"unknown flag", Endpoint{Addr: a4, Flags: 1 << 9}, false},
		{"port without signal", Endpoint{Addr: a4, Port: 1, Flags: FlagSubflow}, false},
		{"port with signal and subflow", Endpoint{Addr: a4, Port: 1, Flags: FlagSignal | FlagSubflow}, false},
		{"negative ifindex", Endpoint{Addr: a4, IfIndex: -1}, false},
	}
	for _, tt := range tests {
		err := tt.e.Validate()
		if (err == nil) != tt.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tt.name, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v does not match ErrInvalid", tt.name, err)
		}
	}
}

func TestStrings(t *testing.T) {
	for _, tt := range []struct{ got, want string }{
		{EventCreated.String(), "CREATED"},
		{EventListenerClosed.String(), "LISTENER_CLOSED"},
		{EventSubPriority.String(), "SUB_PRIORITY"},
		{EventType(4).String(), "EVENT(4)"},
		{StateEstablished.String(), "ESTAB"},
		{StateNewSynRecv.String(), "NEW-SYN-RECV"},
		{State(0).String(), "state(0)"},
		{State(200).String(), "state(200)"},
	} {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}
