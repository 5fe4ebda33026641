package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/mpfleet/mpfleet/internal/testpki"
	"github.com/mpfleet/mpfleet/internal/transport"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
)

// clientCreds is clientTLS's credentials, nil for plaintext, with its
// reload logs discarded.
func clientCreds(f Flags) (credentials.TransportCredentials, error) {
	r, err := clientTLS(f, slog.New(slog.DiscardHandler))
	if r == nil || err != nil {
		return nil, err
	}
	return r.Credentials(), nil
}

// logRecorder is a slog handler that keeps each record as "LEVEL msg
// key=value ...".
type logRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	s := r.Level.String() + " " + r.Message
	r.Attrs(func(a slog.Attr) bool { s += fmt.Sprintf(" %s=%v", a.Key, a.Value); return true })
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, s)
	return nil
}

func (l *logRecorder) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// count returns how many lines contain every one of parts.
func (l *logRecorder) count(parts ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range l.lines {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			n++
		}
	}
	return n
}

// tlsRotation is an agent's certificate and key at fixed paths, a
// controller stand-in that demands a client certificate and records the
// serial number of the one each call came with, and the agent's TLS.
type tlsRotation struct {
	ca         *testpki.CA
	cert, key  string
	first      clientPair
	addr       string
	files      *transport.ClientReloader
	log        *logRecorder
	mu         sync.Mutex
	lastSerial string
}

type clientPair struct {
	cert, key []byte
	serial    string
}

func newTLSRotation(t *testing.T) *tlsRotation {
	t.Helper()
	dir := t.TempDir()
	ca, caFile := testCA(t, dir)
	srvCert, srvKey := issue(t, ca, dir, "controller.test", true)
	kp, err := tls.LoadX509KeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	rt := &tlsRotation{ca: ca, cert: filepath.Join(dir, "agent.pem"), key: filepath.Join(dir, "agent-key.pem"), log: &logRecorder{}}
	rt.first = rt.pair(t)
	rt.install(t, rt.first)

	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{kp}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12})),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			p, _ := peer.FromContext(ctx)
			ti, ok := p.AuthInfo.(credentials.TLSInfo)
			if !ok || len(ti.State.PeerCertificates) == 0 {
				return nil, fmt.Errorf("no client certificate: %v", p.AuthInfo)
			}
			rt.mu.Lock()
			rt.lastSerial = ti.State.PeerCertificates[0].SerialNumber.String()
			rt.mu.Unlock()
			return h(ctx, req)
		}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	rt.addr = lis.Addr().String()

	rt.files, err = clientTLS(Flags{TLSCAFile: caFile, TLSCertFile: rt.cert, TLSKeyFile: rt.key, ServerName: "controller.test"}, slog.New(rt.log))
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

// pair issues a new certificate for the same host, with a new key.
func (rt *tlsRotation) pair(t *testing.T) clientPair {
	t.Helper()
	c, k, err := rt.ca.Issue(testpki.Leaf{CommonName: "web-1", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(c)
	x, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return clientPair{cert: c, key: k, serial: x.SerialNumber.String()}
}

// install puts p in place as a renewal does: each file written aside and
// renamed over the old one.
func (rt *tlsRotation) install(t *testing.T, p clientPair) {
	t.Helper()
	for path, data := range map[string][]byte{rt.cert: p.cert, rt.key: p.key} {
		if err := os.WriteFile(path+".new", data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".new", path); err != nil {
			t.Fatal(err)
		}
	}
}

// dial opens a new connection with the agent's credentials.
func (rt *tlsRotation) dial(t *testing.T) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+rt.addr, grpc.WithTransportCredentials(rt.files.Credentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// serial makes a call on conn and returns the serial number of the client
// certificate the server saw with it.
func (rt *tlsRotation) serial(t *testing.T, conn *grpc.ClientConn) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("call: %v", err)
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.lastSerial
}

// inForce is the serial number of the certificate the reloader holds.
func (rt *tlsRotation) inForce() string {
	return rt.files.Config().Certificates[0].Leaf.SerialNumber.String()
}

// TestAgentTLSReloadsChangedFiles: a certificate renewed on disk is
// presented on the next new connection to the controller, without a
// restart; the connection already open keeps the old one.
func TestAgentTLSReloadsChangedFiles(t *testing.T) {
	rt := newTLSRotation(t)
	open := rt.dial(t)
	if got := rt.serial(t, open); got != rt.first.serial {
		t.Fatalf("first connection presented serial %s, want %s", got, rt.first.serial)
	}

	second := rt.pair(t)
	rt.install(t, second)
	// The files are looked at, at most once a second, when a connection is
	// made: wait for the look that takes the new ones.
	waitUntil(t, "the new certificate in force", func() bool { return rt.inForce() == second.serial })

	if got := rt.serial(t, rt.dial(t)); got != second.serial {
		t.Errorf("a new connection presented serial %s, want the renewed %s", got, second.serial)
	}
	if got := rt.serial(t, open); got != rt.first.serial {
		t.Errorf("the open connection presented serial %s, want still %s", got, rt.first.serial)
	}
	if n := rt.log.count("INFO TLS files reloaded", "reason=a TLS file changed"); n != 1 {
		t.Errorf("%d reload logs, want 1:\n%s", n, rt.log)
	}
}

// TestAgentTLSReloadsOnSIGHUP: SIGHUP reloads the files at once; a bad
// certificate is logged and the old one kept.
func TestAgentTLSReloadsOnSIGHUP(t *testing.T) {
	rt := newTLSRotation(t)
	stop := startTLSReload(context.Background(), rt.files, slog.New(rt.log))
	defer stop()
	hup := func() {
		t.Helper()
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}

	second := rt.pair(t)
	rt.install(t, clientPair{cert: second.cert, key: rt.first.key}) // the new key is not in place yet
	hup()
	waitUntil(t, "the failed reload logged", func() bool {
		return rt.log.count("WARN TLS files reload failed; keeping the ones in force", "reason=SIGHUP", "private key does not match") == 1
	})
	if got := rt.serial(t, rt.dial(t)); got != rt.first.serial {
		t.Errorf("after a bad certificate a new connection presented serial %s, want the old %s", got, rt.first.serial)
	}

	rt.install(t, second)
	hup()
	waitUntil(t, "the reload logged", func() bool { return rt.log.count("INFO TLS files reloaded", "reason=SIGHUP") == 1 })
	if got := rt.serial(t, rt.dial(t)); got != second.serial {
		t.Errorf("after SIGHUP a new connection presented serial %s, want %s", got, second.serial)
	}
	if n := rt.log.count("TLS file"); n != 2 {
		t.Errorf("%d reload logs, want the 2 of the signals:\n%s", n, rt.log)
	}
}

// TestAgentSIGHUPWithoutTLS: without TLS files SIGHUP is logged and does
// not end the agent.
func TestAgentSIGHUPWithoutTLS(t *testing.T) {
	r, err := clientTLS(Flags{}, slog.New(slog.DiscardHandler))
	if r != nil || err != nil {
		t.Fatalf("clientTLS without files: %v, %v; want plaintext", r, err)
	}
	log := &logRecorder{}
	stop := startTLSReload(context.Background(), nil, slog.New(log))
	defer stop()
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "SIGHUP logged", func() bool { return log.count("no TLS files to reload") == 1 })
}

func TestClientTLSFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    Flags
		want string
	}{
		{"certificate without key", Flags{TLSCertFile: "agent.pem"}, "--tls-cert-file and --tls-key-file"},
		{"missing CA", Flags{TLSCAFile: filepath.Join(t.TempDir(), "nope.pem")}, "--tls-ca-file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := clientTLS(tc.f, slog.New(slog.DiscardHandler))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("clientTLS: %v, %v; want an error containing %q", r, err, tc.want)
			}
		})
	}
}
