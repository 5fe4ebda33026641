package scale

// Figures of a run: percentiles, the table, the benchmark metrics.

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

// dist is a distribution of durations.
type dist []time.Duration

// pct returns the q-quantile (0 < q <= 1) by nearest rank; 0 if empty.
func (d dist) pct(q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(i, 0)]
}

func (d dist) max() time.Duration { return d.pct(1) }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// side is what one side of the comparison measured.
type side struct {
	name string
	// call is how long UpdateGroup (or the etcd put) took; all is from its
	// return to the last agent's receipt; agent is every agent's receipt,
	// from the start of the call; settle is from the return to every
	// host's status stored (the report path), as seen by one watcher.
	call, all, agent, settle dist
	// connect is from the start of the fleet to every agent served.
	connect time.Duration
	// loadgenKB is the loadgen processes' RSS with every agent served.
	loadgenKB int64
	// idleKB and loadedKB are the server's RSS before the agents came and
	// with all of them connected; server names it.
	server           string
	idleKB, loadedKB int64
	// cpu is the server's CPU time over the changes, background its CPU
	// rate with the agents connected and nothing changing.
	cpu        time.Duration
	changes    int
	phase      time.Duration
	background float64 // CPU seconds per second
	// writes is the etcd revisions the changes made.
	writes int64
	// rt is the server's Go runtime figures, if it has them (etcd: not).
	rt *runtimeSplit
}

// kbPerAgent is the server's RSS per agent; NaN if not measured.
func (s *side) kbPerAgent(n int) float64 {
	if s.loadedKB == 0 {
		return math.NaN()
	}
	return float64(s.loadedKB-s.idleKB) / float64(n)
}

func (s *side) cpuPerChange() time.Duration {
	return s.cpu / time.Duration(max(s.changes, 1))
}

// cpuNet is the CPU per change less the background's share.
func (s *side) cpuNet() time.Duration {
	bg := time.Duration(s.background * float64(s.phase))
	return (s.cpu - bg) / time.Duration(max(s.changes, 1))
}

// storm is the reconnect storm after a controller restart.
type storm struct {
	signal   string
	until    string        // what "back" means: IN_SYNC, or served (silent agents)
	down     time.Duration // from the signal to the controller serving again
	duration time.Duration // from the signal to every host IN_SYNC again
	writes   int64         // etcd revisions over it
	peak     int64         // most etcd revisions in one second of it
	err      string        // why it did not recover, if it did not
}

// row renders a label and its cells, each but the last padded.
func row(label string, cells ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-44s", label)
	for i, c := range cells {
		if i < len(cells)-1 {
			c = fmt.Sprintf("%-40s", c)
		}
		b.WriteString(" " + c)
	}
	return b.String()
}

func latencies(d dist) string {
	if len(d) == 0 {
		return "—"
	}
	return fmt.Sprintf("p50 %.0f ms, p99 %.0f ms, max %.0f ms", ms(d.pct(.5)), ms(d.pct(.99)), ms(d.max()))
}

// table renders the figures of a run; the floor's column only if it was
// asked for.
func table(n int, hub, base *side, st *storm, fl *floorRun, notes []string) string {
	var b strings.Builder
	cell := func(s *side, f func(*side) string) string {
		if s == nil {
			return "not run"
		}
		return f(s)
	}
	// line renders a row of f's figure for every side.
	line := func(label string, f func(*side) string) {
		cells := []string{cell(hub, f), cell(base, f)}
		if *doFloor {
			var s *side
			if fl != nil {
				s = fl.s
			}
			cells = append(cells, cell(s, f))
		}
		fmt.Fprintln(&b, row(label, cells...))
	}
	// measured and memory wrap a cell of a figure measured over the K
	// changes, or with the N agents connected: "—" until it is (an
	// incomplete run).
	measured := func(f func(*side) string) func(*side) string {
		return func(s *side) string {
			if s.phase == 0 {
				return "—"
			}
			return f(s)
		}
	}
	memory := func(f func(*side) string) func(*side) string {
		return func(s *side) string {
			if s.loadedKB == 0 {
				return "—"
			}
			return f(s)
		}
	}
	fmt.Fprintln(&b)
	header := []string{"hub (controller)", "every agent watching etcd"}
	if *doFloor {
		header = append(header, "grpc-go floor (mpfleet-floor)")
	}
	fmt.Fprintln(&b, row("", header...))
	line("change → all N hold it", func(s *side) string { return latencies(s.all) })
	line("change call → each agent holds it", func(s *side) string { return latencies(s.agent) })
	line("change → all N statuses stored", func(s *side) string { return latencies(s.settle) })
	line("the change call itself (UpdateGroup / put)", func(s *side) string { return latencies(s.call) })
	line("memory per agent", memory(func(s *side) string { return fmt.Sprintf("%.1f KB %s RSS", s.kbPerAgent(n), s.server) }))
	line("  RSS idle → with N agents", memory(func(s *side) string { return fmt.Sprintf("%d → %d KB", s.idleKB, s.loadedKB) }))
	for _, r := range runtimeRows(n, hub, fl) {
		line(r.label, r.cell)
	}
	for _, r := range floorRows(n, fl) {
		fmt.Fprintln(&b, r)
	}
	line("CPU per change (less background)", measured(func(s *side) string {
		return fmt.Sprintf("%.0f ms %s (%.0f ms)", ms(s.cpuPerChange()), s.server, ms(s.cpuNet()))
	}))
	line("  background CPU, N connected, no change", measured(func(s *side) string { return fmt.Sprintf("%.1f%% of a core", 100*s.background) }))
	line("etcd writes per change", measured(func(s *side) string {
		if s.server == "mpfleet-floor" {
			return "— (no etcd)"
		}
		return fmt.Sprintf("%.0f", float64(s.writes)/float64(max(s.changes, 1)))
	}))
	line("N agents connect from cold", memory(func(s *side) string { return s.connect.Round(time.Millisecond).String() }))
	line("  loadgen RSS, N agents", memory(func(s *side) string { return fmt.Sprintf("%d KB", s.loadgenKB) }))
	switch {
	case st != nil && st.err != "":
		fmt.Fprintln(&b, row("reconnect storm ("+st.signal+", restart)",
			fmt.Sprintf("%s (down %.2f s)", st.err, st.down.Seconds()), "—"))
	case st != nil:
		fmt.Fprintln(&b, row("reconnect storm ("+st.signal+", restart)",
			fmt.Sprintf("%.2f s to all %s (down %.2f s)", st.duration.Seconds(), st.until, st.down.Seconds()), "—"))
	}
	if st != nil {
		label := "  etcd writes during the storm"
		if st.err != "" {
			label += " (until given up)"
		}
		fmt.Fprintln(&b, row(label,
			fmt.Sprintf("%d (%.2f per host), peak %d/s", st.writes, float64(st.writes)/float64(n), st.peak), "—"))
	}
	for _, n := range notes {
		fmt.Fprintln(&b, n)
	}
	return b.String()
}

// report reports the figures as benchmark metrics.
func report(b *testing.B, n int, hub, base *side, st *storm, fl *floorRun) {
	sides := []*side{hub, base}
	if fl != nil {
		sides = append(sides, fl.s)
	}
	for _, s := range sides {
		if s == nil {
			continue
		}
		reportRuntime(b, n, s)
		p := s.name + "-"
		b.ReportMetric(ms(s.all.pct(.5)), p+"p50-ms")
		b.ReportMetric(ms(s.all.pct(.99)), p+"p99-ms")
		b.ReportMetric(ms(s.all.max()), p+"max-ms")
		b.ReportMetric(ms(s.agent.pct(.99)), p+"agent-p99-ms")
		b.ReportMetric(s.kbPerAgent(n), p+"KB-rss/agent")
		b.ReportMetric(ms(s.cpuPerChange()), p+"cpu-ms/change")
		if fl != nil && s == fl.s {
			continue // no statuses, no etcd
		}
		b.ReportMetric(ms(s.settle.pct(.5)), p+"stored-p50-ms")
		b.ReportMetric(float64(s.writes)/float64(max(s.changes, 1)), p+"writes/change")
	}
	if st != nil && st.err == "" {
		b.ReportMetric(st.duration.Seconds(), "storm-s")
		b.ReportMetric(float64(st.writes)/float64(n), "storm-writes/host")
		b.ReportMetric(float64(st.peak), "storm-peak-writes/s")
	}
}
