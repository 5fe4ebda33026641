package agent

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/testpki"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// testCA makes a throwaway CA and writes its certificate into dir.
func testCA(t *testing.T, dir string) (*testpki.CA, string) {
	t.Helper()
	ca, err := testpki.NewCA("mpfleet test CA")
	if err != nil {
		t.Fatal(err)
	}
	caFile, err := ca.WriteCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	return ca, caFile
}

// issue writes a certificate for name (CN and DNS name) and its key into dir.
func issue(t *testing.T, ca *testpki.CA, dir, name string, server bool) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile, err := ca.WriteLeaf(dir, name, testpki.Leaf{CommonName: name, DNSNames: []string{name}, Server: server, Client: !server})
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestAgentMutualTLS: the agent verifies the controller's certificate
// against --tls-ca-file under --server-name, presents its own, and sends
// its token.
func TestAgentMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, caFile := testCA(t, dir)
	srvCert, srvKey := issue(t, ca, dir, "controller.test", true)
	cliCert, cliKey := issue(t, ca, dir, "web-1", false)
	kp, err := tls.LoadX509KeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	creds, err := clientCreds(Flags{TLSCAFile: caFile, TLSCertFile: cliCert, TLSKeyFile: cliKey, ServerName: "controller.test"})
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
	ca, caFile := testCA(t, dir)
	srvCert, srvKey := issue(t, ca, dir, "impostor.test", true)
	kp, err := tls.LoadX509KeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := clientCreds(Flags{TLSCAFile: caFile, ServerName: "controller.test"})
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
	dials := h.countDials()
	h.ctrl.setDesired(managed(1, testPolicy()))
	h.start()
	// A second attempt means the first one failed; one that talked to the
	// impostor would have stayed connected.
	waitUntil(t, "two connection attempts or a hello", func() bool {
		n, _, _ := h.ctrl.counts()
		return dials.Load() >= 2 || n > 0
	})
	if n, _, _ := h.ctrl.counts(); n != 0 || h.k.Calls() != 0 {
		t.Errorf("%d hellos reached an impostor; %d kernel calls", n, h.k.Calls())
	}
}
