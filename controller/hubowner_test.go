package controller_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/etcdtest"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// TestOneStreamPerHostAcrossReplicas: two controller replicas on one etcd.
// Host web-1 connected to replica A is refused by replica B, with the same
// credential, while A's stream lives (ALREADY_EXISTS naming A); once that
// stream ends B accepts it, and then A refuses it.
func TestOneStreamPerHostAcrossReplicas(t *testing.T) {
	e, cli := etcdtest.Embedded(t)
	ep := strings.Join(e.Endpoints(), ",")
	dir := t.TempDir()
	sum := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
	tokens := filepath.Join(dir, "tokens.yaml")
	if err := os.WriteFile(tokens, []byte(fmt.Sprintf("- {name: web-1, role: agent, host: web-1, tokenSHA256: %s}\n", sum("web-1-secret"))), 0o600); err != nil {
		t.Fatal(err)
	}
	keyFile := writeAuditKey(t, 1)
	args := []string{"--etcd-endpoints", ep, "--audit-key-file", keyFile, "--tokens-file", tokens}
	ra, rb := runController(t, args...), runController(t, args...)

	// connect says hello as web-1 and returns the stream once the replica
	// answered with a desired configuration, or the refusal.
	connect := func(conn *grpc.ClientConn) (context.CancelFunc, error) {
		ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer web-1-secret"), 20*time.Second)
		st, err := pb.NewAgentServiceClient(conn).Connect(ctx)
		if err != nil {
			return cancel, err
		}
		_ = st.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Hello{Hello: &pb.AgentHello{HostId: "web-1", AgentVersion: "test"}}})
		m, err := st.Recv()
		if err == nil && m.GetDesired() == nil {
			err = fmt.Errorf("first message %v, want a desired configuration", m)
		}
		return cancel, err
	}
	holder := func() (string, int64) {
		t.Helper()
		resp, err := cli.Get(context.Background(), "/mpfleet/v1/sessions/web-1")
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 0 {
			return "", resp.Header.Revision
		}
		return string(resp.Kvs[0].Value), resp.Header.Revision
	}
	refusedBy := func(conn *grpc.ClientConn, want string) {
		t.Helper()
		cancel, err := connect(conn)
		cancel()
		if status.Code(err) != codes.AlreadyExists || !strings.Contains(status.Convert(err).Message(), fmt.Sprintf("replica %q", want)) {
			t.Fatalf("second stream: %v, want ALREADY_EXISTS naming replica %q", err, want)
		}
	}

	stopA, err := connect(ra.conn)
	if err != nil {
		stopA()
		t.Fatalf("web-1 to replica A: %v", err)
	}
	a, _ := holder()
	if a == "" {
		t.Fatal("no session key while web-1 is connected to A")
	}
	refusedBy(rb.conn, a)
	if h, _ := holder(); h != a {
		t.Fatalf("after B refused, the session is held by %q, want A (%q)", h, a)
	}

	// A's stream ends: its session key goes, and B takes the host.
	_, rev := holder()
	wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer wcancel()
	w := cli.Watch(wctx, "/mpfleet/v1/sessions/web-1", clientv3.WithRev(rev+1))
	stopA()
	for released := false; !released; {
		resp, ok := <-w
		if !ok || resp.Err() != nil {
			t.Fatalf("A's session key not released: %v", resp.Err())
		}
		for _, ev := range resp.Events {
			released = released || ev.Type == clientv3.EventTypeDelete
		}
	}
	stopB, err := connect(rb.conn)
	defer stopB()
	if err != nil {
		t.Fatalf("web-1 to replica B once A's stream ended: %v", err)
	}
	b, _ := holder()
	if b == "" || b == a {
		t.Fatalf("session held by %q after B accepted, want B (not A %q)", b, a)
	}
	refusedBy(ra.conn, b)
}
