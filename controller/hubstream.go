package controller

// One agent's stream: the sender of its desired configuration and the
// receiver of what it reports.

import (
	"context"
	"errors"
	"io"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// served is what the receiver of a stream gets once the stream is served.
type served struct {
	ctx context.Context
	s   *session
}

// Why a stream's sender returned.
const (
	endReceiver = iota // the receiver ended (with the error returned)
	endSend            // a send failed (the error returned)
	endContext         // the stream's context ended
	endDrain           // the drain tells the agent to move
)

// sender sends the latest desired configuration whenever it changes, and
// confirm echoes, until the receiver ends (recvErr), a send fails, ctx
// ends or the drain tells the agent to move. It returns why, and the
// receiver's or the send's error.
func (h *hub) sender(ctx context.Context, stream pb.AgentService_ConnectServer, s *session, recvErr <-chan error) (int, error) {
	sent := ""
	for {
		s.mu.Lock()
		key, d := s.desiredKey, s.desired
		s.mu.Unlock()
		if key != sent {
			pm, err := h.prepare(stream, key, d)
			if err != nil {
				return endSend, err
			}
			if err := stream.SendMsg(pm); err != nil {
				return endSend, err
			}
			sent = key
		}
		select {
		case <-ctx.Done():
			return endContext, nil
		case err := <-recvErr:
			return endReceiver, err
		case <-s.drainC:
			return endDrain, nil
		case <-s.notify:
		case <-s.acks.ready:
			if err := sendAcks(stream, s.acks); err != nil { // hubaudit.go
				return endSend, err
			}
		case n := <-s.confirms:
			if err := stream.Send(&pb.ConnectResponse{Kind: &pb.ConnectResponse_Confirmed{Confirmed: &pb.Confirm{Nonce: n}}}); err != nil {
				return endSend, err
			}
		}
	}
}

var eventActions = map[pb.AgentEvent_Kind]struct {
	action string
	result pb.AuditResult
}{
	pb.AgentEvent_KIND_APPLIED:        {"agent.applied", pb.AuditResult_AUDIT_RESULT_SUCCESS},
	pb.AgentEvent_KIND_DRIFT_REPAIRED: {"agent.drift_repaired", pb.AuditResult_AUDIT_RESULT_SUCCESS},
	pb.AgentEvent_KIND_APPLY_FAILED:   {"agent.apply_failed", pb.AuditResult_AUDIT_RESULT_FAILURE},
	pb.AgentEvent_KIND_ROLLED_BACK:    {"agent.rolled_back", pb.AuditResult_AUDIT_RESULT_FAILURE},
	pb.AgentEvent_KIND_RESTORED:       {"agent.restored", pb.AuditResult_AUDIT_RESULT_SUCCESS},
}

func (h *hub) receiver(ctx context.Context, stream pb.AgentService_ConnectServer, s *session, caller Caller) error {
	// An agent reports a few events per reconcile; more than this is a bug or
	// an attack, and must not flood the audit log. The limit is the host's,
	// not the stream's: reconnecting does not reset it.
	events := h.limitsOf(s.id).events
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil // the agent closed its side: a normal end
		}
		if err != nil {
			return err
		}
		switch k := m.GetKind().(type) {
		case *pb.ConnectRequest_Report:
			if err := h.report(ctx, s, k.Report); err != nil {
				return err
			}
		case *pb.ConnectRequest_Event:
			if err := h.takeEvent(ctx, s, caller, k.Event, events); err != nil { // hubaudit.go
				return err
			}
		case *pb.ConnectRequest_Confirm:
			select {
			case s.confirms <- k.Confirm.GetNonce():
			default: // the agent is flooding confirms; it will retry
			}
		case *pb.ConnectRequest_Hello:
			return status.Error(codes.InvalidArgument, "hello may only be the first message")
		default:
			h.log.Warn("agent sent an empty or unknown message; ignored", "host", s.id)
		}
	}
}
