package mptcp

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// netstatPath holds the MPTcpExt counters of the calling thread's network
// namespace (/proc/net is the process's, which a thread that entered another
// namespace does not share).
const netstatPath = "/proc/thread-self/net/netstat"

// Counters are the kernel's MPTcpExt counters (the MIB shown by
// `nstat -a | grep MPTcp`), by name without the "MPTcpExt" prefix. The
// methods read the ones that speak of health; a counter the kernel lacks
// reads 0 (look it up in the map to tell).
type Counters map[string]uint64

// ReadCounters reads the MPTcpExt counters of the calling thread's network
// namespace. Lock the goroutine to its thread (runtime.LockOSThread) when
// that thread was moved to another namespace.
func ReadCounters() (Counters, error) {
	b, err := os.ReadFile(netstatPath)
	if err != nil {
		return nil, fmt.Errorf("mptcp read counters: %w", err)
	}
	c, err := parseNetstat(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("mptcp read counters: %s: %w", netstatPath, err)
	}
	return c, nil
}

// parseNetstat reads the MPTcpExt header and value lines of a
// /proc/net/netstat file.
func parseNetstat(r io.Reader) (Counters, error) {
	const prefix = "MPTcpExt:"
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	var names []string
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		fields := strings.Fields(line[len(prefix):])
		if names == nil {
			names = fields
			continue
		}
		if len(fields) != len(names) {
			return nil, fmt.Errorf("MPTcpExt: %d names but %d values", len(names), len(fields))
		}
		c := make(Counters, len(names))
		for i, n := range names {
			v, err := strconv.ParseUint(fields[i], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("MPTcpExt %s: %w", n, err)
			}
			c[n] = v
		}
		return c, nil
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if names == nil {
		return nil, fmt.Errorf("no MPTcpExt counters: %w", ErrUnsupported)
	}
	return nil, fmt.Errorf("MPTcpExt names without values")
}

// MPCapableSYNRX counts SYNs received with MP_CAPABLE (passive opens tried).
func (c Counters) MPCapableSYNRX() uint64 { return c["MPCapableSYNRX"] }

// MPCapableSYNTX counts SYNs sent with MP_CAPABLE (active opens tried).
func (c Counters) MPCapableSYNTX() uint64 { return c["MPCapableSYNTX"] }

// MPCapableFallbackACK counts passive connections that fell back to TCP
// because the third ACK lacked MP_CAPABLE.
func (c Counters) MPCapableFallbackACK() uint64 { return c["MPCapableFallbackACK"] }

// MPCapableFallbackSYNACK counts active connections that fell back to TCP
// because the SYN/ACK lacked MP_CAPABLE.
func (c Counters) MPCapableFallbackSYNACK() uint64 { return c["MPCapableFallbackSYNACK"] }

// MPFallbackTokenInit counts connections that fell back because no token
// could be made.
func (c Counters) MPFallbackTokenInit() uint64 { return c["MPFallbackTokenInit"] }

// fallbackCounters are the counters of connections that fell back to TCP.
var fallbackCounters = []string{
	"MPCapableFallbackACK", "MPCapableFallbackSYNACK", "MPFallbackTokenInit",
	"MPCapableDataFallback", "MD5SigFallback", "DssFallback", "SimultConnectFallback",
}

// Fallbacks is the sum of the counters of connections that fell back to
// plain TCP: MPCapableFallbackACK, MPCapableFallbackSYNACK,
// MPFallbackTokenInit and, where the kernel has them (6.17+),
// MPCapableDataFallback, MD5SigFallback, DssFallback and
// SimultConnectFallback.
func (c Counters) Fallbacks() uint64 {
	var n uint64
	for _, name := range fallbackCounters {
		n += c[name]
	}
	return n
}

// MPJoinSynRx counts SYNs received with MP_JOIN (subflows offered to us).
func (c Counters) MPJoinSynRx() uint64 { return c["MPJoinSynRx"] }

// MPJoinSynAckRx counts SYN/ACKs received with MP_JOIN.
func (c Counters) MPJoinSynAckRx() uint64 { return c["MPJoinSynAckRx"] }

// MPJoinAckRx counts third ACKs received with MP_JOIN (passive joins done).
func (c Counters) MPJoinAckRx() uint64 { return c["MPJoinAckRx"] }

// MPJoinSynTxConnectErr counts MP_JOIN SYNs that could not be sent.
func (c Counters) MPJoinSynTxConnectErr() uint64 { return c["MPJoinSynTxConnectErr"] }

// AddAddr counts ADD_ADDR options received.
func (c Counters) AddAddr() uint64 { return c["AddAddr"] }

// RmAddr counts RM_ADDR options received.
func (c Counters) RmAddr() uint64 { return c["RmAddr"] }

// SubflowStale counts subflows marked stale (see net.mptcp.stale_loss_cnt).
func (c Counters) SubflowStale() uint64 { return c["SubflowStale"] }

// SubflowRecover counts stale subflows that recovered.
func (c Counters) SubflowRecover() uint64 { return c["SubflowRecover"] }

// MPFailTx counts MP_FAIL options sent.
func (c Counters) MPFailTx() uint64 { return c["MPFailTx"] }

// MPFailRx counts MP_FAIL options received.
func (c Counters) MPFailRx() uint64 { return c["MPFailRx"] }

// MPRstTx counts MP_RST options sent.
func (c Counters) MPRstTx() uint64 { return c["MPRstTx"] }

// MPRstRx counts MP_RST options received.
func (c Counters) MPRstRx() uint64 { return c["MPRstRx"] }

// Blackhole counts MPTCP blackholes detected (see
// net.mptcp.blackhole_timeout).
func (c Counters) Blackhole() uint64 { return c["Blackhole"] }

// MPCurrEstab is the number of MPTCP connections established now (a gauge).
func (c Counters) MPCurrEstab() uint64 { return c["MPCurrEstab"] }
