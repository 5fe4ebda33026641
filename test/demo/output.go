//go:build linux

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mpfleet/mpfleet/test/lab"
)

func (d *demo) section(title string) {
	fmt.Printf("\n\033[1m== %s\033[0m  (%v)\n", title, time.Since(d.start).Round(100*time.Millisecond))
}

func (d *demo) say(format string, args ...any) {
	fmt.Println()
	for _, line := range strings.Split(fmt.Sprintf(format, args...), "\n") {
		fmt.Println("  " + line)
	}
}

// copyLogs copies the programs' logs into dir.
func (d *demo) copyLogs(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, p := range d.fleet.Logs() {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(p)), b, 0o644); err != nil {
			return err
		}
	}
	d.say("Logs copied to %s.", dir)
	return nil
}

// ctlShow runs mpfleetctl and prints the command and its output.
func (d *demo) ctlShow(args ...string) error {
	fmt.Printf("\n  $ mpfleetctl %s\n", strings.Join(args, " "))
	out, err := d.fleet.Ctl(d.ctx, args...)
	printIndented(out)
	return err
}

func printIndented(s string) {
	for _, line := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		fmt.Println("    " + line)
	}
}

// describe prints `mpfleetctl describe host` without the facts and the
// counters (the rest: state, what is applied, health).
func (d *demo) describe(h lab.Host) error {
	args := []string{"describe", "host", d.fleet.HostID(h)}
	fmt.Printf("\n  $ mpfleetctl %s   (facts and counters left out)\n", strings.Join(args, " "))
	out, err := d.fleet.Ctl(d.ctx, args...)
	if err != nil {
		return err
	}
	skip := false
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		trimmed := strings.TrimSpace(line)
		top := !strings.HasPrefix(line, "  ")
		switch {
		case top && (strings.HasPrefix(trimmed, "Facts:") || strings.HasPrefix(trimmed, "Interfaces:") ||
			strings.HasPrefix(trimmed, "Agent:") || strings.HasPrefix(trimmed, "Last plan:")):
			skip = true
		case top:
			skip = false
		case strings.HasPrefix(trimmed, "Counters:"):
			skip = true
			continue
		}
		if !skip {
			fmt.Println("    " + line)
		}
	}
	return nil
}

// apply applies a manifest and waits until both hosts are IN_SYNC with it.
