package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mpfleet/mpfleet/internal/transport"
	"github.com/mpfleet/mpfleet/internal/wait"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
)

// maxRecvMsgSize bounds a message from the controller; a larger one ends
// the stream (RESOURCE_EXHAUSTED) and is reported as rejected.
const maxRecvMsgSize = 4 << 20

// keepaliveParams: ping every 20s, give up after 10s without an answer, also
// between streams. The controller's enforcement policy allows pings down to
// 5s, so the agent is never cut off for pinging too often.
var keepaliveParams = keepalive.ClientParameters{Time: 20 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}

// session is one connection to the controller: its own gRPC client
// connection and AgentService.Connect stream, the hello already sent.
type session struct {
	conn   *grpc.ClientConn
	stream pb.AgentService_ConnectClient
	cancel context.CancelFunc
	// local is the address the connection leaves from, remote the
	// controller's address it goes to.
	local, remote netip.Addr
	// done is closed when the stream has ended.
	done chan struct{}
	// helloFacts are the facts the hello carried.
	helloFacts *pb.HostFacts
	// acking: the controller acknowledges events on this stream
	// (EventsRecorded); one that does not is older than that, and what was
	// sent to it is not sent again.
	acking atomic.Bool

	mu sync.Mutex // serialises Send
}

func (s *session) send(m *pb.ConnectRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stream.Send(m)
}

func (s *session) close() {
	s.cancel()
	_ = s.conn.Close()
}

// backoff returns the wait before reconnect attempt n (from 0): full jitter,
// uniformly random between 0 and min(max, lo·2ⁿ), so that agents that lost
// their controller together do not come back together.
func backoff(n int, lo, hi time.Duration) time.Duration {
	ceil := hi
	if n < 32 && lo<<n > 0 && lo<<n < hi {
		ceil = lo << n
	}
	return time.Duration(rand.Int64N(int64(ceil) + 1))
}

// connectLoop keeps a session with a controller replica until ctx ends:
// round after round through the controller addresses (controllers.go), it
// dials, hands the session to the reconcile loop and receives until the
// stream ends. A round that got no stream is followed by a backoff; the
// backoff starts over after a session that got its desired configuration.
// A replica that drains (it is being stopped) has released the host: the
// agent moves to another one after a small jitter, not its backoff.
func (a *Agent) connectLoop(ctx context.Context) {
	rot := &rotation{entries: a.controllers, lookup: a.lookup, warn: func(entry string, err error) {
		a.log.Warn("cannot resolve the controller address; dialing it as it is", "controller", entry, "err", err)
	}}
	attempt := 0
	last := ""
	for ctx.Err() == nil {
		rot.newRound(ctx, last)
		var pause time.Duration
		served := false
		for t, ok := rot.take(); ok && ctx.Err() == nil; t, ok = rot.take() {
			healthy, drain := a.serve(ctx, t, attempt)
			if ctx.Err() != nil {
				return
			}
			if !healthy && drain == nil {
				continue // unreachable, refused, or broken at once: the next
			}
			served, last, attempt = true, t.addr, 0
			pause = backoff(0, a.opts.BackoffMin, a.opts.BackoffMin)
			if drain != nil {
				pause = a.drainPause(drain)
			}
			break
		}
		if !served {
			pause = backoff(attempt, a.opts.BackoffMin, a.opts.BackoffMax)
			attempt++
		}
		if !wait.Sleep(ctx, pause) {
			return
		}
	}
}

// serve dials target t and, if that works, hands the session to the loop
// and receives until the stream ends. It returns whether a desired
// configuration came on it, and the drain that ended it, if one did.
func (a *Agent) serve(ctx context.Context, t target, attempt int) (healthy bool, drain *pb.Drain) {
	s, err := a.dial(ctx, t)
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("cannot reach the controller", "controller", t.entry, "addr", t.addr, "attempt", attempt+1, "err", err)
		}
		return false, nil
	}
	select {
	case a.sessionC <- s:
	case <-ctx.Done():
		s.close()
		return false, nil
	}
	a.log.Info("connected to the controller", "controller", t.entry, "addr", t.addr, "local", s.local)
	a.setStream(true)
	start := time.Now()
	healthy, drain, err = a.receive(s)
	a.setStream(false)
	close(s.done)
	s.close()
	if ctx.Err() != nil {
		return healthy, drain
	}
	if drain != nil {
		a.log.Info("the controller replica is draining; moving to another", "controller", t.entry, "addr", t.addr, "reason", drain.GetReason())
		a.drains.Add(1)
		return healthy, drain
	}
	a.log.Warn("controller connection ended", "controller", t.entry, "addr", t.addr, "after", time.Since(start).Round(time.Millisecond), "err", err)
	return healthy, nil
}

// drainPause is how long to wait before moving after drain d: at random
// within what the controller asks for (at most the longest backoff), else
// within the shortest backoff.
func (a *Agent) drainPause(d *pb.Drain) time.Duration {
	within := a.opts.BackoffMin
	if w := d.GetReconnectWithin().AsDuration(); w > 0 {
		within = min(w, a.opts.BackoffMax)
	}
	return backoff(0, within, within)
}

// dial opens a session to target t: a new client connection (so that the
// backoff above, not gRPC's own, paces the attempts, and the local address
// is that of this connection), the stream, and the hello. The connection
// goes to t.addr under the authority t.entry, so that TLS checks the
// controller's certificate against the host as listed.
func (a *Agent) dial(ctx context.Context, t target) (*session, error) {
	var local, remote atomic.Pointer[netip.Addr]
	dialer := func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		// Plain TCP: endpoint changes never touch the controller connection.
		d.SetMultipathTCP(false)
		c, err := a.dialTCP(ctx, &d, t.addr)
		if err != nil {
			return nil, err
		}
		if ap, err := netip.ParseAddrPort(c.LocalAddr().String()); err == nil {
			l := ap.Addr().Unmap()
			local.Store(&l)
		}
		if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
			r := ap.Addr().Unmap()
			remote.Store(&r)
		}
		return c, nil
	}
	creds := grpc.WithTransportCredentials(insecure.NewCredentials())
	if a.opts.Credentials != nil {
		creds = grpc.WithTransportCredentials(a.opts.Credentials)
	}
	opts := []grpc.DialOption{
		creds,
		grpc.WithContextDialer(dialer),
		grpc.WithKeepaliveParams(keepaliveParams),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsgSize)),
		grpc.WithUserAgent("mpfleet-agent/" + a.opts.Version),
	}
	if a.opts.Token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(transport.Bearer{Token: a.opts.Token, Secure: a.opts.Credentials != nil}))
	}
	conn, err := grpc.NewClient("passthrough:///"+t.entry, opts...)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	timer := time.AfterFunc(a.opts.ConnectTimeout, cancel)
	fail := func(err error) (*session, error) {
		timedOut := !timer.Stop()
		cancel()
		_ = conn.Close()
		if timedOut && ctx.Err() == nil {
			return nil, fmt.Errorf("no connection within %v: %w", a.opts.ConnectTimeout, err)
		}
		return nil, err
	}
	// Fail fast: a refused connection ends the attempt at once, so that the
	// backoff above, not gRPC's, paces the next.
	stream, err := pb.NewAgentServiceClient(conn).Connect(sctx)
	if err != nil {
		return fail(err)
	}
	hello := a.hello(sctx)
	if err := stream.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Hello{Hello: hello}}); err != nil {
		if errors.Is(err, io.EOF) {
			_, err = stream.Recv() // the status the server ended the stream with
		}
		return fail(err)
	}
	if !timer.Stop() {
		return fail(sctx.Err())
	}
	s := &session{conn: conn, stream: stream, cancel: cancel, done: make(chan struct{}), helloFacts: hello.GetFacts()}
	if l := local.Load(); l != nil {
		s.local = *l
	}
	if r := remote.Load(); r != nil {
		s.remote = *r
	}
	return s, nil
}

// hello introduces the agent: host, labels, facts, what it applied last.
func (a *Agent) hello(ctx context.Context) *pb.AgentHello {
	h := &pb.AgentHello{
		HostId: a.opts.HostID, Labels: a.opts.Labels, AgentVersion: a.opts.Version, DryRun: a.opts.DryRun,
		EventEpoch: a.evlog.epochOf(),
	}
	if ap := a.applied.Load(); ap != nil {
		h.AppliedGroup, h.AppliedRevision = ap.group, ap.revision
	}
	f, err := a.opts.System.Facts(ctx)
	if err != nil {
		a.log.Warn("facts for hello", "err", err)
	}
	h.Facts = f
	return h
}

// receive reads the controller's messages until the stream ends or the
// controller drains it. It returns whether a desired configuration came,
// the drain, and why the stream ended.
func (a *Agent) receive(s *session) (bool, *pb.Drain, error) {
	got := false
	for {
		m, err := s.stream.Recv()
		if err != nil {
			if status.Code(err) == codes.ResourceExhausted {
				a.offerProblem(fmt.Errorf("desired configuration rejected: the controller sent a message over the %d-byte limit: %w", maxRecvMsgSize, err))
			}
			return got, nil, err
		}
		switch k := m.GetKind().(type) {
		case *pb.ConnectResponse_Drain:
			return got, k.Drain, nil
		case *pb.ConnectResponse_Desired:
			got = true
			a.offerDesired(k.Desired)
		case *pb.ConnectResponse_EventsRecorded:
			s.acking.Store(true)
			a.evlog.ack(k.EventsRecorded.GetSequence())
		case *pb.ConnectResponse_Confirmed:
			select {
			case a.confirmC <- k.Confirmed.GetNonce():
			default: // a flood of echoes; the one awaited is retried
			}
		default:
			a.log.Warn("unknown message from the controller; ignored")
		}
	}
}
