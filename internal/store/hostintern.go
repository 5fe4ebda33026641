package store

// A host status this store wrote is held once: the cache takes the status
// the writer gave (which the writer's caller keeps too) when the watch
// brings the same bytes back, rather than decoding a copy of its own. At
// fleet size a host's status is a good part of what a connected agent costs
// the controller (docs/scaling.md). Statuses are never changed once made,
// by the writer's caller or the cache, so sharing one is safe.

import (
	"sync"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// hostIntern is the statuses written and not yet seen back, by host id:
// the newest write of each.
type hostIntern struct {
	mu sync.Mutex
	m  map[string]written
}

type written struct {
	value  string // as put
	status *pb.Host
}

// put records that status, encoded as value, was written for host id.
func (t *hostIntern) put(id, value string, status *pb.Host) {
	t.mu.Lock()
	if t.m == nil {
		t.m = map[string]written{}
	}
	t.m[id] = written{value, status}
	t.mu.Unlock()
}

// take returns the status written for host id if value is what was put,
// and forgets it; nil otherwise (an older write, or another replica's).
// Any record with those bytes may take it: statuses are never changed, so
// the object is that record, whoever wrote it.
func (t *hostIntern) take(id string, value []byte) *pb.Host {
	t.mu.Lock()
	defer t.mu.Unlock()
	w, ok := t.m[id]
	if !ok || w.value != string(value) {
		return nil
	}
	delete(t.m, id)
	return w.status
}

// drop forgets the status recorded for host id if it is value's: it was
// not written (a status recorded but never seen back is harmless — any
// record of those bytes is that status — but it holds memory).
func (t *hostIntern) drop(id, value string) {
	t.mu.Lock()
	if w, ok := t.m[id]; ok && w.value == value {
		delete(t.m, id)
	}
	t.mu.Unlock()
}

// forget drops what was recorded for host id (its key was deleted).
func (t *hostIntern) forget(id string) {
	t.mu.Lock()
	delete(t.m, id)
	t.mu.Unlock()
}

// cachedHost is the cache's host status of kv: the one this store wrote if
// kv holds it, else decoded.
func (s *Store) cachedHost(id string, kv *mvccpb.KeyValue) (*pb.Host, error) {
	if h := s.written.take(id, kv.Value); h != nil {
		return h, nil
	}
	return decodeHost(kv)
}
