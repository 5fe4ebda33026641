package agent

import (
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
	"testing"
	"time"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
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

// issue writes a certificate for name (and ips) and its key into dir.
func (ca *testCA) issue(t *testing.T, dir, name string, ips []net.IP, usage x509.ExtKeyUsage) (certFile, keyFile string) {
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
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestAgentMutualTLS: the agent verifies the controller's certificate
// against --tls-ca-file under --server-name, presents its own, and sends
// its token.
func TestAgentMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t)
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.pem, 0o600); err != nil {
		t.Fatal(err)
	}
	srvCert, srvKey := ca.issue(t, dir, "controller.test", nil, x509.ExtKeyUsageServerAuth)
	cliCert, cliKey := ca.issue(t, dir, "web-1", nil, x509.ExtKeyUsageClientAuth)
	kp, err := tls.LoadX509KeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.pem)
	creds, err := clientTLS(Flags{TLSCAFile: caFile, TLSCertFile: cliCert, TLSKeyFile: cliKey, ServerName: "controller.test"})
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, func(h *harness) {
		h.ctrl.stop()
		h.ctrl = newController(t, true)
		h.ctrl.sopts = []grpc.ServerOption{grpc.Creds(credentials.NewTLS(&tls.Config{
			Certificates: []tls.Certificate{kp}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12,
		}))}
		h.ctrl.serve()
		h.opts.Controller = h.ctrl.addr
		h.opts.Credentials = creds
		h.opts.Token = "s3cret"
	})
	h.ctrl.setDesired(managed(1, testPolicy()))
	h.start()
	h.ctrl.waitReport(t, 0, "IN_SYNC at 1", inState(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	h.ctrl.mu.Lock()
	defer h.ctrl.mu.Unlock()
	if h.ctrl.peers[0] != "web-1" || h.ctrl.auth[0] != "Bearer s3cret" {
		t.Errorf("controller saw certificate %q and authorization %q", h.ctrl.peers[0], h.ctrl.auth[0])
	}
}

// TestAgentRefusesWrongServer: a controller whose certificate does not
// name --server-name is never talked to.
func TestAgentRefusesWrongServer(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t)
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.pem, 0o600); err != nil {
		t.Fatal(err)
	}
	srvCert, srvKey := ca.issue(t, dir, "impostor.test", nil, x509.ExtKeyUsageServerAuth)
	kp, err := tls.LoadX509KeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := clientTLS(Flags{TLSCAFile: caFile, ServerName: "controller.test"})
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, func(h *harness) {
		h.ctrl.stop()
		h.ctrl = newController(t, true)
		h.ctrl.sopts = []grpc.ServerOption{grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{kp}}))}
		h.ctrl.serve()
		h.opts.Controller = h.ctrl.addr
		h.opts.Credentials = creds
		h.opts.ConnectTimeout = 200 * time.Millisecond
	})
	h.ctrl.setDesired(managed(1, testPolicy()))
	h.start()
	time.Sleep(500 * time.Millisecond)
	if n, _, _ := h.ctrl.counts(); n != 0 || h.k.Calls() != 0 {
		t.Errorf("%d hellos reached an impostor; %d kernel calls", n, h.k.Calls())
	}
}
