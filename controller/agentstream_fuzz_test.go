package controller_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/controller"
	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/policy"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// streamBound is how long one fuzzed stream may take, from its first
// message to its end, and how long the well-behaved agent may wait for an
// answer.
const streamBound = 10 * time.Second

// maxFuzzMessages bounds the messages of one fuzz input.
const maxFuzzMessages = 64

// steadyID is the well-behaved agent connected beside every fuzzed stream.
const steadyID = "steady-0"

// FuzzAgentStream sends AgentService.Connect, over a real gRPC stream to an
// in-process controller, the messages a fuzz input encodes: a sequence of
// chunks, each a 2-byte big-endian length and that many bytes, sent as
// they are (a chunk that is not a ConnectRequest is sent all the same: what
// a buggy or hostile agent can put on the wire). The seeds, in
// testdata/fuzz/FuzzAgentStream, are written by TestAgentStreamSeeds with
// -update-seeds. For every input:
//
//   - the controller does not panic (its recover interceptor would turn a
//     panic into an INTERNAL status; the test counts the "panic in handler"
//     log records instead);
//   - the stream ends within streamBound once the agent closes its side;
//   - a stream whose first message is not a hello is answered with nothing
//     but an error status;
//   - a stream that was answered (its hello accepted) named a host id and
//     labels the API accepts, and the status the controller stored for the
//     host is within the bounds the controller enforces on hellos and
//     reports;
//   - the well-behaved agent beside it keeps its stream, gets every confirm
//     echoed, and every few inputs a new desired configuration.
func FuzzAgentStream(f *testing.F) {
	fe := newFuzzEnv(f)
	f.Fuzz(fe.check)
}

// chunks splits a fuzz input into messages.
func chunks(data []byte) [][]byte {
	var out [][]byte
	for len(data) >= 2 && len(out) < maxFuzzMessages {
		n := int(binary.BigEndian.Uint16(data))
		data = data[2:]
		n = min(n, len(data))
		out = append(out, data[:n])
		data = data[n:]
	}
	return out
}

// fuzzEnv is one controller, with the well-behaved agent, serving every
// input of one fuzzing process.
type fuzzEnv struct {
	*env
	panics *panicLog
	st     *store.Store
	steady *fakeAgent
	group  *pb.Group

	inputs int // inputs checked, for the confirm nonces and group updates
}

func newFuzzEnv(tb testing.TB) *fuzzEnv {
	tb.Helper()
	panics := &panicLog{}
	e := startLogged(tb, slog.New(panicHandler{log: panics, next: quietLog().Handler()}))
	fe := &fuzzEnv{env: e, panics: panics, st: store.New(e.etcd, "/mpfleet/v1/")}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	g, err := e.groups.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: "web", Group: webGroup()})
	if err != nil {
		tb.Fatal(err)
	}
	fe.group = g
	fe.steady = connectAgent(tb, e.agents, steadyID, map[string]string{"role": "web"}, true)
	fe.steady.waitFor(tb, "revision 1", managedAt("groups/web", g.GetPolicyRevision()))
	return fe
}

// startLogged is startWith with the controller logging to log and a short
// hello timeout.
func startLogged(tb testing.TB, log *slog.Logger) *env {
	tb.Helper()
	_, cli := etcdtest.Embedded(tb)
	return startOn(tb, cli, controller.Options{Log: log, Hub: controller.HubOptions{HelloTimeout: 2 * time.Second}})
}

// streamResult is what one fuzzed stream got back.
type streamResult struct {
	responses []*pb.ConnectResponse
	err       error // the stream's final error (io.EOF for OK)
}

func (fe *fuzzEnv) check(t *testing.T, data []byte) {
	msgs := chunks(data)
	panicsBefore := fe.panics.count()
	res := fe.send(t, msgs)
	if n := fe.panics.count() - panicsBefore; n != 0 {
		t.Fatalf("the controller panicked %d times (recovered by the interceptor): %v; stream ended with %v", n, fe.panics.lastValue(), res.err)
	}

	var hello *pb.AgentHello
	if len(msgs) > 0 {
		first := &pb.ConnectRequest{}
		if proto.Unmarshal(msgs[0], first) == nil {
			hello = first.GetHello()
		}
	}
	switch {
	case hello == nil && (len(res.responses) != 0 || errors.Is(res.err, io.EOF)):
		t.Fatalf("a stream that did not start with a hello got %d responses and ended with %v", len(res.responses), res.err)
	case hello != nil && hello.GetHostId() != steadyID:
		fe.checkStored(t, hello, len(res.responses) != 0)
	case hello != nil && len(res.responses) != 0:
		t.Fatalf("a second stream for %s was answered while the first lives", steadyID)
	}
	fe.checkSteady(t)
}

// send runs one stream: every message, then the close of the agent's side,
// and waits (up to streamBound) for the controller to end it.
func (fe *fuzzEnv) send(t *testing.T, msgs [][]byte) streamResult {
	ctx, cancel := context.WithTimeout(context.Background(), streamBound)
	defer cancel()
	desc := &grpc.StreamDesc{StreamName: "Connect", ServerStreams: true, ClientStreams: true}
	stream, err := fe.conn.NewStream(ctx, desc, pb.AgentService_Connect_FullMethodName, grpc.ForceCodecV2(rawCodec{}))
	if err != nil {
		t.Fatalf("open stream: %v", err)
	}
	var res streamResult
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			var raw []byte
			if err := stream.RecvMsg(&raw); err != nil {
				res.err = err
				return
			}
			m := &pb.ConnectResponse{}
			if err := proto.Unmarshal(raw, m); err != nil {
				res.err = fmt.Errorf("controller sent a message that is not a ConnectResponse: %w", err)
				return
			}
			res.responses = append(res.responses, m)
		}
	}()
	for _, m := range msgs {
		if stream.SendMsg(m) != nil {
			break // the controller ended the stream; RecvMsg says why
		}
	}
	_ = stream.CloseSend()
	<-done
	if ctx.Err() != nil {
		t.Fatalf("stream of %d messages did not end within %v after the agent closed its side (got %d responses, %v)", len(msgs), streamBound, len(res.responses), res.err)
	}
	return res
}

// checkStored checks what the controller stored for the host a hello
// named. A stream that was answered had its hello accepted, so its status
// must be stored; a stored status means the hello was accepted, so its host
// id and labels must be ones the API accepts; and the status must be within
// the bounds the controller enforces. The status is then deleted, so that
// every input starts from none.
func (fe *fuzzEnv) checkStored(t *testing.T, hello *pb.AgentHello, answered bool) {
	t.Helper()
	id := hello.GetHostId()
	ctx, cancel := context.WithTimeout(context.Background(), streamBound)
	defer cancel()
	h, err := fe.st.GetHost(ctx, id)
	switch {
	case errors.Is(err, store.ErrNotFound) && !answered:
		return
	case err != nil:
		t.Fatalf("hello of %q accepted, but no status stored: %v", id, err)
	}
	// The API's own rule for host names.
	if _, err := fe.hosts.GetHost(ctx, &pb.GetHostRequest{Name: "hosts/" + id}); status.Code(err) == codes.InvalidArgument {
		t.Fatalf("hello of host id %q accepted, but the API refuses the name: %v", id, err)
	}
	var vs policy.Violations
	policy.ValidateLabels(&vs, "labels", hello.GetLabels())
	if len(vs) != 0 {
		t.Fatalf("hello with invalid labels accepted: %v", vs)
	}
	if err := hostWithinBounds(id, h); err != nil {
		t.Fatalf("stored status of %q: %v", id, err)
	}
	if _, err := fe.etcd.Delete(ctx, "/mpfleet/v1/hosts/"+id); err != nil {
		t.Fatal(err)
	}
}

// hostWithinBounds checks a stored host status against the bounds the
// controller enforces on what agents send (validateHello, validateReport).
func hostWithinBounds(id string, h *pb.Host) error {
	var errs []error
	bound := func(what string, n, max int) {
		if n > max {
			errs = append(errs, fmt.Errorf("%s: %d, more than %d", what, n, max))
		}
	}
	if h.GetName() != store.HostName(id) {
		errs = append(errs, fmt.Errorf("name %q", h.GetName()))
	}
	var vs policy.Violations
	policy.ValidateLabels(&vs, "labels", h.GetLabels())
	if err := vs.Err(); err != nil {
		errs = append(errs, err)
	}
	if _, ok := pb.SyncState_name[int32(h.GetSyncState())]; !ok {
		errs = append(errs, fmt.Errorf("sync_state %d", h.GetSyncState()))
	}
	bound("facts.interfaces", len(h.GetFacts().GetInterfaces()), 1024)
	bound("applied.endpoints", len(h.GetApplied().GetEndpoints()), 64)
	bound("last_plan", len(h.GetLastPlan()), 1024)
	bound("last_error bytes", len(h.GetLastError()), 4096)
	bound("problems", len(h.GetProblems()), 64)
	for i, p := range h.GetProblems() {
		bound(fmt.Sprintf("problems[%d].message bytes", i), len(p.GetMessage()), 1024)
		bound(fmt.Sprintf("problems[%d].interface bytes", i), len(p.GetInterface()), 64)
		bound(fmt.Sprintf("problems[%d].address bytes", i), len(p.GetAddress()), 64)
	}
	bound("health.paths", len(h.GetHealth().GetPaths()), 64)
	for i, p := range h.GetHealth().GetPaths() {
		bound(fmt.Sprintf("health.paths[%d].message bytes", i), len(p.GetMessage()), 1024)
		for what, s := range map[string]string{"interface": p.GetInterface(), "address": p.GetAddress(), "gateway": p.GetGateway()} {
			bound(fmt.Sprintf("health.paths[%d].%s bytes", i, what), len(s), 64)
		}
	}
	return errors.Join(errs...)
}

// checkSteady checks that the well-behaved agent still has its stream and
// is answered: a confirm is echoed, and every 16 inputs a new policy
// revision reaches it.
func (fe *fuzzEnv) checkSteady(t *testing.T) {
	t.Helper()
	fe.inputs++
	a := fe.steady
	nonce := uint64(fe.inputs)
	if err := a.stream.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Confirm{Confirm: &pb.Confirm{Nonce: nonce}}}); err != nil {
		t.Fatalf("well-behaved agent: send confirm: %v", err)
	}
	deadline := time.After(streamBound)
	for !a.confirmed(nonce) {
		select {
		case <-a.changed:
		case <-a.done:
			t.Fatalf("well-behaved agent: stream ended: %v", a.err)
		case <-deadline:
			t.Fatalf("well-behaved agent: confirm %d not echoed within %v", nonce, streamBound)
		}
	}
	if fe.inputs%16 != 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), streamBound)
	defer cancel()
	g := proto.Clone(fe.group).(*pb.Group)
	g.Policy.Limits.Subflows = proto.Uint32(2 + uint32(fe.inputs/16)%2)
	g, err := fe.groups.UpdateGroup(ctx, &pb.UpdateGroupRequest{Group: g})
	if err != nil {
		t.Fatalf("update group: %v", err)
	}
	fe.group = g
	a.waitFor(t, fmt.Sprintf("revision %d", g.GetPolicyRevision()), managedAt("groups/web", g.GetPolicyRevision()))
}

func (a *fakeAgent) confirmed(nonce uint64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, n := range a.confirms {
		if n == nonce {
			return true
		}
	}
	return false
}

// panicLog counts the controller's "panic in handler" records.
type panicLog struct {
	mu    sync.Mutex
	n     atomic.Int64
	value string
}

func (p *panicLog) count() int64 { return p.n.Load() }

func (p *panicLog) lastValue() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.value
}

// panicHandler is a slog.Handler that records panics in p and passes
// every record on to next.
type panicHandler struct {
	log  *panicLog
	next slog.Handler
}

func (h panicHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelError || h.next.Enabled(ctx, l)
}

func (h panicHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "panic in handler" {
		var b []byte
		r.Attrs(func(a slog.Attr) bool {
			b = fmt.Appendf(b, "%s=%v ", a.Key, a.Value)
			return true
		})
		h.log.mu.Lock()
		h.log.value = string(b)
		h.log.mu.Unlock()
		h.log.n.Add(1)
	}
	if h.next.Enabled(ctx, r.Level) {
		return h.next.Handle(ctx, r)
	}
	return nil
}

func (h panicHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return panicHandler{log: h.log, next: h.next.WithAttrs(as)}
}

func (h panicHandler) WithGroup(name string) slog.Handler {
	return panicHandler{log: h.log, next: h.next.WithGroup(name)}
}

// rawCodec sends []byte as it is, so that a fuzzed agent can put any bytes
// on the wire, and receives messages as bytes.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, ok := v.([]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	p, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	*p = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "proto" }
