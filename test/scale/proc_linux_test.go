package scale

// Processes the benchmark starts, and what /proc says of them.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// proc is a program the benchmark started, its output in a log file.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// startProc starts bin with args, stdout and stderr appended to
// dir/name.log (stdout to w instead, if not nil). It is killed when the
// benchmark ends, and if the benchmark process dies.
func startProc(b *testing.B, dir, name, bin string, args []string, stdout io.Writer) *proc {
	b.Helper()
	p := &proc{name: name, log: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	lf, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = lf, lf
	if stdout != nil {
		p.cmd.Stdout = stdout
	}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		_ = lf.Close()
		b.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		_ = lf.Close()
		close(p.done)
	}()
	b.Cleanup(func() { p.stop(syscall.SIGKILL, 0) })
	return p
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig and waits for the end, at most grace (then SIGKILL).
func (p *proc) stop(sig syscall.Signal, grace time.Duration) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// tail returns the last lines of the process's log, for a failure.
func (p *proc) tail(n int) string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintf("--- last lines of %s:\n%s", p.log, strings.Join(lines, "\n"))
}

// firstLine reads the first line from r, within timeout; the rest of r is
// copied to w.
func firstLine(r io.Reader, w io.Writer, timeout time.Duration) (string, error) {
	line := make(chan string, 1)
	go func() {
		br := bufio.NewReader(r)
		s, _ := br.ReadString('\n')
		line <- strings.TrimSpace(s)
		_, _ = io.Copy(w, br)
	}()
	select {
	case s := <-line:
		if s == "" {
			return "", errors.New("no output")
		}
		return s, nil
	case <-time.After(timeout):
		return "", fmt.Errorf("no line within %v", timeout)
	}
}

// rssKB returns the resident set size of process pid (VmRSS), in KiB.
func rssKB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) != 2 || f[1] != "kB" {
				return 0, fmt.Errorf("VmRSS line %q", line)
			}
			return strconv.ParseInt(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}

// medianRSS samples the RSS of pid five times over a second and returns
// the median, so that one sample taken in the middle of a GC cycle does
// not decide.
func medianRSS(b *testing.B, pid int) int64 {
	b.Helper()
	var s []int64
	for i := range 5 {
		if i > 0 {
			time.Sleep(250 * time.Millisecond) // spacing samples, not waiting for an event
		}
		v, err := rssKB(pid)
		if err != nil {
			b.Fatal(err)
		}
		s = append(s, v)
	}
	slices.Sort(s)
	return s[len(s)/2]
}

// clockTick is USER_HZ, the unit of /proc/PID/stat times: 100 on every
// Linux architecture Go supports.
const clockTick = 100

// cpuTime returns the CPU time (user and system) process pid has used.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	f := strings.Fields(s[i+1:])
	// After the name: state (3), ..., utime (14), stime (15).
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return time.Duration(ut+st) * time.Second / clockTick, nil
}

func mustCPU(b *testing.B, pid int) time.Duration {
	b.Helper()
	d, err := cpuTime(pid)
	if err != nil {
		b.Fatal(err)
	}
	return d
}

// eventually calls check every interval until it returns nil, ctx ends,
// or timeout passes.
func eventually(ctx context.Context, timeout, interval time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %w)", ctx.Err(), err)
		case <-time.After(interval):
		}
	}
}
