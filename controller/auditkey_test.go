package controller_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mpfleet/mpfleet/controller"
	"github.com/mpfleet/mpfleet/internal/audit"
	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// writeAuditKey writes a key file of the byte fill repeated, and returns its
// path.
func writeAuditKey(t *testing.T, fill byte) string {
	t.Helper()
	k, err := audit.NewKey(bytes.Repeat([]byte{fill}, audit.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	text, _ := k.MarshalText()
	path := filepath.Join(t.TempDir(), "audit.key")
	if err := os.WriteFile(path, append(text, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func keyID(t *testing.T, path string) string {
	t.Helper()
	k, err := audit.LoadKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return k.ID()
}

// runErr runs the controller with args and returns its error: for settings
// it refuses before it serves.
func runErr(t *testing.T, args ...string) error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	return controller.Run(ctx, append([]string{"--listen", "127.0.0.1:0"}, args...), io.Discard, io.Discard)
}

// The embedded etcd is local only: a URL that other machines could reach is
// refused, by flag name, before anything starts.
func TestEmbeddedEtcdLocalOnly(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--etcd-client-url", "http://0.0.0.0:7401"}, `--etcd-client-url "http://0.0.0.0:7401" is not local`},
		{[]string{"--etcd-client-url", "http://192.0.2.7:7401"}, `--etcd-client-url "http://192.0.2.7:7401" is not local`},
		{[]string{"--etcd-client-url", "https://127.0.0.1:7401"}, `--etcd-client-url "https://127.0.0.1:7401": want unix:///absolute/path or http://LOOPBACK:PORT`},
		{[]string{"--etcd-peer-url", "http://[::]:7402"}, `--etcd-peer-url "http://[::]:7402" is not local`},
	} {
		err := runErr(t, append([]string{"--data-dir", dir}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want %q", tc.args, err, tc.want)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the data dir was created (%v) although the settings were refused", err)
	}
}

// By default the embedded etcd serves on a unix socket in the data dir and
// the controller generates its audit key there; both are the same after a
// restart, and a controller with another key refuses the keyed log.
func TestDefaultEmbeddedStart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	ctx := ctxT(t)
	r := runController(t, "--data-dir", dir)
	if st, err := os.Stat(filepath.Join(dir, store.EmbedSocket)); err != nil || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("embedded etcd socket: %v, %v", st, err)
	}
	keyFile := filepath.Join(dir, "audit.key")
	st, err := os.Stat(keyFile)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("generated audit key: %v, %v; want mode 0600", st, err)
	}
	id := keyID(t, keyFile)
	if _, err := pb.NewGroupServiceClient(r.conn).CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "web", Group: webGroup()}); err != nil {
		t.Fatal(err)
	}
	v, err := pb.NewAuditServiceClient(r.conn).VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{})
	if err != nil || !v.Ok || v.KeyId != id || v.KeyedEvents != 1 || v.UnkeyedEvents != 0 {
		t.Fatalf("verify = %v, %v; want 1 event keyed with %s", v, err, id)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}

	err = runErr(t, "--data-dir", dir, "--audit-key-file", writeAuditKey(t, 2))
	if err == nil || !strings.Contains(err.Error(), "the audit chain is keyed with key id "+id) {
		t.Fatalf("start with another audit key: err = %v, want a refusal naming key id %s", err, id)
	}

	r = runController(t, "--data-dir", dir)
	v, err = pb.NewAuditServiceClient(r.conn).VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{})
	if err != nil || !v.Ok || v.KeyId != id || v.EventsChecked != 1 {
		t.Fatalf("verify after a restart = %v, %v", v, err)
	}
}

func TestAuditKeyFileRefused(t *testing.T) {
	short := filepath.Join(t.TempDir(), "short.key")
	if err := os.WriteFile(short, []byte("0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		file string
		want string
	}{
		{filepath.Join(t.TempDir(), "missing.key"), "--audit-key-file: open "},
		{short, "16 hex digits, want at least 64"},
		{t.TempDir(), "--audit-key-file: read "},
	} {
		err := runErr(t, "--data-dir", t.TempDir(), "--audit-key-file", tc.file)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--audit-key-file %s: err = %v, want %q", tc.file, err, tc.want)
		}
	}
}

// A log written before audit keys (here by a store without one) gets the key
// when the controller starts: it verifies keyed from the key's introduction,
// with the older events reported as unkeyed.
func TestAuditKeyIntroduced(t *testing.T) {
	e, cli := etcdtest.Embedded(t)
	ctx := ctxT(t)
	old := store.New(cli, "/mpfleet/v1/")
	for _, id := range []string{"a", "b", "c"} {
		if _, _, err := old.CreateGroup(ctx, id, webGroup(), store.Meta{Actor: "alice"}); err != nil {
			t.Fatal(err)
		}
	}
	keyFile := writeAuditKey(t, 1)
	r := runController(t, "--etcd-endpoints", e.Endpoints()[0], "--audit-key-file", keyFile)
	v, err := pb.NewAuditServiceClient(r.conn).VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{})
	if err != nil || !v.Ok || v.UnkeyedEvents != 3 || v.KeyedEvents != 1 || v.FirstKeyedSequence != 4 || v.KeyId != keyID(t, keyFile) {
		t.Fatalf("verify after the upgrade = %v, %v", v, err)
	}
	resp, err := pb.NewAuditServiceClient(r.conn).ListAuditEvents(ctx, &pb.ListAuditEventsRequest{Action: audit.ActionKeyIntroduced})
	if err != nil || len(resp.Events) != 1 || resp.Events[0].Sequence != 4 {
		t.Fatalf("key introduced events: %v, %v", resp, err)
	}
}
