package audit

import (
	"fmt"
	"testing"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
)

func chain(t *testing.T, n int) []*pb.AuditEvent {
	t.Helper()
	var evs []*pb.AuditEvent
	var prevSeq uint64
	var prevHash []byte
	for i := 0; i < n; i++ {
		ev := &pb.AuditEvent{Actor: "alice", Action: "groups.update", Resource: fmt.Sprintf("groups/g%d", i), Result: pb.AuditResult_AUDIT_RESULT_SUCCESS}
		if err := Seal(ev, prevSeq, prevHash); err != nil {
			t.Fatal(err)
		}
		prevSeq, prevHash = ev.Sequence, ev.Hash
		evs = append(evs, ev)
	}
	return evs
}

func verify(evs []*pb.AuditEvent, headSeq uint64, headHash []byte) *pb.VerifyAuditLogResponse {
	var v Verifier
	for _, ev := range evs {
		if !v.Add(ev) {
			break
		}
	}
	v.CheckHead(headSeq, headHash)
	return v.Result()
}

func TestVerify(t *testing.T) {
	tests := []struct {
		name    string
		tamper  func(evs []*pb.AuditEvent) []*pb.AuditEvent
		wantBad uint64
	}{
		{"intact", func(e []*pb.AuditEvent) []*pb.AuditEvent { return e }, 0},
		{"field edited", func(e []*pb.AuditEvent) []*pb.AuditEvent { e[2].Actor = "mallory"; return e }, 3},
		{"edited and rehashed", func(e []*pb.AuditEvent) []*pb.AuditEvent {
			e[2].Actor = "mallory"
			e[2].Hash, _ = Hash(e[2])
			return e
		}, 4},
		{"event removed", func(e []*pb.AuditEvent) []*pb.AuditEvent { return append(e[:1:1], e[2:]...) }, 3},
		{"last event removed", func(e []*pb.AuditEvent) []*pb.AuditEvent { return e[:4] }, 5},
		{"reordered", func(e []*pb.AuditEvent) []*pb.AuditEvent { e[1], e[2] = e[2], e[1]; return e }, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			evs := chain(t, 5)
			head := proto.Clone(evs[4]).(*pb.AuditEvent)
			got := verify(tt.tamper(evs), head.Sequence, head.Hash)
			if got.FirstBadSequence != tt.wantBad || got.Ok != (tt.wantBad == 0) {
				t.Fatalf("verify = %+v, want first bad %d", got, tt.wantBad)
			}
			if tt.wantBad != 0 && got.Reason == "" {
				t.Fatal("no reason given")
			}
		})
	}
}

func TestFilter(t *testing.T) {
	ev := &pb.AuditEvent{Actor: "alice", Action: "agent.applied", Resource: "groups/web", Host: "hosts/h1"}
	for f, want := range map[Filter]bool{
		{}:                          true,
		{Actor: "alice"}:            true,
		{Actor: "bob"}:              false,
		{Action: "agent."}:          true,
		{Action: "agent"}:           false,
		{Resource: "groups/"}:       true,
		{Resource: "groups/we"}:     false,
		{Host: "hosts/h1"}:          true,
		{Host: "hosts/h2"}:          false,
		{Actor: "alice", Host: "x"}: false,
	} {
		if got := f.Match(ev); got != want {
			t.Errorf("%+v.Match = %v, want %v", f, got, want)
		}
	}
}
