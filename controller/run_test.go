package controller_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/controller"
	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/nstest"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// running is a controller started through Run, as main starts it.
type running struct {
	addr string
	conn *grpc.ClientConn
	stop func() error
	log  *syncBuf
}

func runController(t *testing.T, args ...string) *running {
	t.Helper()
	return runControllerWith(t, grpc.WithTransportCredentials(insecure.NewCredentials()), args...)
}

// runControllerWith is runController with the client connection's
// credentials (TLS, for a controller serving TLS).
func runControllerWith(t *testing.T, creds grpc.DialOption, args ...string) *running {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", etcdtest.FreePort(t))
	args = append([]string{"--listen", addr, "--log-level", "warn"}, args...)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	logs := &syncBuf{}
	go func() { errc <- controller.Run(ctx, args, logs, logs) }()
	conn, err := grpc.NewClient(addr, creds)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		cctx, ccancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{})
		ccancel()
		if err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING {
			break
		}
		select {
		case err := <-errc:
			cancel()
			t.Fatalf("controller exited: %v\n%s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("controller not serving: %v\n%s", err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	var once sync.Once
	var stopErr error
	stop := func() error {
		once.Do(func() {
			conn.Close()
			cancel()
			select {
			case stopErr = <-errc:
			case <-time.After(30 * time.Second):
				stopErr = fmt.Errorf("controller did not stop within 30s")
			}
		})
		return stopErr
	}
	t.Cleanup(func() { _ = stop() })
	return &running{addr: addr, conn: conn, stop: stop, log: logs}
}

func embeddedArgs(t *testing.T, dir string) []string {
	cu, pu := etcdtest.URLs(t)
	return []string{"--data-dir", dir, "--etcd-client-url", cu, "--etcd-peer-url", pu}
}

// Everything survives a restart of the controller and its embedded etcd.
func TestRestartPersistence(t *testing.T) {
	dir := t.TempDir()
	ctx := ctxT(t)
	r := runController(t, embeddedArgs(t, dir)...)
	gc := pb.NewGroupServiceClient(r.conn)
	g, err := gc.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "web", Group: webGroup()})
	if err != nil {
		t.Fatal(err)
	}
	g.Description = "changed"
	if g, err = gc.UpdateGroup(ctx, &pb.UpdateGroupRequest{Group: g}); err != nil {
		t.Fatal(err)
	}
	if err := r.stop(); err != nil {
		t.Fatalf("clean shutdown: %v\n%s", err, r.log.String())
	}

	r2 := runController(t, embeddedArgs(t, dir)...) // new ports, same data
	gc2 := pb.NewGroupServiceClient(r2.conn)
	got, err := gc2.GetGroup(ctx, &pb.GetGroupRequest{Name: "groups/web"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Description != "changed" || got.Etag != g.Etag {
		t.Fatalf("after restart: %v, want %v", got, g)
	}
	v, err := pb.NewAuditServiceClient(r2.conn).VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{})
	if err != nil || !v.Ok || v.EventsChecked != 2 {
		t.Fatalf("audit after restart = %v, %v", v, err)
	}
	// An agent connecting to the restarted controller gets its group's policy
	// (the hub's first snapshot of groups is etcd's, not an empty cache's).
	a := connectAgent(t, pb.NewAgentServiceClient(r2.conn), "h1", map[string]string{"role": "web"}, true)
	a.waitFor(t, "revision 1 after restart", managedAt("groups/web", 1))
	// Writes continue the same chain.
	if _, err := gc2.DeleteGroup(ctx, &pb.DeleteGroupRequest{Name: "groups/web"}); err != nil {
		t.Fatal(err)
	}
	if v, _ := pb.NewAuditServiceClient(r2.conn).VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{}); !v.Ok || v.LastSequence != 3 {
		t.Fatalf("audit after restart and delete = %v", v)
	}
}

// With --etcd-endpoints the controller uses an existing etcd: a separate etcd
// server process here.
func TestExternalEtcd(t *testing.T) {
	bin := etcdtest.Binary(t)
	if bin == "" {
		nstest.Skip(t, "no etcd server binary: run `make tools` (builds .tools/bin/etcd) or set MPFLEET_ETCD_BIN")
	}
	ep := etcdtest.Process(t, bin)
	ctx := ctxT(t)
	// Every replica needs the same audit key.
	keyFile := writeAuditKey(t, 1)
	r := runController(t, "--etcd-endpoints", ep, "--etcd-prefix", "/ext/", "--data-dir", filepath.Join(t.TempDir(), "unused"), "--audit-key-file", keyFile)
	if _, err := pb.NewGroupServiceClient(r.conn).CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "web", Group: webGroup()}); err != nil {
		t.Fatal(err)
	}
	// The data is in that etcd, under the prefix.
	cli := etcdtest.Client(t, []string{ep})
	resp, err := cli.Get(ctx, "/ext/groups/web")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("group not in external etcd: %v %v", resp, err)
	}
	// A second controller replica on the same etcd sees it.
	r2 := runController(t, "--etcd-endpoints", ep, "--etcd-prefix", "/ext/", "--audit-key-file", keyFile)
	if _, err := pb.NewGroupServiceClient(r2.conn).GetGroup(ctx, &pb.GetGroupRequest{Name: "groups/web"}); err != nil {
		t.Fatal(err)
	}
	// A replica with another key refuses to start.
	err = controller.Run(ctx, []string{"--listen", "127.0.0.1:0", "--etcd-endpoints", ep, "--etcd-prefix", "/ext/", "--audit-key-file", writeAuditKey(t, 2)}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "every controller replica needs the same audit key file") {
		t.Fatalf("a replica with another audit key: err = %v, want a refusal", err)
	}
	if _, err := os.Stat(filepath.Join(t.TempDir(), "unused")); err == nil {
		t.Fatal("embedded etcd data dir created although --etcd-endpoints was given")
	}
}

func TestRefusesInsecureNonLoopback(t *testing.T) {
	err := controller.Run(context.Background(), []string{"--listen", "0.0.0.0:0", "--data-dir", t.TempDir()}, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "refusing plaintext") {
		t.Fatalf("err = %v, want a refusal of plaintext", err)
	}
}

func TestBearerTokensAndRoles(t *testing.T) {
	dir := t.TempDir()
	sum := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
	tokens := filepath.Join(dir, "tokens.yaml")
	os.WriteFile(tokens, []byte(fmt.Sprintf("- {name: alice, role: operator, tokenSHA256: %s}\n- {name: victor, role: viewer, tokenSHA256: %s}\n",
		sum("alice-secret"), sum("victor-secret"))), 0o600)
	r := runController(t, append(embeddedArgs(t, filepath.Join(dir, "data")), "--tokens-file", tokens)...)
	gc := pb.NewGroupServiceClient(r.conn)
	ctx := ctxT(t)
	as := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	if _, err := gc.ListGroups(ctx, &pb.ListGroupsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no token: %v", err)
	}
	if _, err := gc.ListGroups(as("wrong"), &pb.ListGroupsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("wrong token: %v", err)
	}
	if _, err := gc.CreateGroup(as("victor-secret"), &pb.CreateGroupRequest{GroupId: "web", Group: webGroup()}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("viewer create: %v", err)
	}
	if _, err := gc.CreateGroup(as("alice-secret"), &pb.CreateGroupRequest{GroupId: "web", Group: webGroup()}); err != nil {
		t.Fatal(err)
	}
	if _, err := gc.DeleteGroup(as("alice-secret"), &pb.DeleteGroupRequest{Name: "groups/web"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("operator delete: %v", err)
	}
	evs, err := pb.NewAuditServiceClient(r.conn).ListAuditEvents(as("victor-secret"), &pb.ListAuditEventsRequest{})
	if err != nil || len(evs.Events) != 1 || evs.Events[0].Actor != "alice" {
		t.Fatalf("audit = %v, %v", evs, err)
	}
	// Health stays open for load balancers and probes.
	if _, err := healthpb.NewHealthClient(r.conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
}
