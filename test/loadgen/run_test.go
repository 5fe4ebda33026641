package loadgen_test

import (
	"bufio"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/mpfleet/mpfleet/test/loadgen"
)

func TestRunServesReceipts(t *testing.T) {
	e := startController(t)
	ctx := testContext(t)
	g, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "lg", Group: testGroup()})
	if err != nil {
		t.Fatal(err)
	}
	const n = 3
	pr, pw := io.Pipe()
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	rctx, stop := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() {
		runErr <- loadgen.Run(rctx, []string{
			"--controller", e.addr, "--agents", "3", "--prefix", "run", "--labels", "role=loadgen",
			"--report-interval", "0", "--print-receipts", "--http-listen", "127.0.0.1:0",
		}, pw, io.Discard)
		_ = pw.Close()
	}()
	first := <-lines
	url, ok := strings.CutPrefix(first, "status ")
	if !ok {
		t.Fatalf("first line %q; want \"status URL\"", first)
	}
	c := loadgen.Client{URL: url}
	rs, err := c.WaitRevision(ctx, g.GetName(), g.GetPolicyRevision(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if rs.Agents != n {
		t.Errorf("revision %d held by %d agents, want %d", g.GetPolicyRevision(), rs.Agents, n)
	}
	times, err := c.Receipts(ctx, g.GetName(), g.GetPolicyRevision())
	if err != nil {
		t.Fatal(err)
	}
	if len(times) != n {
		t.Errorf("%d receipts, want %d", len(times), n)
	}
	st, err := c.WaitConnected(ctx, 0, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Connected != n || st.Agents != n {
		t.Errorf("status %+v; want %d agents, all connected", st, n)
	}
	waitHosts(ctx, t, e, g.GetName(), n, g.GetPolicyRevision())
	stop()
	if err := <-runErr; err != nil {
		t.Fatalf("Run: %v", err)
	}
	recv := map[string]bool{}
	for l := range lines {
		f := strings.Fields(l)
		if len(f) != 5 || f[0] != "recv" || f[2] != g.GetName() {
			t.Errorf("line %q; want \"recv HOST %s REVISION UNIX_NANO\"", l, g.GetName())
			continue
		}
		recv[f[1]] = true
	}
	if len(recv) != n || !recv["run-0"] || !recv["run-2"] {
		t.Errorf("receipt lines for %v; want run-0 … run-2", recv)
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--agents", "0", "--controller", "127.0.0.1:1"}, "--agents"},
		{[]string{"--agents", "2"}, "exactly one of --controller and --etcd-endpoints"},
		{[]string{"--controller", "127.0.0.1:1", "--etcd-endpoints", "http://127.0.0.1:2"}, "exactly one of --controller and --etcd-endpoints"},
		{[]string{"--controller", "127.0.0.1:1", "--prefix", "Upper"}, "--prefix"},
		{[]string{"--controller", "127.0.0.1:1", "--first", "-1"}, "--first"},
		{[]string{"--controller", "127.0.0.1:1", "--report-interval", "-1s"}, "--report-interval"},
		{[]string{"--controller", "127.0.0.1:1", "--start-concurrency", "0"}, "--start-concurrency"},
		{[]string{"--controller", "127.0.0.1:1", "--token-file", "/nonexistent"}, "--token-file"},
		{[]string{"--controller", "127.0.0.1:1", "--tls-ca-file", "/nonexistent"}, "--tls-ca-file"},
		{[]string{"--etcd-endpoints", "http://127.0.0.1:2", "--confirm"}, "--confirm"},
		{[]string{"--controller", "127.0.0.1:1", "--silent", "--events"}, "--silent"},
		{[]string{"--controller", "127.0.0.1:1", "--http-listen", "256.0.0.1:0"}, "--http-listen"},
		{[]string{"--controller", "127.0.0.1:1", "extra"}, "unexpected arguments"},
	} {
		err := loadgen.Run(context.Background(), tc.args, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Run(%q) = %v; want an error naming %s", tc.args, err, tc.want)
		}
	}
}
