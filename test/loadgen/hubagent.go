package loadgen

// One simulated agent on AgentService.Connect.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/mpfleet/mpfleet/internal/transport"
	"github.com/mpfleet/mpfleet/internal/wait"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Version is the agent version the simulated agents announce.
const Version = "loadgen"

// keepaliveParams are the real agent's.
var keepaliveParams = keepalive.ClientParameters{Time: 20 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}

// hubAgent is one simulated agent. Its fields are used by its own goroutine
// only.
type hubAgent struct {
	f   *Fleet
	idx int
	id  string

	// What it holds: the last desired configuration, and its sync state.
	desired *pb.DesiredConfig
	state   pb.SyncState
	applied *pb.DesiredConfig // last managed configuration reported IN_SYNC
	pending uint64            // nonce awaited before reporting desired IN_SYNC
	reports uint64            // health reports sent, for changing counters
}

// message is one message from the controller, and when it came.
type message struct {
	m  *pb.ConnectResponse
	at time.Time
}

// run keeps a session with the controller until ctx ends, reconnecting
// after a backoff as the real agent does.
func (a *hubAgent) run(ctx context.Context) {
	release, ok := a.f.firstAttempt(ctx)
	if !ok {
		return
	}
	defer release()
	attempt := 0
	for ctx.Err() == nil {
		served, err := a.session(ctx, release)
		if ctx.Err() != nil {
			return
		}
		a.f.rec.failed()
		a.f.cfg.Log.Debug("session ended", "host", a.id, "err", err)
		release() // a failed first attempt lets the next agent try
		if served {
			attempt = 0
		}
		pause := a.f.backoff(attempt)
		attempt++
		if !wait.Sleep(ctx, pause) {
			return
		}
	}
}

// session runs one connection and stream until it ends, and returns
// whether the controller served it a desired configuration.
func (a *hubAgent) session(ctx context.Context, release func()) (bool, error) {
	cfg := &a.f.cfg
	creds := grpc.WithTransportCredentials(insecure.NewCredentials())
	if cfg.Credentials != nil {
		creds = grpc.WithTransportCredentials(cfg.Credentials)
	}
	opts := []grpc.DialOption{creds, grpc.WithKeepaliveParams(keepaliveParams), grpc.WithUserAgent("mpfleet-agent/" + Version)}
	if cfg.Token != nil {
		if tok := cfg.Token(a.id); tok != "" {
			opts = append(opts, grpc.WithPerRPCCredentials(transport.Bearer{Token: tok, Secure: cfg.Credentials != nil}))
		}
	}
	conn, err := grpc.NewClient("passthrough:///"+cfg.Controller, opts...)
	if err != nil {
		return false, err
	}
	defer func() { _ = conn.Close() }()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	timer := time.AfterFunc(cfg.ConnectTimeout, cancel)
	stream, err := pb.NewAgentServiceClient(conn).Connect(sctx)
	if err != nil {
		timer.Stop()
		return false, err
	}
	if err := stream.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Hello{Hello: a.hello()}}); err != nil {
		timer.Stop()
		return false, err
	}
	if !timer.Stop() {
		return false, fmt.Errorf("no connection within %v", cfg.ConnectTimeout)
	}
	a.f.rec.sessionBegun()
	start := time.Now()

	msgs := make(chan message, 4)
	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case msgs <- message{m, time.Now()}:
			case <-sctx.Done():
				recvErr <- sctx.Err()
				return
			}
		}
	}()
	// Health reports, spread over the interval across the agents.
	var tick <-chan time.Time
	var health *time.Timer
	if cfg.ReportInterval > 0 {
		health = time.NewTimer(time.Duration(rand.Int64N(int64(cfg.ReportInterval)) + 1))
		defer health.Stop()
		tick = health.C
	}

	served := false
	defer func() {
		if served {
			a.f.rec.serving(a.idx, time.Time{})
		}
	}()
	a.pending = 0
	for {
		var err error
		select {
		case m := <-msgs:
			switch k := m.m.GetKind().(type) {
			case *pb.ConnectResponse_Desired:
				if !served {
					served = true
					release()
					a.f.rec.serving(a.idx, start)
				}
				err = a.onDesired(stream, k.Desired, m.at)
			case *pb.ConnectResponse_Confirmed:
				err = a.onConfirmed(stream, k.Confirmed.GetNonce())
			}
		case <-tick:
			health.Reset(cfg.ReportInterval)
			err = a.report(stream, true)
		case err = <-recvErr:
			return served, err
		}
		if err != nil {
			return served, err
		}
	}
}

// hello introduces the agent: its host, labels, facts, what it applied.
func (a *hubAgent) hello() *pb.AgentHello {
	h := &pb.AgentHello{HostId: a.id, Labels: a.f.cfg.Labels, AgentVersion: Version, Facts: a.f.facts(a.idx)}
	if a.applied != nil {
		h.AppliedGroup, h.AppliedRevision = a.applied.GetGroup(), a.applied.GetRevision()
	}
	return h
}

// facts are those of agent i: a small host, one interface with one
// address.
func (f *Fleet) facts(i int) *pb.HostFacts {
	return &pb.HostFacts{
		Hostname: f.cfg.HostID(i), KernelVersion: "6.1.0-loadgen", MptcpSupported: true,
		AvailableSysctls:      []string{"enabled", "pm_type", "scheduler", "add_addr_timeout"},
		AvailableSchedulers:   []string{"default"},
		AvailablePathManagers: []string{"kernel"},
		Interfaces: []*pb.Interface{
			{Name: "lo", Index: 1, Up: true, Addresses: []string{"127.0.0.1/8"}},
			{Name: "eth0", Index: 2, Up: true, Addresses: []string{f.address(i).String() + "/15"}},
		},
	}
}

// onDesired takes a desired configuration received at at: it records the
// receipt and reports, as a real agent after its reconcile.
func (a *hubAgent) onDesired(stream pb.AgentService_ConnectClient, d *pb.DesiredConfig, at time.Time) error {
	a.desired = d
	a.pending = 0
	switch d.GetAssignment() {
	case pb.DesiredConfig_ASSIGNMENT_MANAGED:
		a.f.rec.received(a.idx, a.id, d.GetGroup(), d.GetRevision(), at)
		if a.applied != nil && a.applied.GetGroup() == d.GetGroup() && a.applied.GetRevision() == d.GetRevision() {
			a.state = pb.SyncState_SYNC_STATE_IN_SYNC
			return a.report(stream, false)
		}
		if a.f.cfg.Confirm {
			a.state = pb.SyncState_SYNC_STATE_APPLYING
			if err := a.report(stream, false); err != nil {
				return err
			}
			a.pending = rand.Uint64() | 1
			return stream.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Confirm{Confirm: &pb.Confirm{Nonce: a.pending}}})
		}
		return a.commit(stream)
	case pb.DesiredConfig_ASSIGNMENT_CONFLICT:
		a.state = pb.SyncState_SYNC_STATE_CONFLICT
	default:
		a.state = pb.SyncState_SYNC_STATE_UNMANAGED
	}
	return a.report(stream, false)
}

// onConfirmed takes the controller's echo of a nonce.
func (a *hubAgent) onConfirmed(stream pb.AgentService_ConnectClient, nonce uint64) error {
	if a.pending == 0 || nonce != a.pending {
		return nil
	}
	a.pending = 0
	return a.commit(stream)
}

// commit makes the desired configuration the applied one and reports it.
func (a *hubAgent) commit(stream pb.AgentService_ConnectClient) error {
	d := a.desired
	a.applied, a.state = d, pb.SyncState_SYNC_STATE_IN_SYNC
	if a.f.cfg.Events {
		ev := &pb.AgentEvent{
			Kind: pb.AgentEvent_KIND_APPLIED, Group: d.GetGroup(), Revision: d.GetRevision(),
			Message: fmt.Sprintf("%s revision %d applied", d.GetGroup(), d.GetRevision()),
		}
		if err := stream.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Event{Event: ev}}); err != nil {
			return err
		}
	}
	return a.report(stream, false)
}

// report sends the agent's state; a periodic one carries fresh health
// counters, as a real agent's does.
func (a *hubAgent) report(stream pb.AgentService_ConnectClient, periodic bool) error {
	if a.state == pb.SyncState_SYNC_STATE_UNSPECIFIED || a.f.cfg.Silent {
		return nil // nothing received yet, or told to say nothing
	}
	r := &pb.AgentReport{SyncState: a.state}
	if a.applied != nil {
		r.Group, r.AppliedRevision = a.applied.GetGroup(), a.applied.GetRevision()
		addr := a.f.address(a.idx).String()
		r.Applied = &pb.AppliedState{
			Endpoints: []*pb.AppliedEndpoint{{Id: 1, Address: addr, Flags: []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW}, Interface: "eth0"}},
			Limits:    a.applied.GetPolicy().GetLimits(),
		}
	}
	if periodic {
		a.reports++
	}
	n := a.reports
	r.Health = &pb.MptcpHealth{
		Connections: uint32(n % 7), Subflows: uint32(n % 7 * 2),
		Counters: map[string]uint64{"MPCapableSYNRX": 10 * n, "MPCapableACKRX": 10 * n, "MPJoinSynRx": 20 * n},
		ReadTime: timestamppb.Now(),
	}
	return stream.Send(&pb.ConnectRequest{Kind: &pb.ConnectRequest_Report{Report: r}})
}
