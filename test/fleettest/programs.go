package fleettest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Program is a program a fleet runs.
type Program struct {
	// Name is the binary's name.
	Name string
	// Package is the directory of its main package in the module.
	Package string
}

// Programs are the programs of a fleet.
var Programs = []Program{
	{"mpfleet-controller", "controller/cmd/mpfleet-controller"},
	{"mpfleet-agent", "agent/cmd/mpfleet-agent"},
	{"mpfleetctl", "cli/cmd/mpfleetctl"},
}

// Build builds Programs from the module at repo into dir, with the go
// command on PATH (or in $GOROOT/bin).
func Build(ctx context.Context, repo, dir string) error {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		goCmd = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	for _, p := range Programs {
		args = append(args, "./"+p.Package)
	}
	cmd := exec.CommandContext(ctx, goCmd, args...)
	cmd.Dir = repo
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %v: %w\n%s", args, err, out)
	}
	return nil
}

// CheckBin checks that dir holds every program of Programs.
func CheckBin(dir string) error {
	for _, p := range Programs {
		if _, err := os.Stat(filepath.Join(dir, p.Name)); err != nil {
			return fmt.Errorf("%s: %w", p.Name, err)
		}
	}
	return nil
}
