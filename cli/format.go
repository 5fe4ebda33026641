package cli

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// formatTime renders a timestamp in UTC, RFC 3339 to the second.
func formatTime(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

// age renders how long ago ts was, kubectl style: 45s, 12m, 3h, 5d.
func (a *app) age(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return humanDuration(a.now().Sub(ts.AsTime()))
}

func humanDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	default:
		return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
	}
}

// formatLatency renders a probe's connect time to about three significant
// digits: 850µs, 1.23ms, 12.3ms, 123ms, 1.23s.
func formatLatency(d time.Duration) string {
	unit := time.Microsecond
	switch {
	case d >= time.Second:
		unit = 10 * time.Millisecond
	case d >= 100*time.Millisecond:
		unit = time.Millisecond
	case d >= 10*time.Millisecond:
		unit = 100 * time.Microsecond
	case d >= time.Millisecond:
		unit = 10 * time.Microsecond
	}
	return d.Round(unit).String()
}

// formatLabels renders labels as "k=v,k2=v2", sorted.
func formatLabels(m map[string]string) string {
	keys := sortedKeys(m)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ",")
}

// trimName drops a resource name's collection prefix: "web" for
// "groups/web".
func trimName(name string) string {
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		return name[i+1:]
	}
	return name
}

func joinTrimmed(names []string) string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = trimName(n)
	}
	slices.Sort(out)
	return strings.Join(out, ",")
}

func revision(n int64) string {
	if n == 0 {
		return "-"
	}
	return strconv.FormatInt(n, 10)
}

// plural renders "1 problem", "2 problems".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

func formatFlags(flags []mpfleetv1.EndpointFlag) string {
	s := make([]string, len(flags))
	for i, f := range flags {
		s[i] = shortEnum(f)
	}
	return strings.Join(s, ",")
}

// shortEnum renders an enum value by its short name: subflow, ipv4, in_sync.
func shortEnum(e protoreflect.Enum) string {
	return enumShortName(e.Descriptor(), e.Number())
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// quoteEmpty replaces empty cells by "-" and folds each cell onto one line.
func quoteEmpty(cells []string) []string {
	for i, c := range cells {
		cells[i] = orDefault(terminalSafe(oneLine(c)), "-")
	}
	return cells
}

// oneLine folds a message onto one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
