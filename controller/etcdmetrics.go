package controller

// The etcd requests of the controller's store, timed and counted by
// operation: mpfleet_controller_etcd_request_duration_seconds{op} and
// mpfleet_controller_etcd_request_errors_total{op}.

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcdOps are the values of the op label: the KV requests.
var etcdOps = []string{"get", "put", "delete", "txn", "compact", "do"}

// etcdMetrics are the metrics of the etcd requests.
type etcdMetrics struct {
	dur  *prometheus.HistogramVec
	errs *prometheus.CounterVec
}

// InstrumentKV returns kv with its requests timed and counted in reg:
// mpfleet_controller_etcd_request_duration_seconds{op} and
// mpfleet_controller_etcd_request_errors_total{op}, op one of get, put,
// delete, txn, compact and do. Install it on the client the Store uses, as
// the store's guard is: cli.KV = InstrumentKV(guard.KV(cli.KV), reg), so
// that requests the guard fails at once count as errors too. Requests their
// caller cancelled are timed but not counted as errors.
func InstrumentKV(kv clientv3.KV, reg prometheus.Registerer) clientv3.KV {
	m := &etcdMetrics{
		dur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mpfleet_controller_etcd_request_duration_seconds",
			Help:    "Time the etcd requests of the controller's store took, by operation (a transaction's commit: txn), errors included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 15), // 0.5 ms .. 8 s
		}, []string{"op"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mpfleet_controller_etcd_request_errors_total",
			Help: "etcd requests of the controller's store that failed, by operation (etcd unreachable, out of space, timed out, ...); not those their caller cancelled.",
		}, []string{"op"}),
	}
	for _, op := range etcdOps {
		m.dur.WithLabelValues(op)
		m.errs.WithLabelValues(op)
	}
	reg.MustRegister(m.dur, m.errs)
	return &metricsKV{kv: kv, m: m}
}

// observe records one request of op that started at start and ended with
// err; ctx is its caller's.
func (m *etcdMetrics) observe(ctx context.Context, op string, start time.Time, err error) {
	m.dur.WithLabelValues(op).Observe(time.Since(start).Seconds())
	cancelled := errors.Is(err, context.Canceled) && ctx.Err() != nil
	if err != nil && !cancelled {
		m.errs.WithLabelValues(op).Inc()
	}
}

// measured runs one request of a metricsKV.
func measured[R any](ctx context.Context, m *etcdMetrics, op string, call func() (R, error)) (R, error) {
	start := time.Now()
	resp, err := call()
	m.observe(ctx, op, start, err)
	return resp, err
}

type metricsKV struct {
	kv clientv3.KV
	m  *etcdMetrics
}

func (k *metricsKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	return measured(ctx, k.m, "put", func() (*clientv3.PutResponse, error) { return k.kv.Put(ctx, key, val, opts...) })
}

func (k *metricsKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	return measured(ctx, k.m, "get", func() (*clientv3.GetResponse, error) { return k.kv.Get(ctx, key, opts...) })
}

func (k *metricsKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	return measured(ctx, k.m, "delete", func() (*clientv3.DeleteResponse, error) { return k.kv.Delete(ctx, key, opts...) })
}

func (k *metricsKV) Compact(ctx context.Context, rev int64, opts ...clientv3.CompactOption) (*clientv3.CompactResponse, error) {
	return measured(ctx, k.m, "compact", func() (*clientv3.CompactResponse, error) { return k.kv.Compact(ctx, rev, opts...) })
}

func (k *metricsKV) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	return measured(ctx, k.m, "do", func() (clientv3.OpResponse, error) { return k.kv.Do(ctx, op) })
}

// Txn times the transaction's commit.
func (k *metricsKV) Txn(ctx context.Context) clientv3.Txn {
	return &metricsTxn{Txn: k.kv.Txn(ctx), ctx: ctx, m: k.m}
}

type metricsTxn struct {
	clientv3.Txn
	ctx context.Context
	m   *etcdMetrics
}

func (t *metricsTxn) If(cs ...clientv3.Cmp) clientv3.Txn {
	t.Txn = t.Txn.If(cs...)
	return t
}

func (t *metricsTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Then(ops...)
	return t
}

func (t *metricsTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Else(ops...)
	return t
}

func (t *metricsTxn) Commit() (*clientv3.TxnResponse, error) {
	return measured(t.ctx, t.m, "txn", t.Txn.Commit)
}
