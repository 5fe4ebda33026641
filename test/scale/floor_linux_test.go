package scale

// The grpc-go floor: mpfleet-floor, the least a gRPC server can do to hold
// the agents' streams (the controller's transport options, a hello, then
// only reads; a fan-out of one encoded message), measured as the hub is.

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/mpfleet/mpfleet/test/scale/floor"
)

var (
	doFloor  = flag.Bool("floor", false, "measure the grpc-go floor too: mpfleet-floor, the least a gRPC server can do to hold the agents' streams and fan a change out, with the controller's transport options")
	doHub    = flag.Bool("hub", true, "measure the hub (the controller); -hub=false -baseline=false -floor measures the floor alone")
	floorBin = flag.String("floor-bin", "", "mpfleet-floor binary (default: built from test/scale/cmd/mpfleet-floor)")
)

// floorRun is what the floor side measured: a side like the others (its
// Go runtime's figures in s.rt), and the kernel's TCP memory before the
// agents came and with all of them connected.
type floorRun struct {
	s                  *side
	tcpIdle, tcpLoaded int64 // KiB, /proc/net/sockstat, every process's
	bytes              int   // the encoded ConnectResponse
}

// floorProc is an mpfleet-floor process.
type floorProc struct {
	p      *proc
	addr   string
	client floor.Client
}

// floorBinary returns -floor-bin, else mpfleet-floor built now into dir.
func floorBinary(b *testing.B, dir string) string {
	b.Helper()
	if *floorBin != "" {
		return *floorBin
	}
	bin := filepath.Join(dir, "mpfleet-floor")
	cmd := exec.Command("go", "build", "-o", bin, "./test/scale/cmd/mpfleet-floor")
	cmd.Dir = repoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build mpfleet-floor: %v\n%s", err, out)
	}
	return bin
}

// startFloor starts mpfleet-floor and reads its addresses.
func startFloor(b *testing.B, bin, dir string) *floorProc {
	b.Helper()
	pr, pw := io.Pipe()
	p := startProc(b, dir, "floor", bin, nil, pw)
	lf, err := os.OpenFile(filepath.Join(dir, "floor.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = pw.Close(); _ = lf.Close() })
	line, err := firstLine(pr, lf, 30*time.Second)
	if err != nil {
		b.Fatalf("mpfleet-floor: %v\n%s", err, p.tail(20))
	}
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "floor" {
		b.Fatalf("mpfleet-floor: first line %q; want \"floor GRPC_ADDR HTTP_URL\"", line)
	}
	return &floorProc{p: p, addr: f[1], client: floor.Client{URL: f[2]}}
}

func (f *floorProc) runtime(b *testing.B) floor.Runtime {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rt, err := f.client.Runtime(ctx)
	if err != nil {
		b.Fatalf("mpfleet-floor runtime: %v\n%s", err, f.p.tail(20))
	}
	return rt
}

// runFloor runs the floor side: mpfleet-floor, the loadgens on it (as the
// hub's: same N, loadgens and agent flags), then K fan-outs, each timed
// from the trigger to the last agent's receipt.
func runFloor(b *testing.B, dir, lgBin, bin string, n int, res *results) {
	ctx := context.Background()
	fp := startFloor(b, bin, dir)
	pid := fp.p.pid()
	fr := &floorRun{s: &side{name: "floor", server: "mpfleet-floor", changes: *changes, rt: &runtimeSplit{}}}
	res.floor = fr
	s := fr.s
	group := "groups/" + groupID
	fanout := func(rev int64, subflows uint32) (called, ret time.Time) {
		// The DesiredConfig the controller sends for the group (and the
		// baseline puts): the same bytes.
		d := &pb.DesiredConfig{Assignment: pb.DesiredConfig_ASSIGNMENT_MANAGED, Group: group, Revision: rev, Policy: scalePolicy(subflows)}
		called = time.Now()
		r, err := fp.client.Fanout(ctx, d)
		ret = time.Now()
		if err != nil {
			b.Fatalf("fan-out of revision %d: %v\n%s", rev, err, fp.p.tail(20))
		}
		if r.Failed > 0 {
			b.Fatalf("fan-out of revision %d: %d of %d sends failed\n%s", rev, r.Failed, r.Streams, fp.p.tail(20))
		}
		fr.bytes = r.Bytes
		return called, ret
	}
	fanout(1, 2) // what each agent gets on its hello
	s.idleKB = medianRSS(b, pid)
	s.rt.idle = fp.runtime(b)
	fr.tcpIdle = tcpMemKB(b)

	start := time.Now()
	lgs := startLoadgens(b, lgBin, dir, n, *loadgens, loadgenArgs(fp.addr)...)
	wctx, cancel := context.WithTimeout(ctx, *waitLimit)
	defer cancel()
	if _, err := waitRevision(wctx, lgs, group, 1); err != nil {
		b.Fatalf("floor: agents holding the first revision: %v\n%s", err, fp.p.tail(20))
	}
	if err := waitConnected(wctx, lgs, time.Time{}); err != nil {
		b.Fatalf("floor: agents connected: %v\n%s", err, fp.p.tail(20))
	}
	s.connect = time.Since(start)
	s.loadgenKB = loadgensRSS(b, lgs)
	s.loadedKB = medianRSS(b, pid)
	s.rt.loaded = fp.runtime(b)
	fr.tcpLoaded = tcpMemKB(b)
	if s.rt.loaded.Streams != n {
		b.Fatalf("floor: %d streams with every agent served; want %d", s.rt.loaded.Streams, n)
	}
	s.background = background(b, pid)

	cpu0, t0 := mustCPU(b, pid), time.Now()
	for k := range *changes {
		rev := int64(k + 2)
		called, ret := fanout(rev, uint32(3+k%5))
		s.call = append(s.call, ret.Sub(called))
		last, err := waitRevision(wctx, lgs, group, rev)
		if err != nil {
			b.Fatalf("floor fan-out %d: %v\n%s", k, err, fp.p.tail(20))
		}
		// From the trigger: the fan-out begins as the request comes, as
		// the hub's begins as UpdateGroup commits.
		s.all = append(s.all, last.Sub(called))
		lat, err := receiptLatencies(ctx, lgs, group, rev, called)
		if err != nil {
			b.Fatal(err)
		}
		s.agent = append(s.agent, lat...)
	}
	s.cpu, s.phase = mustCPU(b, pid)-cpu0, time.Since(t0)
	stopLoadgens(lgs)
	fp.p.stop(syscall.SIGTERM, 30*time.Second)
}

// tcpMemKB returns the kernel's memory in TCP socket buffers, every
// process's (/proc/net/sockstat "TCP: ... mem PAGES"), in KiB.
func tcpMemKB(b *testing.B) int64 {
	b.Helper()
	data, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "TCP:" {
			continue
		}
		for i := 1; i+1 < len(f); i += 2 {
			if f[i] == "mem" {
				pages, err := strconv.ParseInt(f[i+1], 10, 64)
				if err != nil {
					b.Fatalf("/proc/net/sockstat: %q: %v", line, err)
				}
				return pages * int64(os.Getpagesize()) / 1024
			}
		}
	}
	b.Fatalf("/proc/net/sockstat: no TCP mem in %q", data)
	return 0
}

// floorRows are the table's rows of the floor's own figures (its Go
// runtime's are runtimeRows).
func floorRows(n int, fr *floorRun) []string {
	if fr == nil || fr.s.loadedKB == 0 {
		return nil
	}
	return []string{
		row("  kernel TCP buffers per agent (both ends)", "—", "—", fmt.Sprintf("%.1f KB (sockstat, %d → %d KB)",
			float64(fr.tcpLoaded-fr.tcpIdle)/float64(n), fr.tcpIdle, fr.tcpLoaded)),
	}
}

// floorNotes explain the floor's column.
func floorNotes(fr *floorRun) []string {
	if fr == nil {
		return nil
	}
	return []string{
		fmt.Sprintf("grpc-go floor: mpfleet-floor with the controller's transport options; the change is POST /fanout (one PreparedMsg, %d bytes, sent from 4×GOMAXPROCS goroutines);", fr.bytes),
		"  its change → all N is from the trigger (the POST) to the last receipt, its change call the POST until every send returned; Go runtime figures per agent are (with N − idle) / N after a forced GC."}
}
