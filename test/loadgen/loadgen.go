// Package loadgen simulates a fleet of mpfleet agents in one process, for
// scale benchmarks: each agent on its own gRPC connection and
// AgentService.Connect stream to a real controller, speaking the protocol
// as the real agent does (a hello with facts, a report after each desired
// configuration, periodic health reports, commit-confirmed nonces if asked)
// with no kernel behind it — it reports what it received as applied. For
// the do-it-yourself baseline, the same fleet instead holds one etcd watch
// per agent (its own etcd client each) on a key holding the desired
// configuration.
//
// Every agent's first receipt of every revision is recorded, so that a
// driver can compute how long a change took to reach the whole fleet; the
// program mpfleet-loadgen (Run) serves them over HTTP and can print them.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/mpfleet/mpfleet/internal/policy"
	"google.golang.org/grpc/credentials"
)

// Config configures a simulated fleet. Exactly one of Controller and
// EtcdEndpoints is set.
type Config struct {
	// Agents is the number of agents, host ids Prefix-First … Prefix-(First+Agents-1).
	Agents int
	Prefix string
	First  int
	// Labels are every agent's labels (so that they fall in a group).
	Labels map[string]string

	// Controller is the controller's address, host:port.
	Controller string
	// Credentials, if not nil, secure the connections (else plaintext).
	Credentials credentials.TransportCredentials
	// Token, if not nil, returns the bearer token of a host ("" for none).
	Token func(host string) string
	// ReportInterval is how often an agent sends a health report (0: never).
	ReportInterval time.Duration
	// Confirm makes an agent report APPLYING and ask the controller to echo
	// a nonce before it reports a new revision IN_SYNC, as a real agent
	// applying a change does (commit confirmed).
	Confirm bool
	// Events makes an agent send an APPLIED event for each new revision,
	// as a real agent does (each an audit log write).
	Events bool
	// Silent makes an agent send nothing after its hello: no reports, so
	// that a run can tell the fan-out's cost from the reports'.
	Silent bool

	// EtcdEndpoints are etcd's client URLs, for the baseline.
	EtcdEndpoints []string
	// EtcdKey is the key every agent watches: a DesiredConfig, encoded.
	EtcdKey string
	// EtcdStatusPrefix, if not empty, makes every agent put its status
	// (a Host, encoded) at EtcdStatusPrefix+host after each revision, as
	// the hub's status write does.
	EtcdStatusPrefix string

	// StartConcurrency bounds the agents in their first connection attempt
	// at once (default 64); reconnects are not bounded.
	StartConcurrency int
	// BackoffMin and BackoffMax bound the reconnect backoff, full jitter
	// as the real agent's (default 200ms and 30s).
	BackoffMin, BackoffMax time.Duration
	// ConnectTimeout bounds one connection attempt (default 10s).
	ConnectTimeout time.Duration

	// OnReceipt, if not nil, is called on every first receipt of a
	// revision by an agent.
	OnReceipt func(Receipt)
	// Log receives connection errors at debug level (default: discard).
	Log *slog.Logger
}

// HostID returns the host id of agent i (from 0) of c.
func (c *Config) HostID(i int) string { return c.Prefix + "-" + strconv.Itoa(c.First+i) }

// Validate checks c, naming the field at fault.
func (c *Config) Validate() error {
	switch {
	case c.Agents <= 0:
		return fmt.Errorf("agents: %d; must be positive", c.Agents)
	case c.First < 0:
		return fmt.Errorf("first: %d; must not be negative", c.First)
	case (c.Controller == "") == (len(c.EtcdEndpoints) == 0):
		return errors.New("controller, etcd endpoints: give exactly one")
	case len(c.EtcdEndpoints) > 0 && c.EtcdKey == "":
		return errors.New("etcd key: required with etcd endpoints")
	case c.Silent && (c.Confirm || c.Events):
		return errors.New("silent: an agent that reports nothing cannot confirm or send events")
	case c.ReportInterval < 0:
		return fmt.Errorf("report interval: %v; must not be negative", c.ReportInterval)
	}
	for _, i := range []int{0, c.Agents - 1} {
		if id := c.HostID(i); !policy.ValidHostID(id) {
			return fmt.Errorf("prefix: %q makes host id %q, not a valid host id: use lower-case letters, digits, '-' and '.', starting with a letter or digit", c.Prefix, id)
		}
	}
	var vs policy.Violations
	policy.ValidateLabels(&vs, "labels", c.Labels)
	if len(vs) > 0 {
		return errors.New(vs[0].String())
	}
	return nil
}

func (c *Config) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.BackoffMin, 200*time.Millisecond)
	def(&c.BackoffMax, 30*time.Second)
	def(&c.ConnectTimeout, 10*time.Second)
	if c.StartConcurrency <= 0 {
		c.StartConcurrency = 64
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
}

// Fleet is a running simulated fleet.
type Fleet struct {
	cfg    Config
	rec    *recorder
	start  chan struct{} // semaphore of first connection attempts
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Start starts the agents of cfg; they run until Close.
func Start(cfg Config) (*Fleet, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.defaults()
	mode := "controller"
	if len(cfg.EtcdEndpoints) > 0 {
		mode = "etcd"
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &Fleet{cfg: cfg, rec: newRecorder(mode, cfg.Agents, cfg.OnReceipt), start: make(chan struct{}, cfg.StartConcurrency), cancel: cancel}
	for i := range cfg.Agents {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			if mode == "etcd" {
				f.watchAgent(ctx, i)
			} else {
				(&hubAgent{f: f, idx: i, id: cfg.HostID(i)}).run(ctx)
			}
		}()
	}
	return f, nil
}

// Close stops every agent and waits for them.
func (f *Fleet) Close() {
	f.cancel()
	f.wg.Wait()
}

// Status returns the fleet's summary.
func (f *Fleet) Status() Status { return f.rec.status() }

// Receipts returns the receipt times of group's revision, Unix
// nanoseconds, one per agent that received it.
func (f *Fleet) Receipts(group string, rev int64) []int64 { return f.rec.receipts(group, rev) }

// WaitRevision waits until n agents hold group's revision (n <= 0: all).
func (f *Fleet) WaitRevision(ctx context.Context, group string, rev int64, n int) (RevisionStatus, error) {
	if n <= 0 {
		n = f.cfg.Agents
	}
	return f.rec.waitRevision(ctx, group, rev, n)
}

// WaitConnected waits until n agents (n <= 0: all) are served by sessions
// begun after since (zero: any).
func (f *Fleet) WaitConnected(ctx context.Context, n int, since time.Time) error {
	if n <= 0 {
		n = f.cfg.Agents
	}
	return f.rec.waitConnected(ctx, n, since)
}

// firstAttempt takes a place among the first connection attempts; release
// gives it back (at most once).
func (f *Fleet) firstAttempt(ctx context.Context) (release func(), ok bool) {
	select {
	case f.start <- struct{}{}:
	case <-ctx.Done():
		return func() {}, false
	}
	var once sync.Once
	return func() { once.Do(func() { <-f.start }) }, true
}

// backoff returns the wait before reconnect attempt n (from 0): uniformly
// random between 0 and min(BackoffMax, BackoffMin·2ⁿ), as the real agent.
func (f *Fleet) backoff(n int) time.Duration {
	lo, hi := f.cfg.BackoffMin, f.cfg.BackoffMax
	ceil := hi
	if n < 32 && lo<<n > 0 && lo<<n < hi {
		ceil = lo << n
	}
	return time.Duration(rand.Int64N(int64(ceil) + 1))
}

// address returns agent i's address in 198.18.0.0/15.
func (f *Fleet) address(i int) netip.Addr {
	// 198.18.0.0/15: the first two bytes are 198 and 18 or 19.
	n := uint32(f.cfg.First+i+1) % (1 << 17)
	return netip.AddrFrom4([4]byte{198, byte(18 + n>>16), byte(n >> 8), byte(n)})
}
