package store_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/store"
)

func TestCheckEmbedURLs(t *testing.T) {
	long := "unix:///" + strings.Repeat("d", 120) + "/client.sock"
	for _, tc := range []struct {
		url        string
		client     string // "" ok, else a part of the error
		peer       string
		clientOnly bool
	}{
		{url: "", client: "", peer: ""},
		{url: "http://127.0.0.1:7401", client: "", peer: ""},
		{url: "http://127.9.9.9:7401", client: "", peer: ""},
		{url: "http://[::1]:7401", client: "", peer: ""},
		{url: "http://localhost:7401", client: "", peer: ""},
		{url: "unix:///var/lib/mpfleet/etcd/client.sock", client: "", peer: "want http://LOOPBACK:PORT"},
		{url: "http://0.0.0.0:7401", client: "is not local", peer: "is not local"},
		{url: "http://[::]:7401", client: "is not local", peer: "is not local"},
		{url: "http://10.0.0.1:7401", client: "is not local", peer: "is not local"},
		{url: "http://etcd.example.com:7401", client: "is not local", peer: "is not local"},
		{url: "http://:7401", client: "is not local", peer: "is not local"},
		{url: "https://127.0.0.1:7401", client: "https and unixs are not supported", peer: "want http://LOOPBACK:PORT"},
		{url: "http://127.0.0.1", client: "want http://LOOPBACK:PORT", peer: "want http://LOOPBACK:PORT"},
		{url: "http://127.0.0.1:7401/x", client: "want http://LOOPBACK:PORT", peer: "want http://LOOPBACK:PORT"},
		{url: "unix://client.sock", client: "three slashes", peer: "want http://LOOPBACK:PORT"},
		{url: long, client: "at most 107 bytes", peer: "want http://LOOPBACK:PORT"},
	} {
		for _, c := range []struct {
			name  string
			check func(string) error
			want  string
		}{{"client", store.CheckEmbedClientURL, tc.client}, {"peer", store.CheckEmbedPeerURL, tc.peer}} {
			err := c.check(tc.url)
			if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
				t.Errorf("%s URL %q: err = %v, want %q", c.name, tc.url, err, c.want)
			}
		}
	}
}

// By default the embedded member serves its clients on a unix socket in the
// data dir, in a directory only its owner may enter, and has no peer
// listener; a non-local URL is refused before anything starts.
func TestEmbeddedLocalOnly(t *testing.T) {
	dir := t.TempDir()
	e, err := store.StartEmbedded(context.Background(), store.EmbedConfig{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, store.EmbedSocket)
	if eps := e.Endpoints(); len(eps) != 1 || eps[0] != "unix://"+sock {
		t.Fatalf("endpoints %v, want unix://%s", eps, sock)
	}
	if st, err := os.Stat(sock); err != nil || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("client socket: %v, %v", st, err)
	}
	if st, _ := os.Stat(filepath.Dir(sock)); st.Mode().Perm() != 0o700 {
		t.Fatalf("socket directory has mode %v, want 0700", st.Mode().Perm())
	}
	c := etcdtest.Client(t, e.Endpoints())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	m, err := c.MemberList(ctx)
	if err != nil || len(m.Members) != 1 {
		t.Fatalf("members: %v, %v", m, err)
	}
	for _, u := range append(m.Members[0].PeerURLs, m.Members[0].ClientURLs...) {
		if strings.Contains(u, "0.0.0.0") || strings.Contains(u, "[::]") {
			t.Errorf("member advertises %s", u)
		}
	}
	e.Close()

	for _, cfg := range []store.EmbedConfig{
		{DataDir: dir, ClientURL: "http://0.0.0.0:7401"},
		{DataDir: dir, PeerURL: "http://192.0.2.1:7402"},
	} {
		if _, err := store.StartEmbedded(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "is not local") {
			t.Errorf("start with %+v: err = %v, want a refusal", cfg, err)
		}
	}
}

// A data dir of a member that served on loopback TCP (before the unix
// socket default) starts on the socket with its data.
func TestEmbeddedFromLoopbackToSocket(t *testing.T) {
	dir := t.TempDir()
	cu, pu := etcdtest.URLs(t)
	e, err := store.StartEmbedded(context.Background(), store.EmbedConfig{DataDir: dir, ClientURL: cu, PeerURL: pu})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := etcdtest.Client(t, e.Endpoints()).Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	e.Close()

	e, err = store.StartEmbedded(context.Background(), store.EmbedConfig{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	resp, err := etcdtest.Client(t, e.Endpoints()).Get(ctx, "k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("after the restart on the socket: %v, %v", resp, err)
	}
}
