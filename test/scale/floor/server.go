// Package floor is the least a gRPC server can do to hold mpfleet agent
// streams: the controller's transport options, AgentService.Connect
// answered with the current desired configuration and then only read, and
// a fan-out of one encoded message to every stream. The scale benchmark
// (test/scale, -floor) runs it as mpfleet-floor next to the controller, to
// measure what grpc-go and the kernel cost on the machine, apart from the
// controller's own work (issue #12).
package floor

import (
	"errors"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// ServerOptions are the controller's transport-level server options
// (controller.NewServer), and nothing else: no interceptors, no
// credentials. Keep them the same as the controller's.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.MaxRecvMsgSize(8 << 20),
		grpc.WriteBufferSize(16 << 10),
	}
}

// Server serves AgentService.Connect with the least work: it keeps a set
// of streams and fans a message out to them.
type Server struct {
	pb.UnimplementedAgentServiceServer

	fanMu sync.Mutex // one fan-out at a time

	mu      sync.Mutex
	streams map[*agentStream]struct{}
	current *prepared // the last fanned out; sent to each new stream
	seq     uint64
}

// NewServer returns a Server holding no stream.
func NewServer() *Server {
	return &Server{streams: map[*agentStream]struct{}{}}
}

// Register registers s on a new grpc.Server with ServerOptions and returns
// that server.
func (s *Server) Register() *grpc.Server {
	srv := grpc.NewServer(ServerOptions()...)
	pb.RegisterAgentServiceServer(srv, s)
	return srv
}

// prepared is a message encoded once, with the codec of the first stream
// that sends it (the bytes are the same for every stream), as the
// controller does.
type prepared struct {
	seq  uint64
	msg  *pb.ConnectResponse
	once sync.Once
	pm   *grpc.PreparedMsg
	err  error
}

func (p *prepared) encode(s grpc.ServerStream) (*grpc.PreparedMsg, error) {
	p.once.Do(func() {
		pm := &grpc.PreparedMsg{}
		if p.err = pm.Encode(s, p.msg); p.err == nil {
			p.pm = pm
		}
	})
	return p.pm, p.err
}

// agentStream is one agent's stream.
type agentStream struct {
	s   pb.AgentService_ConnectServer
	mu  sync.Mutex // one SendMsg at a time
	seq uint64     // the last message sent
}

// send sends p unless a newer message was sent already.
func (a *agentStream) send(p *prepared) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if p.seq <= a.seq {
		return nil
	}
	pm, err := p.encode(a.s)
	if err != nil {
		return err
	}
	if err := a.s.SendMsg(pm); err != nil {
		return err
	}
	a.seq = p.seq
	return nil
}

// Connect takes the agent's hello, sends it the current desired
// configuration (if any), and then reads and discards until the stream
// ends: one goroutine per stream, this one.
func (s *Server) Connect(stream pb.AgentService_ConnectServer) error {
	m, err := stream.Recv()
	if err != nil {
		return err
	}
	if m.GetHello() == nil {
		return status.Error(codes.InvalidArgument, "hello: the first message must be a hello")
	}
	a := &agentStream{s: stream}
	s.mu.Lock()
	s.streams[a] = struct{}{}
	cur := s.current
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.streams, a)
		s.mu.Unlock()
	}()
	if cur != nil {
		if err := a.send(cur); err != nil {
			return err
		}
	}
	for {
		if _, err := stream.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// Streams returns how many streams are registered.
func (s *Server) Streams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.streams)
}

// FanoutResult is what a fan-out did.
type FanoutResult struct {
	Streams int `json:"streams"` // streams sent to
	Failed  int `json:"failed"`  // sends that returned an error
	Bytes   int `json:"bytes"`   // the encoded ConnectResponse
	// Nanos is from the start of the fan-out until every send returned.
	Nanos int64 `json:"nanos"`
}

// Fanout makes ConnectResponse{Desired: d} the current message (new
// streams get it on their hello), encodes it once and sends it on every
// registered stream from 4×GOMAXPROCS goroutines. It returns when every
// send has returned.
func (s *Server) Fanout(d *pb.DesiredConfig) FanoutResult {
	s.fanMu.Lock()
	defer s.fanMu.Unlock()
	start := time.Now()
	msg := &pb.ConnectResponse{Kind: &pb.ConnectResponse_Desired{Desired: d}}
	s.mu.Lock()
	s.seq++
	p := &prepared{seq: s.seq, msg: msg}
	s.current = p
	list := make([]*agentStream, 0, len(s.streams))
	for a := range s.streams {
		list = append(list, a)
	}
	s.mu.Unlock()

	var next, failed atomic.Int64
	var wg sync.WaitGroup
	for range min(4*runtime.GOMAXPROCS(0), len(list)) {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(len(list)) {
					return
				}
				if err := list[i].send(p); err != nil {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return FanoutResult{Streams: len(list), Failed: int(failed.Load()), Bytes: proto.Size(msg), Nanos: time.Since(start).Nanoseconds()}
}
