package controller

// The request log: one debug record per call when it ends, with the
// request id the call's audit events carry, so that one leads to the other.

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// logUnary logs each unary call when it ends (see logCall). It runs after
// the authenticator, which assigns the request id.
func logUnary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if !log.Enabled(ctx, slog.LevelDebug) {
			return h(ctx, req)
		}
		start := time.Now()
		resp, err := h(ctx, req)
		logCall(ctx, log, info.FullMethod, start, err)
		return resp, err
	}
}

// logStream logs each stream when it ends (see logCall).
func logStream(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		ctx := ss.Context()
		if !log.Enabled(ctx, slog.LevelDebug) {
			return h(srv, ss)
		}
		start := time.Now()
		err := h(srv, ss)
		logCall(ctx, log, info.FullMethod, start, err)
		return err
	}
}

// logCall writes a call's record at debug: "request" with method,
// request_id (the x-request-id the caller sent or the controller made up,
// as in the call's audit events), actor, peer, code, duration and, if it
// failed, err.
func logCall(ctx context.Context, log *slog.Logger, method string, start time.Time, err error) {
	c := callerFrom(ctx)
	st := status.Convert(err)
	attrs := []slog.Attr{
		slog.String("method", method),
		slog.String("request_id", c.RequestID),
		slog.String("actor", c.Actor),
		slog.String("peer", c.Peer),
		slog.String("code", st.Code().String()),
		slog.Duration("duration", time.Since(start)),
	}
	if err != nil {
		attrs = append(attrs, slog.String("err", st.Message()))
	}
	log.LogAttrs(ctx, slog.LevelDebug, "request", attrs...)
}
