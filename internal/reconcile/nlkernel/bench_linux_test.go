package nlkernel

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"testing"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/reconcile"
	"github.com/mpfleet/mpfleet/internal/reconcile/kerneltest"
	"github.com/mpfleet/mpfleet/internal/route"
)

// benchConfigs returns the benchmark's desired state — the kernel's maximum
// of eight endpoints (both families on four links), a policy-routing rule and
// two routes for each, limits and three sysctls — and the state a fresh
// namespace starts from, to reset to.
func benchConfigs(l *lab) (desired, reset reconcile.HostConfig) {
	desired = reconcile.HostConfig{
		Enabled: ptr(true),
		Limits:  &mptcp.Limits{Subflows: 8, AddAddrAccepted: 8},
		Sysctls: map[string]string{"net.mptcp.add_addr_timeout": "60", "net.mptcp.checksum_enabled": "1", "net.mptcp.stale_loss_cnt": "6"},
	}
	for i := range 4 {
		desired = kerneltest.WithSources(desired, mptcp.FlagSubflow, l.links[i].Source(false, i), l.links[i].Source(true, 10+i))
	}
	reset = reconcile.HostConfig{
		Enabled: ptr(true),
		Limits:  &mptcp.Limits{Subflows: 2},
		Sysctls: map[string]string{"net.mptcp.add_addr_timeout": "120", "net.mptcp.checksum_enabled": "0", "net.mptcp.stale_loss_cnt": "4"},
	}
	return desired, reset
}

// mustReconcile applies c and fails the benchmark on error.
func (l *lab) mustReconcile(b *testing.B, c reconcile.HostConfig) reconcile.Ops {
	ops, err := kerneltest.Reconcile(b, l.k, c)
	if err != nil {
		b.Fatalf("apply:\n%v\n%v", ops, err)
	}
	return ops
}

// reset brings the lab back to the fresh state, outside the timer. It
// flushes the endpoints first: each endpoint deletion waits for an RCU grace
// period in the kernel (8-17 ms measured here), a flush waits once.
func (l *lab) reset(b *testing.B, reset reconcile.HostConfig) {
	if err := l.k.mp.FlushEndpoints(); err != nil {
		b.Fatal(err)
	}
	l.mustReconcile(b, reset)
}

// mustHold fails the benchmark unless the kernel holds desired.
func (l *lab) mustHold(b *testing.B, desired reconcile.HostConfig) {
	got, err := l.k.Read(context.Background(), desired)
	if err != nil {
		b.Fatal(err)
	}
	if g, w := kerneltest.Text(got, false), kerneltest.Text(kerneltest.WantState(desired, got), false); g != w {
		b.Fatalf("kernel holds\n%s\nwant\n%s", g, w)
	}
}

// BenchmarkApplyFromEmpty times one reconcile from a fresh namespace to the
// benchmark state through netlink: read the state, plan, apply.
func BenchmarkApplyFromEmpty(b *testing.B) {
	l := newLab(b, 4)
	desired, reset := benchConfigs(l)
	var n int
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		l.reset(b, reset)
		b.StartTimer()
		n = len(l.mustReconcile(b, desired))
		b.StopTimer()
		l.mustHold(b, desired)
		b.StartTimer()
	}
	b.ReportMetric(float64(n), "kernel-ops")
}

// BenchmarkApplyIPCommands does the same as BenchmarkApplyFromEmpty the way
// the MPTCP guides do, one `ip -n NS …` or `ip netns exec NS sysctl …`
// command per change (the same changes, in the same order, as the plan, rules
// and routes with mpfleet's protocol). It is the only place mpfleet runs
// commands, and only as the comparison.
func BenchmarkApplyIPCommands(b *testing.B) {
	l := newLab(b, 4)
	if _, err := exec.LookPath("ip"); err != nil {
		b.Skip("no ip command")
	}
	desired, reset := benchConfigs(l)
	l.mustReconcile(b, reset)
	actual, err := l.k.Read(context.Background(), desired)
	if err != nil {
		b.Fatal(err)
	}
	ops, err := reconcile.Plan(desired, actual)
	if err != nil {
		b.Fatal(err)
	}
	var cmds [][]string
	for _, op := range ops {
		cmds = append(cmds, ipCommand(l.ns.Name, op, actual.Links))
	}
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		l.reset(b, reset)
		b.StartTimer()
		for _, c := range cmds {
			if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
				b.Fatalf("%v: %v: %s", c, err, out)
			}
		}
		b.StopTimer()
		l.mustHold(b, desired)
		b.StartTimer()
	}
	b.ReportMetric(float64(len(cmds)), "commands")
}

// ipCommand is the `ip` (or sysctl) command doing op in namespace ns.
func ipCommand(ns string, op reconcile.Op, links map[int]string) []string {
	ip := []string{"ip", "-n", ns}
	if (op.Rule != nil && op.Rule.Canonical().Family == route.FamilyV6) || (op.Route != nil && op.Route.Family() == route.FamilyV6) {
		ip = []string{"ip", "-6", "-n", ns}
	}
	switch op.Kind {
	case reconcile.SetSysctl:
		return []string{"ip", "netns", "exec", ns, "sysctl", "-q", "-w", op.Sysctl + "=" + op.Value}
	case reconcile.SetLimits:
		return append(ip, "mptcp", "limits", "set", "subflow", strconv.Itoa(int(op.Limits.Subflows)), "add_addr_accepted", strconv.Itoa(int(op.Limits.AddAddrAccepted)))
	case reconcile.AddEndpoint:
		e := op.Endpoint
		c := append(ip, "mptcp", "endpoint", "add", e.Addr.String(), "id", strconv.Itoa(int(e.ID)))
		for _, f := range []struct {
			f    mptcp.Flags
			name string
		}{{mptcp.FlagSignal, "signal"}, {mptcp.FlagSubflow, "subflow"}, {mptcp.FlagBackup, "backup"}, {mptcp.FlagFullmesh, "fullmesh"}} {
			if e.Flags&f.f != 0 {
				c = append(c, f.name)
			}
		}
		if e.IfIndex != 0 {
			c = append(c, "dev", links[e.IfIndex])
		}
		return c
	case reconcile.AddRule:
		r := op.Rule
		return append(ip, "rule", "add", "from", r.Src.String(), "lookup", strconv.Itoa(r.Table), "priority", strconv.Itoa(r.Priority),
			"protocol", strconv.Itoa(int(route.Protocol)))
	case reconcile.AddRoute:
		r := op.Route
		dst := r.Dst.String()
		if r.Dst.Bits() == 0 {
			dst = "default"
		}
		c := append(ip, "route", "add", dst)
		if r.Gateway.IsValid() {
			c = append(c, "via", r.Gateway.String())
		}
		c = append(c, "dev", links[r.LinkIndex], "table", strconv.Itoa(r.Table), "proto", strconv.Itoa(int(route.Protocol)))
		if r.Src.IsValid() {
			c = append(c, "src", r.Src.String())
		}
		if r.Scope != 0 {
			c = append(c, "scope", r.Scope.String())
		}
		return c
	}
	panic(fmt.Sprintf("no ip command for %v", op))
}

// BenchmarkResyncUnchanged times the periodic resync of a host in sync:
// read the state, plan, find nothing to do.
func BenchmarkResyncUnchanged(b *testing.B) {
	l := newLab(b, 4)
	desired, _ := benchConfigs(l)
	l.mustReconcile(b, desired)
	ctx := context.Background()
	b.ResetTimer()
	for range b.N {
		actual, err := l.k.Read(ctx, desired)
		if err != nil {
			b.Fatal(err)
		}
		ops, err := reconcile.Plan(desired, actual)
		if err != nil || len(ops) != 0 {
			b.Fatalf("plan = %v, %v; want no ops", ops, err)
		}
	}
}
