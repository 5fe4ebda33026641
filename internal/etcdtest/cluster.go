package etcdtest

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Cluster is an etcd cluster of separate server processes on loopback, each
// member with its own ports and data directory, killable (SIGKILL) and
// restartable on its own. Every member is killed when the test ends.
type Cluster struct {
	t       testing.TB
	members []*Proc
}

// StartCluster starts an n-member etcd cluster from bin and waits until
// every member serves (there is a leader and each member has caught up).
func StartCluster(t testing.TB, bin string, n int) *Cluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("etcd cluster of %d members", n)
	}
	c := &Cluster{t: t}
	clientURLs, peerURLs := make([]string, n), make([]string, n)
	var initial []string
	for i := range n {
		clientURLs[i], peerURLs[i] = URLs(t)
		initial = append(initial, fmt.Sprintf("m%d=%s", i, peerURLs[i]))
	}
	token := fmt.Sprintf("etcdtest-%d", time.Now().UnixNano())
	dir := t.TempDir()
	for i := range n {
		p := &Proc{t: t, bin: bin, endpoint: clientURLs[i], args: []string{
			"--name", fmt.Sprintf("m%d", i), "--data-dir", filepath.Join(dir, fmt.Sprintf("m%d", i)),
			"--listen-client-urls", clientURLs[i], "--advertise-client-urls", clientURLs[i],
			"--listen-peer-urls", peerURLs[i], "--initial-advertise-peer-urls", peerURLs[i],
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", token, "--log-level", "error",
		}}
		t.Cleanup(p.Kill)
		c.members = append(c.members, p)
	}
	// All at once: a member alone has no quorum and never serves.
	for _, p := range c.members {
		p.spawn()
	}
	for _, p := range c.members {
		p.waitReady()
	}
	return c
}

// Endpoints are the members' client URLs, in member order.
func (c *Cluster) Endpoints() []string {
	eps := make([]string, len(c.members))
	for i, p := range c.members {
		eps[i] = p.Endpoint()
	}
	return eps
}

// Member is member i (0-based): Kill it, Start it again.
func (c *Cluster) Member(i int) *Proc { return c.members[i] }

// Leader returns the index of the member that leads, as the members that
// answer see it, waiting (up to timeout) until one does; a killed member
// does not count.
func (c *Cluster) Leader(timeout time.Duration) int {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for {
		i, err := c.leader()
		if err == nil {
			return i
		}
		last = err
		if time.Now().After(deadline) {
			c.t.Fatalf("no etcd leader within %s: %v", timeout, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// leader asks every running member for its status.
func (c *Cluster) leader() (int, error) {
	var errs []string
	for i, p := range c.members {
		if !p.running() {
			continue
		}
		st, err := c.status(i)
		if err != nil {
			errs = append(errs, fmt.Sprintf("m%d: %v", i, err))
			continue
		}
		if st.Leader != 0 && st.Leader == st.Header.MemberId {
			return i, nil
		}
	}
	if len(errs) > 0 {
		return -1, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return -1, fmt.Errorf("no running member leads")
}

// status is member i's maintenance Status.
func (c *Cluster) status(i int) (*clientv3.StatusResponse, error) {
	cli, err := c.client(i)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return cli.Status(ctx, c.members[i].Endpoint())
}

// MoveLeader hands the leadership from the current leader to member to,
// and waits until member to leads.
func (c *Cluster) MoveLeader(to int) {
	c.t.Helper()
	from := c.Leader(10 * time.Second)
	if from == to {
		return
	}
	st, err := c.status(to)
	if err != nil {
		c.t.Fatalf("status of etcd member m%d: %v", to, err)
	}
	cli, err := c.client(from) // only the leader takes MoveLeader
	if err != nil {
		c.t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.MoveLeader(ctx, st.Header.MemberId); err != nil {
		c.t.Fatalf("move the etcd leadership from m%d to m%d: %v", from, to, err)
	}
	if got := c.Leader(10 * time.Second); got != to {
		c.t.Fatalf("etcd member m%d leads after the move to m%d", got, to)
	}
}

// client dials member i alone.
func (c *Cluster) client(i int) (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.members[i].Endpoint()}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, fmt.Errorf("etcd client of m%d: %w", i, err)
	}
	return cli, nil
}

// running says whether the process was started and not killed since.
func (p *Proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil
}
