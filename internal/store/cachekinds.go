package store

import (
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// cacheState is what the cache holds: the records of each kind it keeps, by
// id.
type cacheState struct {
	groups  map[string]*pb.Group
	hosts   map[string]*pb.Host
	sess    map[string]string // host id → replica holding its stream
	rolls   map[string]*pb.Rollout
	targets map[string]*pb.HostTargets
	labels  map[string]map[string]string // operator labels by host id
}

func newCacheState() cacheState {
	return cacheState{
		groups:  map[string]*pb.Group{},
		hosts:   map[string]*pb.Host{},
		sess:    map[string]string{},
		rolls:   map[string]*pb.Rollout{},
		targets: map[string]*pb.HostTargets{},
		labels:  map[string]map[string]string{},
	}
}

// cacheKind is one kind of record the cache keeps: under which key prefix,
// and how a change of one updates the cache and which Event says so.
type cacheKind struct {
	what   string // in logs: "skipping corrupt <what>"
	prefix func(*Store) string
	// apply stores the record kv holds under id in st (del: removes it) and
	// returns the Event of the change. A record that does not decode
	// changes nothing.
	apply func(s *Store, st *cacheState, id string, kv *mvccpb.KeyValue, del bool) (Event, error)
}

// cacheKinds are the kinds of record the cache keeps, each with its decoder,
// its map, and the fields of Event that carry its changes.
var cacheKinds = []cacheKind{
	kind("group", (*Store).groupsPrefix, plain(decodeGroup), func(st *cacheState) map[string]*pb.Group { return st.groups }, func(ev *Event, id string, g *pb.Group) { ev.GroupID, ev.Group = id, g }),
	kind("host", (*Store).hostsPrefix, (*Store).cachedHost, func(st *cacheState) map[string]*pb.Host { return st.hosts }, func(ev *Event, id string, h *pb.Host) { ev.HostID, ev.Host = id, h }),
	kind("session", (*Store).sessionsPrefix, plain(decodeSession), func(st *cacheState) map[string]string { return st.sess }, func(ev *Event, id, replica string) { ev.SessionID, ev.Replica = id, replica }),
	kind("rollout", (*Store).rolloutsPrefix, plain(decodeRollout), func(st *cacheState) map[string]*pb.Rollout { return st.rolls }, func(ev *Event, id string, r *pb.Rollout) { ev.RolloutID, ev.Rollout = id, r }),
	kind("targets", (*Store).targetsPrefix, plain(decodeTargets), func(st *cacheState) map[string]*pb.HostTargets { return st.targets }, func(ev *Event, id string, t *pb.HostTargets) { ev.TargetsGroup, ev.Targets = id, t }),
	kind("host labels", (*Store).hostLabelsPrefix, plain(decodeLabels), func(st *cacheState) map[string]map[string]string { return st.labels }, func(ev *Event, id string, l map[string]string) { ev.LabelsHost, ev.Labels = id, l }),
}

// plain is a decoder that needs neither the store nor the record's id.
func plain[V any](decode func(*mvccpb.KeyValue) (V, error)) func(*Store, string, *mvccpb.KeyValue) (V, error) {
	return func(_ *Store, _ string, kv *mvccpb.KeyValue) (V, error) { return decode(kv) }
}

// kind makes the cacheKind of records of type V: decode reads one, records
// is the map of them in a cacheState, and event sets the fields of an Event
// about one (v is the zero V when it was deleted).
func kind[V any](what string, prefix func(*Store) string, decode func(s *Store, id string, kv *mvccpb.KeyValue) (V, error),
	records func(*cacheState) map[string]V, event func(ev *Event, id string, v V)) cacheKind {
	apply := func(s *Store, st *cacheState, id string, kv *mvccpb.KeyValue, del bool) (Event, error) {
		var v V
		if del {
			delete(records(st), id)
		} else {
			var err error
			if v, err = decode(s, id, kv); err != nil {
				return Event{}, err
			}
			records(st)[id] = v
		}
		ev := Event{Rev: kv.ModRevision}
		event(&ev, id, v)
		return ev, nil
	}
	return cacheKind{what: what, prefix: prefix, apply: apply}
}
