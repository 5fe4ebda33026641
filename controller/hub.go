package controller

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mpfleet/mpfleet/internal/policy"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// HubOptions tune the agent hub.
type HubOptions struct {
	// Replica names this controller process in session keys (default: a
	// random id).
	Replica string
	// SessionTTL is the lease TTL of session keys (default 10s): how long a
	// dead replica's hosts still show as connected.
	SessionTTL time.Duration
	// HealthWriteInterval bounds how often a host's status is written when
	// only its health counters changed (default 15s).
	HealthWriteInterval time.Duration
	// HelloTimeout bounds the wait for an agent's first message (default 10s).
	HelloTimeout time.Duration
}

// hub is the controller side of AgentService: it holds the agents' streams,
// assigns hosts to groups, sends each its desired configuration — encoded
// once per group and revision, the same bytes to every host of the group —
// and records what they report.
type hub struct {
	c    *Controller
	opts HubOptions
	log  *slog.Logger

	mu       sync.Mutex
	sessions map[string]*session
	groups   map[string]*pb.Group
	targets  map[string]*pb.HostTargets
	prepared map[string]*grpc.PreparedMsg // desired key → encoded message
	lease    clientv3.LeaseID
	ready    chan struct{}
	closing  bool

	encodes atomic.Int64 // desired messages encoded (for tests and metrics)

	limMu  sync.Mutex
	limits map[string]*hostLimits // by host id, across its streams
}

func newHub(c *Controller, opts HubOptions) *hub {
	if opts.Replica == "" {
		opts.Replica = fmt.Sprintf("replica-%d", time.Now().UnixNano())
	}
	if opts.SessionTTL == 0 {
		opts.SessionTTL = 10 * time.Second
	}
	if opts.HealthWriteInterval == 0 {
		opts.HealthWriteInterval = 15 * time.Second
	}
	if opts.HelloTimeout == 0 {
		opts.HelloTimeout = 10 * time.Second
	}
	return &hub{
		c: c, opts: opts, log: c.log.With("component", "hub"),
		sessions: map[string]*session{},
		groups:   map[string]*pb.Group{},
		targets:  map[string]*pb.HostTargets{},
		prepared: map[string]*grpc.PreparedMsg{},
		ready:    make(chan struct{}),
	}
}

// run keeps the session lease alive and follows group changes until ctx ends.
func (h *hub) run(ctx context.Context) {
	leaseDone := make(chan struct{})
	go func() { defer close(leaseDone); h.keepLease(ctx) }()
	defer func() { <-leaseDone }()
	// Subscribe only once the cache holds etcd's state, so that the first
	// snapshot of groups is real.
	if err := h.c.cache.WaitRevision(ctx, 1); err != nil {
		return
	}
	for ctx.Err() == nil {
		sub, groups, _, _ := h.c.cache.Subscribe(4096)
		h.setGroups(groups, h.c.cache.Targets())
		err := h.follow(ctx, sub)
		sub.Close()
		if ctx.Err() == nil {
			h.log.Info("re-reading groups", "reason", err)
		}
	}
}

func (h *hub) follow(ctx context.Context, sub *store.Subscription) error {
	dirty := false // groups or targets changed since the last reassign
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-sub.Done():
			return sub.Err()
		case ev := <-sub.C():
			h.mu.Lock()
			switch {
			case ev.LabelsHost != "":
				h.relabelLocked(ev.LabelsHost, ev.Labels, ev.Labels != nil)
			case ev.GroupID != "" && ev.Group == nil:
				delete(h.groups, ev.GroupID)
				dirty = true
			case ev.GroupID != "":
				h.groups[ev.GroupID] = ev.Group
				dirty = true
			case ev.TargetsGroup != "" && ev.Targets == nil:
				delete(h.targets, ev.TargetsGroup)
				dirty = true
			case ev.TargetsGroup != "":
				h.targets[ev.TargetsGroup] = ev.Targets
				dirty = true
			}
			// Reassign once the whole transaction is in: a policy change
			// and the host targets of the rollout it starts are one write,
			// and reassigning between them would send every host the new
			// revision for a moment.
			if dirty && ev.Last {
				h.reassignLocked()
				dirty = false
			}
			h.mu.Unlock()
		}
	}
}

func (h *hub) setGroups(groups map[string]*pb.Group, targets map[string]*pb.HostTargets) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.groups, h.targets = groups, targets
	h.reassignLocked()
	select {
	case <-h.ready:
	default:
		close(h.ready)
	}
}

// closeAll ends every agent stream (the controller is shutting down; agents
// keep their kernel state and reconnect) and refuses new ones.
func (h *hub) closeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closing = true
	for _, s := range h.sessions {
		s.cancel()
	}
}

// labelsOf returns the labels that choose the group of host id: without
// authentication the agent's own; with it, those an operator gave the host,
// else those bound in the agent's credential — never what the agent says.
func (h *hub) labelsOf(id string, caller Caller, reported map[string]string) map[string]string {
	if caller.Anonymous {
		return reported
	}
	if l, ok := h.c.cache.HostLabels(id); ok {
		return l
	}
	return caller.Labels
}

// relabel takes an operator's new labels for host id: a connected host is
// reassigned at once and its status rewritten. Called with h.mu held.
func (h *hub) relabelLocked(id string, labels map[string]string, given bool) {
	s := h.sessions[id]
	if s == nil || s.anonymous {
		return
	}
	if !given {
		labels = s.bound
	}
	s.mu.Lock()
	s.labels = labels
	st := proto.Clone(s.status).(*pb.Host)
	st.Labels = labels
	s.status = st
	s.mu.Unlock()
	key, d := desiredFor(h.groups, h.targets, s.id, labels)
	s.setDesired(key, d)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = h.writeStatus(ctx, s, true)
	}()
}

// desiredFor returns the desired configuration of a host with labels, and
// the key under which it is encoded once.
func desiredFor(groups map[string]*pb.Group, targets map[string]*pb.HostTargets, hostID string, labels map[string]string) (string, *pb.DesiredConfig) {
	ids := policy.Assign(groups, labels)
	switch len(ids) {
	case 0:
		return "unmanaged", &pb.DesiredConfig{Assignment: pb.DesiredConfig_ASSIGNMENT_UNMANAGED}
	case 1:
		g := groups[ids[0]]
		rev, pol := hostTarget(g, targets[ids[0]], hostID)
		return fmt.Sprintf("managed/%s/%d", ids[0], rev), &pb.DesiredConfig{
			Assignment: pb.DesiredConfig_ASSIGNMENT_MANAGED,
			Group:      g.GetName(),
			Revision:   rev,
			Policy:     pol,
		}
	default:
		names := make([]string, len(ids))
		for i, id := range ids {
			names[i] = store.GroupName(id)
		}
		return "conflict/" + strings.Join(ids, ","), &pb.DesiredConfig{
			Assignment:        pb.DesiredConfig_ASSIGNMENT_CONFLICT,
			ConflictingGroups: names,
		}
	}
}

// reassignLocked recomputes every session's desired configuration and wakes
// the senders of those that changed. Slow agents are not waited for: each
// sender picks up only the latest state when it gets to it.
func (h *hub) reassignLocked() {
	used := map[string]bool{}
	for _, s := range h.sessions {
		key, d := desiredFor(h.groups, h.targets, s.id, s.labels)
		used[key] = true
		s.setDesired(key, d)
	}
	for k := range h.prepared {
		if !used[k] {
			delete(h.prepared, k)
		}
	}
}

// prepare returns the encoded message for key, encoding it once (with the
// codec of the first stream that needs it; the bytes are the same for all).
func (h *hub) prepare(stream grpc.ServerStream, key string, d *pb.DesiredConfig) (*grpc.PreparedMsg, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if pm, ok := h.prepared[key]; ok {
		return pm, nil
	}
	pm := &grpc.PreparedMsg{}
	if err := pm.Encode(stream, &pb.ConnectResponse{Kind: &pb.ConnectResponse_Desired{Desired: d}}); err != nil {
		return nil, err
	}
	h.encodes.Add(1)
	h.prepared[key] = pm
	return pm, nil
}

func (h *hub) keepLease(ctx context.Context) {
	ttl := int64(h.opts.SessionTTL / time.Second)
	if ttl < 2 {
		ttl = 2
	}
	for ctx.Err() == nil {
		id, err := h.c.store.Grant(ctx, ttl)
		if err != nil {
			h.log.Warn("session lease", "err", err)
			sleepCtx(ctx, time.Second)
			continue
		}
		ka, err := h.c.store.Client().KeepAlive(ctx, id)
		if err != nil {
			h.log.Warn("session lease keepalive", "err", err)
			sleepCtx(ctx, time.Second)
			continue
		}
		h.mu.Lock()
		h.lease = id
		ids := make([]string, 0, len(h.sessions))
		for hid := range h.sessions {
			ids = append(ids, hid)
		}
		h.mu.Unlock()
		// Re-announce sessions held before a lease was lost.
		for _, hid := range ids {
			if err := h.c.store.PutSession(ctx, hid, h.opts.Replica, id); err != nil {
				h.log.Warn("re-announce session", "host", hid, "err", err)
			}
		}
		for range ka {
		}
		if ctx.Err() == nil {
			h.log.Warn("session lease lost; granting a new one")
		}
	}
	// Revoke so that our hosts show as disconnected at once.
	h.mu.Lock()
	id := h.lease
	h.mu.Unlock()
	if id != 0 {
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, _ = h.c.store.Client().Revoke(rctx, id)
		cancel()
	}
}

func (h *hub) currentLease(ctx context.Context) (clientv3.LeaseID, error) {
	for {
		h.mu.Lock()
		id := h.lease
		h.mu.Unlock()
		if id != 0 {
			return id, nil
		}
		if !sleepCtx(ctx, 20*time.Millisecond) {
			return 0, ctx.Err()
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// session is one connected agent.
type session struct {
	id        string
	labels    map[string]string // the labels that choose its group
	cancel    context.CancelFunc
	peer      string
	anonymous bool              // no authentication: the agent's labels choose
	bound     map[string]string // labels bound in its credential

	mu          sync.Mutex
	desiredKey  string
	desired     *pb.DesiredConfig
	notify      chan struct{} // cap 1: the desired configuration changed
	confirms    chan uint64
	status      *pb.Host
	lastWrite   time.Time
	lastWritten *pb.Host
}

func (s *session) setDesired(key string, d *pb.DesiredConfig) {
	s.mu.Lock()
	changed := key != s.desiredKey
	s.desiredKey, s.desired = key, d
	s.mu.Unlock()
	if changed {
		select {
		case s.notify <- struct{}{}:
		default:
		}
	}
}

var hostIDRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$`)

// connect serves one agent's stream.
func (h *hub) connect(stream pb.AgentService_ConnectServer) error {
	ctx := stream.Context()
	caller := callerFrom(ctx)
	first := make(chan *pb.ConnectRequest, 1)
	errc := make(chan error, 1)
	go func() {
		m, err := stream.Recv()
		if err != nil {
			errc <- err
			return
		}
		first <- m
	}()
	var hello *pb.AgentHello
	select {
	case m := <-first:
		hello = m.GetHello()
	case err := <-errc:
		return err
	case <-time.After(h.opts.HelloTimeout):
		return status.Error(codes.DeadlineExceeded, "no hello within "+h.opts.HelloTimeout.String())
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := validateHello(hello); err != nil {
		return toStatus(err)
	}
	id := hello.GetHostId()
	if !caller.mayBeHost(id) {
		return status.Errorf(codes.PermissionDenied, "%s may not speak for host %q (it is bound to %s)", caller.Actor, id, strings.Join(caller.Hosts, ", "))
	}
	if !h.limitsOf(id).connect.Allow() {
		return status.Errorf(codes.ResourceExhausted, "host %q reconnects too often (more than %d in a burst, then one every %v); back off", id, connectBurst, connectEvery)
	}
	select {
	case <-h.ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	lease, err := h.currentLease(ctx)
	if err != nil {
		return err
	}

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	labels := h.labelsOf(id, caller, hello.GetLabels())
	s := &session{
		id: id, labels: labels, cancel: cancel, peer: caller.Peer, anonymous: caller.Anonymous, bound: caller.Labels,
		notify:   make(chan struct{}, 1),
		confirms: make(chan uint64, 16),
		status: &pb.Host{
			Name: store.HostName(id), Labels: labels, ReportedLabels: hello.GetLabels(), Facts: hello.GetFacts(),
			AgentVersion: hello.GetAgentVersion(), AppliedRevision: hello.GetAppliedRevision(),
			DryRun: hello.GetDryRun(), LastSeenTime: timestamppb.Now(),
		},
	}
	h.mu.Lock()
	if h.closing {
		h.mu.Unlock()
		return status.Error(codes.Unavailable, "controller shutting down")
	}
	if old := h.sessions[id]; old != nil {
		if caller.Anonymous {
			// Nobody is authenticated: anyone could claim the host id, so
			// nobody evicts a stream that is alive.
			h.mu.Unlock()
			return status.Errorf(codes.AlreadyExists, "host %q is connected (from %s); a second stream is refused while the first lives", id, old.peer)
		}
		old.cancel() // the host's own credential reconnects: the newest wins
	}
	h.sessions[id] = s
	key, d := desiredFor(h.groups, h.targets, s.id, s.labels)
	s.setDesired(key, d)
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		if h.sessions[id] == s {
			delete(h.sessions, id)
		}
		h.mu.Unlock()
		dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer dcancel()
		if err := h.c.store.DeleteSession(dctx, id, h.opts.Replica); err != nil {
			h.log.Warn("end session", "host", id, "err", err)
		}
	}()
	// Keep the last reported state the agent had (a restart of the controller
	// changes nothing on the hosts) but take the new facts.
	if prev, err := h.c.store.GetHost(ctx, id); err == nil {
		st := proto.Clone(prev).(*pb.Host)
		st.Labels, st.Facts, st.AgentVersion, st.DryRun = s.status.Labels, s.status.Facts, s.status.AgentVersion, s.status.DryRun
		st.ReportedLabels = s.status.ReportedLabels
		st.LastSeenTime = s.status.LastSeenTime
		if st.AppliedRevision == 0 {
			st.AppliedRevision = hello.GetAppliedRevision()
		}
		s.status = st
	}
	if err := h.writeStatus(ctx, s, true); err != nil {
		return toStatus(err)
	}
	if err := h.c.store.PutSession(ctx, id, h.opts.Replica, lease); err != nil {
		return toStatus(err)
	}
	h.log.Info("agent connected", "host", id, "peer", caller.Peer)

	sendErr := make(chan error, 1)
	go func() { sendErr <- h.sender(sctx, stream, s) }()
	recvErr := make(chan error, 1)
	go func() { recvErr <- h.receiver(sctx, stream, s, caller) }()
	select {
	case err = <-sendErr:
	case err = <-recvErr:
	case <-sctx.Done():
		h.mu.Lock()
		closing := h.closing
		h.mu.Unlock()
		switch {
		case ctx.Err() != nil:
			err = ctx.Err()
		case closing:
			err = status.Error(codes.Unavailable, "controller shutting down")
		default:
			err = status.Error(codes.Aborted, "replaced by a newer connection of the same host")
		}
	}
	cancel()
	h.log.Info("agent disconnected", "host", id, "err", err)
	return err
}

// sender sends the latest desired configuration whenever it changes, and
// confirm echoes.
func (h *hub) sender(ctx context.Context, stream pb.AgentService_ConnectServer, s *session) error {
	sent := ""
	for {
		s.mu.Lock()
		key, d := s.desiredKey, s.desired
		s.mu.Unlock()
		if key != sent {
			pm, err := h.prepare(stream, key, d)
			if err != nil {
				return err
			}
			if err := stream.SendMsg(pm); err != nil {
				return err
			}
			sent = key
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.notify:
		case n := <-s.confirms:
			if err := stream.Send(&pb.ConnectResponse{Kind: &pb.ConnectResponse_Confirmed{Confirmed: &pb.Confirm{Nonce: n}}}); err != nil {
				return err
			}
		}
	}
}

var eventActions = map[pb.AgentEvent_Kind]struct {
	action string
	result pb.AuditResult
}{
	pb.AgentEvent_KIND_APPLIED:        {"agent.applied", pb.AuditResult_AUDIT_RESULT_SUCCESS},
	pb.AgentEvent_KIND_DRIFT_REPAIRED: {"agent.drift_repaired", pb.AuditResult_AUDIT_RESULT_SUCCESS},
	pb.AgentEvent_KIND_APPLY_FAILED:   {"agent.apply_failed", pb.AuditResult_AUDIT_RESULT_FAILURE},
	pb.AgentEvent_KIND_ROLLED_BACK:    {"agent.rolled_back", pb.AuditResult_AUDIT_RESULT_FAILURE},
	pb.AgentEvent_KIND_RESTORED:       {"agent.restored", pb.AuditResult_AUDIT_RESULT_SUCCESS},
}

func (h *hub) receiver(ctx context.Context, stream pb.AgentService_ConnectServer, s *session, caller Caller) error {
	// An agent reports a few events per reconcile; more than this is a bug or
	// an attack, and must not flood the audit log. The limit is the host's,
	// not the stream's: reconnecting does not reset it.
	events := h.limitsOf(s.id).events
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil // the agent closed its side: a normal end
		}
		if err != nil {
			return err
		}
		switch k := m.GetKind().(type) {
		case *pb.ConnectRequest_Report:
			if err := h.report(ctx, s, k.Report); err != nil {
				return err
			}
		case *pb.ConnectRequest_Event:
			ev := k.Event
			a, ok := eventActions[ev.GetKind()]
			if !ok {
				h.log.Warn("agent sent an event of unknown kind; ignored", "host", s.id, "kind", ev.GetKind())
				continue
			}
			if err := validateEvent(ev); err != nil {
				h.log.Warn("agent sent an invalid event; dropped", "host", s.id, "err", err)
				continue
			}
			if !events.Allow() {
				h.log.Warn("agent event rate exceeded; event dropped", "host", s.id, "kind", ev.GetKind())
				continue
			}
			h.recordEvent(ctx, s, caller, a.action, a.result, ev)
		case *pb.ConnectRequest_Confirm:
			select {
			case s.confirms <- k.Confirm.GetNonce():
			default: // the agent is flooding confirms; it will retry
			}
		case *pb.ConnectRequest_Hello:
			return status.Error(codes.InvalidArgument, "hello may only be the first message")
		default:
			h.log.Warn("agent sent an empty or unknown message; ignored", "host", s.id)
		}
	}
}

type agentService struct {
	pb.UnimplementedAgentServiceServer
	h *hub
}

func (a *agentService) Connect(stream pb.AgentService_ConnectServer) error {
	return a.h.connect(stream)
}
