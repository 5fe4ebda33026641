package cli

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// testNow is the clock of every test.
var testNow = time.Date(2025, 11, 25, 12, 0, 0, 0, time.UTC)

// fakePageCap is the most items a fake list returns per page, small so that
// tests exercise page tokens.
const fakePageCap = 2

// call is one RPC the fake controller received.
type call struct {
	method    string
	requestID string
	auth      string
}

// controller is an in-memory stand-in for the mpfleet controller, served
// over real gRPC on a loopback listener.
type controller struct {
	addr     string
	groups   *fakeGroups
	audit    *fakeAudit
	hosts    *fakeHosts
	rollouts *fakeRollouts

	mu    sync.Mutex
	calls []call
}

func newController(t *testing.T) *controller {
	t.Helper()
	c := &controller{
		groups: newFakeGroups(),
		audit:  &fakeAudit{},
		hosts:  &fakeHosts{},
	}
	c.hosts.groups = c.groups
	c.rollouts = &fakeRollouts{groups: c.groups, watches: map[string][]*mpfleetv1.Rollout{}}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			c.record(ctx, info.FullMethod)
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			c.record(ss.Context(), info.FullMethod)
			return h(srv, ss)
		}),
	)
	mpfleetv1.RegisterGroupServiceServer(srv, c.groups)
	mpfleetv1.RegisterAuditServiceServer(srv, c.audit)
	mpfleetv1.RegisterHostServiceServer(srv, c.hosts)
	mpfleetv1.RegisterRolloutServiceServer(srv, c.rollouts)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	c.addr = lis.Addr().String()
	return c
}

func (c *controller) record(ctx context.Context, method string) {
	md, _ := metadata.FromIncomingContext(ctx)
	first := func(k string) string {
		if v := md.Get(k); len(v) > 0 {
			return v[0]
		}
		return ""
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, call{method: method[strings.LastIndexByte(method, '/')+1:], requestID: first("x-request-id"), auth: first("authorization")})
}

// methods returns the methods called so far, in order.
func (c *controller) methods() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, cl := range c.calls {
		out = append(out, cl.method)
	}
	return out
}

// result is what one mpfleetctl run did.
type result struct {
	stdout, stderr string
	err            error
}

func (r result) code() int { return ExitCode(r.err) }

// run runs mpfleetctl against the fake controller with env as the
// environment.
func (c *controller) run(t *testing.T, stdin string, env map[string]string, args ...string) result {
	t.Helper()
	if c != nil {
		args = append([]string{"--controller", c.addr}, args...)
	}
	return runCLI(t, stdin, env, args...)
}

func runCLI(t *testing.T, stdin string, env map[string]string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := run(ctx, args, stdio{in: strings.NewReader(stdin), out: &out, err: &errb},
		func(k string) string { return env[k] }, func() time.Time { return testNow })
	return result{stdout: out.String(), stderr: errb.String(), err: err}
}

// page returns the items after token (an index) and the next token.
func page[T any](items []T, size int32, token string) ([]T, string, error) {
	start := 0
	if token != "" {
		n, err := strconv.Atoi(token)
		if err != nil || n < 0 || n > len(items) {
			return nil, "", status.Error(codes.InvalidArgument, "bad page token")
		}
		start = n
	}
	n := fakePageCap
	if size > 0 && int(size) < n {
		n = int(size)
	}
	end := min(len(items), start+n)
	next := ""
	if end < len(items) {
		next = strconv.Itoa(end)
	}
	return items[start:end], next, nil
}

// fakeGroups is an in-memory GroupService with etags, revisions,
// validate_only and validation that answers like the real one.
type fakeGroups struct {
	mpfleetv1.UnimplementedGroupServiceServer

	mu      sync.Mutex
	groups  map[string]*mpfleetv1.Group
	revs    map[string][]*mpfleetv1.PolicyRevision
	etag    int
	writes  int // create, update and delete calls that wrote
	updates []*mpfleetv1.UpdateGroupRequest
	// afterGet, if set, changes the stored group after GetGroup answered.
	afterGet func(*mpfleetv1.Group)
	deletes  []*mpfleetv1.DeleteGroupRequest
}

func newFakeGroups() *fakeGroups {
	return &fakeGroups{groups: map[string]*mpfleetv1.Group{}, revs: map[string][]*mpfleetv1.PolicyRevision{}}
}

func (f *fakeGroups) writeCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writes
}

// validate checks a group as the controller does, for a few fields.
func validate(g *mpfleetv1.Group) error {
	var v []*errdetails.BadRequest_FieldViolation
	l := g.GetPolicy().GetLimits()
	if l.GetSubflows() > 8 {
		v = append(v, &errdetails.BadRequest_FieldViolation{Field: "group.policy.limits.subflows", Description: "must be at most 8 (kernel maximum)"})
	}
	if l.GetAddAddrAccepted() > 8 {
		v = append(v, &errdetails.BadRequest_FieldViolation{Field: "group.policy.limits.add_addr_accepted", Description: "must be at most 8 (kernel maximum)"})
	}
	for i, r := range g.GetPolicy().GetEndpoints() {
		if r.GetInterface() == "" && r.GetCidr() == "" {
			v = append(v, &errdetails.BadRequest_FieldViolation{Field: fmt.Sprintf("group.policy.endpoints[%d]", i), Description: "must name an interface or a cidr"})
		}
	}
	if len(v) == 0 {
		return nil
	}
	st, err := status.New(codes.InvalidArgument, "invalid group").WithDetails(&errdetails.BadRequest{FieldViolations: v})
	if err != nil {
		panic(err)
	}
	return st.Err()
}

func (f *fakeGroups) nextEtag() string {
	f.etag++
	return strconv.Itoa(f.etag)
}

// put stores a group as if created earlier (test setup).
func (f *fakeGroups) put(id string, g *mpfleetv1.Group) *mpfleetv1.Group {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.create(id, g, "setup", "")
}

func (f *fakeGroups) create(id string, in *mpfleetv1.Group, actor, reason string) *mpfleetv1.Group {
	g := proto.Clone(in).(*mpfleetv1.Group)
	g.Name = groupName(id)
	g.PolicyRevision = 1
	g.DeployedRevision = 1 // the first revision applies at once
	g.Etag = f.nextEtag()
	g.CreateTime = timestamppb.New(testNow.Add(-time.Hour))
	g.UpdateTime = g.CreateTime
	f.groups[g.Name] = g
	f.revs[g.Name] = []*mpfleetv1.PolicyRevision{{
		Name: g.Name + "/revisions/1", Revision: 1, Policy: g.Policy, CreateTime: g.CreateTime, Actor: actor, Reason: reason,
	}}
	return g
}

func (f *fakeGroups) CreateGroup(_ context.Context, req *mpfleetv1.CreateGroupRequest) (*mpfleetv1.Group, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.groups[groupName(req.GetGroupId())]; ok {
		return nil, status.Errorf(codes.AlreadyExists, "group %q already exists", req.GetGroupId())
	}
	if err := validate(req.GetGroup()); err != nil {
		return nil, err
	}
	if req.GetValidateOnly() {
		return req.GetGroup(), nil
	}
	f.writes++
	return f.create(req.GetGroupId(), req.GetGroup(), "anonymous@127.0.0.1", req.GetReason()), nil
}

func (f *fakeGroups) GetGroup(_ context.Context, req *mpfleetv1.GetGroupRequest) (*mpfleetv1.Group, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	g, ok := f.groups[req.GetName()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "%s not found", req.GetName())
	}
	out := proto.Clone(g).(*mpfleetv1.Group)
	if f.afterGet != nil {
		f.afterGet(g)
	}
	return out, nil
}

func (f *fakeGroups) ListGroups(_ context.Context, req *mpfleetv1.ListGroupsRequest) (*mpfleetv1.ListGroupsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var all []*mpfleetv1.Group
	for _, k := range sortedKeys(f.groups) {
		all = append(all, f.groups[k])
	}
	items, next, err := page(all, req.GetPageSize(), req.GetPageToken())
	return &mpfleetv1.ListGroupsResponse{Groups: items, NextPageToken: next}, err
}

func (f *fakeGroups) UpdateGroup(_ context.Context, req *mpfleetv1.UpdateGroupRequest) (*mpfleetv1.Group, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	cur, ok := f.groups[req.GetGroup().GetName()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "%s not found", req.GetGroup().GetName())
	}
	if e := req.GetGroup().GetEtag(); e != "" && e != cur.Etag {
		return nil, status.Errorf(codes.Aborted, "etag %q is stale, the group is at %q", e, cur.Etag)
	}
	if err := validate(req.GetGroup()); err != nil {
		return nil, err
	}
	if r := cur.GetActiveRollout(); r != "" && slices.Contains(req.GetUpdateMask().GetPaths(), "policy") && !proto.Equal(cur.GetPolicy(), req.GetGroup().GetPolicy()) {
		return nil, status.Errorf(codes.FailedPrecondition, "group %s: %s is running; wait for it to end or cancel it", cur.GetName(), r)
	}
	if req.GetValidateOnly() {
		return req.GetGroup(), nil
	}
	f.writes++
	f.updates = append(f.updates, req)
	g := proto.Clone(cur).(*mpfleetv1.Group)
	for _, p := range req.GetUpdateMask().GetPaths() {
		switch p {
		case "description":
			g.Description = req.GetGroup().GetDescription()
		case "selector":
			g.Selector = req.GetGroup().GetSelector()
		case "policy":
			g.Policy = req.GetGroup().GetPolicy()
		case "rollout_strategy":
			g.RolloutStrategy = req.GetGroup().GetRolloutStrategy()
		default:
			return nil, status.Errorf(codes.InvalidArgument, "update_mask: unknown path %q", p)
		}
	}
	if !proto.Equal(g.GetPolicy(), cur.GetPolicy()) {
		g.PolicyRevision++
		f.revs[g.Name] = append(f.revs[g.Name], &mpfleetv1.PolicyRevision{
			Name: fmt.Sprintf("%s/revisions/%d", g.Name, g.PolicyRevision), Revision: g.PolicyRevision,
			Policy: g.Policy, CreateTime: timestamppb.New(testNow), Actor: "anonymous@127.0.0.1", Reason: req.GetReason(),
		})
		// A group with a rollout strategy starts a rollout, named after
		// the group and the revision; one without goes out at once.
		if g.GetRolloutStrategy() != nil {
			g.ActiveRollout = fmt.Sprintf("rollouts/%s-%d", trimName(g.GetName()), g.GetPolicyRevision())
		} else {
			g.DeployedRevision = g.PolicyRevision
		}
	}
	g.Etag = f.nextEtag()
	g.UpdateTime = timestamppb.New(testNow)
	f.groups[g.Name] = g
	return g, nil
}

func (f *fakeGroups) DeleteGroup(_ context.Context, req *mpfleetv1.DeleteGroupRequest) (*emptypb.Empty, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	cur, ok := f.groups[req.GetName()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "%s not found", req.GetName())
	}
	if req.GetEtag() != "" && req.GetEtag() != cur.Etag {
		return nil, status.Errorf(codes.Aborted, "etag %q is stale", req.GetEtag())
	}
	f.writes++
	f.deletes = append(f.deletes, req)
	delete(f.groups, req.GetName())
	delete(f.revs, req.GetName())
	return &emptypb.Empty{}, nil
}

func (f *fakeGroups) ListPolicyRevisions(_ context.Context, req *mpfleetv1.ListPolicyRevisionsRequest) (*mpfleetv1.ListPolicyRevisionsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	revs, ok := f.revs[req.GetParent()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "%s not found", req.GetParent())
	}
	newest := slices.Clone(revs)
	slices.Reverse(newest)
	items, next, err := page(newest, req.GetPageSize(), req.GetPageToken())
	return &mpfleetv1.ListPolicyRevisionsResponse{Revisions: items, NextPageToken: next}, err
}

func (f *fakeGroups) GetPolicyRevision(_ context.Context, req *mpfleetv1.GetPolicyRevisionRequest) (*mpfleetv1.PolicyRevision, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	group, _, _ := strings.Cut(strings.TrimPrefix(req.GetName(), groupPrefix), "/")
	for _, r := range f.revs[groupName(group)] {
		if r.GetName() == req.GetName() {
			return r, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "%s not found", req.GetName())
}

// fakeAudit is an in-memory AuditService.
type fakeAudit struct {
	mpfleetv1.UnimplementedAuditServiceServer

	mu       sync.Mutex
	events   []*mpfleetv1.AuditEvent
	verify   *mpfleetv1.VerifyAuditLogResponse
	requests []*mpfleetv1.ListAuditEventsRequest
	watches  []*mpfleetv1.WatchAuditEventsRequest
	// With block, WatchAuditEvents keeps the stream open after sending,
	// like the real controller, and closes sent.
	block bool
	sent  chan struct{}
}

func matchAudit(e *mpfleetv1.AuditEvent, actor, resource, action, host string) bool {
	prefixOr := func(filter, v, sep string) bool {
		if filter == "" {
			return true
		}
		if strings.HasSuffix(filter, sep) {
			return strings.HasPrefix(v, filter)
		}
		return v == filter
	}
	return (actor == "" || e.GetActor() == actor) && prefixOr(resource, e.GetResource(), "/") &&
		prefixOr(action, e.GetAction(), ".") && (host == "" || e.GetHost() == host)
}

func (f *fakeAudit) ListAuditEvents(_ context.Context, req *mpfleetv1.ListAuditEventsRequest) (*mpfleetv1.ListAuditEventsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, req)
	var match []*mpfleetv1.AuditEvent
	for _, e := range f.events {
		if !matchAudit(e, req.GetActor(), req.GetResource(), req.GetAction(), req.GetHost()) {
			continue
		}
		if req.GetStartTime() != nil && e.GetTime().AsTime().Before(req.GetStartTime().AsTime()) {
			continue
		}
		if req.GetEndTime() != nil && !e.GetTime().AsTime().Before(req.GetEndTime().AsTime()) {
			continue
		}
		match = append(match, e)
	}
	items, next, err := page(match, req.GetPageSize(), req.GetPageToken())
	return &mpfleetv1.ListAuditEventsResponse{Events: items, NextPageToken: next}, err
}

func (f *fakeAudit) VerifyAuditLog(context.Context, *mpfleetv1.VerifyAuditLogRequest) (*mpfleetv1.VerifyAuditLogResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.verify, nil
}

// WatchAuditEvents sends the retained events after after_sequence that
// match, then ends the stream.
func (f *fakeAudit) WatchAuditEvents(req *mpfleetv1.WatchAuditEventsRequest, stream grpc.ServerStreamingServer[mpfleetv1.AuditEvent]) error {
	f.mu.Lock()
	f.watches = append(f.watches, req)
	events := slices.Clone(f.events)
	f.mu.Unlock()
	for _, e := range events {
		if e.GetSequence() <= req.GetAfterSequence() || !matchAudit(e, req.GetActor(), req.GetResource(), req.GetAction(), req.GetHost()) {
			continue
		}
		if err := stream.Send(e); err != nil {
			return err
		}
	}
	if f.block {
		close(f.sent)
		<-stream.Context().Done()
	}
	return nil
}

// fakeHosts is an in-memory HostService.
type fakeHosts struct {
	mpfleetv1.UnimplementedHostServiceServer

	groups *fakeGroups

	mu       sync.Mutex
	hosts    []*mpfleetv1.Host
	events   []*mpfleetv1.HostEvent // sent by WatchHosts
	requests []*mpfleetv1.ListHostsRequest
	plans    []*mpfleetv1.PlanPolicyRequest
	watches  []*mpfleetv1.WatchHostsRequest
	labelled []*mpfleetv1.UpdateHostRequest
	// With block, WatchHosts keeps the stream open after sending, like the
	// real controller.
	block bool
}

func (f *fakeHosts) DeleteHost(_ context.Context, req *mpfleetv1.DeleteHostRequest) (*emptypb.Empty, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, h := range f.hosts {
		if h.GetName() == req.GetName() {
			if h.GetConnected() {
				return nil, status.Errorf(codes.FailedPrecondition, "host %q is connected", req.GetName())
			}
			f.hosts = append(f.hosts[:i], f.hosts[i+1:]...)
			return &emptypb.Empty{}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "%s not found", req.GetName())
}

func (f *fakeHosts) UpdateHost(_ context.Context, req *mpfleetv1.UpdateHostRequest) (*mpfleetv1.Host, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.labelled = append(f.labelled, req)
	for _, h := range f.hosts {
		if h.GetName() == req.GetHost().GetName() {
			h.Labels = req.GetHost().GetLabels()
			return h, nil
		}
	}
	h := &mpfleetv1.Host{Name: req.GetHost().GetName(), Labels: req.GetHost().GetLabels()}
	f.hosts = append(f.hosts, h)
	return h, nil
}

func (f *fakeHosts) GetHost(_ context.Context, req *mpfleetv1.GetHostRequest) (*mpfleetv1.Host, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, h := range f.hosts {
		if h.GetName() == req.GetName() {
			return h, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "%s not found", req.GetName())
}

func (f *fakeHosts) ListHosts(_ context.Context, req *mpfleetv1.ListHostsRequest) (*mpfleetv1.ListHostsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, req)
	var match []*mpfleetv1.Host
	for _, h := range f.hosts {
		if req.GetGroup() != "" && h.GetGroup() != req.GetGroup() {
			continue
		}
		if req.GetSyncState() != 0 && h.GetSyncState() != req.GetSyncState() {
			continue
		}
		ok := true
		if req.GetLabelSelector() != "" {
			for _, kv := range strings.Split(req.GetLabelSelector(), ",") {
				k, v, _ := strings.Cut(kv, "=")
				ok = ok && h.GetLabels()[k] == v
			}
		}
		if ok {
			match = append(match, h)
		}
	}
	items, next, err := page(match, req.GetPageSize(), req.GetPageToken())
	return &mpfleetv1.ListHostsResponse{Hosts: items, NextPageToken: next}, err
}

// WatchHosts sends the scripted events, leaving out hosts of other groups
// when the request names one, then ends the stream (or, with block, waits
// for the client to end it).
func (f *fakeHosts) WatchHosts(req *mpfleetv1.WatchHostsRequest, stream grpc.ServerStreamingServer[mpfleetv1.HostEvent]) error {
	f.mu.Lock()
	f.watches = append(f.watches, req)
	events := slices.Clone(f.events)
	block := f.block
	f.mu.Unlock()
	for _, e := range events {
		if req.GetGroup() != "" && e.GetType() != mpfleetv1.HostEvent_TYPE_SYNCED && e.GetHost().GetGroup() != req.GetGroup() {
			continue
		}
		if err := stream.Send(e); err != nil {
			return err
		}
	}
	if block {
		<-stream.Context().Done()
	}
	return nil
}

// PlanPolicy plans one "add-endpoint" per interface address of each host of
// the group, or none when the candidate equals the group's policy, and
// reports each host's gateway_unknown problems as what cannot be rendered
// (a stand-in for the controller's render problems).
func (f *fakeHosts) PlanPolicy(ctx context.Context, req *mpfleetv1.PlanPolicyRequest) (*mpfleetv1.PlanPolicyResponse, error) {
	g, err := f.groups.GetGroup(ctx, &mpfleetv1.GetGroupRequest{Name: req.GetGroup()})
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.plans = append(f.plans, req)
	resp := &mpfleetv1.PlanPolicyResponse{}
	for _, h := range f.hosts {
		if h.GetGroup() != req.GetGroup() {
			continue
		}
		hp := &mpfleetv1.HostPlan{Host: h.GetName()}
		for _, p := range h.GetProblems() {
			if p.GetCode() == mpfleetv1.HostProblem_CODE_GATEWAY_UNKNOWN {
				hp.Problems = append(hp.Problems, p.GetMessage())
			}
		}
		if h.GetLastError() != "" {
			hp.Error = h.GetLastError()
		} else if !proto.Equal(req.GetPolicy(), g.GetPolicy()) {
			for _, i := range h.GetFacts().GetInterfaces() {
				for _, addr := range i.GetAddresses() {
					ip, _, _ := strings.Cut(addr, "/")
					hp.Operations = append(hp.Operations, &mpfleetv1.PlanOperation{
						Kind: "add-endpoint", Description: fmt.Sprintf("+ endpoint %s subflow dev %s", ip, i.GetName()),
					})
				}
			}
		}
		resp.Hosts = append(resp.Hosts, hp)
	}
	return resp, nil
}
