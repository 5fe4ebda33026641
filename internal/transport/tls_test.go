package transport_test

import (
	"bufio"
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mpfleet/mpfleet/internal/testpki"
	"github.com/mpfleet/mpfleet/internal/transport"
)

// pki is a throwaway CA with certificates written into a temporary dir.
type pki struct {
	t   *testing.T
	dir string
	ca  *testpki.CA
	// caFile is the CA's certificate.
	caFile string
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	ca, err := testpki.NewCA("transport test CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caFile, err := ca.WriteCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	return &pki{t: t, dir: dir, ca: ca, caFile: caFile}
}

// leaf writes a server or client certificate for name (common name and
// DNS name) and its key.
func (p *pki) leaf(name string, server bool) (certFile, keyFile string) {
	p.t.Helper()
	certFile, keyFile, err := p.ca.WriteLeaf(p.dir, name, testpki.Leaf{CommonName: name, DNSNames: []string{name}, Server: server, Client: !server})
	if err != nil {
		p.t.Fatal(err)
	}
	return certFile, keyFile
}

// handshake connects a client with cc to a server with sc over loopback
// TCP. It returns the common name of the certificate the server saw from
// the client ("" for none), or the error of the end that refused.
func handshake(t *testing.T, sc, cc *tls.Config) (string, error) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", sc)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srvErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvErr <- err
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			srvErr <- err
			return
		}
		cn := ""
		if pc := tc.ConnectionState().PeerCertificates; len(pc) > 0 {
			cn = pc[0].Subject.CommonName
		}
		_, err = tc.Write([]byte("cn=" + cn + "\n"))
		srvErr <- err
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), cc)
	if err != nil {
		<-srvErr
		return "", err
	}
	line, rerr := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if serr := <-srvErr; serr != nil {
		return "", serr
	}
	if rerr != nil {
		return "", rerr
	}
	return strings.TrimSuffix(strings.TrimPrefix(line, "cn="), "\n"), nil
}

func TestServerRequiresClientCertificate(t *testing.T) {
	p := newPKI(t)
	srvCert, srvKey := p.leaf("controller.test", true)
	cliCert, cliKey := p.leaf("web-1", false)
	sc, err := transport.TLSInfo{CertFile: srvCert, KeyFile: srvKey, TrustedCAFile: p.caFile, ClientAuth: tls.RequireAndVerifyClientCert}.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	if sc.MinVersion != tls.VersionTLS12 || sc.ClientAuth != tls.RequireAndVerifyClientCert || sc.ClientCAs == nil || len(sc.Certificates) != 1 {
		t.Fatalf("server config: min version %x, client auth %v, client CAs %v, %d certificates", sc.MinVersion, sc.ClientAuth, sc.ClientCAs != nil, len(sc.Certificates))
	}
	withCert, err := transport.TLSInfo{CertFile: cliCert, KeyFile: cliKey, TrustedCAFile: p.caFile, ServerName: "controller.test"}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cn, err := handshake(t, sc, withCert); err != nil || cn != "web-1" {
		t.Errorf("client with a certificate: server saw %q, err %v; want web-1", cn, err)
	}
	without, err := transport.TLSInfo{TrustedCAFile: p.caFile, ServerName: "controller.test"}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cn, err := handshake(t, sc, without); err == nil {
		t.Errorf("client without a certificate got in (server saw %q)", cn)
	}

	// A client certificate from another CA does not verify either.
	other := newPKI(t)
	strangerCert, strangerKey := other.leaf("web-2", false)
	stranger, err := transport.TLSInfo{CertFile: strangerCert, KeyFile: strangerKey, TrustedCAFile: p.caFile, ServerName: "controller.test"}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cn, err := handshake(t, sc, stranger); err == nil {
		t.Errorf("client with a certificate of another CA got in as %q", cn)
	}
}

// TestServerVerifiesClientCertificateIfGiven: by default a server with a
// CA admits clients without a certificate (they may bring a token) and
// verifies those that give one.
func TestServerVerifiesClientCertificateIfGiven(t *testing.T) {
	p := newPKI(t)
	srvCert, srvKey := p.leaf("controller.test", true)
	cliCert, cliKey := p.leaf("web-1", false)
	sc, err := transport.TLSInfo{CertFile: srvCert, KeyFile: srvKey, TrustedCAFile: p.caFile}.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	if sc.ClientAuth != tls.VerifyClientCertIfGiven {
		t.Errorf("client auth %v, want VerifyClientCertIfGiven", sc.ClientAuth)
	}
	without, err := transport.TLSInfo{TrustedCAFile: p.caFile, ServerName: "controller.test"}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cn, err := handshake(t, sc, without); err != nil || cn != "" {
		t.Errorf("client without a certificate: server saw %q, err %v", cn, err)
	}
	with, err := transport.TLSInfo{CertFile: cliCert, KeyFile: cliKey, TrustedCAFile: p.caFile, ServerName: "controller.test"}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cn, err := handshake(t, sc, with); err != nil || cn != "web-1" {
		t.Errorf("client with a certificate: server saw %q, err %v", cn, err)
	}

	// Without a CA the server asks for no certificate.
	plain, err := transport.TLSInfo{CertFile: srvCert, KeyFile: srvKey}.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	if plain.ClientAuth != tls.NoClientCert || plain.ClientCAs != nil {
		t.Errorf("server without CA: client auth %v, client CAs %v", plain.ClientAuth, plain.ClientCAs != nil)
	}
}

// TestClientVerifiesServerName: the client talks only to a server whose
// certificate names ServerName.
func TestClientVerifiesServerName(t *testing.T) {
	p := newPKI(t)
	cc, err := transport.TLSInfo{TrustedCAFile: p.caFile, ServerName: "controller.test"}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cc.ServerName != "controller.test" || cc.RootCAs == nil || cc.MinVersion != tls.VersionTLS12 || len(cc.Certificates) != 0 {
		t.Fatalf("client config: server name %q, roots %v, min version %x, %d certificates", cc.ServerName, cc.RootCAs != nil, cc.MinVersion, len(cc.Certificates))
	}
	for _, tc := range []struct {
		server string
		ok     bool
	}{{"controller.test", true}, {"impostor.test", false}} {
		certFile, keyFile := p.leaf(tc.server, true)
		sc, err := transport.TLSInfo{CertFile: certFile, KeyFile: keyFile}.ServerConfig()
		if err != nil {
			t.Fatal(err)
		}
		_, err = handshake(t, sc, cc)
		if (err == nil) != tc.ok {
			t.Errorf("server %s: err %v, want ok=%v", tc.server, err, tc.ok)
		}
	}
}

// TestDynamicServerConfig: each handshake takes the configuration in
// force at that moment.
func TestDynamicServerConfig(t *testing.T) {
	p := newPKI(t)
	var current *tls.Config
	sc := transport.DynamicServerConfig(func() *tls.Config { return current })
	if sc.MinVersion != tls.VersionTLS12 {
		t.Errorf("min version %x", sc.MinVersion)
	}
	cc, err := transport.TLSInfo{TrustedCAFile: p.caFile, ServerName: "b.test"}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a.test", "b.test"} {
		certFile, keyFile := p.leaf(name, true)
		if current, err = (transport.TLSInfo{CertFile: certFile, KeyFile: keyFile}).ServerConfig(); err != nil {
			t.Fatal(err)
		}
		_, err := handshake(t, sc, cc)
		if want := name == "b.test"; (err == nil) != want {
			t.Errorf("serving %s to a client that wants b.test: err %v", name, err)
		}
	}
}

func TestErrorsNameTheFile(t *testing.T) {
	p := newPKI(t)
	certFile, keyFile := p.leaf("controller.test", true)
	notPEM := filepath.Join(p.dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(p.dir, "missing.pem")
	for _, tc := range []struct {
		name   string
		info   transport.TLSInfo
		server bool
		want   string
	}{
		{"missing CA", transport.TLSInfo{TrustedCAFile: missing, CALabel: "--ca-file"}, false, "--ca-file: open " + missing},
		{"CA not PEM", transport.TLSInfo{TrustedCAFile: notPEM, CALabel: "--tls-ca-file"}, false, "--tls-ca-file " + notPEM + ": no PEM certificates"},
		{"CA default label", transport.TLSInfo{TrustedCAFile: notPEM}, false, "CA file " + notPEM + ": no PEM certificates"},
		{"server CA not PEM", transport.TLSInfo{CertFile: certFile, KeyFile: keyFile, TrustedCAFile: notPEM, CALabel: "--tls-client-ca-file"}, true, "--tls-client-ca-file " + notPEM + ": no PEM certificates"},
		{"cert without key", transport.TLSInfo{CertFile: certFile, KeyPairLabel: "TLS key pair"}, false, "TLS key pair: a certificate and a key go together"},
		{"key pair mismatch", transport.TLSInfo{CertFile: certFile, KeyFile: notPEM, KeyPairLabel: "--cert-file/--key-file"}, false, "--cert-file/--key-file: "},
		{"server without key pair", transport.TLSInfo{TrustedCAFile: p.caFile}, true, "key pair: a server needs a certificate and a key"},
		{"server key pair missing", transport.TLSInfo{CertFile: missing, KeyFile: keyFile}, true, "key pair: open " + missing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			build := tc.info.ClientConfig
			if tc.server {
				build = tc.info.ServerConfig
			}
			c, err := build()
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("got %v, want an error starting %q", err, tc.want)
			}
			if c != nil {
				t.Errorf("got a config with the error")
			}
		})
	}
	if _, err := transport.LoadCertPool("--etcd-ca-file", missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing CA file: %v, want os.ErrNotExist", err)
	}
}

func TestEmpty(t *testing.T) {
	if !(transport.TLSInfo{CALabel: "--ca-file"}).Empty() {
		t.Error("labels alone are not TLS")
	}
	for _, i := range []transport.TLSInfo{{CertFile: "c"}, {KeyFile: "k"}, {TrustedCAFile: "ca"}, {ServerName: "s"}} {
		if i.Empty() {
			t.Errorf("%+v is empty", i)
		}
	}
}
