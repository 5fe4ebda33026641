package controller

// The etcd requests of the controller's store, timed and counted by
// operation: mpfleet_controller_etcd_request_duration_seconds{op} and
// mpfleet_controller_etcd_request_errors_total{op}.

import (
	"context"
	"errors"
	"time"

	"github.com/mpfleet/mpfleet/internal/store"
	"github.com/prometheus/client_golang/prometheus"
)

// etcdOps are the values of the op label: the KV requests.
var etcdOps = []string{"get", "put", "delete", "txn", "compact", "do"}

// etcdMetrics are the metrics of the etcd requests.
type etcdMetrics struct {
	dur  *prometheus.HistogramVec
	errs *prometheus.CounterVec
}

// ObserveEtcd times and counts every request of the store's guard in reg:
// mpfleet_controller_etcd_request_duration_seconds{op} and
// mpfleet_controller_etcd_request_errors_total{op}, op one of get, put,
// delete, txn, compact and do. Requests the guard fails at once count as
// errors too; requests their caller cancelled are timed but not counted as
// errors.
func ObserveEtcd(g *store.Guard, reg prometheus.Registerer) {
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
	g.Observe(m.observe)
}

// observe records one request of op that took took and ended with err;
// ctx is its caller's.
func (m *etcdMetrics) observe(ctx context.Context, op string, took time.Duration, err error) {
	m.dur.WithLabelValues(op).Observe(took.Seconds())
	cancelled := errors.Is(err, context.Canceled) && ctx.Err() != nil
	if err != nil && !cancelled {
		m.errs.WithLabelValues(op).Inc()
	}
}
