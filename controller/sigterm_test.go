package controller_test

import (
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/etcdtest"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// The real binary starts with nothing but a data dir, serves, and on SIGTERM
// shuts down cleanly (exit status 0) and promptly, also with an agent stream
// open.
func TestBinarySIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the controller binary")
	}
	bin := filepath.Join(t.TempDir(), "mpfleet-controller")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/mpfleet-controller").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", etcdtest.FreePort(t))
	cu, pu := etcdtest.URLs(t)
	cmd := exec.Command(bin, "--listen", addr, "--data-dir", t.TempDir(), "--etcd-client-url", cu, "--etcd-peer-url", pu)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	waited := make(chan struct{})
	go func() { exited <- cmd.Wait(); close(waited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-waited
	})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := ctxT(t)
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := pb.NewGroupServiceClient(conn).CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "web", Group: webGroup()})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("controller not serving: %v\n%s", err, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	agent := connectAgent(t, pb.NewAgentServiceClient(conn), "h1", map[string]string{"role": "web"}, true)
	agent.waitFor(t, "revision 1", managedAt("groups/web", 1))

	sent := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("still running 20s after SIGTERM\n%s", logs.String())
	}
	took := time.Since(sent)
	t.Logf("stopped %v after SIGTERM", took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Errorf("shutdown took %v with an agent connected; streams should end at once", took)
	}
	if !strings.Contains(logs.String(), "shutting down") {
		t.Fatalf("no shutdown in the log:\n%s", logs.String())
	}
	<-agent.done // the agent's stream was ended
}
