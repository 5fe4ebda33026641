package cli

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// errStreamEnded is the error of a watch the controller ended: a watch
// runs until interrupted, so a script sees the end and can start again.
func errStreamEnded(what string) error {
	return fmt.Errorf("%s: the controller ended the stream", what)
}

// isCanceled reports whether err comes from the user interrupting the
// command.
func isCanceled(ctx context.Context, err error) bool {
	if ctx.Err() == nil {
		return false
	}
	return errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled
}

// watchStream opens a watch with watch (e.g. hc.WatchHosts) and hands each
// message it receives to each, until the user interrupts it (not an error)
// or the stream ends (an error: errStreamEnded). what names the watch in
// errors: "watch hosts".
func watchStream[Q, T any](ctx context.Context, a *app, what string,
	watch func(context.Context, Q, ...grpc.CallOption) (grpc.ServerStreamingClient[T], error), req Q, each func(*T) error) error {
	stream, err := watch(ctx, req)
	if err != nil {
		return fmt.Errorf("%s: %w", what, a.rpcErr(err))
	}
	for {
		m, err := stream.Recv()
		switch {
		case err != nil && isCanceled(ctx, err):
			return nil
		case errors.Is(err, io.EOF):
			return errStreamEnded(what)
		case err != nil:
			return fmt.Errorf("%s: %w", what, a.rpcErr(err))
		}
		if err := each(m); err != nil {
			return err
		}
	}
}
