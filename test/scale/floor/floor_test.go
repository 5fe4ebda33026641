package floor_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/mpfleet/mpfleet/test/scale/floor"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// start serves a floor.Server on loopback and returns it, a client of its
// HTTP handler and a gRPC connection to it.
func start(t *testing.T) (*floor.Server, floor.Client, *grpc.ClientConn) {
	t.Helper()
	s := floor.NewServer()
	srv := s.Register()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	hs := httptest.NewServer(s.Handler())
	conn, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(); hs.Close(); srv.Stop(); <-done })
	return s, floor.Client{URL: hs.URL}, conn
}

func hello(ctx context.Context, t *testing.T, conn *grpc.ClientConn, id string) pb.AgentService_ConnectClient {
	t.Helper()
	st, err := pb.NewAgentServiceClient(conn).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Hello{Hello: &pb.AgentHello{HostId: id}}}); err != nil {
		t.Fatal(err)
	}
	return st
}

func recvDesired(t *testing.T, st pb.AgentService_ConnectClient) *pb.DesiredConfig {
	t.Helper()
	m, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if m.GetDesired() == nil {
		t.Fatalf("got %v; want a desired configuration", m)
	}
	return m.GetDesired()
}

// TestFanout: a new stream gets the current desired configuration after
// its hello; a fan-out reaches every stream, with the policy of the body
// and the group and revision of the query; the runtime figures count the
// streams.
func TestFanout(t *testing.T) {
	s, c, conn := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pol := &pb.MultipathPolicy{Enabled: proto.Bool(true), Limits: &pb.Limits{Subflows: proto.Uint32(3)}}
	res, err := c.Fanout(ctx, &pb.DesiredConfig{Group: "groups/a", Revision: 1, Policy: pol})
	if err != nil || res.Streams != 0 {
		t.Fatalf("first fan-out: %+v, %v; want 0 streams", res, err)
	}
	a, b := hello(ctx, t, conn, "a"), hello(ctx, t, conn, "b")
	for _, st := range []pb.AgentService_ConnectClient{a, b} {
		if d := recvDesired(t, st); d.GetRevision() != 1 || d.GetGroup() != "groups/a" || d.GetAssignment() != pb.DesiredConfig_ASSIGNMENT_MANAGED {
			t.Errorf("on hello: %v; want groups/a revision 1, managed", d)
		}
	}
	res, err = c.Fanout(ctx, &pb.DesiredConfig{Group: "groups/a", Revision: 2, Policy: pol})
	if err != nil || res.Streams != 2 || res.Failed != 0 || res.Bytes == 0 {
		t.Fatalf("fan-out: %+v, %v; want 2 streams, none failed", res, err)
	}
	for _, st := range []pb.AgentService_ConnectClient{a, b} {
		if d := recvDesired(t, st); d.GetRevision() != 2 || d.GetPolicy().GetLimits().GetSubflows() != 3 {
			t.Errorf("fanned out: %v; want revision 2, subflows 3", d)
		}
	}
	rt, err := c.Runtime(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rt.Streams != 2 || s.Streams() != 2 || rt.Goroutines < 2 || rt.Stacks == 0 || rt.HeapLive == 0 || rt.HeapInUse() < rt.HeapLive/2 || rt.Total < rt.HeapInUse() {
		t.Errorf("runtime %+v; want 2 streams and plausible figures", rt)
	}
}

// TestBadInput: a stream that does not begin with a hello ends
// INVALID_ARGUMENT; a fan-out without a group or a revision, or with a
// body that is not a DesiredConfig, is refused naming the parameter and
// sends nothing.
func TestBadInput(t *testing.T) {
	s, c, conn := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := pb.NewAgentServiceClient(conn).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Report{Report: &pb.AgentReport{}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "hello") {
		t.Errorf("no hello: %v; want INVALID_ARGUMENT naming hello", err)
	}
	for q, want := range map[string]string{
		"revision=1":                "group",
		"group=groups/a":            "revision",
		"group=groups/a&revision=0": "revision",
	} {
		resp, err := http.Post(c.URL+"/fanout?"+q, "application/x-protobuf", nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.HasPrefix(string(body), want) {
			t.Errorf("/fanout?%s: %s %q; want 400 naming %s", q, resp.Status, body, want)
		}
	}
	resp, err := http.Post(c.URL+"/fanout?group=g&revision=1", "application/x-protobuf", strings.NewReader("\xff\xff"))
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a body that is not a DesiredConfig: %s; want 400", resp.Status)
	}
	if rt := s.Runtime(); rt.Streams != 0 {
		t.Errorf("%d streams after a stream without a hello; want 0", rt.Streams)
	}
	// Nothing was fanned out: a new stream gets nothing on its hello.
	a := hello(ctx, t, conn, "a")
	if _, err := c.Fanout(ctx, &pb.DesiredConfig{Group: "groups/a", Revision: 7}); err != nil {
		t.Fatal(err)
	}
	if d := recvDesired(t, a); d.GetRevision() != 7 {
		t.Errorf("first message %v; want the fan-out's revision 7, nothing before", d)
	}
}
