package agent

// Management-path protection for what a plan adds: a plan that would move
// the kernel's route lookup for the controller connection to another
// gateway or interface, or into a blackhole, is refused whole. protect.go
// holds back the deletions.

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/mpfleet/mpfleet/internal/reconcile"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// RouteHop is where the kernel's route lookup sends a packet: the table
// whose route decided, and that route's gateway (zero for a directly
// connected destination) and output interface.
type RouteHop struct {
	Table     int
	Gateway   netip.Addr
	LinkIndex int
	// Local is true when the destination is an address of the host itself
	// (the local table decides, before any rule of mpfleet's).
	Local bool
}

// RouteGetter is a System that can ask the kernel where its routing sends
// a packet from src to dst (RTM_GETROUTE, as `ip route get DST from SRC`;
// no packet is sent). NetlinkSystem implements it. With a System that does
// not, management-path protection judges by mpfleet's own rules and
// routes alone.
type RouteGetter interface {
	RouteGet(ctx context.Context, src, dst netip.Addr) (RouteHop, error)
}

// mgmtConn is the controller connection as management-path protection
// sees it: the local address it leaves from, the controller's address, and
// where the kernel's lookup sends it today (known is false if the kernel
// could not be asked).
type mgmtConn struct {
	local, controller netip.Addr
	today             RouteHop
	known             bool
}

// movesPath returns why applying ops to actual would move the controller
// connection c: the lookup it gets through the rules and routes in
// mpfleet's range once ops are applied differs from the one it gets today
// (another gateway or interface, a blackhole or unreachable route, or no
// route of the range where one decided). It returns "" when the plan leaves
// the connection where it is, when the kernel routes it by a table outside
// the range ahead of mpfleet's rules (the local table, say), or when nothing
// is known of it. The main table is outside the managed state: a lookup
// that no rule of the range decides goes on to it, as today.
func movesPath(actual reconcile.State, ops reconcile.Ops, c mgmtConn) string {
	if !c.local.IsValid() || !c.controller.IsValid() || c.controller.IsLoopback() {
		return ""
	}
	if c.known && c.today.Local {
		return ""
	}
	ch := lookups(actual, ops, c)
	if !ch.changed() {
		return ""
	}
	now, nowOK, after, afterOK := ch.now, ch.nowOK, ch.after, ch.afterOK
	today := c.today
	switch {
	case c.known && nowOK && today.Table != now.rule.Table:
		// A rule ahead of mpfleet's decides today: what the range holds
		// does not matter to this connection.
		return ""
	case !c.known && !nowOK:
		return "" // nothing known of where the connection goes today
	case !c.known:
		today = RouteHop{Table: now.rule.Table, Gateway: now.route.Gateway, LinkIndex: now.route.LinkIndex}
	}
	if afterOK && !after.route.blocks() && after.route.Gateway == today.Gateway && after.route.LinkIndex == today.LinkIndex {
		return ""
	}
	was := fmt.Sprintf("%s (table %s)", hopString(today.Gateway, today.LinkIndex, actual.Links), tableName(today.Table))
	conn := fmt.Sprintf("the connection to the controller %s from %s", c.controller, c.local)
	if !afterOK {
		return fmt.Sprintf("refused the plan: %s leaves %s today; the plan would leave it to the rules outside mpfleet's range", conn, was)
	}
	to := hopString(after.route.Gateway, after.route.LinkIndex, actual.Links)
	if after.route.blocks() {
		to = after.route.Type.String()
	}
	return fmt.Sprintf("refused the plan: %s leaves %s today; the plan would send it %s by %s and %s; change the policy so it leaves that path alone",
		conn, was, to, after.rule.desc, after.route.desc)
}

// pathChange is the lookup for a connection through mpfleet's rules and
// routes before and after a plan.
type pathChange struct {
	now, after     fibMatch
	nowOK, afterOK bool
}

func lookups(actual reconcile.State, ops reconcile.Ops, c mgmtConn) pathChange {
	before := fibOf(actual)
	var p pathChange
	p.now, p.nowOK = before.lookup(c.local, c.controller)
	p.after, p.afterOK = before.with(ops).lookup(c.local, c.controller)
	return p
}

// changed reports whether the plan changes what decides the lookup.
func (p pathChange) changed() bool {
	return p.nowOK != p.afterOK || (p.nowOK && !p.now.same(p.after))
}

// hopString renders a gateway and interface as `ip route get` does: "via
// 198.18.1.1 dev eth0", "dev eth0".
func hopString(gw netip.Addr, link int, links map[int]string) string {
	dev := links[link]
	if dev == "" {
		dev = "if" + strconv.Itoa(link)
	}
	if gw.IsValid() {
		return "via " + gw.String() + " dev " + dev
	}
	return "dev " + dev
}

// guardPath returns why ops must not be applied to actual (movesPath for
// the last controller connection), or "". The kernel is asked where the
// connection goes today only when the plan changes what mpfleet's rules
// and routes decide for it.
func (l *loop) guardPath(ctx context.Context, actual reconcile.State, ops reconcile.Ops) string {
	c := mgmtConn{local: l.localAddr(), controller: l.remote}
	if len(ops) == 0 || !c.local.IsValid() || !c.controller.IsValid() {
		return ""
	}
	if !lookups(actual, ops, c).changed() {
		return ""
	}
	if g, ok := l.a.opts.System.(RouteGetter); ok {
		hop, err := g.RouteGet(ctx, c.local, c.controller)
		if err != nil {
			l.log.Debug("route lookup for the controller connection", "from", c.local, "to", c.controller, "err", err)
		} else {
			c.today, c.known = hop, true
		}
	}
	return movesPath(actual, ops, c)
}

// refusePlan records a plan refused because it would move the controller
// connection: nothing is applied; the host is FAILED with a
// CODE_MANAGEMENT_PATH_PROTECTED problem naming the rule, the route and
// the controller (besides the ops protect held back), and an APPLY_FAILED
// event tells of it once. The plan is tried again at every reconcile, so
// that it goes in once the connection takes another path.
func (l *loop) refusePlan(ctx context.Context, d *pb.DesiredConfig, why reason, msg string, ops reconcile.Ops, held []string) {
	l.log.Warn("refused a plan that would move the controller connection", "group", d.GetGroup(), "revision", d.GetRevision(), "reason", why.String(), "err", msg)
	l.a.metrics.applyFailures.Inc()
	l.pushProbes()
	l.lastPlan = ops
	before, beforeErr := l.state, l.lastError
	l.settle(append(held, msg))
	if msg != l.lastFailMsg {
		l.event(pb.AgentEvent_KIND_APPLY_FAILED, d, msg, ops)
		l.lastFailMsg = msg
	}
	if why == reasonDesired || l.state != before || l.lastError != beforeErr || l.pathsChanged() {
		l.sendReport(ctx)
	}
}

// dialTCP dials the controller: with d, or with the agent's dial hook
// (tests dial from inside a network namespace).
func (a *Agent) dialTCP(ctx context.Context, d *net.Dialer, addr string) (net.Conn, error) {
	if a.dialHook != nil {
		return a.dialHook(ctx, d, addr)
	}
	return d.DialContext(ctx, "tcp", addr)
}

var _ RouteGetter = (*NetlinkSystem)(nil)
