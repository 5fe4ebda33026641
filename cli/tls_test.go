package cli

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// testCA is a throwaway certificate authority.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mpfleet test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a certificate for the DNS name and IPs, as PEM cert and key.
func (ca *testCA) issue(t *testing.T, name string, ips []net.IP, usage x509.ExtKeyUsage) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		DNSNames: []string{name}, IPAddresses: ips,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

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
	ca := newTestCA(t)
	dir := t.TempDir()
	srvCert, srvKey := ca.issue(t, "controller.mpfleet.test", nil, x509.ExtKeyUsageServerAuth)
	cliCert, cliKey := ca.issue(t, "alice", nil, x509.ExtKeyUsageClientAuth)
	pair, err := tls.X509KeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)

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

	caFile := writeTemp(t, dir, "ca.pem", ca.pem)
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
