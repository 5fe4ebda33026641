package mptcpnl

import (
	"testing"

	"github.com/mpfleet/mpfleet/internal/mptcp"
)

func TestDecodeLimits(t *testing.T) {
	b, err := encodeLimits(mptcp.Limits{Subflows: 3, AddAddrAccepted: 4})
	if err != nil {
		t.Fatal(err)
	}
	l, err := decodeLimits(b)
	if err != nil || l != (mptcp.Limits{Subflows: 3, AddAddrAccepted: 4}) {
		t.Errorf("decodeLimits = %+v, %v", l, err)
	}
	if _, err := decodeLimits(b[:8]); err == nil {
		t.Error("a reply with one limit decoded without error")
	}
}

func TestDecodeEventServerSide(t *testing.T) {
	for name, e := range map[string]mptcp.Event{
		"flag only (6.18+ without the deprecated attribute)": {Type: mptcp.EventCreated, Flags: mptcp.EventFlagServerSide},
		"attribute only (before 6.18)":                       {Type: mptcp.EventCreated, ServerSide: true},
	} {
		b, err := encodeEvent(e)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeEvent(mptcp.EventCreated, b)
		if err != nil || !got.ServerSide {
			t.Errorf("%s: decoded %+v, %v; want ServerSide", name, got, err)
		}
	}
}
