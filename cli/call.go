package cli

import (
	"context"
	"fmt"

	"google.golang.org/grpc"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// service returns a client of one of the controller's services, on the
// connection client opens.
func service[C any](a *app, newClient func(grpc.ClientConnInterface) C) (C, error) {
	conn, err := a.client()
	if err != nil {
		var zero C
		return zero, err
	}
	return newClient(conn), nil
}

// groups, hosts, rollouts and audit return the clients of the
// controller's services.
func (a *app) groups() (mpfleetv1.GroupServiceClient, error) {
	return service(a, mpfleetv1.NewGroupServiceClient)
}

func (a *app) hosts() (mpfleetv1.HostServiceClient, error) {
	return service(a, mpfleetv1.NewHostServiceClient)
}

func (a *app) rollouts() (mpfleetv1.RolloutServiceClient, error) {
	return service(a, mpfleetv1.NewRolloutServiceClient)
}

func (a *app) audit() (mpfleetv1.AuditServiceClient, error) {
	return service(a, mpfleetv1.NewAuditServiceClient)
}

// unaryMethod is a unary method of a gRPC client, e.g. hc.GetHost.
type unaryMethod[Q, R any] func(context.Context, Q, ...grpc.CallOption) (R, error)

// unary makes one call to the controller, bounded by --timeout. A failed
// call is returned as "what: why", why rendered by rpcErr.
func unary[Q, R any](ctx context.Context, a *app, what string, method unaryMethod[Q, R], req Q) (R, error) {
	cctx, cancel := a.callCtx(ctx)
	defer cancel()
	resp, err := method(cctx, req)
	if err != nil {
		return resp, fmt.Errorf("%s: %w", what, a.rpcErr(err))
	}
	return resp, nil
}

// callService connects to one of the controller's services and makes one
// call on it, as unary does: the "connect, call, map the error" of a
// command that calls once. method is a method expression of the service's
// client, e.g. mpfleetv1.HostServiceClient.DeleteHost. Failing to connect
// is returned as it is, without what.
func callService[C, Q, R any](ctx context.Context, a *app, what string, newClient func(grpc.ClientConnInterface) C,
	method func(C, context.Context, Q, ...grpc.CallOption) (R, error), req Q) (R, error) {
	c, err := service(a, newClient)
	if err != nil {
		var zero R
		return zero, err
	}
	return unary(ctx, a, what, func(ctx context.Context, q Q, opts ...grpc.CallOption) (R, error) {
		return method(c, ctx, q, opts...)
	}, req)
}
