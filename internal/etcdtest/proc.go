package etcdtest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// ProcOptions configure an etcd process.
type ProcOptions struct {
	// QuotaBytes is its --quota-backend-bytes (0: etcd's default, 2 GiB).
	QuotaBytes int64
}

// Proc is an etcd server process that a test can kill and start again, on
// the same ports with the same data. It is killed when the test ends.
type Proc struct {
	t        testing.TB
	bin      string
	args     []string
	endpoint string

	mu  sync.Mutex
	cmd *exec.Cmd
	run *running // of cmd
}

// running is one run of the process: done is closed once it has exited,
// with err its exit.
type running struct {
	done chan struct{}
	err  error
}

// StartProc starts an etcd process from bin on loopback and waits until it
// serves.
func StartProc(t testing.TB, bin string, opts ProcOptions) *Proc {
	t.Helper()
	cu, pu := URLs(t)
	p := &Proc{t: t, bin: bin, endpoint: cu, args: []string{
		"--name", "ext", "--data-dir", filepath.Join(t.TempDir(), "data"),
		"--listen-client-urls", cu, "--advertise-client-urls", cu,
		"--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu,
		"--initial-cluster", "ext=" + pu, "--log-level", "error",
	}}
	if opts.QuotaBytes != 0 {
		p.args = append(p.args, "--quota-backend-bytes", strconv.FormatInt(opts.QuotaBytes, 10))
	}
	t.Cleanup(p.Kill)
	p.Start()
	return p
}

// Endpoint is the client URL.
func (p *Proc) Endpoint() string { return p.endpoint }

// Kill kills the process (SIGKILL: no clean shutdown) and waits for it to
// exit. Killing a killed process does nothing.
func (p *Proc) Kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.run.done
	p.cmd, p.run = nil, nil
}

// Start starts the process (again, after Kill) and waits until it serves.
func (p *Proc) Start() {
	p.t.Helper()
	p.spawn()
	p.waitReady()
}

// spawn starts the process without waiting for it.
func (p *Proc) spawn() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		p.t.Fatal("etcd process already running")
	}
	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("start etcd: %v", err)
	}
	r := &running{done: make(chan struct{})}
	go func() {
		r.err = cmd.Wait()
		close(r.done)
	}()
	p.cmd, p.run = cmd, r
}

// waitReady waits until the process answers a linearizable read: a member
// of a cluster, once it has a leader and has caught up with it. A parallel
// test run on two loaded CPUs can take tens of seconds to elect. A process
// that exits meanwhile (a port taken, a bad flag: its log is on stderr)
// fails the test at once.
func (p *Proc) waitReady() {
	p.t.Helper()
	p.mu.Lock()
	r := p.run
	p.mu.Unlock()
	c := Client(p.t, []string{p.endpoint})
	defer c.Close()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Get(ctx, "health")
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("etcd process at %s not ready: %v", p.endpoint, err)
		}
		select {
		case <-r.done:
			p.t.Fatalf("etcd process at %s exited before it served: %v", p.endpoint, r.err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
