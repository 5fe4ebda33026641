package controller

// The controller's health follows its store. A monitor probes etcd every
// second with AlarmList: the request goes through etcd's raft log, so an
// answer proves that the member reached has a leader and a quorum (a
// linearizable round trip, as `etcdctl endpoint health` makes), and it
// brings the cluster's alarms. The probe has a short timeout and asks for a
// leader (WithRequireLeader), so a partitioned member fails it at once.
//
//   - Two probes in a row without an answer, or one while the client has no
//     connection to any endpoint: the store is unreachable.
//     grpc.health.v1 turns NOT_SERVING and the store's guard (store.Guard)
//     fails every etcd request at once, so calls that need etcd fail with
//     UNAVAILABLE instead of waiting; calls answered from the cache (host
//     reads) go on with what it last saw. Before the monitor notices, the
//     guard's per-request limit (--etcd-request-timeout) bounds the wait.
//   - A NOSPACE alarm: NOT_SERVING; reads work, writes fail with
//     RESOURCE_EXHAUSTED. The leader (or any replica while nobody leads:
//     electing one takes writes) compacts, defragments and disarms the alarm
//     once the data fits the quota again (store.RecoverSpace), then prunes
//     the audit log at once.
//   - Another alarm (CORRUPT): NOT_SERVING until an operator clears it.
//   - A probe answered without alarms: SERVING again.
//
// (The client's connectivity state alone says nothing of a member cut off
// from its quorum, and a watch's progress notifications come every ten
// minutes by default: the probe decides, the connectivity state only
// shortens the wait when etcd is plainly gone.)

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mpfleet/mpfleet/internal/store"
	"github.com/mpfleet/mpfleet/internal/wait"
	etcdpb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

const (
	// defaultAuditMaxBytes is --audit-retention-bytes' default: a quarter of
	// etcd's default quota, which leaves room for the history between
	// compactions, the rest of the data and bbolt's overhead.
	defaultAuditMaxBytes = 512 << 20
	// minEtcdQuota is the smallest --etcd-quota-bytes taken.
	minEtcdQuota = 16 << 20
)

// StoreHealthOptions configure how the controller follows etcd.
type StoreHealthOptions struct {
	// Interval between probes (default 1s).
	Interval time.Duration
	// Timeout of one probe (default 2s).
	Timeout time.Duration
	// Failures is how many probes in a row must go unanswered for etcd to
	// count as unreachable (default 2: one lost probe is not an outage);
	// one is enough while the client has no connection at all.
	Failures int
	// RecoverInterval is the time between attempts to recover from a
	// NOSPACE alarm (default 5s).
	RecoverInterval time.Duration
	// RecoverTimeout bounds one attempt, defragmentation included (default
	// 10m).
	RecoverTimeout time.Duration
	// Guard, if set, guards the KV of the store's client: the monitor makes
	// it fail requests at once while etcd is unreachable.
	Guard *store.Guard
}

func (o *StoreHealthOptions) defaults() {
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Second
	}
	if o.Failures <= 0 {
		o.Failures = 2
	}
	if o.RecoverInterval <= 0 {
		o.RecoverInterval = 5 * time.Second
	}
	if o.RecoverTimeout <= 0 {
		o.RecoverTimeout = 10 * time.Minute
	}
}

type storeState int

const (
	storeOK storeState = iota
	storeUnreachable
	storeNoSpace
	storeAlarmed
)

func (s storeState) String() string {
	switch s {
	case storeOK:
		return "ok"
	case storeUnreachable:
		return "unreachable"
	case storeNoSpace:
		return "nospace"
	default:
		return "alarmed"
	}
}

// storeHealth is the monitor: the store's state, and the health servers
// that publish it.
type storeHealth struct {
	st   *store.Store
	log  *slog.Logger
	opts StoreHealthOptions
	kick chan struct{}

	mu      sync.Mutex
	state   storeState
	since   time.Time
	fails   int
	failed  time.Time // when the first of the unanswered probes was sent
	servers []*health.Server
	changed chan struct{} // closed and replaced on every change of state
}

func newStoreHealth(st *store.Store, log *slog.Logger, opts StoreHealthOptions) *storeHealth {
	opts.defaults()
	return &storeHealth{
		st: st, log: log, opts: opts,
		kick:    make(chan struct{}, 1),
		since:   time.Now(),
		changed: make(chan struct{}),
	}
}

// attach publishes the state on hs from now on.
func (h *storeHealth) attach(hs *health.Server) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.servers = append(h.servers, hs)
	hs.SetServingStatus("", h.servingLocked())
}

// publish sets the state on every attached health server again.
func (h *storeHealth) publish() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.publishLocked()
}

func (h *storeHealth) publishLocked() {
	for _, hs := range h.servers {
		hs.SetServingStatus("", h.servingLocked())
	}
}

func (h *storeHealth) servingLocked() healthpb.HealthCheckResponse_ServingStatus {
	if h.state == storeOK {
		return healthpb.HealthCheckResponse_SERVING
	}
	return healthpb.HealthCheckResponse_NOT_SERVING
}

// current returns the state and a channel closed when it changes.
func (h *storeHealth) current() (storeState, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.state, h.changed
}

// probeNow asks for a probe without waiting for the interval.
func (h *storeHealth) probeNow() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// run probes until ctx ends.
func (h *storeHealth) run(ctx context.Context) {
	t := time.NewTimer(h.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-h.kick:
			if !t.Stop() {
				select {
				case <-t.C:
				default:
				}
			}
		}
		next := h.opts.Interval
		if !h.probe(ctx) {
			next = min(next, failedProbeRetry) // confirm an outage soon
		}
		t.Reset(next)
	}
}

// failedProbeRetry is how soon a probe follows an unanswered one.
const failedProbeRetry = 250 * time.Millisecond

// probe probes etcd once and reports whether it answered.
func (h *storeHealth) probe(ctx context.Context) bool {
	sent := time.Now()
	pctx, cancel := context.WithTimeout(ctx, h.opts.Timeout)
	alarms, err := h.st.Alarms(pctx)
	cancel()
	if ctx.Err() != nil {
		return true
	}
	if err != nil {
		// With no connection to any endpoint the outage needs no second
		// probe to confirm it.
		noConn := h.st.Client().ActiveConnection().GetState() != connectivity.Ready
		h.unanswered(sent, err, noConn)
		return false
	}
	h.answered(alarms)
	return true
}

func (h *storeHealth) unanswered(sent time.Time, err error, noConn bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fails == 0 {
		h.failed = sent
	}
	h.fails++
	if (h.fails < h.opts.Failures && !noConn) || h.state == storeUnreachable {
		return
	}
	h.setLocked(storeUnreachable)
	if h.opts.Guard != nil {
		h.opts.Guard.SetDown(fmt.Errorf("no answer to health probes since %s: %w", h.failed.Format(time.RFC3339), err))
	}
	h.log.Error("etcd is unreachable: health is NOT_SERVING, and calls that need etcd fail with UNAVAILABLE until it answers again",
		"err", err, "probes_unanswered", h.fails)
}

func (h *storeHealth) answered(alarms []*etcdpb.AlarmMember) {
	next := storeOK
	var nospace, other []string
	for _, a := range alarms {
		m := strconv.FormatUint(a.MemberID, 16)
		if a.Alarm == etcdpb.AlarmType_NOSPACE {
			nospace = append(nospace, m)
			next = storeNoSpace
		} else {
			other = append(other, a.Alarm.String()+"@"+m)
		}
	}
	if len(other) > 0 && next == storeOK {
		next = storeAlarmed
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fails = 0
	prev, since := h.state, h.since
	if next == prev {
		return
	}
	h.setLocked(next)
	if prev == storeUnreachable && h.opts.Guard != nil {
		h.opts.Guard.SetDown(nil)
	}
	switch next {
	case storeOK:
		h.log.Info("etcd is healthy again: health is SERVING", "was", prev.String(), "for", time.Since(since).Round(time.Millisecond))
	case storeNoSpace:
		h.log.Error("etcd is out of space (NOSPACE alarm): health is NOT_SERVING and writes fail with RESOURCE_EXHAUSTED; "+
			"the controller compacts, defragments and disarms the alarm as soon as the data fits the quota (see docs/operations.md, \"etcd out of space\")",
			"members", strings.Join(nospace, ","), "other_alarms", strings.Join(other, ","))
	default:
		h.log.Error("etcd raised an alarm: health is NOT_SERVING until an operator clears it (etcdctl alarm list)", "alarms", strings.Join(other, ","))
	}
}

func (h *storeHealth) setLocked(s storeState) {
	h.state, h.since = s, time.Now()
	h.publishLocked()
	close(h.changed)
	h.changed = make(chan struct{})
}

// runStore follows the store until ctx ends: the monitor, and recovery
// from NOSPACE.
func (c *Controller) runStore(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); c.sh.run(ctx) }()
	c.runSpaceRecovery(ctx)
	wg.Wait()
}

// runSpaceRecovery recovers from every NOSPACE alarm the monitor sees.
func (c *Controller) runSpaceRecovery(ctx context.Context) {
	attempt := 0
	for {
		state, changed := c.sh.current()
		if state != storeNoSpace {
			attempt = 0
			select {
			case <-ctx.Done():
				return
			case <-changed:
			}
			continue
		}
		if c.mayRecoverSpace(ctx) {
			c.recoverSpace(ctx, attempt)
			attempt++
		}
		if !wait.Sleep(ctx, c.sh.opts.RecoverInterval) {
			return
		}
	}
}

// mayRecoverSpace says whether this replica recovers: the leader does, and
// every replica does while nobody leads (electing a leader takes a lease
// and a put, which etcd refuses while the alarm is raised). Two replicas
// recovering at once only repeat each other's work.
func (c *Controller) mayRecoverSpace(ctx context.Context) bool {
	if c.leading.Load() {
		return true
	}
	resp, err := c.store.Client().Get(ctx, c.store.ElectionPrefix()+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	return err == nil && resp.Count == 0
}

func (c *Controller) recoverSpace(ctx context.Context, attempt int) {
	rctx, cancel := context.WithTimeout(ctx, c.sh.opts.RecoverTimeout)
	defer cancel()
	rep, err := c.store.RecoverSpace(rctx)
	for _, m := range rep.Members {
		if m.Defragmented > 0 {
			c.log.Info("etcd member defragmented", "endpoint", m.Endpoint, "member", strconv.FormatUint(m.MemberID, 16),
				"size_before", m.Size, "in_use", m.InUse, "size_after", m.Defragmented, "quota", m.Quota)
		}
	}
	if err != nil {
		// Once a minute is enough to say so.
		if ctx.Err() != nil || attempt%max(1, int(time.Minute/c.sh.opts.RecoverInterval)) != 0 {
			return
		}
		if errors.Is(err, store.ErrNoSpace) {
			c.log.Error("etcd is still out of space: the NOSPACE alarm stays until the data fits the quota; delete data or raise the quota (see docs/operations.md, \"etcd out of space\")",
				"err", err, "compacted_to", rep.CompactedTo)
		} else {
			c.log.Error("etcd is out of space and recovering from it failed; retrying", "err", err)
		}
		return
	}
	if !rep.Disarmed {
		return
	}
	c.log.Info("etcd space recovered: history compacted, members defragmented, NOSPACE alarm disarmed", "compacted_to", rep.CompactedTo)
	c.sh.probeNow()
	select { // the leader prunes the audit log at once
	case c.pruneNow <- struct{}{}:
	default:
	}
}

// storeStatus is the gRPC status of an error of etcd's: RESOURCE_EXHAUSTED
// when it is out of space, UNAVAILABLE when it is unreachable; nil for
// other errors and for errors that already are a status.
func storeStatus(err error) error {
	if _, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		return nil
	}
	err = store.Classify(err)
	switch {
	case errors.Is(err, store.ErrNoSpace):
		return status.Error(codes.ResourceExhausted, store.ErrNoSpace.Error()+": "+err.Error()+
			" (writes fail until the controller has compacted and defragmented etcd and disarmed the alarm)")
	case errors.Is(err, store.ErrUnavailable):
		return status.Error(codes.Unavailable, store.ErrUnavailable.Error()+": "+err.Error())
	}
	return nil
}

// byteSize is a flag of a number of bytes: 2GiB, 512MiB, 64KiB, 1GB, or a
// plain number.
type byteSize uint64

var byteUnits = []struct {
	unit string
	n    uint64
}{
	{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
	{"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"B", 1},
}

func (b *byteSize) Set(s string) error {
	t := strings.TrimSpace(s)
	mul := uint64(1)
	for _, u := range byteUnits {
		if len(t) > len(u.unit) && strings.EqualFold(t[len(t)-len(u.unit):], u.unit) {
			t, mul = strings.TrimSpace(t[:len(t)-len(u.unit)]), u.n
			break
		}
	}
	n, err := strconv.ParseUint(t, 10, 64)
	if err != nil || n > ^uint64(0)/mul {
		return fmt.Errorf("%q is not a size: want a number of bytes, or one with a unit (KiB, MiB, GiB, TiB; KB, MB, GB, TB)", s)
	}
	*b = byteSize(n * mul)
	return nil
}

// String renders the size in the largest binary unit that holds it exactly.
func (b *byteSize) String() string {
	n := uint64(*b)
	for _, u := range byteUnits[:4] {
		if n >= u.n && n%u.n == 0 {
			return strconv.FormatUint(n/u.n, 10) + u.unit
		}
	}
	return strconv.FormatUint(n, 10)
}

func (b *byteSize) Type() string { return "bytes" }
