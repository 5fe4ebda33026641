package controller_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
)

// benchAgent is a minimal in-memory agent on its own connection: it reports
// every desired revision as applied, like a real agent acknowledging it.
type benchAgent struct {
	conn   *grpc.ClientConn
	cancel context.CancelFunc
	rev    atomic.Int64
	done   chan struct{}
}

func startBenchAgents(b *testing.B, addr string, n int, onRev func(int64)) []*benchAgent {
	agents := make([]*benchAgent, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range agents {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				b.Error(err)
				return
			}
			ctx, cancel := context.WithCancel(context.Background())
			stream, err := pb.NewAgentServiceClient(conn).Connect(ctx)
			if err != nil {
				b.Error(err)
				cancel()
				return
			}
			a := &benchAgent{conn: conn, cancel: cancel, done: make(chan struct{})}
			agents[i] = a
			_ = stream.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Hello{Hello: &pb.AgentHello{
				HostId: fmt.Sprintf("bench-%05d", i), Labels: map[string]string{"role": "web"},
				Facts: &pb.HostFacts{KernelVersion: "6.18", MptcpSupported: true},
			}}})
			go func() {
				defer close(a.done)
				for {
					m, err := stream.Recv()
					if err != nil {
						return
					}
					if d := m.GetDesired(); d != nil {
						_ = stream.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Report{Report: &pb.AgentReport{
							SyncState: pb.SyncState_SYNC_STATE_IN_SYNC, Group: d.Group, AppliedRevision: d.Revision,
						}}})
						a.rev.Store(d.Revision)
						onRev(d.Revision)
					}
				}
			}()
		}(i)
	}
	wg.Wait()
	return agents
}

// BenchmarkPropagation measures, with N in-memory agents on real gRPC streams
// over loopback (one connection each), the time (ns/op) from calling
// UpdateGroup — one etcd transaction, the watch, the hub — to every agent
// having received the new revision and sent its report of it applied. It
// also reports the process's heap per connected agent (controller and agents
// together: an upper bound for the controller alone).
// MPFLEET_BENCH_AGENTS=100,1000,10000 chooses the sizes (default 100,1000).
func BenchmarkPropagation(b *testing.B) {
	sizes := []int{100, 1000}
	if s := os.Getenv("MPFLEET_BENCH_AGENTS"); s != "" {
		sizes = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				b.Fatal(err)
			}
			sizes = append(sizes, n)
		}
	}
	for _, n := range sizes {
		b.Run(fmt.Sprintf("agents=%d", n), func(b *testing.B) { benchPropagation(b, n) })
	}
}

func benchPropagation(b *testing.B, n int) {
	e := start(b)
	ctx := context.Background()
	g, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "web", Group: webGroup()})
	if err != nil {
		b.Fatal(err)
	}
	var mu sync.Mutex
	counts := map[int64]int{}
	cond := sync.NewCond(&mu)
	onRev := func(rev int64) {
		mu.Lock()
		counts[rev]++
		if counts[rev] == n {
			cond.Broadcast()
		}
		mu.Unlock()
	}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	agents := startBenchAgents(b, e.addr, n, onRev)
	waitAll := func(rev int64) {
		mu.Lock()
		for counts[rev] < n {
			cond.Wait()
		}
		mu.Unlock()
	}
	waitAll(1)
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	heapPerAgent := (float64(after.HeapAlloc) - float64(before.HeapAlloc)) / float64(n) / 1024

	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		g.Policy.Limits.Subflows = proto.Uint32(uint32(3 + i%5))
		g.Etag = ""
		upd, err := e.groups.UpdateGroup(ctx, &pb.UpdateGroupRequest{Group: g})
		if err != nil {
			b.Fatal(err)
		}
		waitAll(upd.PolicyRevision)
		g = upd
	}
	b.StopTimer()
	b.ReportMetric(heapPerAgent, "KiB-heap/agent")
	for _, a := range agents {
		if a != nil {
			a.cancel()
			<-a.done
			a.conn.Close()
		}
	}
}
