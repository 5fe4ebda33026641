package controller_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/controller"
	"github.com/mpfleet/mpfleet/internal/audit"
	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/nstest"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
)

// waitHealth polls the controller's health until it reports want, and
// returns when it did.
func waitHealth(t *testing.T, conn *grpc.ClientConn, want healthpb.HealthCheckResponse_ServingStatus, within time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(within)
	var last string
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.Status == want {
			return time.Now()
		}
		last = fmt.Sprint(resp.GetStatus(), err)
		if time.Now().After(deadline) {
			t.Fatalf("health not %s within %s: last %s", want, within, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// An external etcd that dies: health turns NOT_SERVING within seconds, calls
// fail with UNAVAILABLE long before their deadline (at once once the
// controller knows), and all is well again when etcd is back.
func TestStoreHealthEtcdKilled(t *testing.T) {
	bin := etcdtest.Binary(t)
	if bin == "" {
		nstest.Skip(t, "no etcd server binary: run `make tools` (builds .tools/bin/etcd) or set MPFLEET_ETCD_BIN")
	}
	p := etcdtest.StartProc(t, bin, etcdtest.ProcOptions{})
	r := runController(t, "--etcd-endpoints", p.Endpoint(), "--audit-key-file", writeAuditKey(t, 1), "--etcd-request-timeout", "3s")
	gc := pb.NewGroupServiceClient(r.conn)
	ctx := ctxT(t)
	if _, err := gc.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "web", Group: webGroup()}); err != nil {
		t.Fatal(err)
	}

	p.Kill()
	killed := time.Now()
	// A call at once, before the controller can know: bounded by
	// --etcd-request-timeout, not by its own 30s deadline.
	cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := gc.GetGroup(cctx, &pb.GetGroupRequest{Name: "groups/web"})
	st := wantCode(t, err, codes.Unavailable)
	if !strings.HasPrefix(st.Message(), "etcd is unreachable: ") {
		t.Fatalf("message %q, want it to say etcd is unreachable", st.Message())
	}
	t.Logf("first call after etcd died: %s after %s", st.Message(), time.Since(killed).Round(time.Millisecond))
	if d := time.Since(killed); d > 10*time.Second {
		t.Fatalf("the first call after etcd died took %s", d)
	}
	down := waitHealth(t, r.conn, healthpb.HealthCheckResponse_NOT_SERVING, 15*time.Second)
	t.Logf("NOT_SERVING %s after etcd died", down.Sub(killed).Round(time.Millisecond))
	if !strings.Contains(r.log.String(), "etcd is unreachable") {
		t.Errorf("log does not say etcd is unreachable:\n%s", r.log.String())
	}
	// Now calls that need etcd fail at once.
	for name, call := range map[string]func() error{
		"create": func() error {
			_, err := gc.CreateGroup(cctx, &pb.CreateGroupRequest{GroupId: "db", Group: webGroup()})
			return err
		},
		"list": func() error { _, err := gc.ListGroups(cctx, &pb.ListGroupsRequest{}); return err },
		"audit": func() error {
			_, err := pb.NewAuditServiceClient(r.conn).ListAuditEvents(cctx, &pb.ListAuditEventsRequest{})
			return err
		},
	} {
		start := time.Now()
		err := call()
		st := wantCode(t, err, codes.Unavailable)
		if !strings.HasPrefix(st.Message(), "etcd is unreachable: ") {
			t.Errorf("%s: message %q, want it to say etcd is unreachable", name, st.Message())
		}
		t.Logf("%s while etcd is known down: %s after %s", name, st.Message(), time.Since(start).Round(time.Microsecond))
		if d := time.Since(start); d > time.Second {
			t.Errorf("%s took %s while etcd is known to be down, want at once", name, d)
		}
	}

	p.Start()
	restarted := time.Now()
	up := waitHealth(t, r.conn, healthpb.HealthCheckResponse_SERVING, 30*time.Second)
	t.Logf("SERVING %s after etcd restarted", up.Sub(restarted).Round(time.Millisecond))
	if _, err := gc.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "db", Group: webGroup()}); err != nil {
		t.Fatalf("create after etcd is back: %v", err)
	}
	if _, err := gc.GetGroup(ctx, &pb.GetGroupRequest{Name: "groups/web"}); err != nil {
		t.Fatalf("get after etcd is back: %v", err)
	}
}

// fillEtcd writes 1 KiB values under /junk/ until etcd refuses with
// NOSPACE. (Small values: large ones leave much of etcd's backend in free
// pages, which a recovery finds room in.)
func fillEtcd(ctx context.Context, t *testing.T, kv clientv3.KV) {
	t.Helper()
	val := strings.Repeat("x", 1<<10)
	var mu sync.Mutex
	var refused error
	var wg sync.WaitGroup
	run := time.Now().UnixNano()
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100000; i++ {
				ops := make([]clientv3.Op, 100)
				for j := range ops {
					ops[j] = clientv3.OpPut(fmt.Sprintf("/junk/%d/%d/%d/%d", run, w, i, j), val)
				}
				if _, err := kv.Txn(ctx).Then(ops...).Commit(); err != nil {
					mu.Lock()
					if refused == nil {
						refused = err
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	if !errors.Is(store.Classify(refused), store.ErrNoSpace) {
		t.Fatalf("filling etcd: err = %v, want NOSPACE", refused)
	}
}

// An embedded etcd with a small quota runs out of space: health turns
// NOT_SERVING, writes fail with RESOURCE_EXHAUSTED saying so, reads work;
// the controller does not disarm the alarm while the data fills the quota,
// and once it is deleted compacts, defragments and disarms it: SERVING,
// and writes work again.
func TestStoreHealthNoSpace(t *testing.T) {
	cu, pu := etcdtest.URLs(t)
	r := runController(t, "--data-dir", t.TempDir(), "--etcd-client-url", cu, "--etcd-peer-url", pu,
		"--etcd-quota-bytes", "16MiB", "--audit-retention-bytes", "1MiB")
	gc := pb.NewGroupServiceClient(r.conn)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := gc.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "web", Group: webGroup()}); err != nil {
		t.Fatal(err)
	}
	cli := etcdtest.Client(t, []string{cu})

	// Fill etcd until what is in use fills the quota: a fill leaves some
	// free pages, which the controller recovers into (SERVING again).
	for round := 0; ; round++ {
		if round == 4 {
			t.Fatalf("etcd never filled its quota\n%s", r.log.String())
		}
		stillFull := strings.Count(r.log.String(), "etcd is still out of space")
		fillEtcd(ctx, t, cli.KV)
		waitHealth(t, r.conn, healthpb.HealthCheckResponse_NOT_SERVING, 15*time.Second)
		_, err := gc.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "db", Group: webGroup()})
		if st := wantCode(t, err, codes.ResourceExhausted); !strings.HasPrefix(st.Message(), "etcd is out of space (NOSPACE alarm): ") {
			t.Fatalf("message %q, want it to say etcd is out of space", st.Message())
		} else if round == 0 {
			t.Logf("write under NOSPACE: %s", st.Message())
		}
		if _, err := gc.GetGroup(ctx, &pb.GetGroupRequest{Name: "groups/web"}); err != nil {
			t.Fatalf("read under NOSPACE: %v", err)
		}
		// Wait for the controller's verdict: recovered, or still full.
		full := func() bool { return strings.Count(r.log.String(), "etcd is still out of space") > stillFull }
		for !full() {
			hctx, hcancel := context.WithTimeout(ctx, time.Second)
			resp, err := healthpb.NewHealthClient(r.conn).Check(hctx, &healthpb.HealthCheckRequest{})
			hcancel()
			if err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("no recovery and no word of a full etcd\n%s", r.log.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
		if full() {
			t.Logf("etcd full after %d fills", round+1)
			break
		}
	}
	if !strings.Contains(r.log.String(), "etcd is out of space (NOSPACE alarm)") {
		t.Errorf("log does not report the NOSPACE alarm:\n%s", r.log.String())
	}
	// The verdict is in: still full, and the alarm stays.
	if resp, err := healthpb.NewHealthClient(r.conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || resp.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health while full = %v, %v", resp, err)
	}
	if alarms, err := cli.AlarmList(ctx); err != nil || len(alarms.Alarms) != 1 {
		t.Fatalf("alarms while full = %v, %v", alarms, err)
	}

	// Free the space (deletes work under the alarm): the controller
	// recovers by itself.
	if _, err := cli.Delete(ctx, "/junk/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, r.conn, healthpb.HealthCheckResponse_SERVING, 60*time.Second)
	if alarms, err := cli.AlarmList(ctx); err != nil || len(alarms.Alarms) != 0 {
		t.Fatalf("alarms after recovery = %v, %v", alarms, err)
	}
	if st, err := cli.Status(ctx, cu); err != nil || st.DbSize > 4<<20 {
		t.Fatalf("etcd after recovery: %v, %v; want it defragmented", st, err)
	}
	if _, err := gc.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "db", Group: webGroup()}); err != nil {
		t.Fatalf("create after recovery: %v", err)
	}
	v, err := pb.NewAuditServiceClient(r.conn).VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{})
	if err != nil || !v.Ok {
		t.Fatalf("audit after recovery = %v, %v", v, err)
	}
}

// Retention by bytes: the leader prunes the oldest events until their
// stored values fit the limit, each prune checkpointed; the log still
// verifies.
func TestAuditRetentionBytes(t *testing.T) {
	key, err := audit.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	const limit = 4096
	e := startWith(t, controller.Options{Retention: controller.Retention{MaxBytes: limit, Interval: 50 * time.Millisecond}}, store.WithAuditKey(key))
	ctx := ctxT(t)
	for i := 0; i < 20; i++ {
		if _, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: fmt.Sprintf("g%d", i), Group: webGroup()}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := e.audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var size int
		for _, ev := range resp.Events {
			size += proto.Size(ev)
		}
		evs := resp.Events
		newest := evs[len(evs)-1]
		if size <= limit && newest.Action == audit.ActionCheckpoint && newest.Sequence > 20 {
			if evs[0].Sequence == 1 {
				t.Fatalf("nothing pruned: %d events of %d bytes", len(evs), size)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("retention did not settle within %d bytes: %d events of %d bytes, newest %s", limit, len(evs), size, newest.Action)
		}
		time.Sleep(50 * time.Millisecond)
	}
	v, err := e.audit.VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{})
	if err != nil || !v.Ok || v.PrunedEvents == 0 {
		t.Fatalf("verify after pruning by bytes = %v, %v", v, err)
	}
}
