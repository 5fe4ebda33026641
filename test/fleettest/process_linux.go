package fleettest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"time"

	"github.com/mpfleet/mpfleet/test/lab"
)

// startTimeout is how long StartController waits for the controller to
// answer.
const startTimeout = 30 * time.Second

// stopGrace is how long StopController and StopAgent wait after SIGTERM.
const stopGrace = 10 * time.Second

// start starts a program in the namespace of h, its output appended to
// Dir/<log>.log.
func (f *Fleet) start(h lab.Host, program, log string, args []string) (*lab.Process, error) {
	if f.cfg.OnStart != nil {
		f.cfg.OnStart(h, program, args)
	}
	cmd := f.Lab.Command(context.Background(), h, filepath.Join(f.cfg.Bin, program), args...)
	lf, err := f.logFile(log)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	cmd.Stdout, cmd.Stderr = lf, lf
	return f.Lab.Start(cmd)
}

// StartController starts the controller in the ctl namespace, on embedded
// etcd in DataDir (the same on every start), with Config.ControllerFlags,
// and waits until it answers
// mpfleetctl, at most 30 s.
func (f *Fleet) StartController(ctx context.Context) error {
	p, err := f.start(lab.Controller, "mpfleet-controller", "controller", slices.Concat([]string{
		"--listen", f.ControllerAddr(),
		"--data-dir", f.DataDir(),
		"--tls-cert-file", f.PKI.Controller.Cert, "--tls-key-file", f.PKI.Controller.Key,
		"--tls-client-ca-file", f.PKI.CA,
		"--tokens-file", f.PKI.Tokens,
		"--log-level", f.cfg.LogLevel,
	}, f.cfg.ControllerFlags))
	if err != nil {
		return fmt.Errorf("start the controller: %w", err)
	}
	f.mu.Lock()
	f.controller = p
	f.mu.Unlock()
	err = Eventually(ctx, startTimeout, func() error {
		select {
		case <-p.Done():
			return Stop(fmt.Errorf("the controller exited: %w", p.Wait()))
		default:
		}
		_, err := f.Ctl(ctx, "get", "groups")
		return err
	})
	if err != nil {
		return fmt.Errorf("the controller did not answer: %w", err)
	}
	return nil
}

// StopController stops the controller: SIGTERM and a clean shutdown, or
// with kill a SIGKILL, as a crash would. It returns how the process ended
// (nil after a clean shutdown, and after a kill).
func (f *Fleet) StopController(kill bool) error {
	f.mu.Lock()
	p := f.controller
	f.controller = nil
	f.mu.Unlock()
	if p == nil {
		return nil
	}
	if kill {
		_ = p.Cmd.Process.Kill()
		<-p.Done()
		return nil
	}
	return p.Stop(stopGrace)
}

// ControllerRunning reports whether the controller was started and not
// stopped.
func (f *Fleet) ControllerRunning() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.controller != nil
}

// StartAgent starts the agent of h in its namespace, with its own state dir
// (the same on every start), its client certificate and its role label,
// then Config.AgentFlags, Config.HostFlags[h] and extra. It does not wait.
func (f *Fleet) StartAgent(h lab.Host, extra ...string) error {
	args := slices.Concat([]string{
		"--controller", f.ControllerAddr(),
		"--host-id", f.HostID(h),
		"--labels", "role=" + RoleOf(h),
		"--state-dir", filepath.Join(f.cfg.Dir, "state-"+string(h)),
		"--tls-ca-file", f.PKI.CA,
		"--tls-cert-file", f.PKI.Agents[h].Cert, "--tls-key-file", f.PKI.Agents[h].Key,
		"--log-level", f.cfg.LogLevel,
	}, f.cfg.AgentFlags, f.cfg.HostFlags[h], extra)
	p, err := f.start(h, "mpfleet-agent", "agent-"+string(h), args)
	if err != nil {
		return fmt.Errorf("start the agent of %s: %w", h, err)
	}
	f.mu.Lock()
	f.agents[h] = p
	f.mu.Unlock()
	return nil
}

// StopAgent stops the agent of h with SIGTERM and returns how it ended.
func (f *Fleet) StopAgent(h lab.Host) error {
	f.mu.Lock()
	p := f.agents[h]
	delete(f.agents, h)
	f.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.Stop(stopGrace)
}

// Exited returns an error naming each program that was started, not
// stopped, and has exited; nil while they all run.
func (f *Fleet) Exited() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	if p := f.controller; p != nil && exited(p) {
		errs = append(errs, fmt.Errorf("the controller exited: %w", p.Wait()))
	}
	for _, h := range slices.Sorted(maps.Keys(f.agents)) {
		if p := f.agents[h]; exited(p) {
			errs = append(errs, fmt.Errorf("the agent of %s exited: %w", h, p.Wait()))
		}
	}
	return errors.Join(errs...)
}

func exited(p *lab.Process) bool {
	select {
	case <-p.Done():
		return true
	default:
		return false
	}
}
