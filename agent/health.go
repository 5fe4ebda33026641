package agent

import (
	"time"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// healthCounters are the MPTcpExt counters a report carries (and
// mpfleet_agent_mptcpext_total exports): those that speak of MPTCP working
// (handshakes, joins, fallbacks, failures). Every counter that
// mptcp.Counters.Fallbacks sums is among them (the last four are 6.17's),
// so that mpfleet_agent_mptcp_fallbacks_total counts them all.
var healthCounters = []string{
	"MPCapableSYNRX", "MPCapableSYNTX", "MPCapableFallbackACK", "MPCapableFallbackSYNACK",
	"MPFallbackTokenInit", "MPCapableDataFallback", "MD5SigFallback", "DssFallback", "SimultConnectFallback",
	"MPJoinSynRx", "MPJoinSynAckRx", "MPJoinAckRx", "MPJoinSynTxConnectErr",
	"AddAddr", "RmAddr", "SubflowStale", "SubflowRecover", "MPFailTx", "MPFailRx",
	"MPRstTx", "MPRstRx", "Blackhole", "MPCurrEstab",
}

// maxListedConnections bounds MptcpHealth.connections_list.
const maxListedConnections = 64

// HealthFrom summarises MPTCP connections (as mptcpnl.Client.Connections lists
// them) and counters: the number of connections, their subflows (the
// initial one included), those that fell back to TCP, the key counters the
// kernel has, and the first 64 connections.
func HealthFrom(conns []mptcp.Connection, ctrs mptcp.Counters, now time.Time) *pb.MptcpHealth {
	h := &pb.MptcpHealth{ReadTime: timestamppb.New(now), Counters: map[string]uint64{}}
	for _, c := range conns {
		h.Connections++
		total := uint32(c.Info.SubflowsTotal)
		if total == 0 { // kernels before 6.10 count only the additional ones
			total = uint32(c.Info.Subflows) + 1
		}
		h.Subflows += total
		if c.Info.Fallback {
			h.Fallbacks++
		}
		if len(h.ConnectionsList) < maxListedConnections {
			h.ConnectionsList = append(h.ConnectionsList, &pb.MptcpConnection{
				Local: c.Local.String(), Remote: c.Remote.String(),
				Subflows: uint32(c.Info.Subflows), Fallback: c.Info.Fallback, Token: c.Info.Token,
			})
		}
	}
	for _, name := range healthCounters {
		if v, ok := ctrs[name]; ok {
			h.Counters[name] = v
		}
	}
	return h
}
