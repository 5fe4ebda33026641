package mptcp

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const netstatSample = `TcpExt: SyncookiesSent SyncookiesRecv
TcpExt: 0 0
MPTcpExt: MPCapableSYNRX MPCapableSYNTX MPCapableFallbackACK MPCapableFallbackSYNACK MPFallbackTokenInit MPJoinSynRx MPJoinSynAckRx MPJoinAckRx MPJoinSynTxConnectErr AddAddr RmAddr SubflowStale SubflowRecover MPFailTx MPFailRx MPRstTx MPRstRx Blackhole MPCurrEstab DssFallback
MPTcpExt: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20
IpExt: InNoRoutes
IpExt: 0
`

func TestParseNetstat(t *testing.T) {
	c, err := parseNetstat(strings.NewReader(netstatSample))
	if err != nil {
		t.Fatal(err)
	}
	got := []uint64{
		c.MPCapableSYNRX(), c.MPCapableSYNTX(), c.MPCapableFallbackACK(), c.MPCapableFallbackSYNACK(),
		c.MPFallbackTokenInit(), c.MPJoinSynRx(), c.MPJoinSynAckRx(), c.MPJoinAckRx(), c.MPJoinSynTxConnectErr(),
		c.AddAddr(), c.RmAddr(), c.SubflowStale(), c.SubflowRecover(), c.MPFailTx(), c.MPFailRx(),
		c.MPRstTx(), c.MPRstRx(), c.Blackhole(), c.MPCurrEstab(), c.Fallbacks(),
	}
	want := []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 3 + 4 + 5 + 20}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("counters (-want +got):\n%s", diff)
	}
	if len(c) != 20 {
		t.Errorf("got %d counters, want 20", len(c))
	}
}

func TestParseNetstatErrors(t *testing.T) {
	for name, in := range map[string]string{
		"no MPTcpExt":     "TcpExt: A\nTcpExt: 1\n",
		"names only":      "MPTcpExt: A B\n",
		"count mismatch":  "MPTcpExt: A B\nMPTcpExt: 1\n",
		"not a number":    "MPTcpExt: A\nMPTcpExt: x\n",
		"negative number": "MPTcpExt: A\nMPTcpExt: -1\n",
	} {
		if _, err := parseNetstat(strings.NewReader(in)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	_, err := parseNetstat(strings.NewReader("TcpExt: A\nTcpExt: 1\n"))
	if !errors.Is(err, ErrUnsupported) {
		t.Errorf("no MPTcpExt: %v does not match ErrUnsupported", err)
	}
}
