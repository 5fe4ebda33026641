package store

// Agents' events, recorded once. An agent numbers its events (an epoch
// chosen at start, then a sequence) and sends again, on its next stream,
// those no replica acknowledged: the replica that had them may have
// recorded them and died before it said so, or may still record them.
// Each host's mark, under audit/agents/{host}, holds the highest sequence
// recorded of each of its latest epochs; it is read, and put, in the
// transaction that appends the events, under a compare of its mod revision,
// so that an event already recorded is left out however many replicas
// hold it.

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// maxMarkEpochs is how many epochs (runs of an agent) a host's mark keeps:
// events of an older run that a replica still appends after a newer run's
// do not make the newer run's events count as new again.
const maxMarkEpochs = 4

func (s *Store) agentMarkKey(host string) string { return s.prefix + "audit/agents/" + host }

// AgentEvent is an agent's event to append: its audit event, the host, and
// the epoch and sequence the agent gave it. An event with epoch 0 (an agent
// that numbers none) is always appended.
type AgentEvent struct {
	Host  string
	Epoch uint64
	Seq   uint64
	Event *pb.AuditEvent
}

// AgentEventsCost is what events of hosts take of one AppendAgentEvents
// call: a put each, and one more for the mark of each host whose events are
// numbered. A call takes at most MaxAuditBatch.
func AgentEventsCost(events, numberedHosts int) int { return events + numberedHosts }

// AppendAgentEvents appends agents' events, in their order, in one
// transaction (as AppendAudits), leaving out every numbered event already
// recorded: one whose sequence is at most the highest recorded of its host
// and epoch. It returns how many it appended.
func (s *Store) AppendAgentEvents(ctx context.Context, evs []AgentEvent) (int, error) {
	hosts := map[string]bool{}
	for _, e := range evs {
		if e.Epoch != 0 {
			hosts[e.Host] = true
		}
	}
	if n := AgentEventsCost(len(evs), len(hosts)); len(evs) == 0 || n > MaxAuditBatch {
		return 0, fmt.Errorf("append %d agent events of %d hosts: one call takes 1 to %d events and marks: %w", len(evs), len(hosts), MaxAuditBatch, ErrFailedPrecondition)
	}
	out := make([]*pb.AuditEvent, len(evs))
	for i, e := range evs {
		out[i] = s.stamped(e.Event)
	}
	ids := slices.Sorted(maps.Keys(hosts))
	appended := 0
	_, err := s.auditedTxn(ctx, fmt.Sprintf("append %d agent events", len(evs)), func(head) (*txnPlan, error) {
		marks, revs, err := s.readMarks(ctx, ids)
		if err != nil {
			return nil, err
		}
		p := &txnPlan{}
		changed := map[string]bool{}
		for i, e := range evs {
			if e.Epoch != 0 {
				m := marks[e.Host]
				if m.recorded(e.Epoch, e.Seq) {
					continue
				}
				marks[e.Host] = m.with(e.Epoch, e.Seq)
				changed[e.Host] = true
			}
			p.events = append(p.events, out[i])
		}
		appended = len(p.events)
		if appended == 0 {
			return nil, nil // every one recorded already
		}
		for _, h := range ids {
			if changed[h] {
				k := s.agentMarkKey(h)
				p.cmps = append(p.cmps, clientv3.Compare(clientv3.ModRevision(k), "=", revs[h]))
				p.ops = append(p.ops, clientv3.OpPut(k, marks[h].encode()))
			}
		}
		return p, nil
	}, nil)
	if err != nil {
		return 0, err
	}
	return appended, nil
}

// readMarks reads the marks of hosts, and their mod revisions (0: none),
// in one read.
func (s *Store) readMarks(ctx context.Context, hosts []string) (map[string]mark, map[string]int64, error) {
	marks, revs := map[string]mark{}, map[string]int64{}
	if len(hosts) == 0 {
		return marks, revs, nil
	}
	gets := make([]clientv3.Op, len(hosts))
	for i, h := range hosts {
		gets[i] = clientv3.OpGet(s.agentMarkKey(h))
	}
	resp, err := s.c.Txn(ctx).Then(gets...).Commit()
	if err != nil {
		return nil, nil, fmt.Errorf("read the agents' event marks: %w", err)
	}
	for i, h := range hosts {
		kvs := resp.Responses[i].GetResponseRange().GetKvs()
		if len(kvs) == 0 {
			continue
		}
		marks[h] = decodeMark(string(kvs[0].Value))
		revs[h] = kvs[0].ModRevision
	}
	return marks, revs, nil
}

// mark is a host's highest recorded sequence of each of its latest epochs,
// the latest first.
type mark []markEntry

type markEntry struct{ epoch, seq uint64 }

func (m mark) recorded(epoch, seq uint64) bool {
	for _, e := range m {
		if e.epoch == epoch {
			return seq <= e.seq
		}
	}
	return false
}

// with returns m with seq recorded for epoch, that epoch first.
func (m mark) with(epoch, seq uint64) mark {
	n := mark{{epoch, seq}}
	for _, e := range m {
		if e.epoch == epoch {
			n[0].seq = max(seq, e.seq)
		} else if len(n) < maxMarkEpochs {
			n = append(n, e)
		}
	}
	return n
}

// encode writes m as lines "epoch sequence".
func (m mark) encode() string {
	var b strings.Builder
	for _, e := range m {
		fmt.Fprintf(&b, "%d %d\n", e.epoch, e.seq)
	}
	return b.String()
}

// decodeMark reads what encode wrote; what it cannot read it leaves out (a
// damaged mark lets events again, rather than stop every append).
func decodeMark(s string) mark {
	var m mark
	for line := range strings.Lines(s) {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		ep, err1 := strconv.ParseUint(f[0], 10, 64)
		seq, err2 := strconv.ParseUint(f[1], 10, 64)
		if err1 != nil || err2 != nil || len(m) == maxMarkEpochs {
			continue
		}
		m = append(m, markEntry{ep, seq})
	}
	return m
}
