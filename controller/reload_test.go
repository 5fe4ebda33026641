package controller_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/testpki"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func tokenLine(name, role, secret, extra string) string {
	h := sha256.Sum256([]byte(secret))
	return fmt.Sprintf("- {name: %s, role: %s, tokenSHA256: %s%s}\n", name, role, hex.EncodeToString(h[:]), extra)
}

// TestTokensReload: a changed tokens file is picked up without a restart; a
// revoked token is refused at once and its open stream closed, while a
// stream of a token that stays lives on; an expired token is refused.
func TestTokensReload(t *testing.T) {
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens.yaml")
	write := func(s string) {
		t.Helper()
		tmp := tokens + ".tmp"
		if err := os.WriteFile(tmp, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, tokens); err != nil { // as config management does
			t.Fatal(err)
		}
	}
	past := ", expires: " + time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	write(tokenLine("alice", "operator", "a-secret", "") + tokenLine("victor", "viewer", "v-secret", "") + tokenLine("old", "admin", "o-secret", past))
	r := runController(t, append(embeddedArgs(t, filepath.Join(dir, "data")), "--tokens-file", tokens, "--reload-interval", "100ms")...)
	ctx := ctxT(t)
	as := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	gc := pb.NewGroupServiceClient(r.conn)
	if _, err := gc.ListGroups(as("o-secret"), &pb.ListGroupsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("expired token: %v, want Unauthenticated", err)
	}
	watch := func(tok string) <-chan error {
		st, err := pb.NewHostServiceClient(r.conn).WatchHosts(as(tok), &pb.WatchHostsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if ev, err := st.Recv(); err != nil || ev.GetType() != pb.HostEvent_TYPE_SYNCED {
			t.Fatalf("watch as %s: %v, %v", tok, ev, err)
		}
		done := make(chan error, 1)
		go func() {
			for {
				if _, err := st.Recv(); err != nil {
					done <- err
					return
				}
			}
		}()
		return done
	}
	aliceWatch, victorWatch := watch("a-secret"), watch("v-secret")

	// Revoke alice, add bob.
	write(tokenLine("victor", "viewer", "v-secret", "") + tokenLine("bob", "operator", "b-secret", ""))
	select {
	case err := <-aliceWatch:
		if status.Code(err) != codes.Canceled && status.Code(err) != codes.Unavailable {
			t.Logf("alice's stream ended with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("alice's open stream was not closed after her token was revoked")
	}
	if _, err := gc.ListGroups(as("a-secret"), &pb.ListGroupsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("revoked token: %v, want Unauthenticated", err)
	}
	if _, err := gc.CreateGroup(as("b-secret"), &pb.CreateGroupRequest{GroupId: "web", Group: webGroup()}); err != nil {
		t.Fatalf("new token: %v", err)
	}
	select {
	case err := <-victorWatch:
		t.Fatalf("victor's stream ended although his token stays: %v", err)
	default:
	}
	// A broken file keeps what is in force.
	write("- {name: broken\n")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(r.log.String(), "credentials reload failed") {
		if time.Now().After(deadline) {
			t.Fatal("no failed reload logged after a bad tokens file")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := gc.ListGroups(as("b-secret"), &pb.ListGroupsRequest{}); err != nil {
		t.Fatalf("after a bad tokens file: %v; the credentials in force must stay", err)
	}
}

// TestBinarySIGHUP: SIGHUP reloads the credentials of the real binary, and
// does not end it.
func TestBinarySIGHUP(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the controller binary")
	}
	bin := filepath.Join(t.TempDir(), "mpfleet-controller")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/mpfleet-controller").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens.yaml")
	if err := os.WriteFile(tokens, []byte(tokenLine("alice", "viewer", "a-secret", "")), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", etcdtest.FreePort(t))
	cu, pu := etcdtest.URLs(t)
	cmd := exec.Command(bin, "--listen", addr, "--data-dir", filepath.Join(dir, "data"), "--etcd-client-url", cu, "--etcd-peer-url", pu,
		"--tokens-file", tokens, "--reload-interval", "0")
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := ctxT(t)
	as := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	gc := pb.NewGroupServiceClient(conn)
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("no %s\n%s", what, logs.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("controller serving alice", func() bool { _, err := gc.ListGroups(as("a-secret"), &pb.ListGroupsRequest{}); return err == nil })
	if err := os.WriteFile(tokens, []byte(tokenLine("bob", "viewer", "b-secret", "")), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor("bob's token after SIGHUP", func() bool { _, err := gc.ListGroups(as("b-secret"), &pb.ListGroupsRequest{}); return err == nil })
	if _, err := gc.ListGroups(as("a-secret"), &pb.ListGroupsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("alice after the reload: %v", err)
	}
	select {
	case err := <-exited:
		t.Fatalf("the controller exited on SIGHUP: %v\n%s", err, logs.String())
	default:
	}
}

// TestClientCAReload: a new client CA takes effect without a restart; the
// stream of an agent whose certificate the new CA does not verify is
// closed, and such a certificate is refused; one from the new CA works.
func TestClientCAReload(t *testing.T) {
	dir := t.TempDir()
	ca1, err := testpki.NewCA("old CA")
	if err != nil {
		t.Fatal(err)
	}
	ca2, err := testpki.NewCA("new CA")
	if err != nil {
		t.Fatal(err)
	}
	srvCert, srvKey, err := ca1.WriteLeaf(dir, "server", testpki.Leaf{CommonName: "controller", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	serverCA, err := ca1.WriteCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	clientCA := filepath.Join(dir, "client-ca.pem")
	if err := os.WriteFile(clientCA, ca1.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	oldCert, oldKey, _ := ca1.WriteLeaf(dir, "web-1-old", testpki.Leaf{CommonName: "web-1", Client: true})
	newCert, newKey, _ := ca2.WriteLeaf(dir, "web-1-new", testpki.Leaf{CommonName: "web-1", Client: true})

	pem, _ := os.ReadFile(serverCA)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	r := runControllerWith(t, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12})),
		append(embeddedArgs(t, filepath.Join(dir, "data")),
			"--tls-cert-file", srvCert, "--tls-key-file", srvKey, "--tls-client-ca-file", clientCA, "--reload-interval", "100ms")...)
	agentConn := func(cert, key string) *grpc.ClientConn {
		t.Helper()
		kp, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := grpc.NewClient(r.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			RootCAs: pool, Certificates: []tls.Certificate{kp}, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12})))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	connect := func(conn *grpc.ClientConn) (pb.AgentService_ConnectClient, error) {
		st, err := pb.NewAgentServiceClient(conn).Connect(ctxT(t))
		if err != nil {
			return nil, err
		}
		_ = st.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Hello{Hello: &pb.AgentHello{HostId: "web-1", AgentVersion: "test"}}})
		_, err = st.Recv() // the status of a refused stream
		return st, err
	}
	st, err := connect(agentConn(oldCert, oldKey))
	if err != nil {
		t.Fatalf("agent with the old CA's certificate: %v", err)
	}
	closed := make(chan error, 1)
	go func() {
		for {
			if _, err := st.Recv(); err != nil {
				closed <- err
				return
			}
		}
	}()
	if err := os.WriteFile(clientCA+".tmp", ca2.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(clientCA+".tmp", clientCA); err != nil {
		t.Fatal(err)
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the stream of a certificate the new client CA does not verify stayed open")
	}
	if _, err := connect(agentConn(oldCert, oldKey)); err == nil {
		t.Fatal("a certificate of the old CA was accepted after the reload")
	}
	if _, err := connect(agentConn(newCert, newKey)); err != nil {
		t.Fatalf("a certificate of the new CA: %v", err)
	}
}
