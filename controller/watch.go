package controller

import (
	"context"
	"errors"

	"github.com/mpfleet/mpfleet/internal/store"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The watch calls (WatchHosts, WatchRollout, WatchAuditEvents) follow a
// cache subscription, and subscribe again when it falls behind.

// subEnded is why a cache subscription ended, as the status a watch call
// returns: the cache stopping is UNAVAILABLE.
func subEnded(sub *store.Subscription) error {
	if errors.Is(sub.Err(), store.ErrClosed) {
		return status.Error(codes.Unavailable, "controller shutting down")
	}
	return sub.Err()
}

// errFollowed ends follow without an error: the watch has sent all there is.
var errFollowed = errors.New("followed to the end")

// follow calls on with each event of sub until ctx ends (nil), the
// subscription ends (subEnded), or on returns an error (errFollowed: nil).
func follow(ctx context.Context, sub *store.Subscription, on func(store.Event) error) error {
	for {
		select {
		case <-ctx.Done():
			// The call's deadline or cancellation, as such: ending with OK
			// would race the client's own deadline (grpcurl -max-time).
			return status.FromContextError(ctx.Err()).Err()
		case <-sub.Done():
			return subEnded(sub)
		case ev := <-sub.C():
			if err := on(ev); errors.Is(err, errFollowed) {
				return nil
			} else if err != nil {
				return err
			}
		}
	}
}

// setOrDelete sets m[k] to v, or with del deletes it.
func setOrDelete[V any](m map[string]V, k string, v V, del bool) {
	if del {
		delete(m, k)
	} else {
		m[k] = v
	}
}

// resubscribe reports whether a watch call whose subscription ended with
// err should subscribe again: it fell behind, or the cache re-listed.
func resubscribe(err error) bool {
	return errors.Is(err, store.ErrLagged) || errors.Is(err, store.ErrResync)
}
