package controller

import (
	"strings"
	"testing"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// TestAgentMessagesBounded: what an agent sends is bounded the same way in a
// hello and in a report, and events too, before anything is stored.
func TestAgentMessagesBounded(t *testing.T) {
	many := &pb.HostFacts{}
	for range 1025 {
		many.Interfaces = append(many.Interfaces, &pb.Interface{Name: "eth0"})
	}
	long := &pb.HostFacts{Interfaces: []*pb.Interface{{Name: "eth0", Addresses: []string{strings.Repeat("1", 512*1024)}}}}
	for _, f := range []*pb.HostFacts{many, long, {Hostname: strings.Repeat("h", 300)}} {
		if err := validateHello(&pb.AgentHello{HostId: "h1", Facts: f}); err == nil {
			t.Errorf("hello with facts of %d interfaces accepted", len(f.GetInterfaces()))
		}
		if err := validateReport(&pb.AgentReport{Facts: f}); err == nil {
			t.Errorf("report with facts of %d interfaces accepted", len(f.GetInterfaces()))
		}
	}
	if err := validateReport(&pb.AgentReport{Facts: &pb.HostFacts{Hostname: "h1"}}); err != nil {
		t.Errorf("a good report: %v", err)
	}
	if err := validateEvent(&pb.AgentEvent{Message: strings.Repeat("x", 700*1024)}); err == nil {
		t.Error("a 700 KiB event message accepted")
	}
	if err := validateEvent(&pb.AgentEvent{Message: "applied", Operations: []*pb.PlanOperation{{Kind: "add-endpoint", Description: "+ endpoint"}}}); err != nil {
		t.Errorf("a good event: %v", err)
	}
}
