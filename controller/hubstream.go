package controller

// One agent's stream: the receiver of what it reports. (What goes to the
// agent is sent by the shared senders: hubsend.go.)

import (
	"context"
	"errors"
	"io"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

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
			if s.queueConfirm(k.Confirm.GetNonce()) { // else the agent is flooding confirms; it will retry
				h.sends.kick(s)
			}
		case *pb.ConnectRequest_Hello:
			return status.Error(codes.InvalidArgument, "hello may only be the first message")
		default:
			h.log.Warn("agent sent an empty or unknown message; ignored", "host", s.id)
		}
	}
}
