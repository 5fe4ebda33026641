package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Guard bounds the etcd requests of a client and classes their errors, so
// that a call never waits on an etcd that does not answer until its own
// deadline (or forever: the etcd client waits for a connection as long as
// the context allows):
//
//   - every KV request gets at most the guard's timeout, taken from the
//     caller's context (a shorter deadline of the caller stays); a request
//     the timeout cut off fails with ErrUnavailable;
//   - while the store is known to be down (SetDown, from a health monitor),
//     every KV request fails at once with ErrUnavailable;
//   - etcd's errors are classed: its NOSPACE error as ErrNoSpace; no
//     leader, timeouts, a lost connection and no endpoint as
//     ErrUnavailable.
//
// Install it on the client the Store uses, as etcd's namespace package is:
// cli.KV = g.KV(cli.KV). Watches, leases and maintenance calls are not
// affected.
type Guard struct {
	timeout time.Duration
	observe Observer // set before the guard's KV is used; nil: none

	mu   sync.RWMutex
	down error
}

// NewGuard returns a guard that gives every KV request at most timeout
// (0: no limit but the caller's).
func NewGuard(timeout time.Duration) *Guard { return &Guard{timeout: timeout} }

// Observer is told of every request of a guarded KV once it ended: its
// operation (get, put, delete, txn, compact or do), its caller's context,
// how long it took and how it ended (a request the guard failed at once
// included).
type Observer func(ctx context.Context, op string, took time.Duration, err error)

// Observe makes f the guard's observer. Call it before the guard's KV is
// used.
func (g *Guard) Observe(f Observer) { g.observe = f }

// Timeout returns the limit of one request.
func (g *Guard) Timeout() time.Duration { return g.timeout }

// SetDown marks the store down, err saying why, or, with nil, up again.
// While it is down every KV request fails at once with an ErrUnavailable
// that wraps err.
func (g *Guard) SetDown(err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err == nil {
		g.down = nil
		return
	}
	g.down = &classError{class: ErrUnavailable, err: err}
}

// KV returns kv guarded.
func (g *Guard) KV(kv clientv3.KV) clientv3.KV { return &guardKV{kv: kv, g: g} }

// begin starts a request: it fails at once while the store is down, else
// returns the request's context (bounded unless unbounded) and the function
// that ends it, classing its error.
func (g *Guard) begin(ctx context.Context, bounded bool) (context.Context, func(error) error, error) {
	g.mu.RLock()
	down := g.down
	g.mu.RUnlock()
	if down != nil {
		return nil, nil, down
	}
	if !bounded || g.timeout <= 0 {
		return ctx, Classify, nil
	}
	rctx, cancel := context.WithTimeout(ctx, g.timeout)
	return rctx, func(err error) error {
		// The guard's limit cut the request off, not the caller's deadline.
		cut := err != nil && rctx.Err() != nil && ctx.Err() == nil
		cancel()
		if cut {
			return &classError{class: ErrUnavailable, err: fmt.Errorf("no answer from etcd within %s: %w", g.timeout, err)}
		}
		return Classify(err)
	}, nil
}

// classError puts err in an error class without changing its message (the
// API edge names the class).
type classError struct {
	class error
	err   error
}

func (e *classError) Error() string   { return e.err.Error() }
func (e *classError) Unwrap() []error { return []error{e.class, e.err} }

// Classify classes an error of the etcd client: ErrNoSpace for etcd's
// NOSPACE error, ErrUnavailable for no leader, a timeout in etcd, a lost
// connection or no endpoint. Other errors are returned as they are.
func Classify(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNoSpace) || errors.Is(err, ErrUnavailable):
		return err
	case errors.Is(err, rpctypes.ErrNoSpace) || errors.Is(err, rpctypes.ErrGRPCNoSpace):
		return &classError{class: ErrNoSpace, err: err}
	case unavailable(err):
		return &classError{class: ErrUnavailable, err: err}
	}
	return err
}

func unavailable(err error) bool {
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return ee.Code() == codes.Unavailable
	}
	if errors.Is(err, clientv3.ErrNoAvailableEndpoints) {
		return true
	}
	if s, ok := status.FromError(err); ok {
		return s.Code() == codes.Unavailable
	}
	return false
}

type guardKV struct {
	kv clientv3.KV
	g  *Guard
}

// guarded runs one request of a guardKV through its guard.
func guarded[R any](ctx context.Context, g *Guard, op string, bounded bool, call func(context.Context) (R, error)) (resp R, err error) {
	if g.observe != nil {
		defer func(start time.Time) { g.observe(ctx, op, time.Since(start), err) }(time.Now())
	}
	rctx, end, err := g.begin(ctx, bounded)
	if err != nil {
		return resp, err
	}
	resp, err = call(rctx)
	return resp, end(err)
}

func (k *guardKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	return guarded(ctx, k.g, "put", true, func(ctx context.Context) (*clientv3.PutResponse, error) { return k.kv.Put(ctx, key, val, opts...) })
}

func (k *guardKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	return guarded(ctx, k.g, "get", true, func(ctx context.Context) (*clientv3.GetResponse, error) { return k.kv.Get(ctx, key, opts...) })
}

func (k *guardKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	return guarded(ctx, k.g, "delete", true, func(ctx context.Context) (*clientv3.DeleteResponse, error) { return k.kv.Delete(ctx, key, opts...) })
}

// Compact is not bounded: a physical compaction of a large history takes
// its time, and only maintenance calls it.
func (k *guardKV) Compact(ctx context.Context, rev int64, opts ...clientv3.CompactOption) (*clientv3.CompactResponse, error) {
	return guarded(ctx, k.g, "compact", false, func(ctx context.Context) (*clientv3.CompactResponse, error) { return k.kv.Compact(ctx, rev, opts...) })
}

func (k *guardKV) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	return guarded(ctx, k.g, "do", true, func(ctx context.Context) (clientv3.OpResponse, error) { return k.kv.Do(ctx, op) })
}

// Txn collects the transaction and sends it, bounded, on Commit.
func (k *guardKV) Txn(ctx context.Context) clientv3.Txn { return &guardTxn{k: k, ctx: ctx} }

type guardTxn struct {
	k         *guardKV
	ctx       context.Context
	cmps      []clientv3.Cmp
	then, els []clientv3.Op
}

func (t *guardTxn) If(cs ...clientv3.Cmp) clientv3.Txn {
	t.cmps = append(t.cmps, cs...)
	return t
}

func (t *guardTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.then = append(t.then, ops...)
	return t
}

func (t *guardTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.els = append(t.els, ops...)
	return t
}

func (t *guardTxn) Commit() (*clientv3.TxnResponse, error) {
	return guarded(t.ctx, t.k.g, "txn", true, func(ctx context.Context) (*clientv3.TxnResponse, error) {
		return t.k.kv.Txn(ctx).If(t.cmps...).Then(t.then...).Else(t.els...).Commit()
	})
}
