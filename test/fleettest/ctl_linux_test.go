package fleettest

import (
	"strings"
	"testing"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/mpfleet/mpfleet/test/lab"
)

func TestInSync(t *testing.T) {
	revs := map[string]int64{"groups/lab-clients": 7, "groups/lab-servers": 3}
	good := func() *pb.Host {
		return &pb.Host{Name: "hosts/x-client", Connected: true, Group: "groups/lab-clients",
			SyncState: pb.SyncState_SYNC_STATE_IN_SYNC, DesiredRevision: 7, AppliedRevision: 7}
	}
	cases := []struct {
		name   string
		change func(*pb.Host)
		want   string // in the error; "" for none
	}{
		{"in sync", func(*pb.Host) {}, ""},
		{"not connected", func(x *pb.Host) { x.Connected = false }, "not connected"},
		{"other group", func(x *pb.Host) { x.Group = "groups/lab-servers" }, `want "groups/lab-clients"`},
		{"older revision applied", func(x *pb.Host) { x.AppliedRevision = 6 }, "revision applied 6, desired 7, want 7"},
		{"newer revision desired", func(x *pb.Host) { x.DesiredRevision = 8 }, "desired 8, want 7"},
		{"failed", func(x *pb.Host) {
			x.SyncState, x.LastError = pb.SyncState_SYNC_STATE_FAILED, "scheduler"
		}, "SYNC_STATE_FAILED (scheduler)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			x := good()
			c.change(x)
			err := InSync(revs)(lab.Client, x)
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("error %v, want none", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("error %v, want one with %q", err, c.want)
			}
		})
	}
}
