package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// errDiffers is what diff -f returns when a file differs from the live
// groups: exit status 1, and no message (the diff says it).
var errDiffers = &exitError{err: errors.New("the files differ from the live groups"), code: 1}

// exitError is an error with its own exit status.
type exitError struct {
	err  error
	code int
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }
func (e *exitError) ExitCode() int { return e.code }

// diffFailed marks an error of diff -f: exit status 2, as kubectl diff
// exits above 1 on an error.
func diffFailed(err error) error {
	if err == nil {
		return nil
	}
	return &exitError{err: err, code: 2}
}

// diffFiles is diff -f: it prints how the live groups differ from the
// files' documents and returns errDiffers if one does.
func (a *app) diffFiles(ctx context.Context, ff fileFlags) error {
	ms, err := a.readManifests(ff)
	if err != nil {
		return diffFailed(err)
	}
	gc, err := a.groups()
	if err != nil {
		return diffFailed(err)
	}
	differs := false
	for _, m := range ms {
		cur, err := a.getGroupIfExists(ctx, gc, m.ID)
		if err != nil {
			return diffFailed(fmt.Errorf("group %q: %w", m.ID, err))
		}
		withStrategy := m.Group.GetRolloutStrategy() != nil
		live := ""
		if cur != nil {
			if live, err = specYAML(m.ID, cur, withStrategy); err != nil {
				return diffFailed(err)
			}
		}
		want, err := specYAML(m.ID, m.Group, withStrategy)
		if err != nil {
			return diffFailed(err)
		}
		from := "live/" + groupName(m.ID)
		if cur == nil {
			from = "/dev/null"
		}
		d := unifiedDiff(from, m.fileLabel(), live, want, 3)
		if d != "" {
			differs = true
			a.printDiff(d)
		}
	}
	if differs {
		return errDiffers
	}
	return nil
}

// fileLabel names a document in the diff's "+++" line: FILE/groups/ID.
func (m *manifest) fileLabel() string {
	if m.Source != "" {
		return m.Source + "/" + groupName(m.ID)
	}
	return "file/" + groupName(m.ID)
}

// specYAML renders what apply compares of a group as YAML: its name,
// description, selector and policy, and its rollout strategy with
// withStrategy; empty sections are dropped ("limits: {}" says nothing
// more than no limits), as sameSpec does.
func specYAML(id string, g *mpfleetv1.Group, withStrategy bool) (string, error) {
	s := proto.Clone(&mpfleetv1.Group{
		Name:        groupName(id),
		Description: g.GetDescription(),
		Selector:    g.GetSelector(),
		Policy:      g.GetPolicy(),
	}).(*mpfleetv1.Group)
	if withStrategy {
		s.RolloutStrategy = proto.Clone(g.GetRolloutStrategy()).(*mpfleetv1.RolloutStrategy)
	}
	pruneEmpty(s.ProtoReflect())
	b, err := marshalYAML(s)
	return string(b), err
}

// Colours of a unified diff, on a terminal only.
const (
	colourRed   = "\x1b[31m"
	colourGreen = "\x1b[32m"
	colourCyan  = "\x1b[36m"
	colourBold  = "\x1b[1m"
	colourReset = "\x1b[0m"
)

// colour reports whether to colour what stdout shows: only on a terminal,
// and not when NO_COLOR is set to anything (no-color.org).
func (a *app) colour() bool {
	return a.io.tty && a.getenv("NO_COLOR") == "" && a.getenv("TERM") != "dumb"
}

// printDiff prints a unified diff, coloured on a terminal. Its text goes
// through stdout's escaping like any other; only the colours pass it.
func (a *app) printDiff(d string) {
	if !a.colour() {
		a.printf("%s", d)
		return
	}
	for _, line := range strings.SplitAfter(d, "\n") {
		if line == "" {
			continue
		}
		var c string
		switch {
		case strings.HasPrefix(line, "---") || strings.HasPrefix(line, "+++"):
			c = colourBold
		case strings.HasPrefix(line, "@@"):
			c = colourCyan
		case strings.HasPrefix(line, "-"):
			c = colourRed
		case strings.HasPrefix(line, "+"):
			c = colourGreen
		}
		if c == "" {
			a.printf("%s", line)
			continue
		}
		a.printControl(c)
		a.printf("%s", strings.TrimSuffix(line, "\n"))
		a.printControl(colourReset)
		a.printf("\n")
	}
}
