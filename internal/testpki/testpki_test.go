package testpki_test

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"net/netip"
	"testing"

	"github.com/mpfleet/mpfleet/internal/testpki"
)

// TestHandshake checks that a server certificate with an IP SAN and a client
// certificate from the same CA complete a mutual TLS handshake, and that the
// server sees the client's common name.
func TestHandshake(t *testing.T) {
	ca, err := testpki.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	srvCert, srvKey, err := ca.Issue(testpki.Leaf{CommonName: "controller", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	cliCert, cliKey, err := ca.Issue(testpki.Leaf{CommonName: "host-1", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	srvPair, err := tls.X509KeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	cliPair, err := tls.X509KeyPair(cliCert, cliKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)

	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{srvPair}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			got <- err.Error()
			return
		}
		got <- tc.ConnectionState().PeerCertificates[0].Subject.CommonName
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cliPair}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if cn := <-got; cn != "host-1" {
		t.Errorf("server saw client %q, want host-1", cn)
	}
}

func TestToken(t *testing.T) {
	tok, sum, err := testpki.Token()
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256([]byte(tok))
	if hex.EncodeToString(h[:]) != sum || len(tok) < 40 {
		t.Errorf("token %q, sum %s", tok, sum)
	}
	tok2, _, _ := testpki.Token()
	if tok == tok2 {
		t.Error("two tokens are equal")
	}
}
