package controller

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mpfleet/mpfleet/internal/policy"
	"github.com/mpfleet/mpfleet/internal/rollout"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Rollouts: a group with a rollout_strategy does not send a new revision to
// every host at once. Its host targets (store: targets/{group}) say which
// revision each host runs; a rollout (store: rollouts/{id}) moves hosts
// from one revision to another in steps, and the leader advances every
// active rollout with internal/rollout's state machine, writing its progress
// and the targets it changes in one fenced transaction.

var rolloutIDRe = regexp.MustCompile(`^[a-z]([a-z0-9-]{0,78}[a-z0-9])?$`)

// actorRollouts is the audit actor of what the rollout engine does.
const actorRollouts = "system:rollouts"

// newRolloutID is "{group}-r{target}-{6 random}".
func newRolloutID(group string, target int64) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return fmt.Sprintf("%s-r%d-%s", group, target, b)
}

// groupHosts returns what the rollout engine sees of the hosts of group id
// now: every host whose labels select that group (and no other).
func (c *Controller) groupHosts(id string) map[string]rollout.Host {
	groups, hosts, sess := c.cache.Groups(), c.cache.Hosts(), c.cache.Sessions()
	out := map[string]rollout.Host{}
	for hid, h := range hosts {
		if ids := policy.Assign(groups, h.GetLabels()); len(ids) == 1 && ids[0] == id {
			out[hid] = rollout.HostFrom(hid, h, sess[hid] != "")
		}
	}
	return out
}

// startRollout builds a rollout of group id from its deployed revision to
// target, and the targets that go with it. t is the group's current
// targets (nil: none).
func (c *Controller) startRollout(ctx context.Context, id, rid string, g *pb.Group, t *pb.HostTargets,
	target int64, targetPolicy *pb.MultipathPolicy, s *pb.RolloutStrategy, m store.Meta) (*pb.Rollout, *pb.HostTargets, error) {
	from := g.GetPolicyRevision()
	if t != nil {
		from = t.GetDefaultRevision()
	}
	fromPolicy, err := c.revisionPolicy(ctx, id, g, t, from)
	if err != nil {
		return nil, nil, err
	}
	if rid == "" {
		rid = newRolloutID(id, target)
	}
	now := timestamppb.Now()
	r := &pb.Rollout{
		Name: store.RolloutName(rid), Group: store.GroupName(id), FromRevision: from, TargetRevision: target,
		Strategy: rollout.Strategy(s), State: pb.Rollout_STATE_PENDING, CurrentStep: -1,
		CreateTime: now, UpdateTime: now, Actor: m.Actor, Reason: m.Reason,
	}
	hosts := c.groupHosts(id)
	for _, hid := range slices.Sorted(maps.Keys(hosts)) {
		r.Baselines = append(r.Baselines, rollout.Baseline(hosts[hid]))
	}
	nt := &pb.HostTargets{DefaultRevision: from, HostRevisions: map[string]int64{}, Policies: map[int64]*pb.MultipathPolicy{},
		Rollout: r.Name}
	// Hosts a halted rollout left on another revision keep it until this
	// one moves them.
	for h, rev := range t.GetHostRevisions() {
		if p, ok := t.GetPolicies()[rev]; ok {
			nt.HostRevisions[h], nt.Policies[rev] = rev, p
		}
	}
	nt.Policies[from], nt.Policies[target] = fromPolicy, targetPolicy
	return r, nt, nil
}

// revisionPolicy returns the policy of revision rev of group id.
func (c *Controller) revisionPolicy(ctx context.Context, id string, g *pb.Group, t *pb.HostTargets, rev int64) (*pb.MultipathPolicy, error) {
	if rev == g.GetPolicyRevision() {
		return g.GetPolicy(), nil
	}
	if p, ok := t.GetPolicies()[rev]; ok {
		return p, nil
	}
	pr, err := c.store.GetRevision(ctx, id, rev)
	if err != nil {
		return nil, err
	}
	return pr.GetPolicy(), nil
}

// governing returns the rollout that governs a group's targets if it is
// still active, with its mod revision.
func (c *Controller) governing(ctx context.Context, t *pb.HostTargets) (*pb.Rollout, int64, error) {
	rid := store.RolloutID(t.GetRollout())
	if rid == "" {
		return nil, 0, nil
	}
	r, rev, err := c.store.GetRollout(ctx, rid)
	if errors.Is(err, store.ErrNotFound) {
		return nil, 0, nil
	}
	if err != nil || !rollout.Active(r.GetState()) {
		return nil, rev, err
	}
	return r, rev, nil
}

func errRolloutActive(group string, r *pb.Rollout) error {
	return fmt.Errorf("group %q: rollout %s is %s (revision %d to %d): cancel it or wait for it to end: %w",
		group, r.GetName(), strings.TrimPrefix(r.GetState().String(), "STATE_"), r.GetFromRevision(), r.GetTargetRevision(),
		store.ErrFailedPrecondition)
}

// policyHook makes a policy change of a group with a rollout strategy start
// a rollout (its name goes to *started), and one of a group without
// a strategy go to every host at once. Either is refused while a rollout
// runs.
func (c *Controller) policyHook(m store.Meta, started *string) store.PolicyHook {
	return func(ctx context.Context, cur, next *pb.Group) (*store.TxnExtra, error) {
		*started = ""
		id := strings.TrimPrefix(cur.GetName(), "groups/")
		t, tRev, err := c.store.GetTargets(ctx, id)
		if err != nil {
			return nil, err
		}
		active, _, err := c.governing(ctx, t)
		if err != nil {
			return nil, err
		}
		if active != nil {
			return nil, errRolloutActive(id, active)
		}
		if next.GetRolloutStrategy() == nil {
			if t == nil {
				return nil, nil
			}
			cmp, op := c.store.TargetsOps(id, nil, tRev)
			return &store.TxnExtra{Cmps: []clientv3.Cmp{cmp}, Ops: []clientv3.Op{op}}, nil
		}
		r, nt, err := c.startRollout(ctx, id, "", cur, t, next.GetPolicyRevision(), next.GetPolicy(), next.GetRolloutStrategy(), m)
		if err != nil {
			return nil, err
		}
		tcmp, top := c.store.TargetsOps(id, nt, tRev)
		rcmp, rop := c.store.RolloutOps(store.RolloutID(r.GetName()), r)
		*started = r.GetName()
		return &store.TxnExtra{
			Cmps:   []clientv3.Cmp{tcmp, rcmp},
			Ops:    []clientv3.Op{top, rop},
			Events: []*pb.AuditEvent{c.store.Event(m, "rollouts.create", r.GetName(), nil, r)},
		}, nil
	}
}

// decorateGroup fills a group's active_rollout and deployed_revision from the
// cache.
func (c *Controller) decorateGroup(g *pb.Group) *pb.Group {
	if g == nil {
		return nil
	}
	id := strings.TrimPrefix(g.GetName(), "groups/")
	g.DeployedRevision = g.GetPolicyRevision()
	if t, ok := c.cache.Targets()[id]; ok {
		g.DeployedRevision = t.GetDefaultRevision()
		if r, ok := c.cache.Rollout(store.RolloutID(t.GetRollout())); ok && rollout.Active(r.GetState()) {
			g.ActiveRollout = r.GetName()
		}
	}
	return g
}

type rolloutService struct {
	pb.UnimplementedRolloutServiceServer
	c *Controller
}

func rolloutIDFrom(field, name string) (string, error) {
	id := store.RolloutID(name)
	if id == "" || !rolloutIDRe.MatchString(id) {
		return "", invalid(field, "%q is not a rollout name of the form rollouts/{rollout}", name)
	}
	return id, nil
}

func (s *rolloutService) CreateRollout(ctx context.Context, req *pb.CreateRolloutRequest) (*pb.Rollout, error) {
	dropUnknown(req) // before anything of it is stored
	var vs policy.Violations
	in := req.GetRollout()
	if in == nil {
		return nil, invalid("rollout", "is required")
	}
	gid := policy.GroupIDFromName(&vs, "rollout.group", in.GetGroup())
	if rid := req.GetRolloutId(); rid != "" && !rolloutIDRe.MatchString(rid) {
		vs = append(vs, policy.FieldViolation{Field: "rollout_id", Description: fmt.Sprintf("%q is not a rollout id: 1-80 lower-case letters, digits and '-', starting with a letter", rid)})
	}
	if in.GetTargetRevision() < 0 {
		vs = append(vs, policy.FieldViolation{Field: "rollout.target_revision", Description: "must not be negative"})
	}
	policy.ValidateStrategy(&vs, "rollout.strategy", in.GetStrategy())
	policy.ValidateReason(&vs, "reason", req.GetReason())
	if err := vs.Err(); err != nil {
		return nil, toStatus(err)
	}
	m := meta(ctx, req.GetReason())
	r, rev, err := s.create(ctx, gid, req.GetRolloutId(), in, m)
	if err := s.c.written(ctx, "rollouts.create", store.GroupName(gid), req.GetReason(), rev, err); err != nil {
		return nil, err
	}
	return r, nil
}

func (s *rolloutService) create(ctx context.Context, gid, rid string, in *pb.Rollout, m store.Meta) (*pb.Rollout, int64, error) {
	for attempt := 0; ; attempt++ {
		g, err := s.c.store.GetGroup(ctx, gid)
		if err != nil {
			return nil, 0, err
		}
		gRev, _ := strconv.ParseInt(g.GetEtag(), 10, 64)
		target := cmp.Or(in.GetTargetRevision(), g.GetPolicyRevision())
		if target > g.GetPolicyRevision() {
			return nil, 0, status.Errorf(codes.NotFound, "group %q has no revision %d (latest %d)", gid, target, g.GetPolicyRevision())
		}
		t, tRev, err := s.c.store.GetTargets(ctx, gid)
		if err != nil {
			return nil, 0, err
		}
		active, _, err := s.c.governing(ctx, t)
		if err != nil {
			return nil, 0, err
		}
		if active != nil {
			return nil, 0, errRolloutActive(gid, active)
		}
		from := g.GetPolicyRevision()
		if t != nil {
			from = t.GetDefaultRevision()
		}
		if from == target && len(t.GetHostRevisions()) == 0 {
			return nil, 0, fmt.Errorf("group %q: its hosts already run revision %d: %w", gid, target, store.ErrFailedPrecondition)
		}
		tp, err := s.c.revisionPolicy(ctx, gid, g, t, target)
		if err != nil {
			return nil, 0, err
		}
		strategy := in.GetStrategy()
		if strategy == nil {
			strategy = g.GetRolloutStrategy()
		}
		r, nt, err := s.c.startRollout(ctx, gid, rid, g, t, target, tp, strategy, m)
		if err != nil {
			return nil, 0, err
		}
		rev, err := s.c.store.WriteRollout(ctx, store.RolloutWrite{
			RolloutID: store.RolloutID(r.GetName()), Rollout: r, RolloutRev: 0,
			Group: gid, GroupRev: gRev, Targets: nt, TargetsRev: tRev,
			Events: []*pb.AuditEvent{s.c.store.Event(m, "rollouts.create", r.GetName(), nil, r)},
		})
		if errors.Is(err, store.ErrConflict) && attempt < 3 {
			if rid != "" {
				if _, _, gerr := s.c.store.GetRollout(ctx, rid); gerr == nil {
					return nil, 0, fmt.Errorf("rollout %q: %w", rid, store.ErrAlreadyExists)
				}
			}
			continue
		}
		return r, rev, err
	}
}

func (s *rolloutService) GetRollout(_ context.Context, req *pb.GetRolloutRequest) (*pb.Rollout, error) {
	id, err := rolloutIDFrom("name", req.GetName())
	if err != nil {
		return nil, err
	}
	r, ok := s.c.cache.Rollout(id)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "rollout %q: not found", id)
	}
	return r, nil
}

func (s *rolloutService) ListRollouts(_ context.Context, req *pb.ListRolloutsRequest) (*pb.ListRolloutsResponse, error) {
	n, pos, err := page(req.GetPageSize(), req.GetPageToken(), "o")
	if err != nil {
		return nil, err
	}
	off := 0
	if pos != "" {
		if off, err = strconv.Atoi(pos); err != nil || off < 0 {
			return nil, invalid("page_token", "is not a page token of this list")
		}
	}
	if g := req.GetGroup(); g != "" {
		var vs policy.Violations
		policy.GroupIDFromName(&vs, "group", g)
		if err := vs.Err(); err != nil {
			return nil, toStatus(err)
		}
	}
	var all []*pb.Rollout
	for _, r := range s.c.cache.Rollouts() {
		if req.GetGroup() == "" || r.GetGroup() == req.GetGroup() {
			all = append(all, r)
		}
	}
	slices.SortFunc(all, rolloutOrder)
	resp := &pb.ListRolloutsResponse{}
	if off < len(all) {
		end := min(off+n, len(all))
		resp.Rollouts = all[off:end]
		if end < len(all) {
			resp.NextPageToken = encodeToken("o", strconv.Itoa(end))
		}
	}
	return resp, nil
}

// transition reads a rollout fresh, checks its etag, applies fn and writes
// the result with its audit events under a compare on the rollout.
func (s *rolloutService) transition(ctx context.Context, name, etag, reason, action string,
	fn func(r *pb.Rollout, actor string) (rollout.Result, error)) (*pb.Rollout, error) {
	id, err := rolloutIDFrom("name", name)
	if err != nil {
		return nil, err
	}
	var vs policy.Violations
	policy.ValidateReason(&vs, "reason", reason)
	if err := vs.Err(); err != nil {
		return nil, toStatus(err)
	}
	m := meta(ctx, reason)
	// Without an etag the caller wants the transition whatever the rollout
	// is at: when the engine moved it between the read and the write, read
	// it again (a few times) rather than answer ABORTED.
	for attempt := 1; ; attempt++ {
		out, err := s.transitionOnce(ctx, id, etag, action, m, fn)
		switch {
		case err == nil:
			return out.r, s.c.written(ctx, action, out.name, reason, out.rev, nil)
		case out.r != nil && etag == "" && attempt < maxTransitionAttempts && errors.Is(err, store.ErrConflict):
			// The write found the rollout changed since the read.
			continue
		case out.audit:
			return nil, s.c.written(ctx, action, out.name, reason, 0, err)
		default:
			return nil, toStatus(err)
		}
	}
}

// maxTransitionAttempts bounds the reads again of a transition without an
// etag whose rollout changed under it.
const maxTransitionAttempts = 5

// transitioned is a transition: the rollout's name, the rollout as
// written and the store revision of the write; audit says a failure is one
// to record (the transition or its write failed, not the read).
type transitioned struct {
	name  string
	r     *pb.Rollout
	rev   int64
	audit bool
}

// transitionOnce reads the rollout, applies fn and writes the result if the
// rollout did not change meanwhile (store.ErrConflict when it did).
func (s *rolloutService) transitionOnce(ctx context.Context, id, etag, action string, m store.Meta,
	fn func(r *pb.Rollout, actor string) (rollout.Result, error)) (transitioned, error) {
	r, rRev, err := s.c.store.GetRollout(ctx, id)
	if err != nil {
		return transitioned{}, err
	}
	if etag != "" && etag != r.GetEtag() {
		return transitioned{}, fmt.Errorf("rollout %q (etag %s, stored %s): %w", id, etag, r.GetEtag(), store.ErrConflict)
	}
	res, err := fn(proto.CloneOf(r), m.Actor)
	if err != nil {
		return transitioned{name: r.GetName(), audit: true}, err
	}
	gid := strings.TrimPrefix(r.GetGroup(), "groups/")
	w := store.RolloutWrite{RolloutID: id, Rollout: res.Rollout, RolloutRev: rRev, Group: gid, TargetsRev: store.NoCompare,
		Events: []*pb.AuditEvent{s.c.store.Event(m, action, r.GetName(), r, res.Rollout)}}
	w.Events = append(w.Events, s.c.rolloutEvents(res.Rollout, res.Events)...)
	if len(res.Targets) > 0 || res.Done {
		t, _, err := s.c.store.GetTargets(ctx, gid)
		if err != nil {
			return transitioned{}, err
		}
		w.Targets = applyTargets(t, res)
	}
	rev, err := s.c.store.WriteRollout(ctx, w)
	return transitioned{name: r.GetName(), r: res.Rollout, rev: rev, audit: true}, err
}

func (s *rolloutService) PauseRollout(ctx context.Context, req *pb.PauseRolloutRequest) (*pb.Rollout, error) {
	return s.transition(ctx, req.GetName(), req.GetEtag(), req.GetReason(), "rollouts.pause", func(r *pb.Rollout, actor string) (rollout.Result, error) {
		switch r.GetState() {
		case pb.Rollout_STATE_PENDING, pb.Rollout_STATE_RUNNING:
		default:
			return rollout.Result{}, fmt.Errorf("rollout %q is %s; only a pending or running rollout pauses: %w", r.GetName(), r.GetState(), store.ErrFailedPrecondition)
		}
		// A pending rollout pauses before its canary; Resume makes it
		// pending again.
		r.State, r.LastOperator, r.Message = pb.Rollout_STATE_PAUSED, actor, "paused by "+actor
		r.UpdateTime = timestamppb.Now()
		return rollout.Result{Rollout: r}, nil
	})
}

func (s *rolloutService) ResumeRollout(ctx context.Context, req *pb.ResumeRolloutRequest) (*pb.Rollout, error) {
	return s.transition(ctx, req.GetName(), req.GetEtag(), req.GetReason(), "rollouts.resume", func(r *pb.Rollout, actor string) (rollout.Result, error) {
		if r.GetState() != pb.Rollout_STATE_PAUSED {
			return rollout.Result{}, fmt.Errorf("rollout %q is %s; only a paused rollout resumes: %w", r.GetName(), r.GetState(), store.ErrFailedPrecondition)
		}
		r.State, r.LastOperator, r.Message = pb.Rollout_STATE_RUNNING, actor, "resumed by "+actor
		if len(r.GetSteps()) == 0 {
			r.State = pb.Rollout_STATE_PENDING
		}
		r.UpdateTime = timestamppb.Now()
		return rollout.Result{Rollout: r}, nil
	})
}

func (s *rolloutService) CancelRollout(ctx context.Context, req *pb.CancelRolloutRequest) (*pb.Rollout, error) {
	return s.transition(ctx, req.GetName(), req.GetEtag(), req.GetReason(), "rollouts.cancel", func(r *pb.Rollout, actor string) (rollout.Result, error) {
		if !rollout.Active(r.GetState()) {
			return rollout.Result{}, fmt.Errorf("rollout %q already ended %s: %w", r.GetName(), r.GetState(), store.ErrFailedPrecondition)
		}
		if r.GetCancelled() {
			return rollout.Result{}, fmt.Errorf("rollout %q is already being cancelled: %w", r.GetName(), store.ErrFailedPrecondition)
		}
		return rollout.Cancel(r, s.c.groupHosts(strings.TrimPrefix(r.GetGroup(), "groups/")), actor, time.Now()), nil
	})
}

func (s *rolloutService) WatchRollout(req *pb.WatchRolloutRequest, stream pb.RolloutService_WatchRolloutServer) error {
	id, err := rolloutIDFrom("name", req.GetName())
	if err != nil {
		return err
	}
	ctx := stream.Context()
	for {
		sub, _, _, _ := s.c.cache.Subscribe(1024)
		r, ok := s.c.cache.Rollout(id)
		if !ok {
			sub.Close()
			return status.Errorf(codes.NotFound, "rollout %q: not found", id)
		}
		err := func() error {
			defer sub.Close()
			if err := stream.Send(r); err != nil || !rollout.Active(r.GetState()) {
				return err
			}
			last := r
			return follow(ctx, sub, func(ev store.Event) error {
				if ev.RolloutID != id || ev.Rollout == nil || proto.Equal(ev.Rollout, last) {
					return nil
				}
				last = ev.Rollout
				if err := stream.Send(last); err != nil || rollout.Active(last.GetState()) {
					return err
				}
				return errFollowed
			})
		}()
		if !resubscribe(err) {
			return err
		}
	}
}

// rolloutOrder is the order rollouts are listed in: the newest first, by
// name among those created at once.
func rolloutOrder(a, b *pb.Rollout) int {
	return cmp.Or(b.GetCreateTime().AsTime().Compare(a.GetCreateTime().AsTime()), strings.Compare(a.GetName(), b.GetName()))
}
