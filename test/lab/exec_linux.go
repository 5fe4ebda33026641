package lab

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Command returns a command that runs name with args inside the namespace
// of h (through nsenter --net, which execs name in place, so the process's
// pid is the command's). Set its Stdout, Stderr, Env before running it;
// run it with [Lab.Start] to have Down stop it.
func (l *Lab) Command(ctx context.Context, h Host, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + l.NSPath(h), "--", name}, args...)...)
}

// Exec runs name with args inside the namespace of h and returns its
// combined output. A failure's error includes the output.
func (l *Lab) Exec(ctx context.Context, h Host, name string, args ...string) ([]byte, error) {
	out, err := l.Command(ctx, h, name, args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s: %s %s: %w: %s", l.NSName(h), name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// Process is a command started in the lab.
type Process struct {
	Cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start starts cmd (made by [Lab.Command]) and waits for it in the
// background; Down stops it if it still runs.
func (l *Lab) Start(cmd *exec.Cmd) (*Process, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, fmt.Errorf("lab %s: closed", l.prefix)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("lab %s: start %s: %w", l.prefix, strings.Join(cmd.Args, " "), err)
	}
	p := &Process{Cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	l.procs = append(l.procs, p)
	return p, nil
}

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait waits for the process to exit and returns the error of
// exec.Cmd.Wait.
func (p *Process) Wait() error {
	<-p.done
	return p.err
}

// Stop sends SIGTERM, waits up to grace for the process to exit, then kills
// it, and returns the error of exec.Cmd.Wait.
func (p *Process) Stop(grace time.Duration) error {
	p.stop(grace)
	return p.err
}

func (p *Process) stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	if err := p.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		_ = p.Cmd.Process.Kill()
	}
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.Cmd.Process.Kill()
		<-p.done
	}
}
