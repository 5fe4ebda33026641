package agent

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/route"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

func addRule(prio int, src string, table int) reconcile.Op {
	return reconcile.Op{Kind: reconcile.AddRule, Rule: &route.Rule{Priority: prio, Src: netip.MustParsePrefix(src), Table: table}}
}

func addRoute(r route.Route) reconcile.Op {
	return reconcile.Op{Kind: reconcile.AddRoute, Route: &r}
}

func delRoute(r route.Route) reconcile.Op {
	return reconcile.Op{Kind: reconcile.DelRoute, Route: &r}
}

func rt(table int, dst, gw string, link int) route.Route {
	r := route.Route{Table: table, Dst: netip.MustParsePrefix(dst), LinkIndex: link}
	if gw != "" {
		r.Gateway = netip.MustParseAddr(gw)
	}
	return r
}

// sourceOps are the ops that give src (on link, via gw) its rule and routes
// in table t.
func sourceOps(src, gw string, link, t int) reconcile.Ops {
	s := route.Source{Addr: netip.MustParsePrefix(src), LinkIndex: link, Gateway: netip.MustParseAddr(gw), Table: t, Priority: t}
	ops := reconcile.Ops{{Kind: reconcile.AddRule, Rule: new(s.Rule())}}
	for _, r := range s.Routes() {
		ops = append(ops, addRoute(r))
	}
	return ops
}

func sourceState(src, gw string, link, t int) reconcile.State {
	s := route.Source{Addr: netip.MustParsePrefix(src), LinkIndex: link, Gateway: netip.MustParseAddr(gw), Table: t, Priority: t}
	return reconcile.State{Rules: []route.Rule{s.Rule()}, Routes: s.Routes(), Links: fakeLinks}
}

func TestMovesPath(t *testing.T) {
	local, ctrl := netip.MustParseAddr("198.18.1.2"), netip.MustParseAddr("198.19.9.10")
	local6, ctrl6 := netip.MustParseAddr("2001:db8:1::2"), netip.MustParseAddr("2001:db8:ff00::10")
	viaMain := RouteHop{Table: route.TableMain, Gateway: netip.MustParseAddr("198.18.1.1"), LinkIndex: 3}
	via7101 := RouteHop{Table: 7101, Gateway: netip.MustParseAddr("198.18.1.1"), LinkIndex: 3}
	conn := mgmtConn{local: local, controller: ctrl, today: viaMain, known: true}
	empty := reconcile.State{Links: fakeLinks}
	mine := sourceState("198.18.1.2/24", "198.18.1.1", 3, 7101)
	withForeign := func(s reconcile.State, rules []route.ForeignRule, routes []route.ForeignRoute) reconcile.State {
		s.Foreign, s.ForeignRoutes = rules, routes
		return s
	}
	tests := []struct {
		name   string
		actual reconcile.State
		ops    reconcile.Ops
		conn   mgmtConn
		want   []string // substrings of the refusal; nil: allowed
	}{{
		name: "rule for the connection's source to a table via another gateway",
		ops:  sourceOps("198.18.1.2/24", "198.18.1.254", 3, 7101), actual: empty, conn: conn,
		want: []string{"198.19.9.10", "from 198.18.1.2", "via 198.18.1.1 dev eth1 (table main)", "rule 7101: from 198.18.1.2 lookup 7101", "route default via 198.18.1.254 dev eth1 table 7101"},
	}, {
		name: "rule for the connection's source to a table via the same gateway",
		ops:  sourceOps("198.18.1.2/24", "198.18.1.1", 3, 7101), actual: empty, conn: conn,
	}, {
		name: "rule for the connection's source to a table via the same gateway on another link",
		ops:  sourceOps("198.18.1.2/24", "198.18.1.1", 2, 7101), actual: empty, conn: conn,
		want: []string{"via 198.18.1.1 dev eth0"},
	}, {
		name: "rule for another source",
		ops:  sourceOps("198.18.0.2/24", "198.18.0.254", 2, 7100), actual: empty, conn: conn,
	}, {
		name: "a wider rule ahead of the connection's, to another gateway",
		ops: append(sourceOps("198.18.1.2/24", "198.18.1.1", 3, 7102),
			addRule(7101, "198.18.1.0/24", 7101), addRoute(rt(7101, "0.0.0.0/0", "198.18.1.254", 3))),
		actual: empty, conn: conn,
		want: []string{"rule 7101: from 198.18.1.0/24 lookup 7101", "via 198.18.1.254"},
	}, {
		name:   "route added to the connection's table through another gateway",
		actual: mine, ops: reconcile.Ops{addRoute(rt(7101, "198.19.9.0/24", "198.18.1.254", 3))},
		conn: mgmtConn{local: local, controller: ctrl, today: via7101, known: true},
		want: []string{"via 198.18.1.1 dev eth1 (table 7101)", "route 198.19.9.0/24 via 198.18.1.254 dev eth1 table 7101"},
	}, {
		name:   "route added to the connection's table through the same gateway",
		actual: mine, ops: reconcile.Ops{addRoute(rt(7101, "198.19.9.0/24", "198.18.1.1", 3))},
		conn: mgmtConn{local: local, controller: ctrl, today: via7101, known: true},
	}, {
		name:   "default route of the connection's table replaced through another gateway",
		actual: mine, ops: reconcile.Ops{delRoute(rt(7101, "0.0.0.0/0", "198.18.1.1", 3)), addRoute(rt(7101, "0.0.0.0/0", "198.18.1.9", 3))},
		conn: mgmtConn{local: local, controller: ctrl, today: via7101, known: true},
		want: []string{"via 198.18.1.9"},
	}, {
		name:   "route added to another table",
		actual: mine, ops: reconcile.Ops{addRoute(rt(7109, "198.19.9.0/24", "198.18.1.254", 3))},
		conn: mgmtConn{local: local, controller: ctrl, today: via7101, known: true},
	}, {
		name: "IPv6: rule to a table via another gateway",
		ops:  sourceOps("2001:db8:1::2/64", "2001:db8:1::ff", 3, 7101), actual: empty,
		conn: mgmtConn{local: local6, controller: ctrl6, known: true, today: RouteHop{Table: route.TableMain, Gateway: netip.MustParseAddr("2001:db8:1::1"), LinkIndex: 3}},
		want: []string{"2001:db8:ff00::10", "via 2001:db8:1::1 dev eth1 (table main)", "via 2001:db8:1::ff"},
	}, {
		name: "IPv6: rule to a table via the same gateway",
		ops:  sourceOps("2001:db8:1::2/64", "2001:db8:1::1", 3, 7101), actual: empty,
		conn: mgmtConn{local: local6, controller: ctrl6, known: true, today: RouteHop{Table: route.TableMain, Gateway: netip.MustParseAddr("2001:db8:1::1"), LinkIndex: 3}},
	}, {
		name: "IPv6 connection, IPv4 rules",
		ops:  sourceOps("198.18.1.2/24", "198.18.1.254", 3, 7101), actual: empty,
		conn: mgmtConn{local: local6, controller: ctrl6, known: true, today: RouteHop{Table: route.TableMain, Gateway: netip.MustParseAddr("2001:db8:1::1"), LinkIndex: 3}},
	}, {
		name: "the controller is a local address",
		ops:  sourceOps("198.18.1.2/24", "198.18.1.254", 3, 7101), actual: empty,
		conn: mgmtConn{local: local, controller: ctrl, known: true, today: RouteHop{Table: route.TableLocal, LinkIndex: 1, Local: true}},
	}, {
		name: "the controller on loopback",
		ops:  sourceOps("198.18.1.2/24", "198.18.1.254", 3, 7101), actual: empty,
		conn: mgmtConn{local: local, controller: netip.MustParseAddr("127.0.0.1")},
	}, {
		name:   "a rule ahead of mpfleet's decides today",
		actual: mine, ops: reconcile.Ops{addRoute(rt(7101, "198.19.9.0/24", "198.18.1.254", 3))},
		conn: mgmtConn{local: local, controller: ctrl, known: true, today: RouteHop{Table: 100, Gateway: netip.MustParseAddr("198.18.1.1"), LinkIndex: 3}},
	}, {
		name:   "into a foreign blackhole",
		actual: withForeign(empty, nil, []route.ForeignRoute{{Route: rt(7150, "0.0.0.0/0", "", 0), Type: route.TypeBlackhole, Protocol: route.ProtoBoot}}),
		ops:    reconcile.Ops{addRule(7101, "198.18.1.2/32", 7150)}, conn: conn,
		want: []string{"send it blackhole", "rule 7101: from 198.18.1.2 lookup 7150", "route blackhole default table 7150"},
	}, {
		name:   "a throw route lets the lookup go on",
		actual: withForeign(empty, nil, []route.ForeignRoute{{Route: rt(7150, "0.0.0.0/0", "", 0), Type: route.TypeThrow, Protocol: route.ProtoBoot}}),
		ops:    reconcile.Ops{addRule(7101, "198.18.1.2/32", 7150)}, conn: conn,
	}, {
		name: "a table without a route to the controller lets the lookup go on",
		ops:  reconcile.Ops{addRule(7101, "198.18.1.2/32", 7101), addRoute(rt(7101, "198.18.1.0/24", "", 3))}, actual: empty, conn: conn,
	}, {
		name: "a foreign rule ahead in the range keeps deciding",
		actual: withForeign(empty,
			[]route.ForeignRule{{Rule: route.Rule{Priority: 7100, Src: netip.MustParsePrefix("198.18.1.0/24"), Table: 7150}, Protocol: route.ProtoUnspec}},
			[]route.ForeignRoute{{Route: rt(7150, "0.0.0.0/0", "198.18.1.1", 3), Type: route.TypeUnicast, Protocol: route.ProtoBoot}}),
		ops:  sourceOps("198.18.1.2/24", "198.18.1.254", 3, 7101),
		conn: mgmtConn{local: local, controller: ctrl, known: true, today: RouteHop{Table: 7150, Gateway: netip.MustParseAddr("198.18.1.1"), LinkIndex: 3}},
	}, {
		name: "unknown today, nothing of mpfleet's decides",
		ops:  sourceOps("198.18.1.2/24", "198.18.1.254", 3, 7101), actual: empty,
		conn: mgmtConn{local: local, controller: ctrl},
	}, {
		name:   "unknown today, judged by mpfleet's own table",
		actual: mine, ops: reconcile.Ops{addRoute(rt(7101, "198.19.9.0/24", "198.18.1.254", 3))},
		conn: mgmtConn{local: local, controller: ctrl},
		want: []string{"via 198.18.1.1 dev eth1 (table 7101)", "via 198.18.1.254"},
	}, {
		name: "no controller connection",
		ops:  sourceOps("198.18.1.2/24", "198.18.1.254", 3, 7101), actual: empty,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := movesPath(tc.actual, tc.ops, tc.conn)
			if tc.want == nil {
				if got != "" {
					t.Fatalf("refused: %s", got)
				}
				return
			}
			if got == "" {
				t.Fatal("allowed; want it refused")
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("refusal %q lacks %q", got, w)
				}
			}
		})
	}
}

// TestFibLookup: the longest prefix decides, then the lowest metric; rules
// go by priority.
func TestFibLookup(t *testing.T) {
	f := fibOf(reconcile.State{
		Rules: []route.Rule{
			{Priority: 7105, Src: netip.MustParsePrefix("198.18.1.2/32"), Table: 7105},
			{Priority: 7101, Src: netip.MustParsePrefix("198.18.0.0/16"), Table: 7101},
		},
		Routes: []route.Route{rt(7105, "0.0.0.0/0", "198.18.1.1", 3), rt(7101, "198.19.0.0/16", "198.18.1.7", 3)},
		ForeignRoutes: []route.ForeignRoute{
			{Route: rt(7101, "198.19.9.0/24", "198.18.1.8", 3), Type: route.TypeUnicast, Metric: 20},
			{Route: rt(7101, "198.19.9.0/24", "198.18.1.9", 3), Type: route.TypeUnicast, Metric: 10},
		},
	})
	for _, tc := range []struct {
		dst    string
		gw     string
		table  int
		wantOK bool
	}{
		{"198.19.9.10", "198.18.1.9", 7101, true}, // /24 beats /16, metric 10 beats 20
		{"198.19.8.10", "198.18.1.7", 7101, true},
		{"203.0.113.1", "198.18.1.1", 7105, true}, // table 7101 has none: the next rule
		{"2001:db8::1", "", 0, false},
	} {
		m, ok := f.lookup(netip.MustParseAddr("198.18.1.2"), netip.MustParseAddr(tc.dst))
		if ok != tc.wantOK || (ok && (m.route.Gateway.String() != tc.gw || m.rule.Table != tc.table)) {
			t.Errorf("lookup to %s: %v %v, want via %s table %d (%v)", tc.dst, m.route.Route, ok, tc.gw, tc.table, tc.wantOK)
		}
	}
}

// routeSystem is a System whose kernel route lookup the test sets.
type routeSystem struct {
	*fakeSystem
	hop atomic.Pointer[RouteHop]
}

func (s *routeSystem) RouteGet(context.Context, netip.Addr, netip.Addr) (RouteHop, error) {
	return *s.hop.Load(), nil
}

// addrConn is a connection that says it goes between other addresses.
type addrConn struct {
	net.Conn
	local, remote net.Addr
}

func (c addrConn) LocalAddr() net.Addr  { return c.local }
func (c addrConn) RemoteAddr() net.Addr { return c.remote }

// TestAgentRefusesMovingControllerPath: a revision whose routing would send
// the controller connection (from 198.18.1.2 to 198.19.9.10, via
// 198.18.1.1 today) through another gateway is refused whole: FAILED with a
// CODE_MANAGEMENT_PATH_PROTECTED problem and an APPLY_FAILED event, the
// kernel unchanged; one that keeps the gateway is applied.
func TestAgentRefusesMovingControllerPath(t *testing.T) {
	sys := &routeSystem{}
	sys.hop.Store(&RouteHop{Table: route.TableMain, Gateway: netip.MustParseAddr("198.18.1.1"), LinkIndex: 3})
	h := newHarness(t, func(h *harness) {
		sys.fakeSystem = h.sys
		h.opts.System = sys
		h.dialHook = func(ctx context.Context, d *net.Dialer, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				return nil, err
			}
			return addrConn{Conn: c, local: &net.TCPAddr{IP: net.ParseIP("198.18.1.2"), Port: 40000},
				remote: &net.TCPAddr{IP: net.ParseIP("198.19.9.10"), Port: 7400}}, nil
		}
	})
	h.start()
	h.ctrl.waitReport(t, 0, "a first report", func(*pb.AgentReport) bool { return true })
	before := h.k.Snapshot().String()

	bad := testPolicy()
	bad.Routing.Gateways = []*pb.GatewayOverride{{Interface: "eth1", Gateway: "198.18.1.254"}}
	_, nr, ne := h.ctrl.counts()
	h.ctrl.setDesired(managed(1, bad))
	r := h.ctrl.waitReport(t, nr, "FAILED", inState(pb.SyncState_SYNC_STATE_FAILED, 0))
	var found bool
	for _, p := range r.GetProblems() {
		found = found || (p.GetCode() == pb.HostProblem_CODE_MANAGEMENT_PATH_PROTECTED && strings.Contains(p.GetMessage(), "198.19.9.10") &&
			strings.Contains(p.GetMessage(), "via 198.18.1.254"))
	}
	if !found {
		t.Errorf("problems %v; want CODE_MANAGEMENT_PATH_PROTECTED naming the controller and the gateway", r.GetProblems())
	}
	if ev := h.ctrl.waitEvent(t, ne, pb.AgentEvent_KIND_APPLY_FAILED); !strings.Contains(ev.GetMessage(), "refused the plan") {
		t.Errorf("APPLY_FAILED %q", ev.GetMessage())
	}
	if got := h.k.Snapshot().String(); got != before {
		t.Fatalf("the kernel changed after a refused plan:\n%s\nwas:\n%s", got, before)
	}
	if h.ctrl.confirmCount() != 0 {
		t.Error("a refused plan asked for a confirm")
	}

	_, nr, _ = h.ctrl.counts()
	h.ctrl.setDesired(managed(2, testPolicy()))
	h.ctrl.waitReport(t, nr, "IN_SYNC at 2", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 2))
	h.waitConverged(testPolicy())
}
