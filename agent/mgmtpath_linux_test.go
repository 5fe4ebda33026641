package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/mptcp/mptcpnl"
	"github.com/mpfleet/mpfleet/internal/nstest"
	"github.com/mpfleet/mpfleet/internal/route"
	"github.com/mpfleet/mpfleet/internal/route/routenl"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// TestIntegrationManagementPath runs the agent in a namespace whose only
// way to its controller is link m0 from 198.18.40.2 through the gateway
// 198.18.40.1 (the controller's namespace, where the controller listens on
// 198.19.40.1): the agent dials from inside the namespace. A policy whose
// routing would send 198.18.40.2's traffic through another gateway
// (198.18.40.254, which does not exist) is refused whole, the kernel left
// as it was and the controller told why; the policy with the right gateway
// is applied and confirmed over that very path.
func TestIntegrationManagementPath(t *testing.T) {
	host, far := nstest.New(t), nstest.New(t)
	hh, err := netlink.NewHandleAt(host.Handle, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hh.Close)
	fh, err := netlink.NewHandleAt(far.Handle, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fh.Close)
	mp, err := mptcpnl.Dial(&mptcpnl.DialOptions{NetNS: int(host.Handle)})
	if err != nil {
		if errors.Is(err, mptcp.ErrUnsupported) {
			nstest.Skip(t, "kernel without MPTCP: "+err.Error())
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mp.Close() })
	rt, err := routenl.Open(&routenl.Options{NetNS: int(host.Handle)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Close() })

	// m0 (host, 198.18.40.2/24) to f0 (far, 198.18.40.1/24); the controller
	// on far's loopback, reached from the host through 198.18.40.1.
	if err := hh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "m0"}, PeerName: "f0", PeerNamespace: netlink.NsFd(int(far.Handle))}); err != nil {
		t.Fatal(err)
	}
	var m0 int
	for _, x := range []struct {
		h          *netlink.Handle
		name, addr string
	}{{hh, "m0", "198.18.40.2/24"}, {fh, "f0", "198.18.40.1/24"}, {fh, "lo", "198.19.40.1/32"}} {
		link, err := x.h.LinkByName(x.name)
		if err != nil {
			t.Fatal(err)
		}
		if err := x.h.AddrAdd(link, nlAddr(netip.MustParsePrefix(x.addr))); err != nil {
			t.Fatal(err)
		}
		if err := x.h.LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
		if x.name == "m0" {
			m0 = link.Attrs().Index
		}
	}
	_, ctrlNet, _ := net.ParseCIDR("198.19.40.0/24")
	if err := hh.RouteAdd(&netlink.Route{LinkIndex: m0, Dst: ctrlNet, Gw: net.ParseIP("198.18.40.1")}); err != nil {
		t.Fatal(err)
	}
	for _, h := range []*netlink.Handle{hh, fh} {
		waitUntilTB(t, "the links to come up", func() bool {
			links, _ := h.LinkList()
			for _, ln := range links {
				if ln.Attrs().Name != "lo" && ln.Attrs().OperState != netlink.OperUp {
					return false
				}
			}
			return true
		})
	}

	var lis net.Listener
	if err := far.Do(func() error {
		var err error
		lis, err = net.Listen("tcp", "198.19.40.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ctrl := newControllerOn(t, lis, false)
	sys, err := OpenNetlinkSystem(int(host.Handle))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sys.Close() })
	a, err := New(Options{
		HostID: "lab-1", Controller: ctrl.addr, StateDir: t.TempDir(),
		ResyncInterval: time.Hour, ReportInterval: time.Hour, ConfirmTimeout: 5 * time.Second,
		BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
		Kernel: NetlinkKernels(int(host.Handle)), System: sys, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	a.dialHook = func(ctx context.Context, d *net.Dialer, addr string) (net.Conn, error) {
		var c net.Conn
		err := host.Do(func() error {
			var err error
			c, err = d.DialContext(ctx, "tcp", addr)
			return err
		})
		return c, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = a.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
	ctrl.waitReport(t, 0, "a first report", func(*pb.AgentReport) bool { return true })

	policy := func(gw string) *pb.MultipathPolicy {
		p := &pb.MultipathPolicy{
			Limits:    &pb.Limits{Subflows: proto.Uint32(2), AddAddrAccepted: proto.Uint32(0)},
			Endpoints: []*pb.EndpointRule{{Interface: "m0", Cidr: "198.18.0.0/15", Flags: []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW}}},
			Routing:   &pb.Routing{Enabled: true},
		}
		if gw != "" {
			p.Routing.Gateways = []*pb.GatewayOverride{{Interface: "m0", Gateway: gw}}
		}
		return p
	}
	kernel := func() string {
		eps, err := mp.Endpoints()
		if err != nil {
			t.Fatal(err)
		}
		lim, err := mp.Limits()
		if err != nil {
			t.Fatal(err)
		}
		rules, err := rt.Rules()
		if err != nil {
			t.Fatal(err)
		}
		routes, err := rt.Routes()
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for _, e := range eps {
			b.WriteString("endpoint " + e.Addr.String() + "\n")
		}
		b.WriteString(route.Render(rules, routes))
		return b.String() + fmt.Sprintf("limits %+v\n", lim)
	}
	before := kernel()

	// Through 198.18.40.254: refused, nothing applied.
	_, nr, ne := ctrl.counts()
	ctrl.setDesired(managed(1, policy("198.18.40.254")))
	r := ctrl.waitReport(t, nr, "FAILED", inState(pb.SyncState_SYNC_STATE_FAILED, 0))
	var found bool
	for _, p := range r.GetProblems() {
		found = found || (p.GetCode() == pb.HostProblem_CODE_MANAGEMENT_PATH_PROTECTED &&
			strings.Contains(p.GetMessage(), "controller 198.19.40.1 from 198.18.40.2") &&
			strings.Contains(p.GetMessage(), "via 198.18.40.1 dev m0 (table main)") &&
			strings.Contains(p.GetMessage(), "default via 198.18.40.254 dev m0"))
	}
	if !found {
		t.Errorf("problems %v; want CODE_MANAGEMENT_PATH_PROTECTED naming the controller, today's path and the route", r.GetProblems())
	}
	ctrl.waitEvent(t, ne, pb.AgentEvent_KIND_APPLY_FAILED)
	if got := kernel(); got != before {
		t.Fatalf("the kernel changed after the refused plan:\n%s\nwas:\n%s", got, before)
	}
	if ctrl.confirmCount() != 0 {
		t.Error("the refused plan was applied far enough to be confirmed")
	}

	// Through the gateway the connection uses: applied, and confirmed over
	// the path the policy routes.
	_, nr, _ = ctrl.counts()
	ctrl.setDesired(managed(2, policy("")))
	ctrl.waitReport(t, nr, "IN_SYNC at 2", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 2))
	if got := kernel(); !strings.Contains(got, "endpoint 198.18.40.2\n") || !strings.Contains(got, "from 198.18.40.2 lookup") {
		t.Errorf("the kernel after the good policy:\n%s", got)
	}
	hop, err := sys.RouteGet(context.Background(), netip.MustParseAddr("198.18.40.2"), netip.MustParseAddr("198.19.40.1"))
	if err != nil || !route.DefaultRange.HasTable(hop.Table) || hop.Gateway != netip.MustParseAddr("198.18.40.1") || hop.LinkIndex != m0 {
		t.Errorf("the controller connection's route after the good policy: %+v, %v; want via 198.18.40.1 dev m0 in mpfleet's table", hop, err)
	}
	if ctrl.confirmCount() == 0 {
		t.Error("revision 2 was not confirmed")
	}
}
