package loadgen

// The do-it-yourself baseline: one simulated agent holding its own etcd
// client and watch on the key of its desired configuration.

import (
	"context"
	"time"

	"github.com/mpfleet/mpfleet/internal/wait"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// watchAgent runs agent i of the baseline until ctx ends: its own etcd
// client, a read of the key, then a watch from the revision read; every
// new value is a receipt, and with EtcdStatusPrefix a status write.
func (f *Fleet) watchAgent(ctx context.Context, i int) {
	release, ok := f.firstAttempt(ctx)
	if !ok {
		return
	}
	defer release()
	id := f.cfg.HostID(i)
	attempt := 0
	for ctx.Err() == nil {
		served, err := f.watchSession(ctx, i, id, release)
		if ctx.Err() != nil {
			return
		}
		f.rec.failed()
		f.cfg.Log.Debug("watch ended", "host", id, "err", err)
		release()
		if served {
			attempt = 0
		}
		pause := f.backoff(attempt)
		attempt++
		if !wait.Sleep(ctx, pause) {
			return
		}
	}
}

func (f *Fleet) watchSession(ctx context.Context, i int, id string, release func()) (bool, error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: f.cfg.EtcdEndpoints, DialTimeout: f.cfg.ConnectTimeout,
		DialKeepAliveTime: keepaliveParams.Time, DialKeepAliveTimeout: keepaliveParams.Timeout,
		Logger: zap.NewNop(),
	})
	if err != nil {
		return false, err
	}
	defer func() { _ = cli.Close() }()
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	start := time.Now()
	f.rec.sessionBegun()
	resp, err := cli.Get(wctx, f.cfg.EtcdKey)
	if err != nil {
		return false, err
	}
	if len(resp.Kvs) > 0 {
		if err := f.take(wctx, cli, i, id, resp.Kvs[0].Value, time.Now()); err != nil {
			return false, err
		}
	}
	served := false
	defer func() {
		if served {
			f.rec.serving(i, time.Time{})
		}
	}()
	wch := cli.Watch(wctx, f.cfg.EtcdKey, clientv3.WithRev(resp.Header.Revision+1), clientv3.WithCreatedNotify())
	for wr := range wch {
		at := time.Now()
		if err := wr.Err(); err != nil {
			return served, err
		}
		if wr.Created && !served {
			served = true
			release()
			f.rec.serving(i, start)
		}
		for _, ev := range wr.Events {
			if ev.Type != clientv3.EventTypePut {
				continue
			}
			if err := f.take(wctx, cli, i, id, ev.Kv.Value, at); err != nil {
				return served, err
			}
		}
	}
	return served, ctx.Err()
}

// take records a desired configuration received at at and, with
// EtcdStatusPrefix, writes the agent's status. A value that is no
// DesiredConfig is ignored.
func (f *Fleet) take(ctx context.Context, cli *clientv3.Client, i int, id string, v []byte, at time.Time) error {
	d := &pb.DesiredConfig{}
	if err := proto.Unmarshal(v, d); err != nil || d.GetRevision() == 0 {
		f.cfg.Log.Debug("not a desired configuration; ignored", "host", id, "err", err)
		return nil
	}
	f.rec.received(i, id, d.GetGroup(), d.GetRevision(), at)
	if f.cfg.EtcdStatusPrefix == "" {
		return nil
	}
	st := &pb.Host{
		Name: "hosts/" + id, Labels: f.cfg.Labels, Group: d.GetGroup(),
		DesiredRevision: d.GetRevision(), AppliedRevision: d.GetRevision(), SyncState: pb.SyncState_SYNC_STATE_IN_SYNC,
		AgentVersion: Version, LastSeenTime: timestamppb.Now(), Facts: f.facts(i),
	}
	b, err := proto.Marshal(st)
	if err != nil {
		return err
	}
	_, err = cli.Put(ctx, f.cfg.EtcdStatusPrefix+id, string(b))
	return err
}
