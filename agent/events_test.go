package agent

import (
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc"
)

// ackController is a real gRPC AgentService on 127.0.0.1 that sends one
// desired configuration per stream, echoes confirms and, by mode,
// acknowledges events: "ack" every one, "hold" none (but it announces that
// it acknowledges), "legacy" none and no announcement (a controller older
// than acknowledgements). It records what each stream carried, in order.
type ackController struct {
	pb.UnimplementedAgentServiceServer
	addr string

	mu      sync.Mutex
	srv     *grpc.Server
	mode    string
	desired *pb.DesiredConfig
	epochs  []uint64   // the hello's event_epoch, by stream
	streams [][]string // "event N" and "report", by stream
}

func newAckController(t *testing.T, mode string, d *pb.DesiredConfig) *ackController {
	t.Helper()
	c := &ackController{mode: mode, desired: d}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.addr = lis.Addr().String()
	c.serve(lis)
	t.Cleanup(c.stop)
	return c
}

func (c *ackController) serve(lis net.Listener) {
	srv := grpc.NewServer()
	pb.RegisterAgentServiceServer(srv, c)
	c.mu.Lock()
	c.srv = srv
	c.mu.Unlock()
	go func() { _ = srv.Serve(lis) }()
}

func (c *ackController) stop() {
	c.mu.Lock()
	srv := c.srv
	c.mu.Unlock()
	srv.Stop()
}

// restart stops serving (every stream ends) and serves again on the same
// address, in mode with d.
func (c *ackController) restart(t *testing.T, mode string, d *pb.DesiredConfig) {
	t.Helper()
	c.stop()
	c.mu.Lock()
	c.mode, c.desired = mode, d
	c.mu.Unlock()
	lis, err := net.Listen("tcp", c.addr)
	if err != nil {
		t.Fatal(err)
	}
	c.serve(lis)
}

func (c *ackController) Connect(st pb.AgentService_ConnectServer) error {
	m, err := st.Recv()
	if err != nil {
		return err
	}
	c.mu.Lock()
	i := len(c.streams)
	c.epochs = append(c.epochs, m.GetHello().GetEventEpoch())
	c.streams = append(c.streams, nil)
	mode, d := c.mode, c.desired
	c.mu.Unlock()
	// Every send on this goroutine.
	if mode != "legacy" {
		if err := st.Send(&pb.ConnectResponse{Kind: &pb.ConnectResponse_EventsRecorded{EventsRecorded: &pb.EventsRecorded{}}}); err != nil {
			return err
		}
	}
	if err := st.Send(&pb.ConnectResponse{Kind: &pb.ConnectResponse_Desired{Desired: d}}); err != nil {
		return err
	}
	for {
		m, err := st.Recv()
		if err != nil {
			return err
		}
		var reply *pb.ConnectResponse
		c.mu.Lock()
		switch k := m.GetKind().(type) {
		case *pb.ConnectRequest_Event:
			c.streams[i] = append(c.streams[i], fmt.Sprintf("event %d", k.Event.GetSequence()))
			if mode == "ack" {
				reply = &pb.ConnectResponse{Kind: &pb.ConnectResponse_EventsRecorded{EventsRecorded: &pb.EventsRecorded{Sequence: k.Event.GetSequence()}}}
			}
		case *pb.ConnectRequest_Report:
			c.streams[i] = append(c.streams[i], "report")
		case *pb.ConnectRequest_Confirm:
			reply = &pb.ConnectResponse{Kind: &pb.ConnectResponse_Confirmed{Confirmed: k.Confirm}}
		}
		c.mu.Unlock()
		if reply != nil {
			if err := st.Send(reply); err != nil {
				return err
			}
		}
	}
}

// stream returns what stream i carried so far (nil: no such stream yet).
func (c *ackController) stream(i int) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i >= len(c.streams) {
		return nil
	}
	return slices.Clone(c.streams[i])
}

// beforeReport returns what stream i carried before its first report, once
// that came: what the agent sent again when it connected.
func (c *ackController) beforeReport(t *testing.T, i int) []string {
	t.Helper()
	var got []string
	waitUntil(t, fmt.Sprintf("a report on stream %d", i), func() bool {
		s := c.stream(i)
		j := slices.Index(s, "report")
		got = s[:max(j, 0)]
		return j >= 0
	})
	return got
}

// TestEventsKeptUntilAcknowledged: the agent numbers its events under one
// epoch for its run, forgets those the controller acknowledged, sends again
// on its next stream those it did not (in order, before its report), and
// keeps nothing it sent to a controller that acknowledges none (older than
// acknowledgements).
func TestEventsKeptUntilAcknowledged(t *testing.T) {
	c := newAckController(t, "ack", managed(1, testPolicy()))
	h := newHarness(t, func(h *harness) { h.opts.Controller = c.addr })
	h.start()
	waitUntil(t, "APPLIED event 1 acknowledged on stream 0", func() bool { return h.agent.evlog.acked.Load() == 1 })

	// Acknowledged: not sent again. Revision 2's APPLIED, never
	// acknowledged, is.
	c.restart(t, "hold", managed(2, testPolicy()))
	waitUntil(t, "APPLIED event 2 on stream 1", func() bool { return slices.Contains(c.stream(1), "event 2") })
	if got := c.beforeReport(t, 1); len(got) != 0 {
		t.Errorf("stream 1 began with %q; event 1 was acknowledged, nothing is due again", got)
	}
	c.restart(t, "ack", managed(2, testPolicy()))
	if got, want := c.beforeReport(t, 2), []string{"event 2"}; !slices.Equal(got, want) {
		t.Errorf("stream 2 began with %q, want %q (event 2 again: never acknowledged)", got, want)
	}

	// A controller older than acknowledgements: what it got is done.
	c.restart(t, "legacy", managed(3, testPolicy()))
	waitUntil(t, "APPLIED event 3 on stream 3", func() bool { return slices.Contains(c.stream(3), "event 3") })
	c.restart(t, "ack", managed(3, testPolicy()))
	if got := c.beforeReport(t, 4); len(got) != 0 {
		t.Errorf("stream 4 began with %q; event 3 went to a controller that acknowledges none, and is not sent again", got)
	}

	c.mu.Lock()
	epochs := slices.Clone(c.epochs)
	c.mu.Unlock()
	if epochs[0] == 0 || slices.IndexFunc(epochs, func(e uint64) bool { return e != epochs[0] }) >= 0 {
		t.Errorf("event epochs of the streams %v, want one, not zero, for the agent's run", epochs)
	}
}
