package store

// Records: how the store reads the protobuf records under its keys, one at a
// time, a page at a time, or into the cache.

import (
	"context"
	"fmt"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
)

// decodeKV decodes the record kv holds into m.
func decodeKV[T proto.Message](kv *mvccpb.KeyValue, m T) (T, error) {
	return decode(string(kv.Key), kv.Value, m)
}

// decodeGroup decodes a stored group; its etag is its key's mod revision.
func decodeGroup(kv *mvccpb.KeyValue) (*pb.Group, error) {
	g, err := decodeKV(kv, &pb.Group{})
	g.Etag = Etag(kv.ModRevision)
	return g, err
}

// decodeRollout decodes a stored rollout; its etag is its key's mod revision.
func decodeRollout(kv *mvccpb.KeyValue) (*pb.Rollout, error) {
	r, err := decodeKV(kv, &pb.Rollout{})
	r.Etag = Etag(kv.ModRevision)
	return r, err
}

func decodeHost(kv *mvccpb.KeyValue) (*pb.Host, error) { return decodeKV(kv, &pb.Host{}) }

func decodeTargets(kv *mvccpb.KeyValue) (*pb.HostTargets, error) {
	return decodeKV(kv, &pb.HostTargets{})
}

func decodeRevision(kv *mvccpb.KeyValue) (*pb.PolicyRevision, error) {
	return decodeKV(kv, &pb.PolicyRevision{})
}

func decodeAudit(kv *mvccpb.KeyValue) (*pb.AuditEvent, error) {
	return decodeKV(kv, &pb.AuditEvent{})
}

// decodeLabels decodes the labels an operator gave a host (stored as a Host).
func decodeLabels(kv *mvccpb.KeyValue) (map[string]string, error) {
	h, err := decodeKV(kv, &pb.Host{})
	return h.GetLabels(), err
}

// decodeSession decodes a session: the replica holding the host's stream.
func decodeSession(kv *mvccpb.KeyValue) (string, error) { return string(kv.Value), nil }

// getRecord reads the record at key with its mod revision; what names it in
// errors, and a key that does not exist is ErrNotFound.
func getRecord[T any](ctx context.Context, s *Store, key, what string, decode func(*mvccpb.KeyValue) (T, error)) (T, int64, error) {
	var zero T
	resp, err := s.c.Get(ctx, key)
	if err != nil {
		return zero, 0, fmt.Errorf("get %s: %w", what, err)
	}
	if len(resp.Kvs) == 0 {
		return zero, 0, fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	v, err := decode(resp.Kvs[0])
	if err != nil {
		return zero, 0, err
	}
	return v, resp.Kvs[0].ModRevision, nil
}

// decodePage decodes the records of a range read with a limit of one more
// than limit: up to limit of them, and whether more follow.
func decodePage[T any](kvs []*mvccpb.KeyValue, limit int, decode func(*mvccpb.KeyValue) (T, error)) ([]T, bool, error) {
	var out []T
	for i, kv := range kvs {
		if i == limit {
			return out, true, nil
		}
		v, err := decode(kv)
		if err != nil {
			return nil, false, err
		}
		out = append(out, v)
	}
	return out, false, nil
}

// failIfCounted is the check of a failed transaction whose else branch
// counts a key: err when the key exists, else nil (the write may retry).
func failIfCounted(err error) func(*clientv3.TxnResponse) error {
	return func(resp *clientv3.TxnResponse) error {
		if resp.Responses[0].GetResponseRange().Count > 0 {
			return err
		}
		return nil
	}
}
