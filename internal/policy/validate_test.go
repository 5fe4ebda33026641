package policy

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/route"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

func validGroup() *pb.Group {
	return &pb.Group{
		Description: "two uplinks",
		Selector:    &pb.Selector{MatchLabels: map[string]string{"role": "web", "mpfleet.io/site": "fra-1"}},
		Policy: &pb.MultipathPolicy{
			Enabled: proto.Bool(true),
			Limits:  &pb.Limits{Subflows: proto.Uint32(2), AddAddrAccepted: proto.Uint32(8)},
			Endpoints: []*pb.EndpointRule{
				{Interface: "eth*", Flags: []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW}},
				{Cidr: "2001:db8::/32", Family: pb.AddressFamily_ADDRESS_FAMILY_IPV6, Flags: []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SIGNAL}, Port: 4242},
			},
			Routing: &pb.Routing{Enabled: true, TableMin: 300, TableMax: 307, PriorityMin: 1000, PriorityMax: 1010,
				Gateways: []*pb.GatewayOverride{{Interface: "eth1", Gateway: "198.18.1.1"}}},
			Sysctls: &pb.Sysctls{Scheduler: proto.String("default"), AddAddrTimeout: proto.Uint32(120)},
			Probes: []*pb.Probe{
				{Address: "198.18.11.2:7401", Interval: durationpb.New(time.Second), Timeout: durationpb.New(500 * time.Millisecond)},
				{Address: "[2001:db8:11::2]:7401"},
			},
		},
	}
}

func TestValidateGroup(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(g *pb.Group)
		want   []string // violated fields
	}{
		{"valid", func(*pb.Group) {}, nil},
		{"nil policy", func(g *pb.Group) { g.Policy = nil }, nil},
		{"subflows above kernel max", func(g *pb.Group) { g.Policy.Limits.Subflows = proto.Uint32(9) },
			[]string{"group.policy.limits.subflows"}},
		{"add_addr_accepted above kernel max", func(g *pb.Group) { g.Policy.Limits.AddAddrAccepted = proto.Uint32(100) },
			[]string{"group.policy.limits.add_addr_accepted"}},
		{"fullmesh with signal", func(g *pb.Group) {
			g.Policy.Endpoints[0].Flags = []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SIGNAL, pb.EndpointFlag_ENDPOINT_FLAG_FULLMESH}
		}, []string{"group.policy.endpoints[0].flags"}},
		{"unspecified and duplicate flags", func(g *pb.Group) {
			g.Policy.Endpoints[0].Flags = []pb.EndpointFlag{0, pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW, pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW}
		}, []string{"group.policy.endpoints[0].flags[0]", "group.policy.endpoints[0].flags[2]"}},
		{"bad cidr", func(g *pb.Group) { g.Policy.Endpoints[1].Cidr = "2001:db8::/129" },
			[]string{"group.policy.endpoints[1].cidr"}},
		{"cidr host bits", func(g *pb.Group) { g.Policy.Endpoints[1].Cidr = "2001:db8::1/32" },
			[]string{"group.policy.endpoints[1].cidr"}},
		{"family mismatch", func(g *pb.Group) { g.Policy.Endpoints[1].Cidr = "198.18.0.0/15" },
			[]string{"group.policy.endpoints[1].family"}},
		{"bad glob", func(g *pb.Group) { g.Policy.Endpoints[0].Interface = "eth[" },
			[]string{"group.policy.endpoints[0].interface"}},
		{"rule selects nothing", func(g *pb.Group) { g.Policy.Endpoints[0].Interface = "" },
			[]string{"group.policy.endpoints[0]"}},
		{"port without signal", func(g *pb.Group) { g.Policy.Endpoints[0].Port = 80 },
			[]string{"group.policy.endpoints[0].port"}},
		{"port too big", func(g *pb.Group) { g.Policy.Endpoints[1].Port = 70000 },
			[]string{"group.policy.endpoints[1].port"}},
		{"table range reversed", func(g *pb.Group) { g.Policy.Routing.TableMin = 400 },
			[]string{"group.policy.routing.table_min"}},
		{"table range includes main", func(g *pb.Group) { g.Policy.Routing.TableMin, g.Policy.Routing.TableMax = 250, 260 },
			[]string{"group.policy.routing.table_min"}},
		{"table range too narrow", func(g *pb.Group) { g.Policy.Routing.TableMax = 302 },
			[]string{"group.policy.routing.table_max"}},
		{"priority half given", func(g *pb.Group) { g.Policy.Routing.PriorityMax = 0 },
			[]string{"group.policy.routing.priority_min"}},
		{"priority covers main rule", func(g *pb.Group) { g.Policy.Routing.PriorityMax = 32766 },
			[]string{"group.policy.routing.priority_max"}},
		{"bad gateway", func(g *pb.Group) { g.Policy.Routing.Gateways[0].Gateway = "gw1" },
			[]string{"group.policy.routing.gateways[0].gateway"}},
		{"broadcast gateway", func(g *pb.Group) { g.Policy.Routing.Gateways[0].Gateway = "255.255.255.255" },
			[]string{"group.policy.routing.gateways[0].gateway"}},
		{"IPv4-mapped gateway", func(g *pb.Group) { g.Policy.Routing.Gateways[0].Gateway = "::ffff:0.0.0.0" },
			[]string{"group.policy.routing.gateways[0].gateway"}},
		{"gateway and host_index", func(g *pb.Group) { g.Policy.Routing.Gateways[0].HostIndex = 1 },
			[]string{"group.policy.routing.gateways[0].host_index"}},
		{"host_index alone", func(g *pb.Group) {
			g.Policy.Routing.Gateways[0].Gateway, g.Policy.Routing.Gateways[0].HostIndex = "", -1
		}, nil},
		{"neither gateway nor host_index", func(g *pb.Group) { g.Policy.Routing.Gateways[0].Gateway = "" },
			[]string{"group.policy.routing.gateways[0].gateway"}},
		{"port on a signal+subflow endpoint", func(g *pb.Group) {
			g.Policy.Endpoints[1].Flags = append(g.Policy.Endpoints[1].Flags, pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW)
		}, []string{"group.policy.endpoints[1].port"}},
		{"probe host name", func(g *pb.Group) { g.Policy.Probes[0].Address = "probe.example:7" },
			[]string{"group.policy.probes[0].address"}},
		{"probe without port", func(g *pb.Group) { g.Policy.Probes[0].Address = "198.18.11.2" },
			[]string{"group.policy.probes[0].address"}},
		{"probe port 0", func(g *pb.Group) { g.Policy.Probes[1].Address = "[2001:db8::1]:0" },
			[]string{"group.policy.probes[1].address"}},
		{"probe unspecified address", func(g *pb.Group) { g.Policy.Probes[0].Address = "0.0.0.0:7" },
			[]string{"group.policy.probes[0].address"}},
		{"probe given twice", func(g *pb.Group) { g.Policy.Probes[1].Address = "198.18.11.2:7401" },
			[]string{"group.policy.probes[1].address"}},
		{"probe interval too short", func(g *pb.Group) { g.Policy.Probes[0].Interval = durationpb.New(time.Millisecond) },
			[]string{"group.policy.probes[0].interval", "group.policy.probes[0].timeout"}},
		{"probe timeout above interval", func(g *pb.Group) { g.Policy.Probes[0].Timeout = durationpb.New(2 * time.Second) },
			[]string{"group.policy.probes[0].timeout"}},
		{"probe default timeout shortened to a short interval", func(g *pb.Group) {
			g.Policy.Probes[1].Interval = durationpb.New(time.Second)
		}, nil},
		{"probe negative duration", func(g *pb.Group) { g.Policy.Probes[0].Timeout = durationpb.New(-time.Second) },
			[]string{"group.policy.probes[0].timeout"}},
		{"too many probes", func(g *pb.Group) {
			for i := range 4 {
				g.Policy.Probes = append(g.Policy.Probes, &pb.Probe{Address: fmt.Sprintf("198.18.11.%d:7", i+3)})
			}
		}, []string{"group.policy.probes"}},
		{"bad scheduler", func(g *pb.Group) { g.Policy.Sysctls.Scheduler = proto.String("../../etc") },
			[]string{"group.policy.sysctls.scheduler"}},
		{"bad label", func(g *pb.Group) { g.Selector.MatchLabels["bad key!"] = "x" },
			[]string{`group.selector.match_labels["bad key!"]`}},
		{"long description", func(g *pb.Group) { g.Description = strings.Repeat("x", 2000) },
			[]string{"group.description"}},
		{"many errors at once", func(g *pb.Group) {
			g.Policy.Limits.Subflows = proto.Uint32(9)
			g.Policy.Endpoints[0].Interface = "eth["
		}, []string{"group.policy.limits.subflows", "group.policy.endpoints[0].interface"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := validGroup()
			tt.mutate(g)
			var vs Violations
			ValidateGroup(&vs, "group", g)
			var got []string
			for _, v := range vs {
				got = append(got, v.Field)
				if v.Description == "" {
					t.Errorf("violation of %s has no description", v.Field)
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("violated fields (-want +got):\n%s\nall: %v", diff, vs)
			}
		})
	}
}

func TestGroupID(t *testing.T) {
	for id, ok := range map[string]bool{
		"web": true, "a": true, "web-1": true, "w" + strings.Repeat("x", 62): true,
		"": false, "Web": false, "1web": false, "web-": false, "we_b": false, "w" + strings.Repeat("x", 63): false,
	} {
		var vs Violations
		ValidateGroupID(&vs, "group_id", id)
		if (len(vs) == 0) != ok {
			t.Errorf("ValidateGroupID(%q) violations = %v, want ok=%v", id, vs, ok)
		}
	}
	var vs Violations
	if got := GroupIDFromName(&vs, "name", "groups/web"); got != "web" || len(vs) != 0 {
		t.Errorf("GroupIDFromName(groups/web) = %q, %v", got, vs)
	}
	for _, bad := range []string{"", "web", "groups/", "groups/a/b", "hosts/web"} {
		var vs Violations
		GroupIDFromName(&vs, "name", bad)
		if len(vs) == 0 {
			t.Errorf("GroupIDFromName(%q) accepted", bad)
		}
	}
}

func TestHostID(t *testing.T) {
	for id, ok := range map[string]bool{
		"web": true, "1": true, "web-1.fra": true, "10.0.0.1": true, "w" + strings.Repeat("x", 252): true,
		"": false, "Web": false, "-web": false, "web.": false, "we_b": false, "w b": false, "w" + strings.Repeat("x", 253): false,
	} {
		var vs Violations
		ValidateHostID(&vs, "host_id", id)
		if (len(vs) == 0) != ok || ValidHostID(id) != ok {
			t.Errorf("ValidateHostID(%q) violations = %v, ValidHostID = %v; want ok=%v", id, vs, ValidHostID(id), ok)
		}
		if len(vs) > 0 && (vs[0].Field != "host_id" || vs[0].Description == "") {
			t.Errorf("ValidateHostID(%q) violation %+v", id, vs[0])
		}
	}
}

// TestValidateEndpointFlags: every flag and port combination is refused
// exactly when the kernel's rule (mptcp.Endpoint.Validate) refuses it, on
// the field at fault, and the description names the flags.
func TestValidateEndpointFlags(t *testing.T) {
	all := []pb.EndpointFlag{
		pb.EndpointFlag_ENDPOINT_FLAG_SIGNAL, pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW, pb.EndpointFlag_ENDPOINT_FLAG_BACKUP,
		pb.EndpointFlag_ENDPOINT_FLAG_FULLMESH, pb.EndpointFlag_ENDPOINT_FLAG_LAMINAR,
	}
	for set := range 1 << len(all) {
		var flags []pb.EndpointFlag
		for i, f := range all {
			if set&(1<<i) != 0 {
				flags = append(flags, f)
			}
		}
		f := FlagsFromProto(flags)
		signal, subflow, fullmesh := f&mptcp.FlagSignal != 0, f&mptcp.FlagSubflow != 0, f&mptcp.FlagFullmesh != 0
		for _, port := range []uint32{0, 4242} {
			var want []string
			switch {
			case signal && fullmesh:
				want = []string{"policy.endpoints[0].flags"}
			case port != 0 && (!signal || subflow):
				want = []string{"policy.endpoints[0].port"}
			}
			var vs Violations
			ValidatePolicy(&vs, "policy", &pb.MultipathPolicy{Endpoints: []*pb.EndpointRule{{Interface: "eth*", Flags: flags, Port: port}}})
			var got []string
			for _, v := range vs {
				got = append(got, v.Field)
				if !strings.Contains(v.Description, flagNames(f)) {
					t.Errorf("flags %v port %d: %q does not name the flags %s", flags, port, v.Description, flagNames(f))
				}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("flags %v port %d: violated fields (-want +got):\n%s", flags, port, diff)
			}
		}
	}
}

// TestValidateRoutingReserved: routing ranges that include a table or rule
// priority the kernel reserves are refused, naming the field; everything
// accepted is a range every agent's route.Range.Validate accepts.
func TestValidateRoutingReserved(t *testing.T) {
	tests := []struct {
		name                   string
		tmin, tmax, pmin, pmax uint32
		want                   string // the violated field; "" for none
	}{
		{"defaults", 0, 0, 0, 0, ""},
		{"low tables", 1, 8, 0, 0, ""},
		{"tables just below default", 245, 252, 0, 0, ""},
		{"tables just above local", 256, 263, 0, 0, ""},
		{"table 0", 0, 300, 0, 0, "table_min"},
		{"table 253 (default)", 246, 253, 0, 0, "table_min"},
		{"table 254 (main)", 254, 261, 0, 0, "table_min"},
		{"table 255 (local)", 255, 262, 0, 0, "table_min"},
		{"all reserved tables inside", 1, 1000, 0, 0, "table_min"},
		{"narrow and reserved: reserved first", 253, 255, 0, 0, "table_min"},
		{"highest table", 4294967287, 4294967295, 0, 0, "table_max"},
		{"low priorities", 0, 0, 1, 8, ""},
		{"priorities just below main", 0, 0, 32758, 32765, ""},
		{"priority 0 (local)", 0, 0, 0, 100, "priority_min"},
		{"priority 32766 (main)", 0, 0, 32759, 32766, "priority_max"},
		{"priority 32767 (default)", 0, 0, 32760, 32767, "priority_max"},
		{"priorities after default", 0, 0, 40000, 40100, "priority_max"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &pb.Routing{Enabled: true, TableMin: tt.tmin, TableMax: tt.tmax, PriorityMin: tt.pmin, PriorityMax: tt.pmax}
			var vs Violations
			ValidatePolicy(&vs, "policy", &pb.MultipathPolicy{Routing: r})
			var got string
			for _, v := range vs {
				got = strings.TrimPrefix(v.Field, "policy.routing.")
			}
			if len(vs) > 1 || got != tt.want {
				t.Fatalf("violations %v, want one on %q", vs, tt.want)
			}
			tmin, tmax, pmin, pmax := RoutingRange(r)
			rerr := route.Range{TableMin: tmin, TableMax: tmax, PriorityMin: pmin, PriorityMax: pmax}.Validate()
			if tt.want == "" && rerr != nil {
				t.Errorf("accepted, but an agent refuses the range: %v", rerr)
			}
		})
	}
}

// FuzzValidateGroup feeds arbitrary wire bytes through validation: it must
// never panic, and everything it accepts must stay inside the kernel's limits.
func FuzzValidateGroup(f *testing.F) {
	seed, _ := proto.Marshal(validGroup())
	f.Add(seed)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		g := &pb.Group{}
		if err := proto.Unmarshal(b, g); err != nil {
			return
		}
		var vs Violations
		ValidateGroup(&vs, "group", g)
		if len(vs) > 0 {
			if vs.Err() == nil || !strings.Contains(vs.Err().Error(), vs[0].Field) {
				t.Fatalf("error does not name the field: %v", vs.Err())
			}
			return
		}
		p := g.GetPolicy()
		tmin, tmax, pmin, pmax := RoutingRange(p.GetRouting())
		if err := (route.Range{TableMin: tmin, TableMax: tmax, PriorityMin: pmin, PriorityMax: pmax}).Validate(); err != nil {
			t.Fatalf("accepted a routing range an agent refuses: %v", err)
		}
		if p.GetLimits().GetSubflows() > MaxLimit || p.GetLimits().GetAddAddrAccepted() > MaxLimit {
			t.Fatalf("accepted limits above kernel maximum: %v", p.GetLimits())
		}
		for _, r := range p.GetEndpoints() {
			var sig, fm bool
			for _, fl := range r.GetFlags() {
				sig = sig || fl == pb.EndpointFlag_ENDPOINT_FLAG_SIGNAL
				fm = fm || fl == pb.EndpointFlag_ENDPOINT_FLAG_FULLMESH
			}
			if sig && fm {
				t.Fatal("accepted FULLMESH with SIGNAL")
			}
		}
	})
}

func TestValidateReason(t *testing.T) {
	for _, tc := range []struct {
		reason string
		ok     bool
	}{
		{"", true}, {"two uplinks for the web tier", true}, {"ünïcode is fine", true},
		{strings.Repeat("x", MaxReason), true}, {strings.Repeat("x", MaxReason+1), false},
		{"line\nbreak", false}, {"\x1b[31mred\x1b[0m", false}, {"tab\there", false}, {"\xff\xfe", false},
	} {
		var vs Violations
		ValidateReason(&vs, "reason", tc.reason)
		if (len(vs) == 0) != tc.ok {
			t.Errorf("ValidateReason(%q): %v, want ok=%v", tc.reason, vs, tc.ok)
		}
	}
}
