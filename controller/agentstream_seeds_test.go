package controller_test

import (
	"encoding/binary"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// seedTime is the time in the seeds' reports.
var seedTime = time.Date(2025, 11, 25, 12, 0, 0, 0, time.UTC)

var updateSeeds = flag.Bool("update-seeds", false, "rewrite testdata/fuzz/FuzzAgentStream from TestAgentStreamSeeds")

// TestAgentStreamSeeds builds FuzzAgentStream's seeds: each is the
// sequence of messages named, encoded as chunks. It checks that the files
// in testdata/fuzz/FuzzAgentStream are these, and rewrites them with
// -update-seeds (after a change of the protocol).
func TestAgentStreamSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzAgentStream")
	m := func(r *pb.ConnectRequest) []byte {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	enc := func(msgs ...[]byte) []byte {
		var out []byte
		for _, b := range msgs {
			if len(b) > 0xffff {
				t.Fatalf("chunk of %d bytes", len(b))
			}
			out = binary.BigEndian.AppendUint16(out, uint16(len(b)))
			out = append(out, b...)
		}
		return out
	}
	hello := func(id string, labels map[string]string, facts *pb.HostFacts) []byte {
		return m(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Hello{Hello: &pb.AgentHello{
			HostId: id, Labels: labels, Facts: facts, AgentVersion: "0.9.0", AppliedGroup: "groups/web", AppliedRevision: 1}}})
	}
	report := func(r *pb.AgentReport) []byte {
		return m(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Report{Report: r}})
	}
	event := func(e *pb.AgentEvent) []byte { return m(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Event{Event: e}}) }
	confirm := func(n uint64) []byte {
		return m(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Confirm{Confirm: &pb.Confirm{Nonce: n}}})
	}
	facts := &pb.HostFacts{Hostname: "web-1", KernelVersion: "6.18.0", MptcpSupported: true,
		AvailableSysctls: []string{"enabled", "scheduler"}, AvailableSchedulers: []string{"default"},
		Interfaces: []*pb.Interface{
			{Name: "lo", Index: 1, Up: true, Addresses: []string{"127.0.0.1/8"}},
			{Name: "eth1", Index: 2, Up: true, Addresses: []string{"198.18.1.2/24", "2001:db8:1::2/64"}, Gateways: []string{"198.18.1.1"}},
			{Name: "eth2", Index: 3, Up: false, Addresses: []string{"198.18.2.2/24"}},
		}}
	good := &pb.AgentReport{
		SyncState: pb.SyncState_SYNC_STATE_IN_SYNC, Group: "groups/web", AppliedRevision: 1,
		Applied: &pb.AppliedState{
			Endpoints: []*pb.AppliedEndpoint{{Id: 1, Address: "198.18.1.2", Flags: []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW}, Interface: "eth1"}},
			Limits:    &pb.Limits{Subflows: proto.Uint32(2)},
			Rules:     []*pb.AppliedRule{{Priority: 7100, From: "198.18.1.2/32", Table: 7100}},
			Sysctls:   map[string]string{"net.mptcp.enabled": "1"},
		},
		Health: &pb.MptcpHealth{Connections: 3, Subflows: 5, Counters: map[string]uint64{"MPTcpExtMPJoinSynRx": 4},
			ReadTime: timestamppb.New(seedTime),
			Paths: []*pb.PathStatus{{Interface: "eth1", Address: "198.18.1.2", State: pb.PathState_PATH_STATE_OK,
				Gateway: "198.18.1.1", Table: 7100, LastCheckTime: timestamppb.New(seedTime), ProbeLatency: durationpb.New(1e6)}}},
		LastPlan:          []*pb.PlanOperation{{Kind: "add-endpoint", Description: "+ endpoint 198.18.1.2 id 1 subflow dev eth1"}},
		ExcludedAddresses: []string{"198.18.9.9"},
		Problems:          []*pb.HostProblem{{Code: pb.HostProblem_CODE_GATEWAY_UNKNOWN, Interface: "eth2", Address: "198.18.2.2", Message: "no gateway"}},
	}
	web := map[string]string{"role": "web"}
	many := make([]*pb.Interface, 1025)
	for i := range many {
		many[i] = &pb.Interface{}
	}
	var problems []*pb.HostProblem
	for range 65 {
		problems = append(problems, &pb.HostProblem{Message: "p"})
	}
	var plan []*pb.PlanOperation
	for range 1025 {
		plan = append(plan, &pb.PlanOperation{})
	}
	seeds := map[string][]byte{
		"hello-report-event-confirm": enc(hello("fuzz-1", web, facts), report(good),
			event(&pb.AgentEvent{Kind: pb.AgentEvent_KIND_APPLIED, Group: "groups/web", Revision: 1, Message: "applied revision 1: 3 operations",
				Operations: []*pb.PlanOperation{{Kind: "add-endpoint", Description: "+ endpoint"}}}),
			confirm(42)),
		"hello-unmanaged-reports": enc(hello("fuzz-2", map[string]string{"role": "db", "example.com/site": "fra"}, nil),
			report(&pb.AgentReport{SyncState: pb.SyncState_SYNC_STATE_UNMANAGED}),
			report(&pb.AgentReport{SyncState: pb.SyncState_SYNC_STATE_UNMANAGED, Facts: facts, Health: &pb.MptcpHealth{Connections: 1}})),
		"report-before-hello":   enc(report(good), hello("fuzz-3", web, facts)),
		"event-before-hello":    enc(event(&pb.AgentEvent{Kind: pb.AgentEvent_KIND_APPLY_FAILED, Message: "x"})),
		"hello-twice":           enc(hello("fuzz-4", web, nil), report(good), hello("fuzz-4", web, nil), report(good)),
		"hello-steady-host":     enc(hello("steady-0", web, nil), report(&pb.AgentReport{SyncState: pb.SyncState_SYNC_STATE_FAILED, LastError: "stolen"})),
		"hello-bad-host-id":     enc(hello("Bad Host!", web, nil)),
		"hello-long-host-id":    enc(hello(strings.Repeat("a", 254), nil, nil)),
		"hello-empty":           enc(m(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Hello{Hello: &pb.AgentHello{}}})),
		"hello-bad-labels":      enc(hello("fuzz-5", map[string]string{"role": "bad value!", "": "x"}, nil)),
		"hello-1025-interfaces": enc(hello("fuzz-6", web, &pb.HostFacts{Interfaces: many})),
		"report-oversized-fields": enc(hello("fuzz-7", web, facts),
			report(&pb.AgentReport{SyncState: pb.SyncState_SYNC_STATE_FAILED, LastError: strings.Repeat("e", 4097)}),
			report(&pb.AgentReport{SyncState: pb.SyncState_SYNC_STATE_DEGRADED, Problems: problems}),
			report(&pb.AgentReport{SyncState: pb.SyncState_SYNC_STATE_APPLYING, LastPlan: plan}),
			report(&pb.AgentReport{Problems: []*pb.HostProblem{{Interface: strings.Repeat("i", 65)}}}),
			report(&pb.AgentReport{Health: &pb.MptcpHealth{Paths: []*pb.PathStatus{{Gateway: strings.Repeat("g", 65)}}}}),
			report(good)),
		"unknown-kinds": enc(hello("fuzz-8", web, nil),
			nil,                                  // an empty ConnectRequest: no kind
			[]byte{0x2a, 0x03, 0x08, 0x01, 0x10}, // field 5 (unknown), length 3
			event(&pb.AgentEvent{Kind: 99, Message: "unknown event kind"}),
			report(&pb.AgentReport{SyncState: 99}),
			m(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Event{}}),
			m(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Report{}}),
			m(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Confirm{}}),
			report(good)),
		"invalid-bytes-after-hello": enc(hello("fuzz-9", web, nil), []byte{0xff, 0xff, 0xff}, report(good)),
		"invalid-bytes-first":       enc([]byte{0x0a, 0x80}),
		"no-messages":               {},
	}
	var flood [][]byte
	flood = append(flood, hello("fuzz-10", web, nil))
	for i := range 30 {
		flood = append(flood, confirm(uint64(i)), event(&pb.AgentEvent{Kind: pb.AgentEvent_KIND_DRIFT_REPAIRED, Message: fmt.Sprint(i)}))
	}
	seeds["confirm-event-flood"] = enc(flood...)
	for name, b := range seeds {
		file := filepath.Join(dir, name)
		want := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\n", strconv.Quote(string(b)))
		if *updateSeeds {
			if err := os.WriteFile(file, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(file)
		if err != nil {
			t.Errorf("seed %s: %v (run with -update-seeds)", name, err)
			continue
		}
		if string(got) != want {
			t.Errorf("seed %s differs from what TestAgentStreamSeeds builds (run with -update-seeds)", name)
		}
	}
}
