package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	mpcontroller "github.com/mpfleet/mpfleet/controller"
	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/transport"
	"github.com/mpfleet/mpfleet/internal/version"
	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// lockedBuffer is a log several goroutines write.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startController runs a real controller, as mpfleet-controller does, on
// embedded etcd with args added, until the test ends, and returns its
// address once it serves. tlsCfg is how to reach it for the health check.
func startController(t *testing.T, tlsCfg credentials.TransportCredentials, args ...string) string {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", etcdtest.FreePort(t))
	cu, pu := etcdtest.URLs(t)
	args = append([]string{"--listen", addr, "--log-level", "warn", "--data-dir", t.TempDir(), "--etcd-client-url", cu, "--etcd-peer-url", pu}, args...)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	logs := &lockedBuffer{}
	go func() { errc <- mpcontroller.Run(ctx, args, logs, logs) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("controller: %v\n%s", err, logs.String())
			}
		case <-time.After(30 * time.Second):
			t.Errorf("controller did not stop within 30s")
		}
	})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(tlsCfg))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	deadline := time.Now().Add(60 * time.Second)
	for {
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		resp, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		ccancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return addr
		}
		select {
		case err := <-errc:
			errc <- err // for the cleanup
			t.Fatalf("controller exited: %v\n%s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("controller not serving within 60s: %v\n%s", err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tlsCreds are client credentials from certificate files, as the agent
// and mpfleetctl build them.
func tlsCreds(t *testing.T, info transport.TLSInfo) credentials.TransportCredentials {
	t.Helper()
	cfg, err := info.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	return credentials.NewTLS(cfg)
}

// TestSecureQuickStart is the README's secure quick start: certs init and
// certs issue, a real controller serving TLS with those files and
// verifying client certificates against the CA, mpfleetctl over TLS with
// an admin token (version prints the client's and the server's), and an
// agent identity from its certificate — accepted as its own host, refused
// as another, and refused the operators' API.
func TestSecureQuickStart(t *testing.T) {
	pki := filepath.Join(t.TempDir(), "pki")
	mustRun(t, "certs", "init", "--dir", pki, "--server-ip", "127.0.0.1")
	mustRun(t, "certs", "issue", "--dir", pki, "web-1", "--label", "role=web")
	f := func(name string) string { return filepath.Join(pki, name) }

	token := "quick-start-admin-token"
	sum := sha256.Sum256([]byte(token))
	tokens := filepath.Join(t.TempDir(), "tokens.yaml")
	if err := os.WriteFile(tokens, []byte("- {name: admin, role: admin, tokenSHA256: "+hex.EncodeToString(sum[:])+"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := startController(t, tlsCreds(t, transport.TLSInfo{TrustedCAFile: f("ca.pem"), ServerName: "127.0.0.1"}),
		"--tls-cert-file", f("server.pem"), "--tls-key-file", f("server-key.pem"), "--tls-client-ca-file", f("ca.pem"), "--tokens-file", tokens)

	// mpfleetctl over TLS with the admin token: version shows both.
	ctl := []string{"--controller", addr, "--ca-file", f("ca.pem"), "--token", token}
	out := mustRun(t, append(ctl, "version")...)
	line := version.Get().String()
	if want := "Client: mpfleetctl " + line + "\nServer: mpfleet-controller " + line + "\n"; out != want {
		t.Errorf("version:\n%s\nwant:\n%s", out, want)
	}
	var js struct{ Client, Server map[string]any }
	if err := json.Unmarshal([]byte(mustRun(t, append(ctl, "version", "-o", "json")...)), &js); err != nil ||
		js.Client["version"] != version.Get().Version || js.Server["version"] != version.Get().Version || js.Server["goVersion"] == nil {
		t.Errorf("version -o json: %+v, %v", js, err)
	}
	mustRun(t, append(ctl, "get", "groups")...)
	// Without the token the controller knows nobody.
	if r := runCLI(t, "", nil, "--controller", addr, "--ca-file", f("ca.pem"), "version"); r.code() != 1 || !strings.Contains(r.stderr, "unauthenticated") ||
		!strings.HasPrefix(r.stdout, "Client: mpfleetctl ") || strings.Contains(r.stdout, "Server:") {
		t.Errorf("version without a token: exit %d, stdout %q, stderr %q", r.code(), r.stdout, r.stderr)
	}

	// The agent's certificate: its own host id is accepted, another refused.
	agentCreds := tlsCreds(t, transport.TLSInfo{CertFile: f("web-1.pem"), KeyFile: f("web-1-key.pem"), TrustedCAFile: f("ca.pem"), ServerName: "127.0.0.1"})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(agentCreds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hello := func(host string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		st, err := mpfleetv1.NewAgentServiceClient(conn).Connect(ctx)
		if err != nil {
			return err
		}
		// A stream the server refused fails Send with io.EOF; its status
		// comes with Recv.
		_ = st.Send(&mpfleetv1.ConnectRequest{Kind: &mpfleetv1.ConnectRequest_Hello{Hello: &mpfleetv1.AgentHello{HostId: host, AgentVersion: "test"}}})
		_, err = st.Recv()
		return err
	}
	if err := hello("web-2"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("web-1's certificate saying hello as web-2: %v, want PermissionDenied", err)
	}
	if err := hello("web-1"); err != nil {
		t.Errorf("web-1's certificate saying hello as web-1: %v", err)
	}
	// The host is known with the labels its certificate binds, once its
	// status is written.
	hc := mpfleetv1.NewHostServiceClient(mustConn(t, addr, f("ca.pem")))
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token), 5*time.Second)
		h, err := hc.GetHost(ctx, &mpfleetv1.GetHostRequest{Name: "hosts/web-1"})
		cancel()
		if err == nil && h.GetAgentVersion() == "test" && h.GetLabels()["role"] == "web" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host web-1 after its hello: labels %v, agent version %q, %v; want the certificate's role=web", h.GetLabels(), h.GetAgentVersion(), err)
		}
	}
	// An agent's certificate is no operator's.
	r := runCLI(t, "", nil, "--controller", addr, "--ca-file", f("ca.pem"), "--cert-file", f("web-1.pem"), "--key-file", f("web-1-key.pem"), "get", "groups")
	if r.code() != 1 || !strings.Contains(r.stderr, "permission denied") {
		t.Errorf("get groups with an agent's certificate: exit %d, %q", r.code(), r.stderr)
	}
	// A certificate from another CA is refused in the handshake.
	other := filepath.Join(t.TempDir(), "other")
	mustRun(t, "certs", "init", "--dir", other, "--server-ip", "127.0.0.1")
	mustRun(t, "certs", "issue", "--dir", other, "web-1")
	r = runCLI(t, "", nil, "--controller", addr, "--ca-file", f("ca.pem"), "--cert-file", filepath.Join(other, "web-1.pem"),
		"--key-file", filepath.Join(other, "web-1-key.pem"), "--timeout", "5s", "get", "groups")
	if r.code() != 1 || r.stdout != "" {
		t.Errorf("a certificate from another CA: exit %d, stdout %q, stderr %q", r.code(), r.stdout, r.stderr)
	}
}

// mustConn is a TLS connection to addr verified with caFile, closed when
// the test ends.
func mustConn(t *testing.T, addr, caFile string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(tlsCreds(t, transport.TLSInfo{TrustedCAFile: caFile, ServerName: "127.0.0.1"})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}
