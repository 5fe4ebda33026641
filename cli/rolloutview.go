package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/durationpb"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// followMode says how a rollout being followed is shown.
type followMode int

const (
	// followLines prints one plain line per change, without escape codes.
	followLines followMode = iota
	// followLive redraws a progress display in place (stdout is a
	// terminal).
	followLive
	// followObjects prints every state of the rollout as a JSON line or a
	// YAML document, per --output.
	followObjects
)

// followMode picks how to show a rollout being followed. textOnly ignores
// --output (apply prints text whatever it says).
func (a *app) followMode(textOnly bool) followMode {
	switch {
	case !textOnly && a.output != "table":
		return followObjects
	case a.io.tty:
		return followLive
	}
	return followLines
}

// rolloutEnded reports whether a rollout in state s has ended.
func rolloutEnded(s mpfleetv1.Rollout_State) bool {
	switch s {
	case mpfleetv1.Rollout_STATE_SUCCEEDED, mpfleetv1.Rollout_STATE_FAILED,
		mpfleetv1.Rollout_STATE_CANCELLED, mpfleetv1.Rollout_STATE_ROLLED_BACK:
		return true
	}
	return false
}

// rolloutOutcome is nil for a rollout that succeeded, else an error saying
// how it ended and why.
func rolloutOutcome(r *mpfleetv1.Rollout) error {
	if r.GetState() == mpfleetv1.Rollout_STATE_SUCCEEDED {
		return nil
	}
	msg := fmt.Sprintf("rollout %q ended %s", trimName(r.GetName()), shortEnum(r.GetState()))
	if m := r.GetMessage(); m != "" {
		msg += ": " + m
	}
	return errors.New(msg)
}

type rolloutUpdate struct {
	r   *mpfleetv1.Rollout
	err error
}

// followRollout follows a rollout with WatchRollout until it ends, showing
// each change as mode says, and returns it as it ended. Interrupted (ctx
// done) it returns an error: the rollout has not ended.
func (a *app) followRollout(ctx context.Context, rc mpfleetv1.RolloutServiceClient, name string, mode followMode) (*mpfleetv1.Rollout, error) {
	id := trimName(name)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := rc.WatchRollout(wctx, &mpfleetv1.WatchRolloutRequest{Name: name})
	if err != nil {
		return nil, fmt.Errorf("rollout %q: %w", id, a.rpcErr(err))
	}
	updates := make(chan rolloutUpdate)
	go func() {
		for {
			r, err := stream.Recv()
			select {
			case updates <- rolloutUpdate{r, err}:
			case <-wctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	v := &rolloutView{a: a, mode: mode, failed: map[string]bool{}}
	var tick <-chan time.Time
	if mode == followLive {
		t := time.NewTicker(time.Second) // the elapsed time moves on
		defer t.Stop()
		tick = t.C
	}
	for {
		var u rolloutUpdate
		select {
		case <-ctx.Done():
			return v.last, v.interrupted(id)
		case <-tick:
			v.redraw()
			continue
		case u = <-updates:
		}
		switch {
		case u.err != nil && isCanceled(ctx, u.err):
			return v.last, v.interrupted(id)
		case errors.Is(u.err, io.EOF):
			// The stream ends when the rollout does; a stream that ends
			// early (a controller failover) is checked with GetRollout.
			r, err := a.getRollout(ctx, rc, name)
			if err != nil {
				return v.last, err
			}
			if !rolloutEnded(r.GetState()) {
				return r, fmt.Errorf("rollout %q: the controller ended the watch while the rollout is %s", id, shortEnum(r.GetState()))
			}
			u.r = r
		case u.err != nil:
			return v.last, fmt.Errorf("rollout %q: %w", id, a.rpcErr(u.err))
		}
		if err := v.show(u.r); err != nil {
			return u.r, err
		}
		if rolloutEnded(u.r.GetState()) {
			return u.r, nil
		}
	}
}

// rolloutView shows the states of one rollout as they come.
type rolloutView struct {
	a      *app
	mode   followMode
	last   *mpfleetv1.Rollout
	line   string          // followLines: the last state line printed
	failed map[string]bool // followLines: hosts whose failure was printed
	drawn  int             // followLive: lines of the frame on screen
}

func (v *rolloutView) interrupted(id string) error {
	state := "not yet known"
	if v.last != nil {
		state = shortEnum(v.last.GetState())
	}
	return fmt.Errorf("rollout %q: stopped following it while %s (the rollout goes on)", id, state)
}

func (v *rolloutView) show(r *mpfleetv1.Rollout) error {
	v.last = r
	switch v.mode {
	case followObjects:
		return v.a.printStreamItem(r)
	case followLive:
		v.redraw()
		return nil
	}
	now := v.a.now().UTC().Format("15:04:05")
	id := trimName(r.GetName())
	if line := rolloutLine(r); line != v.line {
		v.line = line
		v.a.printf("%s %s\n", now, terminalSafe(line))
	}
	for _, f := range failures(r) {
		if v.failed[f.host] {
			continue
		}
		v.failed[f.host] = true
		line := fmt.Sprintf("rollout/%s host/%s failed", id, trimName(f.host))
		if f.reason != "" {
			line += ": " + oneLine(f.reason)
		}
		v.a.printf("%s %s\n", now, terminalSafe(line))
	}
	return nil
}

// rolloutLine is the plain line of a rollout's state:
// rollout/r1 running group=web rev=4→5 step=batch-1 done=3/6 failed=0 pending=3
func rolloutLine(r *mpfleetv1.Rollout) string {
	p := progressOf(r)
	line := fmt.Sprintf("rollout/%s %s group=%s rev=%s→%s step=%s done=%d/%d failed=%d pending=%d",
		trimName(r.GetName()), shortEnum(r.GetState()), orDefault(trimName(r.GetGroup()), "-"),
		revision(r.GetFromRevision()), revision(r.GetTargetRevision()),
		orDefault(strings.ReplaceAll(currentStepLabel(r), " ", "-"), "-"), p.done, p.total, p.failed, p.pending)
	if m := r.GetMessage(); m != "" {
		line += " message=" + strconv.Quote(oneLine(m))
	}
	return line
}

// redraw replaces the frame on the terminal by the current one.
func (v *rolloutView) redraw() {
	if v.last == nil {
		return
	}
	lines := v.a.liveFrame(v.last, v.a.io.width)
	// The cursor movements are the only control sequences mpfleetctl
	// sends; they go past the escaping of stdout, the frame does not.
	var ctl strings.Builder
	if v.drawn > 0 {
		fmt.Fprintf(&ctl, "\x1b[%dA", v.drawn) // up to the frame's first line
	}
	ctl.WriteString("\x1b[J") // clear to the end of the screen
	v.a.printControl(ctl.String())
	v.a.printf("%s\n", strings.Join(lines, "\n"))
	v.drawn = len(lines)
}

// liveSteps is the most steps the live display shows, around the current
// one: a frame taller than the terminal cannot be redrawn in place.
const liveSteps = 8

// liveFrame renders the live display of a rollout, each line cut to fit
// width columns (80 when 0).
func (a *app) liveFrame(r *mpfleetv1.Rollout, width int) []string {
	var b bytes.Buffer
	p := progressOf(r)
	ended := rolloutEnded(r.GetState())
	fmt.Fprintf(&b, "rollout/%s  group %s  revision %s → %s  %s  elapsed %s\n",
		terminalSafe(trimName(r.GetName())), terminalSafe(trimName(r.GetGroup())),
		revision(r.GetFromRevision()), revision(r.GetTargetRevision()), shortEnum(r.GetState()),
		formatDuration(a.elapsed(r)))
	fmt.Fprintf(&b, "%s  %d/%d hosts done, %d failed, %d pending\n", progressBar(p, 30), p.done, p.total, p.failed, p.pending)
	steps := r.GetSteps()
	if len(steps) > 0 {
		cur := 0
		for i, s := range steps {
			if s.GetIndex() == r.GetCurrentStep() {
				cur = i
			}
		}
		from := max(0, min(cur-liveSteps/2, len(steps)-liveSteps))
		to := min(len(steps), from+liveSteps)
		if from > 0 {
			fmt.Fprintf(&b, "  … %s before\n", plural(from, "step"))
		}
		t := newTable(&b, "  STEP", "HOSTS", "DONE", "FAILED", "PENDING")
		for i, s := range steps[from:to] {
			mark := "  "
			if from+i == cur && !ended {
				mark = "> "
			}
			sp := stepProgress(s)
			t.row(mark+stepTitle(s.GetIndex()), strconv.Itoa(sp.total), strconv.Itoa(sp.done), strconv.Itoa(sp.failed), strconv.Itoa(sp.pending))
		}
		_ = t.flush() // a bytes.Buffer does not fail
		if to < len(steps) {
			fmt.Fprintf(&b, "  … %s after\n", plural(len(steps)-to, "step"))
		}
	}
	const maxFailures = 3
	fails := failures(r)
	for i, f := range fails {
		if i == maxFailures {
			fmt.Fprintf(&b, "  … and %d more failed\n", len(fails)-maxFailures)
			break
		}
		line := "  host/" + terminalSafe(trimName(f.host)) + " failed"
		if f.reason != "" {
			line += ": " + terminalSafe(oneLine(f.reason))
		}
		b.WriteString(line + "\n")
	}
	if m := r.GetMessage(); m != "" {
		b.WriteString("  " + terminalSafe(oneLine(m)) + "\n")
	}
	if width <= 0 {
		width = 80
	}
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	for i, l := range lines {
		lines[i] = truncate(l, width-1)
	}
	return lines
}

// truncate cuts s to n runes, ending it with "…" when cut.
func truncate(s string, n int) string {
	if n < 1 || utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// progressBar draws done hosts as '=', failed ones as 'x' and pending ones
// as ' ', in width cells.
func progressBar(p progress, width int) string {
	if p.total == 0 {
		return "[" + strings.Repeat(" ", width) + "]"
	}
	done := p.done * width / p.total
	failed := min(width-done, (p.failed*width+p.total-1)/p.total) // a failure always shows
	return "[" + strings.Repeat("=", done) + strings.Repeat("x", failed) + strings.Repeat(" ", width-done-failed) + "]"
}

// elapsed is how long a rollout has run: until it ended, or until now.
func (a *app) elapsed(r *mpfleetv1.Rollout) time.Duration {
	if r.GetCreateTime() == nil {
		return 0
	}
	end := a.now()
	if r.GetEndTime() != nil {
		end = r.GetEndTime().AsTime()
	}
	return max(0, end.Sub(r.GetCreateTime().AsTime()).Truncate(time.Second))
}

// progress counts a rollout's hosts, or a step's.
type progress struct {
	total, done, failed, pending int
}

func stepProgress(s *mpfleetv1.RolloutStep) progress {
	p := progress{total: len(s.GetHosts()), done: len(s.GetSucceededHosts()), failed: len(s.GetFailedHosts())}
	p.pending = max(0, p.total-p.done-p.failed)
	return p
}

func progressOf(r *mpfleetv1.Rollout) progress {
	var p progress
	for _, s := range r.GetSteps() {
		sp := stepProgress(s)
		p.total += sp.total
		p.done += sp.done
		p.failed += sp.failed
		p.pending += sp.pending
	}
	return p
}

// stepLabel names a step: canary for step 0, then batch 1, batch 2, ….
func stepLabel(index int32) string {
	if index == 0 {
		return "canary"
	}
	return fmt.Sprintf("batch %d", index)
}

// stepTitle is a step's index and label: "0 (canary)", "2 (batch 2)".
func stepTitle(index int32) string {
	return fmt.Sprintf("%d (%s)", index, stepLabel(index))
}

// currentStepLabel labels the step in progress, or the last one; "" before
// the rollout has steps.
func currentStepLabel(r *mpfleetv1.Rollout) string {
	if len(r.GetSteps()) == 0 {
		return ""
	}
	return stepLabel(r.GetCurrentStep())
}

// formatStrategy renders a rollout strategy in the words of its flags:
// "canary 1, batch 25%, step timeout 5m, bake 30s, max failures 0, roll back
// when halted".
func formatStrategy(st *mpfleetv1.RolloutStrategy) string {
	if st == nil {
		return "the controller's default"
	}
	var parts []string
	countOrPercent := func(what string, n, pct int32) {
		switch {
		case n > 0:
			parts = append(parts, fmt.Sprintf("%s %d", what, n))
		case pct > 0:
			parts = append(parts, fmt.Sprintf("%s %d%%", what, pct))
		}
	}
	countOrPercent("canary", st.GetCanaryCount(), st.GetCanaryPercent())
	countOrPercent("batch", st.GetBatchSize(), st.GetBatchPercent())
	dur := func(what string, d *durationpb.Duration) {
		if d != nil {
			parts = append(parts, what+" "+formatDuration(d.AsDuration()))
		}
	}
	dur("step timeout", st.GetStepTimeout())
	dur("bake", st.GetBakeTime())
	parts = append(parts, fmt.Sprintf("max failures %d", st.GetMaxFailures()))
	if st.GetNoRollback() {
		parts = append(parts, "no rollback")
	} else {
		parts = append(parts, "roll back when halted")
	}
	return strings.Join(parts, ", ")
}

// formatDuration renders a duration without trailing zero units: 5m, 1h30m,
// 2m13s, 1.5s.
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// describeRollout lays out one rollout for people.
func (a *app) describeRollout(w io.Writer, r *mpfleetv1.Rollout) error {
	d := &describer{w: w}
	d.field(0, "Name", trimName(r.GetName()))
	d.field(0, "Group", trimName(r.GetGroup()))
	d.field(0, "Revision", revision(r.GetFromRevision())+" → "+revision(r.GetTargetRevision()))
	state := shortEnum(r.GetState())
	if !rolloutEnded(r.GetState()) && len(r.GetSteps()) > 0 {
		state += ", step " + stepTitle(r.GetCurrentStep())
	}
	d.field(0, "State", state)
	d.field(0, "Message", r.GetMessage())
	d.field(0, "Strategy", formatStrategy(r.GetStrategy()))
	p := progressOf(r)
	d.field(0, "Progress", fmt.Sprintf("%d/%d hosts done, %d failed, %d pending; %d moved", p.done, p.total, p.failed, p.pending, len(r.GetMovedHosts())))
	created := formatTime(r.GetCreateTime())
	if ago := a.age(r.GetCreateTime()); ago != "" {
		created += " (" + ago + " ago)"
	}
	if r.GetActor() != "" {
		created += " by " + r.GetActor()
	}
	d.field(0, "Created", created)
	d.field(0, "Reason", r.GetReason())
	if r.GetEndTime() != nil {
		d.field(0, "Ended", formatTime(r.GetEndTime())+" (after "+formatDuration(a.elapsed(r))+")")
	}
	d.section(0, "Steps")
	describeRows(d, 1, "none yet", r.GetSteps(), []string{"STEP", "HOSTS", "DONE", "FAILED", "PENDING", "STARTED", "ENDED"}, func(s *mpfleetv1.RolloutStep) []string {
		sp := stepProgress(s)
		return []string{stepTitle(s.GetIndex()), strconv.Itoa(sp.total), strconv.Itoa(sp.done), strconv.Itoa(sp.failed),
			strconv.Itoa(sp.pending), formatTime(s.GetStartTime()), formatTime(s.GetEndTime())}
	})
	if fs := failures(r); len(fs) > 0 {
		d.section(0, "Failed hosts")
		describeRows(d, 1, "", fs, []string{"STEP", "HOST", "REASON"}, func(f hostFailure) []string {
			return []string{stepLabel(f.step), trimName(f.host), oneLine(f.reason)}
		})
	}
	return d.err
}

// hostFailure is a host that failed a step of a rollout, and why.
type hostFailure struct {
	step         int32
	host, reason string
}

// failures lists the hosts that failed the steps of a rollout, step by
// step.
func failures(r *mpfleetv1.Rollout) []hostFailure {
	var out []hostFailure
	for _, s := range r.GetSteps() {
		reasons := map[string]string{}
		for _, f := range s.GetFailures() {
			reasons[f.GetHost()] = f.GetReason()
		}
		for _, h := range s.GetFailedHosts() {
			out = append(out, hostFailure{step: s.GetIndex(), host: h, reason: reasons[h]})
		}
	}
	return out
}
