// Package etcdtest starts real etcd servers for tests: an embedded member in
// the test process, or a separate etcd process.
package etcdtest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/store"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// FreePort returns a loopback TCP port that was free a moment ago, below
// the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768 and up
// by default): a port the kernel handed out as ":0" could be given again,
// as the source port of any process's outgoing connection, before etcd
// binds it — under the load of a parallel test run it was.
func FreePort(t testing.TB) int {
	t.Helper()
	for range 200 {
		port := portLow + rand.IntN(portHigh-portLow)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		_ = l.Close()
		return port
	}
	t.Fatalf("no free loopback port in [%d, %d)", portLow, portHigh)
	return 0
}

// The range FreePort draws from: under the ephemeral ports, above the
// well-known and registered ones mpfleet's programs use (7400-7402).
const portLow, portHigh = 20000, 32000

// URLs returns fresh loopback client and peer URLs.
func URLs(t testing.TB) (client, peer string) {
	return fmt.Sprintf("http://127.0.0.1:%d", FreePort(t)), fmt.Sprintf("http://127.0.0.1:%d", FreePort(t))
}

// Embedded starts an embedded etcd in a temporary directory, stopped when the
// test ends, and returns a client to it.
func Embedded(t testing.TB) (*store.Embedded, *clientv3.Client) {
	t.Helper()
	cu, pu := URLs(t)
	e, err := store.StartEmbedded(context.Background(), store.EmbedConfig{DataDir: t.TempDir(), ClientURL: cu, PeerURL: pu})
	if err != nil {
		t.Fatalf("start embedded etcd: %v", err)
	}
	t.Cleanup(e.Close)
	return e, Client(t, e.Endpoints())
}

// Client dials endpoints and closes the client when the test ends.
func Client(t testing.TB, endpoints []string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Binary returns the path of a real etcd server binary: $MPFLEET_ETCD_BIN, or
// .tools/bin/etcd at the repository root (built by `make tools`).
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("MPFLEET_ETCD_BIN"); p != "" {
		return p
	}
	_, file, _, _ := runtime.Caller(0)
	p := filepath.Join(filepath.Dir(file), "..", "..", ".tools", "bin", "etcd")
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

// Process starts a separate etcd server process on loopback, killed when the
// test ends, and returns its client endpoint.
func Process(t testing.TB, bin string) string {
	t.Helper()
	return StartProc(t, bin, ProcOptions{}).Endpoint()
}
