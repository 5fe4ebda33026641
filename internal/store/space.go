package store

import (
	"context"
	"errors"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcd's space: its backend (one bbolt file per member) has a quota,
// --quota-backend-bytes (2 GiB by default). A write that would take it past
// the quota raises the cluster's NOSPACE alarm, and from then on etcd
// refuses every write that stores anything (puts, transactions with puts,
// lease grants) — deletes still work — until the alarm is disarmed. Deleting
// data does not shrink the file: old revisions stay until a compaction, and
// the space they held is only returned by a defragmentation.

// DefaultQuotaBytes is etcd's default backend quota: 2 GiB.
const DefaultQuotaBytes int64 = 2 << 30

// Alarms returns the alarms raised in the cluster (NOSPACE, CORRUPT). The
// request goes through etcd's raft log, so an answer also proves that the
// member reached has a leader and a quorum: it doubles as a linearizable
// health probe.
func (s *Store) Alarms(ctx context.Context) ([]*pb.AlarmMember, error) {
	resp, err := s.c.AlarmList(clientv3.WithRequireLeader(ctx))
	if err != nil {
		return nil, fmt.Errorf("etcd alarm list: %w", Classify(err))
	}
	return resp.Alarms, nil
}

// MemberSpace is what RecoverSpace found on one endpoint.
type MemberSpace struct {
	Endpoint string
	MemberID uint64
	// Quota is the member's backend quota.
	Quota int64
	// Size and InUse are the backend's size and the part of it in use
	// after the compaction, before the defragmentation.
	Size, InUse int64
	// Defragmented is the size after the defragmentation (0: not done).
	Defragmented int64
}

// SpaceReport says what RecoverSpace found and did.
type SpaceReport struct {
	// NoSpace lists the members whose NOSPACE alarm is raised (none:
	// RecoverSpace had nothing to do).
	NoSpace []uint64
	// CompactedTo is the revision compacted to (0: not compacted).
	CompactedTo int64
	// Members are the endpoints examined, in order.
	Members []MemberSpace
	// Disarmed reports that the NOSPACE alarms were disarmed.
	Disarmed bool
}

// SpaceHeadroom is the part of the quota (1/SpaceHeadroom) that must be
// free after a defragmentation for RecoverSpace to disarm the alarm: with
// less, the next writes would raise it again at once.
const SpaceHeadroom = 10

// RecoverSpace recovers etcd from its NOSPACE alarm, if it is raised:
// it compacts the history to the current revision, then, on every endpoint
// of the client, checks that what is in use leaves room under the quota and
// defragments the member, and, if every member then has room, disarms the
// alarm. When the data in use fills the quota (it must be deleted first, or
// the quota raised) it stops with an error of class ErrNoSpace and changes
// nothing else. Defragmenting blocks a member while it runs; ctx should
// allow for it (seconds per GiB).
//
// Disarming needs etcd's root role when authentication is on.
func (s *Store) RecoverSpace(ctx context.Context) (SpaceReport, error) {
	var rep SpaceReport
	alarms, err := s.Alarms(ctx)
	if err != nil {
		return rep, err
	}
	var nospace []*pb.AlarmMember
	for _, a := range alarms {
		if a.Alarm == pb.AlarmType_NOSPACE {
			nospace = append(nospace, a)
			rep.NoSpace = append(rep.NoSpace, a.MemberID)
		}
	}
	if len(nospace) == 0 {
		return rep, nil
	}
	// Compaction is allowed under the alarm; it drops every old revision,
	// which is most of what a busy history holds.
	resp, err := s.c.Get(ctx, s.auditHeadKey(), clientv3.WithCountOnly())
	if err != nil {
		return rep, fmt.Errorf("recover space: current revision: %w", err)
	}
	rev := resp.Header.Revision
	if _, err := s.c.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
		return rep, fmt.Errorf("recover space: compact to revision %d: %w", rev, Classify(err))
	}
	rep.CompactedTo = rev
	for _, ep := range s.c.Endpoints() {
		st, err := s.c.Status(ctx, ep)
		if err != nil {
			return rep, fmt.Errorf("recover space: status of %s: %w", ep, Classify(err))
		}
		m := MemberSpace{Endpoint: ep, MemberID: st.Header.GetMemberId(), Quota: st.DbSizeQuota, Size: st.DbSize, InUse: st.DbSizeInUse}
		if m.Quota <= 0 { // etcd before 3.6 does not say
			m.Quota = DefaultQuotaBytes
		}
		limit := m.Quota - m.Quota/SpaceHeadroom
		if m.InUse >= limit {
			rep.Members = append(rep.Members, m)
			return rep, fmt.Errorf("%s (member %x): %d of its %d bytes are in use after compaction, defragmenting cannot free enough: delete data or raise the quota: %w",
				ep, m.MemberID, m.InUse, m.Quota, ErrNoSpace)
		}
		if _, err := s.c.Defragment(ctx, ep); err != nil {
			rep.Members = append(rep.Members, m)
			return rep, fmt.Errorf("recover space: defragment %s: %w", ep, Classify(err))
		}
		st, err = s.c.Status(ctx, ep)
		if err != nil {
			rep.Members = append(rep.Members, m)
			return rep, fmt.Errorf("recover space: status of %s: %w", ep, Classify(err))
		}
		m.Defragmented = st.DbSize
		rep.Members = append(rep.Members, m)
		if m.Defragmented >= limit {
			return rep, fmt.Errorf("%s (member %x): %d of its %d bytes used after defragmenting: delete data or raise the quota: %w",
				ep, m.MemberID, m.Defragmented, m.Quota, ErrNoSpace)
		}
	}
	for _, a := range nospace {
		if _, err := s.c.AlarmDisarm(ctx, (*clientv3.AlarmMember)(a)); err != nil {
			return rep, fmt.Errorf("recover space: disarm NOSPACE of member %x: %w", a.MemberID, Classify(err))
		}
	}
	rep.Disarmed = true
	return rep, nil
}
