package rollout

// Judging a moved host: the counters it had before the move, and whether it
// is healthy at its new revision.

import (
	"fmt"
	"slices"
	"time"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// hostBaselineAtCreate is the counters a host had when the rollout was
// created, if recorded (baselines without a move time).
func (a *advancer) hostBaselineAtCreate(name string) *pb.HostBaseline {
	for _, b := range a.r.GetBaselines() {
		if b.GetHost() == name && b.GetMoveTime() == nil {
			return b
		}
	}
	return nil
}

// baseline records h just before its move. The rate of the bad counters is
// taken from the rollout's creation (before) to now, when long enough.
func baseline(h Host, created *timestamppb.Timestamp, before *pb.HostBaseline, now time.Time) *pb.HostBaseline {
	b := &pb.HostBaseline{
		Host: hostName(h.ID), MoveTime: timestamppb.New(now),
		OkPaths: slices.Clone(h.OKPaths), Problems: slices.Clone(h.Problems), BadCounters: h.Bad,
	}
	if !h.CountersTime.IsZero() {
		b.CountersTime = timestamppb.New(h.CountersTime)
	}
	if before != nil && before.GetCountersTime() != nil && !h.CountersTime.IsZero() {
		dt := h.CountersTime.Sub(before.GetCountersTime().AsTime()).Seconds()
		if dt >= 1 && h.Bad >= before.GetBadCounters() {
			b.BadRate = float64(h.Bad-before.GetBadCounters()) / dt
		}
	}
	return b
}

// Baseline records h's counters when a rollout is created, so that the rate
// before its move can be told.
func Baseline(h Host) *pb.HostBaseline {
	b := &pb.HostBaseline{Host: hostName(h.ID), BadCounters: h.Bad}
	if !h.CountersTime.IsZero() {
		b.CountersTime = timestamppb.New(h.CountersTime)
	}
	return b
}

func (a *advancer) movedBaseline(name string) *pb.HostBaseline {
	for _, b := range a.r.GetBaselines() {
		if b.GetHost() == name && b.GetMoveTime() != nil {
			return b
		}
	}
	return nil
}

// judge says whether a moved host is healthy at the target now, and if not
// whether that is final (a failure) or not yet known.
func (a *advancer) judge(h Host, b *pb.HostBaseline) (healthy bool, failure string) {
	target := a.r.GetTargetRevision()
	if !h.Connected {
		return false, ""
	}
	if h.State == pb.SyncState_SYNC_STATE_FAILED && h.Applied != target {
		return false, fmt.Sprintf("could not apply revision %d: %s", target, h.LastError)
	}
	if h.Applied != target || (h.State != pb.SyncState_SYNC_STATE_IN_SYNC && h.State != pb.SyncState_SYNC_STATE_DEGRADED) {
		return false, ""
	}
	for _, p := range h.Problems {
		if !slices.Contains(b.GetProblems(), p) {
			return false, "new problem at revision " + fmt.Sprint(target) + ": " + p + problemDetail(h)
		}
	}
	for _, p := range b.GetOkPaths() {
		if !slices.Contains(h.OKPaths, p) {
			return false, fmt.Sprintf("path %s was OK before the move and is not at revision %d%s", p, target, problemDetail(h))
		}
	}
	if !h.CountersTime.IsZero() && b.GetMoveTime() != nil {
		dt := h.CountersTime.Sub(b.GetMoveTime().AsTime()).Seconds()
		if dt > 0 && h.Bad > b.GetBadCounters() {
			rise := float64(h.Bad - b.GetBadCounters())
			allowed := CounterFactor*b.GetBadRate()*dt + CounterSlack
			if rise > allowed {
				return false, fmt.Sprintf("MPTCP fallbacks and MP_JOIN errors rose by %.0f in %.0fs at revision %d (before: %.2f/s; allowed %.0f)",
					rise, dt, target, b.GetBadRate(), allowed)
			}
		}
	}
	return true, ""
}

func problemDetail(h Host) string {
	if h.LastError == "" {
		return ""
	}
	return " (" + h.LastError + ")"
}
