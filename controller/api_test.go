package controller_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/controller"
	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
)

type env struct {
	conn   *grpc.ClientConn
	groups pb.GroupServiceClient
	audit  pb.AuditServiceClient
	hosts  pb.HostServiceClient
	agents pb.AgentServiceClient
	ctl    *controller.Controller
	etcd   *clientv3.Client
	addr   string
}

func quietLog() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}

// start runs a controller on an embedded etcd and a real gRPC listener on
// loopback, all stopped when the test ends.
func start(t testing.TB) *env {
	t.Helper()
	return startWith(t, controller.Options{})
}

// startWith is start with options (the logger and a short session TTL are
// set for the test), and options of the store (an audit key).
func startWith(t testing.TB, opts controller.Options, sopts ...store.Option) *env {
	t.Helper()
	_, cli := etcdtest.Embedded(t)
	opts.Log = quietLog()
	return startOn(t, cli, opts, sopts...)
}

// startOn runs a controller over the etcd client cli (a session TTL of 2 s
// unless opts sets one, quietLog unless opts sets a logger), serving gRPC on
// loopback, all stopped when the test ends.
func startOn(t testing.TB, cli *clientv3.Client, opts controller.Options, sopts ...store.Option) *env {
	t.Helper()
	st := store.New(cli, "/mpfleet/v1/", sopts...)
	cache := store.NewCache(st, quietLog())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { defer func() { done <- struct{}{} }(); _ = cache.Run(ctx) }()
	if opts.Log == nil {
		opts.Log = quietLog()
	}
	if opts.Hub.SessionTTL == 0 {
		opts.Hub.SessionTTL = 2 * time.Second
	}
	c := controller.New(st, cache, opts)
	go func() { defer func() { done <- struct{}{} }(); c.Run(ctx) }()
	srv, hs := c.NewServer(controller.ServerOptions{})
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
		cancel()
		<-done
		<-done
	})
	return &env{conn: conn, groups: pb.NewGroupServiceClient(conn), audit: pb.NewAuditServiceClient(conn),
		hosts: pb.NewHostServiceClient(conn), agents: pb.NewAgentServiceClient(conn), etcd: cli, addr: lis.Addr().String(), ctl: c}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func webGroup() *pb.Group {
	return &pb.Group{
		Description: "web tier",
		Selector:    &pb.Selector{MatchLabels: map[string]string{"role": "web"}},
		Policy: &pb.MultipathPolicy{
			Enabled:   proto.Bool(true),
			Limits:    &pb.Limits{Subflows: proto.Uint32(2), AddAddrAccepted: proto.Uint32(2)},
			Endpoints: []*pb.EndpointRule{{Interface: "eth*", Flags: []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW}}},
			Routing:   &pb.Routing{Enabled: true},
		},
	}
}

func wantCode(t *testing.T, err error, code codes.Code) *status.Status {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code {
		t.Fatalf("err = %v, want code %s", err, code)
	}
	return st
}

// etcdKeys counts keys under the prefix, to prove a rejected request wrote
// nothing.
func etcdKeys(t *testing.T, e *env) int64 {
	t.Helper()
	resp, err := e.etcd.Get(context.Background(), "/mpfleet/v1/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count
}

func TestGroupServiceCRUD(t *testing.T) {
	e := start(t)
	ctx := ctxT(t)

	var hdr metadata.MD
	g, err := e.groups.CreateGroup(metadata.AppendToOutgoingContext(ctx, "x-request-id", "req-42"),
		&pb.CreateGroupRequest{GroupId: "web", Group: webGroup(), Reason: "first"}, grpc.Header(&hdr))
	if err != nil {
		t.Fatal(err)
	}
	if g.Name != "groups/web" || g.PolicyRevision != 1 || g.Etag == "" {
		t.Fatalf("created %v", g)
	}
	if got := hdr.Get("x-request-id"); len(got) != 1 || got[0] != "req-42" {
		t.Fatalf("x-request-id header = %v", got)
	}
	_, err = e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "web", Group: webGroup()})
	wantCode(t, err, codes.AlreadyExists)

	got, err := e.groups.GetGroup(ctx, &pb.GetGroupRequest{Name: "groups/web"})
	if err != nil || !proto.Equal(got, g) {
		t.Fatalf("get = %v, %v; want %v", got, err, g)
	}
	_, err = e.groups.GetGroup(ctx, &pb.GetGroupRequest{Name: "groups/nope"})
	wantCode(t, err, codes.NotFound)
	_, err = e.groups.GetGroup(ctx, &pb.GetGroupRequest{Name: "web"})
	wantCode(t, err, codes.InvalidArgument)

	// Update the policy only, through a mask: revision 2.
	upd := &pb.Group{Name: "groups/web", Etag: g.Etag, Description: "ignored: not in mask",
		Policy: &pb.MultipathPolicy{Limits: &pb.Limits{Subflows: proto.Uint32(4)}}}
	g2, err := e.groups.UpdateGroup(ctx, &pb.UpdateGroupRequest{Group: upd,
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"policy.limits"}}, Reason: "more subflows"})
	if err != nil {
		t.Fatal(err)
	}
	if g2.PolicyRevision != 2 || g2.Description != "web tier" || g2.GetPolicy().GetLimits().GetSubflows() != 4 ||
		len(g2.GetPolicy().GetEndpoints()) != 1 || g2.GetPolicy().GetLimits().AddAddrAccepted != nil {
		t.Fatalf("after masked update: %v", g2)
	}
	// The same etag again: ABORTED.
	_, err = e.groups.UpdateGroup(ctx, &pb.UpdateGroupRequest{Group: upd, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"description"}}})
	wantCode(t, err, codes.Aborted)
	// Output-only and unknown mask paths: INVALID_ARGUMENT naming the path.
	_, err = e.groups.UpdateGroup(ctx, &pb.UpdateGroupRequest{Group: &pb.Group{Name: "groups/web"},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"policy_revision", "nonsense"}}})
	st := wantCode(t, err, codes.InvalidArgument)
	if fields := violatedFields(st); fmt.Sprint(fields) != "[update_mask.paths[0] update_mask.paths[1]]" {
		t.Fatalf("violations = %v", fields)
	}

	revs, err := e.groups.ListPolicyRevisions(ctx, &pb.ListPolicyRevisionsRequest{Parent: "groups/web"})
	if err != nil || len(revs.Revisions) != 2 || revs.Revisions[0].Reason != "more subflows" || revs.Revisions[0].Actor != "anonymous" {
		t.Fatalf("revisions = %v, %v", revs, err)
	}
	r1, err := e.groups.GetPolicyRevision(ctx, &pb.GetPolicyRevisionRequest{Name: "groups/web/revisions/1"})
	if err != nil || !proto.Equal(r1.Policy, webGroup().Policy) {
		t.Fatalf("revision 1 = %v, %v", r1, err)
	}
	_, err = e.groups.GetPolicyRevision(ctx, &pb.GetPolicyRevisionRequest{Name: "groups/web/revisions/9"})
	wantCode(t, err, codes.NotFound)
	_, err = e.groups.GetPolicyRevision(ctx, &pb.GetPolicyRevisionRequest{Name: "groups/web/revisions/x"})
	wantCode(t, err, codes.InvalidArgument)

	_, err = e.groups.DeleteGroup(ctx, &pb.DeleteGroupRequest{Name: "groups/web", Etag: g.Etag})
	wantCode(t, err, codes.Aborted)
	if _, err := e.groups.DeleteGroup(ctx, &pb.DeleteGroupRequest{Name: "groups/web", Etag: g2.Etag}); err != nil {
		t.Fatal(err)
	}
	_, err = e.groups.GetGroup(ctx, &pb.GetGroupRequest{Name: "groups/web"})
	wantCode(t, err, codes.NotFound)

	// Audit: create, update, delete succeeded; the conflicting calls failed.
	evs, err := e.audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var summary []string
	for _, ev := range evs.Events {
		summary = append(summary, ev.Action+":"+ev.StatusCode)
	}
	want := "[groups.create:OK groups.create:AlreadyExists groups.update:OK groups.update:Aborted groups.delete:Aborted groups.delete:OK]"
	if fmt.Sprint(summary) != want {
		t.Fatalf("audit = %v\nwant %s", summary, want)
	}
	if evs.Events[0].RequestId != "req-42" || evs.Events[0].PeerAddress == "" || evs.Events[0].Reason != "first" {
		t.Fatalf("create event = %v", evs.Events[0])
	}
	v, err := e.audit.VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{})
	if err != nil || !v.Ok || v.EventsChecked != 6 {
		t.Fatalf("verify = %v, %v", v, err)
	}
}

func violatedFields(st *status.Status) []string {
	var out []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.FieldViolations {
				out = append(out, v.Field)
			}
		}
	}
	return out
}

// Invalid input: INVALID_ARGUMENT with a BadRequest naming every bad field,
// and nothing written to etcd.
func TestInvalidInputChangesNothing(t *testing.T) {
	e := start(t)
	ctx := ctxT(t)
	if _, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "web", Group: webGroup()}); err != nil {
		t.Fatal(err)
	}
	before := etcdKeys(t, e)
	bad := webGroup()
	bad.Policy.Limits.Subflows = proto.Uint32(9)
	bad.Policy.Endpoints[0].Flags = []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SIGNAL, pb.EndpointFlag_ENDPOINT_FLAG_FULLMESH}
	bad.Policy.Endpoints = append(bad.Policy.Endpoints, &pb.EndpointRule{Cidr: "198.18.0.1/15"})
	for name, call := range map[string]func() error{
		"create": func() error {
			_, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "Bad_Id", Group: bad})
			return err
		},
		"update": func() error {
			b := proto.Clone(bad).(*pb.Group)
			b.Name = "groups/web"
			_, err := e.groups.UpdateGroup(ctx, &pb.UpdateGroupRequest{Group: b})
			return err
		},
	} {
		st := wantCode(t, call(), codes.InvalidArgument)
		fields := violatedFields(st)
		want := []string{"group.policy.limits.subflows", "group.policy.endpoints[0].flags", "group.policy.endpoints[1].cidr"}
		if name == "create" {
			want = append([]string{"group_id"}, want...)
		}
		if fmt.Sprint(fields) != fmt.Sprint(want) {
			t.Errorf("%s: violated fields %v, want %v", name, fields, want)
		}
	}
	if _, err := e.groups.ListGroups(ctx, &pb.ListGroupsRequest{PageToken: "garbage"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad page token: %v", err)
	}
	if after := etcdKeys(t, e); after != before {
		t.Fatalf("rejected requests changed etcd: %d keys before, %d after", before, after)
	}
	g, _ := e.groups.GetGroup(ctx, &pb.GetGroupRequest{Name: "groups/web"})
	if g.PolicyRevision != 1 || g.GetPolicy().GetLimits().GetSubflows() != 2 {
		t.Fatalf("group changed: %v", g)
	}
}

func TestListGroupsPages(t *testing.T) {
	e := start(t)
	ctx := ctxT(t)
	for i := 0; i < 5; i++ {
		if _, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: fmt.Sprintf("g%d", i), Group: webGroup()}); err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	tok := ""
	for {
		resp, err := e.groups.ListGroups(ctx, &pb.ListGroupsRequest{PageSize: 2, PageToken: tok})
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range resp.Groups {
			names = append(names, g.Name)
		}
		if tok = resp.NextPageToken; tok == "" {
			break
		}
	}
	if fmt.Sprint(names) != "[groups/g0 groups/g1 groups/g2 groups/g3 groups/g4]" {
		t.Fatalf("pages gave %v", names)
	}
}

// Racing updates with the same etag through the API: exactly one wins, the
// rest are ABORTED.
func TestConcurrentUpdatesAPI(t *testing.T) {
	e := start(t)
	ctx := ctxT(t)
	g, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "web", Group: webGroup()})
	if err != nil {
		t.Fatal(err)
	}
	const n = 6
	codesSeen := make([]codes.Code, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			u := proto.Clone(g).(*pb.Group)
			u.Policy.Limits.Subflows = proto.Uint32(uint32(3 + i%5))
			u.Description = fmt.Sprint("writer ", i)
			_, err := e.groups.UpdateGroup(ctx, &pb.UpdateGroupRequest{Group: u})
			codesSeen[i] = status.Code(err)
		}(i)
	}
	wg.Wait()
	wins := 0
	for _, c := range codesSeen {
		switch c {
		case codes.OK:
			wins++
		case codes.Aborted:
		default:
			t.Fatalf("unexpected code %s", c)
		}
	}
	if wins != 1 {
		t.Fatalf("%d updates won: %v", wins, codesSeen)
	}
}

func TestWatchAuditEvents(t *testing.T) {
	e := start(t)
	ctx := ctxT(t)
	if _, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "old", Group: webGroup()}); err != nil {
		t.Fatal(err)
	}
	// after_sequence 0: only new events, so "old" is not sent.
	all, err := e.audit.WatchAuditEvents(ctx, &pb.WatchAuditEventsRequest{AfterSequence: 0, Action: "groups."})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let the watches subscribe
	for _, id := range []string{"a", "b"} {
		if _, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: id, Group: webGroup()}); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{"groups/a", "groups/b"} {
		ev, err := all.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if ev.Resource != want {
			t.Fatalf("watched %s (seq %d), want %s", ev.Resource, ev.Sequence, want)
		}
	}
	// Replay from a sequence: the old event first.
	r, err := e.audit.WatchAuditEvents(ctx, &pb.WatchAuditEventsRequest{AfterSequence: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, wantSeq := range []uint64{2, 3} {
		ev, err := r.Recv()
		if err != nil || ev.Sequence != wantSeq {
			t.Fatalf("replay: %v, %v; want seq %d", ev, err, wantSeq)
		}
	}
}

// Reflection is exercised by TestGRPCurlSession, which uses nothing else.
func TestHealth(t *testing.T) {
	e := start(t)
	ctx := ctxT(t)
	resp, err := healthpb.NewHealthClient(e.conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v, %v", resp, err)
	}
}
