package controller

import (
	"testing"
	"time"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
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
		{name: "a path's check time and latency, soon after a write", st: with(func(h *pb.Host) {
			h.Health.Paths[0].LastCheckTime = timestamppb.New(t0.Add(time.Second))
			h.Health.Paths[0].ProbeLatency = durationpb.New(time.Millisecond)
		}), last: base, since: 5 * time.Second, wait: 10 * time.Second},
		{name: "a path more", st: with(func(h *pb.Host) {
			h.Health.Paths = append(h.Health.Paths, &pb.PathStatus{Interface: "eth2", Address: "198.18.2.2", State: pb.PathState_PATH_STATE_OK})
		}), last: base, since: time.Second, write: true},
		{name: "facts", st: with(func(h *pb.Host) { h.Facts = &pb.HostFacts{Hostname: "h1"} }), last: base, since: time.Second, write: true},
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

// TestNextWriteFieldNames: the fields nextWrite leaves out of its compares,
// by name, exist (a renamed field would silently count as a change).
func TestNextWriteFieldNames(t *testing.T) {
	for _, tc := range []struct {
		m     proto.Message
		names []string
	}{
		{&pb.Host{}, []string{"health", "last_seen_time"}},
		{&pb.PathStatus{}, []string{"last_check_time", "probe_latency"}},
	} {
		fields := tc.m.ProtoReflect().Descriptor().Fields()
		for _, n := range tc.names {
			if fields.ByName(protoreflect.Name(n)) == nil {
				t.Errorf("%s has no field %q", tc.m.ProtoReflect().Descriptor().FullName(), n)
			}
		}
	}
}

// TestReportChange: what of a report is written at once — all it sets but
// health counters, the paths' check times and the last-seen time — and
// when the rest is (pending.due).
func TestReportChange(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	prev := &pb.Host{
		Name: "hosts/h1", SyncState: pb.SyncState_SYNC_STATE_IN_SYNC, AppliedRevision: 3, LastSeenTime: timestamppb.New(t0),
		Facts:   &pb.HostFacts{Hostname: "h1"},
		Applied: &pb.AppliedState{},
		Health:  &pb.MptcpHealth{Connections: 1, Paths: []*pb.PathStatus{{Interface: "eth1", Address: "198.18.1.2", State: pb.PathState_PATH_STATE_OK}}},
	}
	with := func(f func(h *pb.Host)) *pb.Host {
		h := proto.Clone(prev).(*pb.Host)
		f(h)
		return h
	}
	for _, tc := range []struct {
		name   string
		st     *pb.Host
		prompt bool
	}{
		{name: "the same", st: with(func(*pb.Host) {})},
		{name: "counters and last seen", st: with(func(h *pb.Host) {
			h.Health.Connections, h.LastSeenTime = 7, timestamppb.New(t0.Add(time.Second))
			h.Health.Paths[0].LastCheckTime = timestamppb.New(t0)
		})},
		{name: "sync state", st: with(func(h *pb.Host) { h.SyncState = pb.SyncState_SYNC_STATE_APPLYING }), prompt: true},
		{name: "revision", st: with(func(h *pb.Host) { h.AppliedRevision = 4 }), prompt: true},
		{name: "last error", st: with(func(h *pb.Host) { h.LastError = "boom" }), prompt: true},
		{name: "excluded", st: with(func(h *pb.Host) { h.ExcludedAddresses = []string{"198.18.1.3"} }), prompt: true},
		{name: "applied", st: with(func(h *pb.Host) { h.Applied = nil }), prompt: true},
		{name: "facts", st: with(func(h *pb.Host) { h.Facts.Hostname = "h2" }), prompt: true},
		{name: "plan", st: with(func(h *pb.Host) { h.LastPlan = []*pb.PlanOperation{{Kind: "add"}} }), prompt: true},
		{name: "problem", st: with(func(h *pb.Host) { h.Problems = []*pb.HostProblem{{Code: pb.HostProblem_CODE_PATH_FAILED}} }), prompt: true},
		{name: "path state", st: with(func(h *pb.Host) { h.Health.Paths[0].State = pb.PathState_PATH_STATE_FAILED }), prompt: true},
	} {
		if got := reportChange(prev, tc.st); got != tc.prompt {
			t.Errorf("%s: reportChange = %v, want %v", tc.name, got, tc.prompt)
		}
	}

	every := 15 * time.Second
	for _, tc := range []struct {
		name  string
		p     pending
		write bool
		wait  time.Duration
	}{
		{name: "nothing", p: pending{lastWrite: t0}},
		{name: "prompt", p: pending{changed: true, prompt: true, lastWrite: t0}, write: true},
		{name: "counters, soon", p: pending{changed: true, lastWrite: t0.Add(-5 * time.Second)}, wait: 10 * time.Second},
		{name: "counters, due", p: pending{changed: true, lastWrite: t0.Add(-every)}, write: true},
	} {
		if write, wait := tc.p.due(every, t0); write != tc.write || wait != tc.wait {
			t.Errorf("%s: due = %v, %v; want %v, %v", tc.name, write, wait, tc.write, tc.wait)
		}
	}
}

// TestShallowHost: shallowHost copies every field of a host (a field added
// to Host and not to shallowHost fails here).
func TestShallowHost(t *testing.T) {
	h := &pb.Host{}
	m := h.ProtoReflect()
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		switch {
		case fd.IsMap():
			mp := m.Mutable(fd).Map()
			mp.Set(protoreflect.ValueOfString("k").MapKey(), protoreflect.ValueOfString("v"))
		case fd.IsList():
			l := m.Mutable(fd).List()
			if fd.Kind() == protoreflect.MessageKind {
				l.Append(l.NewElement())
			} else {
				l.Append(protoreflect.ValueOfString("x"))
			}
		case fd.Kind() == protoreflect.MessageKind:
			m.Mutable(fd)
		case fd.Kind() == protoreflect.StringKind:
			m.Set(fd, protoreflect.ValueOfString("x"))
		case fd.Kind() == protoreflect.BoolKind:
			m.Set(fd, protoreflect.ValueOfBool(true))
		case fd.Kind() == protoreflect.Int64Kind:
			m.Set(fd, protoreflect.ValueOfInt64(7))
		case fd.Kind() == protoreflect.EnumKind:
			m.Set(fd, protoreflect.ValueOfEnum(1))
		default:
			t.Fatalf("field %s of kind %v: teach this test to set it", fd.Name(), fd.Kind())
		}
	}
	m.SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 999, protowire.VarintType), 1))
	c := shallowHost(h)
	for i := range fields.Len() {
		if fd := fields.Get(i); !c.ProtoReflect().Has(fd) {
			t.Errorf("shallowHost does not copy %s", fd.Name())
		}
	}
	if !proto.Equal(c, h) {
		t.Errorf("shallowHost(h) = %v, want %v", c, h)
	}
}

// TestSamePathState: samePathState tells two paths apart by every field but
// the check time and the probe latency (a field added to PathStatus and not
// to samePathState fails here).
func TestSamePathState(t *testing.T) {
	base := &pb.PathStatus{}
	fields := base.ProtoReflect().Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		other := &pb.PathStatus{}
		m := other.ProtoReflect()
		switch {
		case fd.Kind() == protoreflect.MessageKind:
			m.Mutable(fd)
		case fd.Kind() == protoreflect.StringKind:
			m.Set(fd, protoreflect.ValueOfString("x"))
		case fd.Kind() == protoreflect.Uint32Kind:
			m.Set(fd, protoreflect.ValueOfUint32(7))
		case fd.Kind() == protoreflect.EnumKind:
			m.Set(fd, protoreflect.ValueOfEnum(1))
		default:
			t.Fatalf("field %s of kind %v: teach this test to set it", fd.Name(), fd.Kind())
		}
		ignored := fd.Name() == "last_check_time" || fd.Name() == "probe_latency"
		if got := samePathState(base, other); got != ignored {
			t.Errorf("a path differing only in %s: same = %v, want %v", fd.Name(), got, ignored)
		}
	}
	withUnknown := &pb.PathStatus{}
	withUnknown.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 999, protowire.VarintType), 1))
	if samePathState(base, withUnknown) {
		t.Error("a path differing only in unknown fields: same")
	}
}
