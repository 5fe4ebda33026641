package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	// Replica names this controller process in session keys and in the
	// refusal of a host connected elsewhere (default: host name, process
	// id and a random part, unique to the process).
	Replica string
	// SessionTTL is the TTL of the replica's session lease (default 10s,
	// at least 2s), which holds its session keys and its place in the
	// leader election (replica.go): how long a dead replica's hosts still
	// show as connected, and are refused by the other replicas
	// (hubowner.go), and how long it may still be taken for the leader.
	SessionTTL time.Duration
	// HealthWriteInterval bounds how often a host's status is written when
	// only its health counters changed (default 15s).
	HealthWriteInterval time.Duration
	// StatusFailTimeout is how long a host's status may fail to be stored
	// (the writes are retried) before its agent's stream ends with
	// UNAVAILABLE (default 30s); while the store is known unhealthy, the
	// first failure ends it.
	StatusFailTimeout time.Duration
	// HelloTimeout bounds the wait for an agent's first message (default 10s).
	HelloTimeout time.Duration
	// DrainRate is how many agents a stopping replica tells to move to
	// another replica per second (hubdrain.go); 0 ends every stream at
	// once.
	DrainRate float64
	// DrainTimeout bounds the drain; the streams still open then are ended
	// (default 30s).
	DrainTimeout time.Duration
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
	// prepared is under prepMu, not mu: a sender takes a stream's
	// message while a reassign (under mu) still wakes the others.
	prepMu   sync.Mutex
	prepared map[string]*grpc.PreparedMsg // desired key → encoded message
	lease    clientv3.LeaseID
	ready    chan struct{}
	closing  bool

	encodes atomic.Int64 // desired messages encoded (for tests and metrics)
	reports atomic.Int64 // agent reports taken in (for tests and metrics)

	sends  *sendPool      // the agent streams' shared senders (hubsend.go)
	writes *hostWriter    // statuses, claims and releases, batched (hubbatch.go)
	events *auditAppender // agent events, batched (hubaudit.go)

	hostLocks map[string]*hostLock // serialize a host's attach and detach
	left      chan struct{}        // cap 1: a session left (hubdrain.go)

	limMu  sync.Mutex
	limits map[string]*hostLimits // by host id, across its streams

	fresh map[string]revCommit // policy revisions committed since the last reassign (propagation.go)
}

func newHub(c *Controller, opts HubOptions) *hub {
	if opts.Replica == "" {
		opts.Replica = defaultReplica()
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
	if opts.StatusFailTimeout == 0 {
		opts.StatusFailTimeout = 30 * time.Second
	}
	if opts.DrainTimeout == 0 {
		opts.DrainTimeout = 30 * time.Second
	}
	h := &hub{
		c: c, opts: opts, log: c.log.With("component", "hub"),
		sessions: map[string]*session{},
		groups:   map[string]*pb.Group{},
		targets:  map[string]*pb.HostTargets{},
		prepared: map[string]*grpc.PreparedMsg{},
		ready:    make(chan struct{}),
		left:     make(chan struct{}, 1),
	}
	h.writes = newHostWriter(c.store, h.log, writerOptions{
		replica: opts.Replica, every: opts.HealthWriteInterval, failAfter: opts.StatusFailTimeout,
		unhealthy: func() bool { st, _ := c.sh.current(); return st != storeOK },
	})
	h.events = newAuditAppender(c.store, h.log)
	h.sends = newSendPool(h)
	return h
}

// run follows group changes until ctx ends. (The session lease is the
// replica's: replica.go.) Its writers go on a little longer: until the
// streams still open have left (writing what is pending, releasing their
// hosts), for at most writersGrace.
func (h *hub) run(ctx context.Context) {
	wctx, stopWriters := context.WithCancel(context.WithoutCancel(ctx))
	var writers sync.WaitGroup
	writers.Add(2)
	go func() { defer writers.Done(); h.writes.run(wctx) }()
	go func() { defer writers.Done(); h.events.run(wctx) }()
	defer func() {
		t := time.NewTimer(writersGrace)
		h.awaitLeft(t.C)
		t.Stop()
		stopWriters()
		writers.Wait()
	}()
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
			h.noteCommitLocked(ev)
			switch {
			case ev.LabelsHost != "":
				h.relabelLocked(ev.LabelsHost, ev.Labels, ev.Labels != nil)
			case ev.GroupID != "":
				setOrDelete(h.groups, ev.GroupID, ev.Group, ev.Group == nil)
				dirty = true
			case ev.TargetsGroup != "":
				setOrDelete(h.targets, ev.TargetsGroup, ev.Targets, ev.Targets == nil)
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
		s.end(errShuttingDown)
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
	s.mu.Unlock()
	h.setStatus(s, st, true) // written at once: labels are no counter
	key, d := desiredFor(h.groups, h.targets, s.id, labels)
	if s.setDesired(key, d) {
		h.expectLocked(s, d)
	}
}

// desiredFor returns the desired configuration of a host with labels, and
// the key under which it is encoded once.
func desiredFor(groups map[string]*pb.Group, targets map[string]*pb.HostTargets, hostID string, labels map[string]string) (string, *pb.DesiredConfig) {
	return desiredOf(groups, targets, hostID, policy.Assign(groups, labels))
}

// desiredOf is desiredFor of a host assigned to the groups ids.
func desiredOf(groups map[string]*pb.Group, targets map[string]*pb.HostTargets, hostID string, ids []string) (string, *pb.DesiredConfig) {
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
	same := map[string]desired{} // by assigned group: the same for each of its hosts
	for _, s := range h.sessions {
		key, d := h.desiredMemo(same, s)
		used[key] = true
		if s.setDesired(key, d) {
			h.expectLocked(s, d)
		}
	}
	h.prepMu.Lock()
	for k := range h.prepared {
		if !used[k] {
			delete(h.prepared, k)
		}
	}
	h.prepMu.Unlock()
	clear(h.fresh)
}

// desired is a desired configuration and its key.
type desired struct {
	key string
	d   *pb.DesiredConfig
}

// desiredMemo is desiredFor of session s, taken from same when another
// host of its group had it in this reassign: every host of a group with no
// host targets (no rollout) gets the same configuration, and a fleet's
// reassign makes one, not one per host. Called with h.mu held.
func (h *hub) desiredMemo(same map[string]desired, s *session) (string, *pb.DesiredConfig) {
	ids := policy.Assign(h.groups, s.labels)
	if len(ids) != 1 || h.targets[ids[0]] != nil {
		return desiredOf(h.groups, h.targets, s.id, ids)
	}
	if m, ok := same[ids[0]]; ok {
		return m.key, m.d
	}
	key, d := desiredOf(h.groups, h.targets, s.id, ids)
	same[ids[0]] = desired{key, d}
	return key, d
}

// prepare returns the encoded message for key, encoding it once (with the
// codec of the first stream that needs it; the bytes are the same for all).
func (h *hub) prepare(stream grpc.ServerStream, key string, d *pb.DesiredConfig) (*grpc.PreparedMsg, error) {
	h.prepMu.Lock()
	defer h.prepMu.Unlock()
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

// session is one connected agent.
type session struct {
	id        string
	labels    map[string]string       // the labels that choose its group
	end       context.CancelCauseFunc // ends the stream with a cause (hubsend.go)
	sends     *sendPool               // nil: nothing is sent (tests)
	peer      string
	anonymous bool              // no authentication: the agent's labels choose
	bound     map[string]string // labels bound in its credential

	mu         sync.Mutex
	desiredKey string
	desired    *pb.DesiredConfig
	status     *pb.Host // the newest, in memory
	gen        uint64   // changes of status so far
	promptGen  uint64   // the last change to write at once (not counters only)
	writtenGen uint64   // the change last written
	lastWrite  time.Time

	ws          writeState  // the writer's, under its lock
	writeFailed atomic.Bool // its status could not be stored: the writer ended the stream

	// The sends (hubsend.go), under mu.
	stream    pb.AgentService_ConnectServer // its stream (nil in tests)
	served    bool                          // attached: sends may start
	sentKey   string                        // the desired key sent last
	confirms  []uint64                      // confirm echoes to send
	queued    bool                          // in the senders' queue
	sending   bool                          // a send is under way
	stopped   bool                          // no send starts any more
	idle      chan struct{}                 // closed once the send under way is done (stopSends)
	left      bool                          // its stream ended, or the drain hands it off (leave)
	handedOff chan struct{}                 // closed once the drain has handed it off

	acks *eventAcks // of its events (hubaudit.go)

	propRev   int64     // the revision whose propagation is timed (0: none), under mu
	propStart time.Time // when it was committed
}

// setDesired sets the desired configuration of s and reports whether it
// changed.
func (s *session) setDesired(key string, d *pb.DesiredConfig) bool {
	s.mu.Lock()
	changed := key != s.desiredKey
	s.desiredKey, s.desired = key, d
	s.mu.Unlock()
	if changed && s.sends != nil {
		s.sends.kick(s)
	}
	return changed
}

// connect serves one agent's stream. Its goroutine receives: the hello,
// then the reports and events; the shared senders send (hubsend.go).
func (h *hub) connect(stream pb.AgentService_ConnectServer) error {
	ctx := stream.Context()
	caller := callerFrom(ctx)
	e, ok := newStreamEnder(ctx) // hubsend.go
	if !ok {
		return status.Error(codes.Internal, "agent stream without its end (the server lacks agentStreamTap)")
	}
	// The stream's context (on which Recv waits) ends with the context the
	// interceptors made of it: a revoked credential ends that one.
	defer context.AfterFunc(ctx, func() { e.end(context.Cause(ctx)) })()
	noHello := time.AfterFunc(h.opts.HelloTimeout, func() {
		e.end(status.Error(codes.DeadlineExceeded, "no hello within "+h.opts.HelloTimeout.String()))
	})
	m, err := stream.Recv()
	noHello.Stop()
	if err != nil {
		return endReason(ctx, e, err)
	}
	hello := m.GetHello()
	if err := validateHello(hello); err != nil {
		return toStatus(err)
	}
	id := hello.GetHostId()
	if !caller.mayBeHost(id) {
		return status.Errorf(codes.PermissionDenied, "%s may not speak for host %q (it is bound to %s)", caller.Actor, id, strings.Join(caller.Hosts, ", "))
	}
	if !h.allowConnect(id) { // agentlimits.go
		return status.Errorf(codes.ResourceExhausted, "host %q reconnects too often (more than %d in a burst, then one every %v); back off", id, connectBurst, connectEvery)
	}
	select {
	case <-h.ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	if _, err := h.currentLease(ctx); err != nil {
		return err
	}

	labels := h.labelsOf(id, caller, hello.GetLabels())
	s := &session{
		id: id, labels: labels, end: e.end, sends: h.sends, stream: stream,
		peer: caller.Peer, anonymous: caller.Anonymous, bound: caller.Labels,
		status: &pb.Host{
			Name: store.HostName(id), Labels: labels, ReportedLabels: hello.GetLabels(), Facts: hello.GetFacts(),
			AgentVersion: hello.GetAgentVersion(), AppliedRevision: hello.GetAppliedRevision(),
			DryRun: hello.GetDryRun(), LastSeenTime: timestamppb.Now(),
		},
	}
	s.acks = newEventAcks(hello.GetEventEpoch(), func() { h.sends.kick(s) })
	if n := proto.Size(s.status); n > maxHostStatusSize {
		return invalid("hello", "makes a host status of %d bytes encoded; at most %d are stored (report fewer interfaces and addresses)", n, maxHostStatusSize)
	}
	if err := h.attach(ctx, s, caller, hello); err != nil {
		return h.refused(id, err) // agentlimits.go: ALREADY_EXISTS costs no reconnect
	}
	defer h.leave(ctx, s)
	h.log.Info("agent connected", "host", id, "peer", caller.Peer)

	h.sends.serve(s)
	err = h.receiver(ctx, stream, s, caller)
	h.leave(ctx, s)
	err = endReason(ctx, e, err)
	h.log.Info("agent disconnected", "host", id, "err", err)
	return err
}

// leave ends the hold of s on its host once its stream ends — or, when the
// drain hands the agent off (hubdrain.go), waits until that is done.
func (h *hub) leave(ctx context.Context, s *session) {
	if s.startLeaving(nil) {
		h.letGo(ctx, s)
	}
}

// startLeaving marks s as leaving, by its stream's end (handedOff nil) or
// by the drain's hand-off (closed once done), and reports whether the
// caller is the first. A stream's end that comes second waits for the
// hand-off under way.
func (s *session) startLeaving(handedOff chan struct{}) bool {
	s.mu.Lock()
	if s.left {
		wait := s.handedOff
		s.mu.Unlock()
		if wait != nil && handedOff == nil {
			<-wait
		}
		return false
	}
	s.left, s.handedOff = true, handedOff
	s.mu.Unlock()
	return true
}

// letGo stops the sends of s, writes what is pending of its status (unless
// it could not be stored: the writer ended the stream) and releases its
// host.
func (h *hub) letGo(ctx context.Context, s *session) {
	<-s.stopSends()
	h.detach(ctx, s, !s.writeFailed.Load())
}

// Why the hub ends a stream that is not failing.
var (
	errShuttingDown = status.Error(codes.Unavailable, "controller shutting down")
	errReplaced     = status.Error(codes.Aborted, "replaced by a newer connection of the same host")
)

// endReason is what the handler of a stream returns once its receive
// ended with recvErr: the cause the stream was ended with (a failed send's
// error, or the status written), else recvErr — or the context's error if
// the stream ended by its context (the agent left, its credential was
// revoked).
func endReason(ctx context.Context, e *streamEnder, recvErr error) error {
	var se *sendError
	switch why := e.cause(); {
	case errors.As(why, &se):
		return se.err
	case isStatus(why):
		return why
	case ctx.Err() != nil:
		return ctx.Err()
	default:
		return recvErr
	}
}

type agentService struct {
	pb.UnimplementedAgentServiceServer
	h *hub
}

func (a *agentService) Connect(stream pb.AgentService_ConnectServer) error {
	return a.h.connect(knownFieldsOnly{stream})
}
