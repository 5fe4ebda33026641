package controller

import (
	"testing"
	"time"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TestNextWrite: what the status writer writes, and when. A change of
// anything but health counters and the last-seen time is written at once;
// counters only, once HealthWriteInterval has passed since the last write;
// a status equal to the last written, never.
func TestNextWrite(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	every := 15 * time.Second
	base := &pb.Host{
		Name: "hosts/h1", SyncState: pb.SyncState_SYNC_STATE_IN_SYNC, LastSeenTime: timestamppb.New(t0),
		Health: &pb.MptcpHealth{Connections: 1, Paths: []*pb.PathStatus{{Interface: "eth1", Address: "198.18.1.2", State: pb.PathState_PATH_STATE_OK}}},
	}
	with := func(f func(h *pb.Host)) *pb.Host {
		h := proto.Clone(base).(*pb.Host)
		f(h)
		return h
	}
	for _, tc := range []struct {
		name     string
		st, last *pb.Host
		since    time.Duration // since the last write
		write    bool
		wait     time.Duration
	}{
		{name: "never written", st: base, write: true},
		{name: "the same status", st: base, last: base, since: time.Hour},
		{name: "an equal status", st: with(func(*pb.Host) {}), last: base, since: time.Hour},
		{name: "sync state", st: with(func(h *pb.Host) { h.SyncState = pb.SyncState_SYNC_STATE_DEGRADED }), last: base, since: time.Millisecond, write: true},
		{name: "a path's state", st: with(func(h *pb.Host) { h.Health.Paths[0].State = pb.PathState_PATH_STATE_FAILED }), last: base, write: true},
		{name: "a problem", st: with(func(h *pb.Host) { h.Problems = []*pb.HostProblem{{Code: pb.HostProblem_CODE_PATH_FAILED}} }), last: base, write: true},
		{name: "labels", st: with(func(h *pb.Host) { h.Labels = map[string]string{"role": "web"} }), last: base, write: true},
		{name: "counters, soon after a write", st: with(func(h *pb.Host) { h.Health.Connections = 9 }), last: base, since: 5 * time.Second, wait: 10 * time.Second},
		{name: "last seen, soon after a write", st: with(func(h *pb.Host) { h.LastSeenTime = timestamppb.New(t0.Add(time.Second)) }), last: base, since: time.Second, wait: 14 * time.Second},
		{name: "counters, an interval after", st: with(func(h *pb.Host) { h.Health.Connections = 9 }), last: base, since: every, write: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, wait := nextWrite(tc.st, tc.last, t0, every, t0.Add(tc.since))
			if (got != nil) != tc.write || (got != nil && got != tc.st) || wait != tc.wait {
				t.Errorf("nextWrite = %v, %v; want write %v, wait %v", got != nil, wait, tc.write, tc.wait)
			}
		})
	}
}
