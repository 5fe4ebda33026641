package transport_test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/testpki"
	"github.com/mpfleet/mpfleet/internal/transport"
	"google.golang.org/grpc/credentials"
)

// install replaces path with data as a rotation does: written aside, then
// renamed into place.
func install(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// pair is a client certificate and its key, PEM-encoded, and the
// certificate's serial number.
type pair struct {
	cert, key []byte
	serial    string
}

func (p *pki) pair(name string) pair {
	p.t.Helper()
	c, k, err := p.ca.Issue(testpki.Leaf{CommonName: name, Client: true})
	if err != nil {
		p.t.Fatal(err)
	}
	b, _ := pem.Decode(c)
	x, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		p.t.Fatal(err)
	}
	return pair{cert: c, key: k, serial: x.SerialNumber.String()}
}

// changes records what a ClientReloader reported to OnChange.
type changes struct {
	mu   sync.Mutex
	errs []error
}

func (c *changes) record(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.errs = append(c.errs, err)
}

func (c *changes) get() []error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]error(nil), c.errs...)
}

// rotation is a client whose certificate, key and CA bundle sit at fixed
// paths, and a server that demands a certificate from the test CA.
type rotation struct {
	p             *pki
	server        *tls.Config
	cert, key, ca string
	first         pair
	r             *transport.ClientReloader
	changes       *changes
	serverName    string
}

func newRotation(t *testing.T, interval time.Duration) *rotation {
	t.Helper()
	p := newPKI(t)
	srvCert, srvKey := p.leaf("controller.test", true)
	sc, err := transport.TLSInfo{CertFile: srvCert, KeyFile: srvKey, TrustedCAFile: p.caFile, ClientAuth: tls.RequireAndVerifyClientCert}.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	rt := &rotation{p: p, server: sc, cert: filepath.Join(p.dir, "agent.pem"), key: filepath.Join(p.dir, "agent-key.pem"),
		ca: filepath.Join(p.dir, "bundle.pem"), first: p.pair("web-1"), changes: &changes{}, serverName: "controller.test"}
	install(t, rt.cert, rt.first.cert)
	install(t, rt.key, rt.first.key)
	install(t, rt.ca, p.ca.PEM)
	rt.r, err = transport.NewClientReloader(transport.TLSInfo{CertFile: rt.cert, KeyFile: rt.key, TrustedCAFile: rt.ca, ServerName: rt.serverName,
		CALabel: "--tls-ca-file", KeyPairLabel: "TLS key pair"}, transport.ReloaderOptions{Interval: interval, OnChange: rt.changes.record})
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

// presented connects over loopback TCP, the client with the reloader's
// configuration of the moment, and returns the serial number of the
// certificate the server saw, or the error of the end that refused.
func presented(t *testing.T, sc *tls.Config, r *transport.ClientReloader) (string, error) {
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
		_, err = tc.Write([]byte(tc.ConnectionState().PeerCertificates[0].SerialNumber.String() + "\n"))
		srvErr <- err
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), r.Config())
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
	return strings.TrimSuffix(line, "\n"), nil
}

func (rt *rotation) wantSerial(t *testing.T, what, want string) {
	t.Helper()
	got, err := presented(t, rt.server, rt.r)
	if err != nil || got != want {
		t.Fatalf("%s: the server saw serial %s (err %v), want %s", what, got, err, want)
	}
}

func (rt *rotation) wantChanges(t *testing.T, what string, want ...string) {
	t.Helper()
	got := rt.changes.get()
	if len(got) != len(want) {
		t.Fatalf("%s: OnChange got %v, want %d calls %q", what, got, len(want), want)
	}
	for i, w := range want {
		switch {
		case w == "" && got[i] != nil:
			t.Errorf("%s: change %d failed: %v", what, i, got[i])
		case w != "" && (got[i] == nil || !strings.Contains(got[i].Error(), w)):
			t.Errorf("%s: change %d: error %v, want one containing %q", what, i, got[i], w)
		}
	}
}

// TestClientReloaderRotatesKeyPair: a new certificate and key installed
// in place are presented from the next handshake on, reported once.
func TestClientReloaderRotatesKeyPair(t *testing.T) {
	rt := newRotation(t, time.Nanosecond)
	rt.wantSerial(t, "before the rotation", rt.first.serial)
	rt.wantChanges(t, "before the rotation")

	second := rt.p.pair("web-1")
	install(t, rt.cert, second.cert)
	install(t, rt.key, second.key)
	rt.wantSerial(t, "after the rotation", second.serial)
	rt.wantSerial(t, "the handshake after", second.serial)
	rt.wantChanges(t, "after the rotation", "")
}

// TestClientReloaderKeepsOldOnBadFiles: files that do not load leave the
// key pair in force, are reported once, and the next good change is
// taken.
func TestClientReloaderKeepsOldOnBadFiles(t *testing.T) {
	for _, tc := range []struct {
		name    string
		breakIt func(t *testing.T, rt *rotation, next pair)
		wantErr string
	}{
		{"unreadable certificate", func(t *testing.T, rt *rotation, _ pair) {
			install(t, rt.cert, []byte("not a certificate\n"))
		}, "TLS key pair"},
		{"new certificate, old key", func(t *testing.T, rt *rotation, next pair) {
			install(t, rt.cert, next.cert) // the key comes later
		}, "private key does not match public key"},
		{"key missing", func(t *testing.T, rt *rotation, _ pair) {
			if err := os.Remove(rt.key); err != nil {
				t.Fatal(err)
			}
		}, "agent-key.pem"},
		{"empty CA bundle", func(t *testing.T, rt *rotation, _ pair) {
			install(t, rt.ca, nil)
		}, "--tls-ca-file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt := newRotation(t, time.Nanosecond)
			next := rt.p.pair("web-1")
			tc.breakIt(t, rt, next)
			rt.wantSerial(t, "after the bad change", rt.first.serial)
			rt.wantSerial(t, "the handshake after", rt.first.serial)
			rt.wantChanges(t, "after the bad change", tc.wantErr)
			if err := rt.r.Reload(); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Reload of the bad files: %v, want an error containing %q", err, tc.wantErr)
			}
			rt.wantSerial(t, "after a failed Reload", rt.first.serial)

			install(t, rt.cert, next.cert)
			install(t, rt.key, next.key)
			install(t, rt.ca, rt.p.ca.PEM)
			rt.wantSerial(t, "after the good change", next.serial)
			rt.wantChanges(t, "after the good change", tc.wantErr, "")
		})
	}
}

// TestClientReloaderInterval: between two looks at the files a change is
// not seen; Reload reads them at once.
func TestClientReloaderInterval(t *testing.T) {
	rt := newRotation(t, time.Hour)
	second := rt.p.pair("web-1")
	install(t, rt.cert, second.cert)
	install(t, rt.key, second.key)
	rt.wantSerial(t, "within the interval", rt.first.serial)
	if err := rt.r.Reload(); err != nil {
		t.Fatal(err)
	}
	rt.wantSerial(t, "after Reload", second.serial)
	rt.wantChanges(t, "Reload does not report to OnChange")
}

// TestClientReloaderReloadsCA: a new CA bundle verifies servers from the
// next handshake on.
func TestClientReloaderReloadsCA(t *testing.T) {
	rt := newRotation(t, time.Nanosecond)
	next := newPKI(t)
	srvCert, srvKey := next.leaf("controller.test", true)
	sc, err := transport.TLSInfo{CertFile: srvCert, KeyFile: srvKey, TrustedCAFile: rt.p.caFile, ClientAuth: tls.RequireAndVerifyClientCert}.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := presented(t, sc, rt.r); err == nil {
		t.Fatalf("a server of the new CA was trusted before the bundle changed (it saw %s)", got)
	}
	install(t, rt.ca, append(append([]byte(nil), rt.p.ca.PEM...), next.ca.PEM...))
	if got, err := presented(t, sc, rt.r); err != nil || got != rt.first.serial {
		t.Fatalf("server of the new CA after the bundle changed: saw %s, err %v", got, err)
	}
	rt.wantSerial(t, "server of the old CA", rt.first.serial)
	rt.wantChanges(t, "after the new bundle", "")
}

func TestNewClientReloaderRefusesBadFiles(t *testing.T) {
	p := newPKI(t)
	cert, key := p.leaf("web-1", false)
	for _, tc := range []struct {
		name string
		info transport.TLSInfo
		want string
	}{
		{"missing certificate", transport.TLSInfo{CertFile: filepath.Join(p.dir, "nope.pem"), KeyFile: key, KeyPairLabel: "TLS key pair"}, "TLS key pair"},
		{"certificate without key", transport.TLSInfo{CertFile: cert, KeyPairLabel: "TLS key pair"}, "go together"},
		{"missing CA", transport.TLSInfo{TrustedCAFile: filepath.Join(p.dir, "nope.pem"), CALabel: "--tls-ca-file"}, "--tls-ca-file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := transport.NewClientReloader(tc.info, transport.ReloaderOptions{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewClientReloader: %v, %v; want an error containing %q", r, err, tc.want)
			}
		})
	}
}

// TestClientReloaderCredentials: the gRPC credentials are TLS for clients
// only. (agent/tlsreload_test.go runs them over gRPC.)
func TestClientReloaderCredentials(t *testing.T) {
	rt := newRotation(t, time.Hour)
	c := rt.r.Credentials()
	for _, c := range []credentials.TransportCredentials{c, c.Clone()} {
		if info := c.Info(); info.SecurityProtocol != "tls" {
			t.Errorf("Info() = %+v, want tls", info)
		}
	}
	if _, _, err := c.ServerHandshake(nil); err == nil {
		t.Error("ServerHandshake of client credentials succeeded")
	}
}
