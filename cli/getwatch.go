package cli

import (
	"context"
	"slices"
	"strings"
	"unicode/utf8"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// getHostsWatch is get hosts --watch: the matching hosts as get hosts
// prints them, then one more each time one changes (a row, a name, a JSON
// line or YAML document, a rendered template), until interrupted. A change
// that leaves every shown column as it was (LAST SEEN aside) prints
// nothing; a deleted host prints its last row with STATE "deleted".
func (a *app) getHostsWatch(ctx context.Context, req *mpfleetv1.WatchHostsRequest, rest labelSelector) error {
	hc, err := a.hosts()
	if err != nil {
		return err
	}
	w := &hostWatch{a: a, g: a.hostGetter(hc, nil, nil, 0), last: map[string]string{}, hosts: map[string]*mpfleetv1.Host{}}
	return watchStream(ctx, a, "get hosts --watch", hc.WatchHosts, req, func(ev *mpfleetv1.HostEvent) error {
		if !hostEventMatches(ev, rest) {
			return nil
		}
		return w.event(ev)
	})
}

// hostWatch is the state of get hosts --watch.
type hostWatch struct {
	a      *app
	g      getter[*mpfleetv1.Host]
	synced bool                       // the initial list was printed
	hosts  map[string]*mpfleetv1.Host // by name: the last state seen
	last   map[string]string          // by name: the last row printed, as a key
	widths []int                      // of the table's columns
}

func (w *hostWatch) event(ev *mpfleetv1.HostEvent) error {
	h := ev.GetHost()
	switch ev.GetType() {
	case mpfleetv1.HostEvent_TYPE_SYNCED:
		w.synced = true
		return w.printInitial()
	case mpfleetv1.HostEvent_TYPE_DELETED:
		old, ok := w.hosts[h.GetName()]
		delete(w.hosts, h.GetName())
		delete(w.last, h.GetName())
		if !w.synced || !ok {
			return nil
		}
		return w.printChange(old, true)
	}
	w.hosts[h.GetName()] = h
	if !w.synced {
		return nil
	}
	return w.printChange(h, false)
}

// printInitial prints the hosts listed before the SYNCED marker, in name
// order, as get hosts does.
func (w *hostWatch) printInitial() error {
	names := make([]string, 0, len(w.hosts))
	for n := range w.hosts {
		names = append(names, n)
	}
	slices.Sort(names)
	hosts := make([]*mpfleetv1.Host, len(names))
	for i, n := range names {
		hosts[i] = w.hosts[n]
		w.last[n] = w.key(hosts[i], false)
	}
	if w.a.listFormat == formatName || w.a.listFormat == formatJSONPath || w.a.output != "table" {
		for _, h := range hosts {
			if err := w.printOne(h); err != nil {
				return err
			}
		}
		return nil
	}
	l := w.g.resources(hosts, false)
	rows := [][]string{l.headerCells(w.a)}
	for _, h := range hosts {
		rows = append(rows, l.cells(w.a, h))
	}
	w.widths = make([]int, len(rows[0]))
	for _, r := range rows {
		for i, c := range cleanCells(r) {
			w.widths[i] = max(w.widths[i], utf8.RuneCountInString(c))
		}
	}
	for _, r := range rows {
		w.a.printf("%s\n", w.padRow(r))
	}
	return nil
}

// printChange prints one host that changed or was deleted.
func (w *hostWatch) printChange(h *mpfleetv1.Host, deleted bool) error {
	key := w.key(h, deleted)
	if !deleted {
		if w.last[h.GetName()] == key {
			return nil
		}
		w.last[h.GetName()] = key
	}
	if w.a.listFormat == formatName || w.a.listFormat == formatJSONPath || w.a.output != "table" {
		return w.printOne(h)
	}
	w.a.printf("%s\n", w.padRow(w.row(h, deleted)))
	return nil
}

// printOne prints one host in a format other than the table: its name, the
// template rendered over it and a newline, or a JSON line or YAML document.
func (w *hostWatch) printOne(h *mpfleetv1.Host) error {
	l := w.g.resources([]*mpfleetv1.Host{h}, true)
	switch w.a.listFormat {
	case formatName:
		return l.print(w.a)
	case formatJSONPath:
		if err := l.print(w.a); err != nil {
			return err
		}
		w.a.printf("\n")
		return nil
	}
	return w.a.printStreamItem(h)
}

// row is a host's table row; a deleted host's STATE says so.
func (w *hostWatch) row(h *mpfleetv1.Host, deleted bool) []string {
	r := w.g.resources(nil, false).cells(w.a, h)
	if deleted {
		r[2] = "deleted"
	}
	return r
}

// key is what decides whether a change is shown: the row without LAST
// SEEN (column 9), which changes with every report.
func (w *hostWatch) key(h *mpfleetv1.Host, deleted bool) string {
	r := w.row(h, deleted)
	r[9] = ""
	return strings.Join(r, "\x00")
}

// padRow aligns cells to the columns of the initial table, as a tabwriter
// would (three spaces between columns); a longer cell pushes the rest.
func (w *hostWatch) padRow(cells []string) string {
	cells = cleanCells(cells)
	var b strings.Builder
	for i, c := range cells {
		b.WriteString(c)
		if i == len(cells)-1 {
			break
		}
		width := 0
		if i < len(w.widths) {
			width = w.widths[i]
		}
		b.WriteString(strings.Repeat(" ", max(0, width-utf8.RuneCountInString(c))+3))
	}
	return b.String()
}

// cleanCells makes cells safe to print, "-" for an empty one, as table
// rows are.
func cleanCells(cells []string) []string {
	out := make([]string, len(cells))
	for i, c := range cells {
		out[i] = orDefault(terminalSafe(c), "-")
	}
	return out
}
