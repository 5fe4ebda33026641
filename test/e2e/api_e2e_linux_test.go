package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mpfleet/mpfleet/internal/nstest"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/mpfleet/mpfleet/test/lab"
)

// grpcurlBinary finds grpcurl as controller/grpcurl_test.go does:
// MPFLEET_GRPCURL, else .tools/bin/grpcurl (make tools).
func grpcurlBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("MPFLEET_GRPCURL"); p != "" {
		return p
	}
	p := filepath.Join(repoRoot(), ".tools", "bin", "grpcurl")
	if _, err := os.Stat(p); err != nil {
		nstest.Skip(t, "grpcurl not installed: run `make tools` or set MPFLEET_GRPCURL")
	}
	return p
}

// testGRPCurl runs testdata/fleet-health.sh, a grpcurl script, in the ctl
// namespace against the lab controller (TLS with the test CA, the bearer
// token): it lists the hosts and prints one host's MPTCP health. The
// script needs no .proto files (server reflection). The health must show
// the server's MPTCP connections and joins (a transfer is made first; the
// controller stores health at most every 15 s, so it may take that long).
func testGRPCurl(t *testing.T, f *fleet, addr string) {
	grpcurl := grpcurlBinary(t)
	f.transfer(t, addr, 1_000_000)
	var out []byte
	eventually(t, 25*time.Second, func() error {
		var err error
		if out, err = f.fleetHealth(grpcurl, f.HostName(lab.Server)); err != nil {
			return stop(err)
		}
		hostsPart, healthPart, ok := strings.Cut(string(out), "== health of ")
		if !ok {
			return stop(fmt.Errorf("no health section in the output:\n%s", out))
		}
		for _, h := range []lab.Host{lab.Client, lab.Server} {
			if !strings.Contains(hostsPart, f.HostName(h)+"\n") {
				return stop(fmt.Errorf("the host list does not have %s:\n%s", f.HostName(h), out))
			}
		}
		_, js, _ := strings.Cut(healthPart, "\n")
		var health struct {
			Counters map[string]string `json:"counters"`
			ReadTime string            `json:"readTime"`
		}
		if err := json.Unmarshal([]byte(js), &health); err != nil {
			return stop(fmt.Errorf("health is not JSON: %w\n%s", err, js))
		}
		if health.ReadTime == "" {
			return stop(fmt.Errorf("health has no readTime:\n%s", js))
		}
		for _, c := range []string{"MPCapableSYNRX", "MPJoinSynRx"} {
			if v := health.Counters[c]; v == "" || v == "0" {
				return fmt.Errorf("health counter %s = %q, want the server's connections and joins", c, v)
			}
		}
		return nil
	})
	t.Logf("fleet-health.sh %s:\n%s", f.HostName(lab.Server), out)
}

// fleetHealth runs testdata/fleet-health.sh HOST in the ctl namespace.
func (f *fleet) fleetHealth(grpcurl, host string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := f.Lab.Command(ctx, lab.Controller, filepath.Join(repoRoot(), "test", "e2e", "testdata", "fleet-health.sh"), host)
	cmd.Env = append(os.Environ(), "GRPCURL="+grpcurl, "CONTROLLER="+f.ControllerAddr(), "CACERT="+f.PKI.CA, "TOKEN="+f.PKI.Token)
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return out, fmt.Errorf("fleet-health.sh: %w: %s\n%s", err, ee.Stderr, out)
		}
		return out, err
	}
	return out, nil
}

// agentConn opens a gRPC connection to the controller from inside the
// namespace of h, with h's agent certificate: what a forged or broken agent
// on that host could do.
func (f *fleet) agentConn(t *testing.T, h lab.Host) *grpc.ClientConn {
	t.Helper()
	conn, err := f.AgentConn(h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// testForgedHello: a client on the client host, with the client agent's
// certificate, opens the agent stream with bad messages: a hello for
// another host, a hello with malformed labels, a report before any hello.
// Each is refused with the right code and changes nothing: the real agent
// stays connected, IN_SYNC, with its labels.
func testForgedHello(t *testing.T, f *fleet, _ string) {
	revs := f.revisions(t)
	conn := f.agentConn(t, lab.Client)
	cases := []struct {
		name string
		msg  *pb.ConnectRequest
		code codes.Code
	}{
		{"hello as the server", &pb.ConnectRequest{Kind: &pb.ConnectRequest_Hello{Hello: &pb.AgentHello{
			HostId: f.HostID(lab.Server), Labels: map[string]string{"role": "mptcp-client"}}}}, codes.PermissionDenied},
		{"hello with garbage labels", &pb.ConnectRequest{Kind: &pb.ConnectRequest_Hello{Hello: &pb.AgentHello{
			HostId: f.HostID(lab.Client), Labels: map[string]string{"Not A Label!": "x y", "role": "mptcp-server"}}}}, codes.InvalidArgument},
		{"hello with a bad host id", &pb.ConnectRequest{Kind: &pb.ConnectRequest_Hello{Hello: &pb.AgentHello{
			HostId: "../" + f.HostID(lab.Client)}}}, codes.InvalidArgument},
		{"report first", &pb.ConnectRequest{Kind: &pb.ConnectRequest_Report{Report: &pb.AgentReport{
			SyncState: pb.SyncState_SYNC_STATE_FAILED, LastError: "forged"}}}, codes.InvalidArgument},
	}
	for _, c := range cases {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		stream, err := pb.NewAgentServiceClient(conn).Connect(ctx)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		if err := stream.Send(c.msg); err != nil {
			cancel()
			t.Fatalf("%s: send: %v", c.name, err)
		}
		_, err = stream.Recv()
		cancel()
		if status.Code(err) != c.code {
			t.Errorf("%s: got %v, want %s", c.name, err, c.code)
		} else {
			t.Logf("%s: refused: %v", c.name, err)
		}
	}
	if err := f.synced(revs); err != nil {
		t.Errorf("after the forged streams: %v", err)
	}
	hs, err := f.hosts()
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []lab.Host{lab.Client, lab.Server} {
		if got := hs[h].GetLabels()["role"]; got != roles[h] {
			t.Errorf("%s: label role=%q, want %q", h, got, roles[h])
		}
		if hs[h].GetLastError() == "forged" {
			t.Errorf("%s: the forged report was recorded", h)
		}
	}
	for _, h := range []lab.Host{lab.Client, lab.Server} {
		s, err := readKernel(f.Lab, h)
		if err != nil {
			t.Fatal(err)
		}
		if err := declared[twoLinksFile][h].check(s, h); err != nil {
			t.Error(err)
		}
	}
}
