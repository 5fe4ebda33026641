package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/mpfleet/mpfleet/internal/testpki"
	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

func writeTemp(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestMutualTLS runs mpfleetctl against a controller that requires a client
// certificate, with a token, and checks what the server saw.
func TestMutualTLS(t *testing.T) {
	ca, err := testpki.NewCA("mpfleet test CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	srvCert, srvKey, err := ca.Issue(testpki.Leaf{CommonName: "controller.mpfleet.test", DNSNames: []string{"controller.mpfleet.test"}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	cliCert, cliKey, err := ca.Issue(testpki.Leaf{CommonName: "alice", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)

	var clientCN, auth string
	fg := newFakeGroups()
	fg.put("web", &mpfleetv1.Group{})
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert})),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if p, ok := peer.FromContext(ctx); ok {
				if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
					clientCN = ti.State.PeerCertificates[0].Subject.CommonName
				}
			}
			md, _ := metadata.FromIncomingContext(ctx)
			if v := md.Get("authorization"); len(v) > 0 {
				auth = v[0]
			}
			return h(ctx, req)
		}),
	)
	mpfleetv1.RegisterGroupServiceServer(srv, fg)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)

	caFile := writeTemp(t, dir, "ca.pem", ca.PEM)
	certFile := writeTemp(t, dir, "alice.pem", cliCert)
	keyFile := writeTemp(t, dir, "alice-key.pem", cliKey)
	base := []string{"--controller", lis.Addr().String(), "--ca-file", caFile, "--server-name", "controller.mpfleet.test"}

	r := runCLI(t, "", nil, append(base, "--cert-file", certFile, "--key-file", keyFile, "--token", "s3cret", "get", "group", "web")...)
	if r.err != nil {
		t.Fatalf("get group over mutual TLS: %v (%s)", r.err, r.stderr)
	}
	if clientCN != "alice" || auth != "Bearer s3cret" {
		t.Errorf("server saw client %q and authorization %q, want alice and the token", clientCN, auth)
	}

	// Without a client certificate the handshake fails: one line, exit 1.
	r = runCLI(t, "", nil, append(base, "--timeout", "5s", "get", "group", "web")...)
	if r.code() != 1 || strings.Count(r.stderr, "\n") != 1 || !strings.HasPrefix(r.stderr, `mpfleetctl: group "web": `) {
		t.Errorf("without a client certificate: exit %d, stderr %q", r.code(), r.stderr)
	}

	t.Logf("no client cert: %s", r.stderr)
	// A server name the certificate does not carry is refused.
	r = runCLI(t, "", nil, "--controller", lis.Addr().String(), "--ca-file", caFile, "--cert-file", certFile, "--key-file", keyFile,
		"--timeout", "5s", "get", "group", "web")
	if r.code() != 1 || !strings.Contains(r.stderr, "certificate") {
		t.Errorf("wrong server name: exit %d, stderr %q", r.code(), r.stderr)
	}
	t.Logf("wrong server name: %s", r.stderr)
}
