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
	_ = p.cmd.Wait()
	p.cmd = nil
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
	p.cmd = cmd
}

// waitReady waits until the process answers a linearizable read: a member
// of a cluster, once it has a leader and has caught up with it. A parallel
// test run on two loaded CPUs can take tens of seconds to elect.
func (p *Proc) waitReady() {
	p.t.Helper()
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
		time.Sleep(100 * time.Millisecond)
	}
}
