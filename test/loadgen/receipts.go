package loadgen

import (
	"context"
	"slices"
	"sync"
	"time"
)

// Receipt is one agent's first receipt of one revision of a group.
type Receipt struct {
	Host     string
	Group    string
	Revision int64
	Time     time.Time
}

// RevisionStatus is how many agents hold one revision of a group, and when
// the first and the last of them received it.
type RevisionStatus struct {
	Group    string `json:"group"`
	Revision int64  `json:"revision"`
	// Agents is how many agents received it.
	Agents int `json:"agents"`
	// First and Last are the first and last receipt, Unix nanoseconds.
	First int64 `json:"first_unix_nano"`
	Last  int64 `json:"last_unix_nano"`
}

// Status is a summary of a fleet.
type Status struct {
	// Mode is "controller" (agents on AgentService.Connect) or "etcd" (the
	// baseline: agents watching etcd).
	Mode string `json:"mode"`
	// Agents is the size of the fleet.
	Agents int `json:"agents"`
	// Connected is how many agents are served now: their stream brought a
	// desired configuration (controller), or their watch was created
	// (etcd).
	Connected int `json:"connected"`
	// OldestSession is when the oldest of the connected agents' sessions
	// began, Unix nanoseconds (0: none connected).
	OldestSession int64 `json:"oldest_session_unix_nano"`
	// Sessions counts the sessions begun since start, Failures the
	// connection attempts and sessions that failed.
	Sessions int64 `json:"sessions"`
	Failures int64 `json:"failures"`
	// Revisions are the revisions received, in order of first receipt.
	Revisions []RevisionStatus `json:"revisions"`
}

type revKey struct {
	group string
	rev   int64
}

type revRecord struct {
	RevisionStatus
	times []int64 // receipts, Unix nanoseconds, in arrival order
}

// recorder keeps what every agent received and whether it is served. An
// agent's receipt of a revision it already holds (sent again after a
// reconnect) is not a new receipt.
type recorder struct {
	mode     string
	onRecv   func(Receipt)
	mu       sync.Mutex
	held     []revKey    // by agent index
	since    []time.Time // by agent index: start of the session that serves it, zero if not served
	served   int
	order    []revKey
	revs     map[revKey]*revRecord
	sessions int64
	failures int64
	wake     chan struct{} // closed and replaced on every change
}

func newRecorder(mode string, n int, onRecv func(Receipt)) *recorder {
	return &recorder{
		mode: mode, onRecv: onRecv,
		held: make([]revKey, n), since: make([]time.Time, n),
		revs: map[revKey]*revRecord{}, wake: make(chan struct{}),
	}
}

// changedLocked wakes the waiters.
func (r *recorder) changedLocked() {
	close(r.wake)
	r.wake = make(chan struct{})
}

// received records agent i's receipt of group's revision at t.
func (r *recorder) received(i int, host, group string, rev int64, t time.Time) {
	k := revKey{group, rev}
	r.mu.Lock()
	if r.held[i] == k {
		r.mu.Unlock()
		return
	}
	r.held[i] = k
	rec := r.revs[k]
	if rec == nil {
		rec = &revRecord{RevisionStatus: RevisionStatus{Group: group, Revision: rev, First: t.UnixNano()}}
		r.revs[k] = rec
		r.order = append(r.order, k)
	}
	ns := t.UnixNano()
	rec.Agents++
	rec.First, rec.Last = min(rec.First, ns), max(rec.Last, ns)
	rec.times = append(rec.times, ns)
	r.changedLocked()
	r.mu.Unlock()
	if r.onRecv != nil {
		r.onRecv(Receipt{Host: host, Group: group, Revision: rev, Time: t})
	}
}

// serving marks agent i served by a session begun at start (zero: not
// served).
func (r *recorder) serving(i int, start time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	was := !r.since[i].IsZero()
	r.since[i] = start
	switch {
	case !was && !start.IsZero():
		r.served++
	case was && start.IsZero():
		r.served--
	}
	r.changedLocked()
}

func (r *recorder) sessionBegun() {
	r.mu.Lock()
	r.sessions++
	r.mu.Unlock()
}

func (r *recorder) failed() {
	r.mu.Lock()
	r.failures++
	r.mu.Unlock()
}

// status returns the summary.
func (r *recorder) status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := Status{Mode: r.mode, Agents: len(r.held), Connected: r.served, Sessions: r.sessions, Failures: r.failures}
	for _, t := range r.since {
		if !t.IsZero() && (s.OldestSession == 0 || t.UnixNano() < s.OldestSession) {
			s.OldestSession = t.UnixNano()
		}
	}
	for _, k := range r.order {
		s.Revisions = append(s.Revisions, r.revs[k].RevisionStatus)
	}
	return s
}

// receipts returns the receipt times of group's revision, Unix
// nanoseconds, in arrival order.
func (r *recorder) receipts(group string, rev int64) []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rec := r.revs[revKey{group, rev}]; rec != nil {
		return slices.Clone(rec.times)
	}
	return nil
}

// waitRevision waits until n agents hold group's revision and returns its
// status.
func (r *recorder) waitRevision(ctx context.Context, group string, rev int64, n int) (RevisionStatus, error) {
	for {
		r.mu.Lock()
		rec, wake := r.revs[revKey{group, rev}], r.wake
		var st RevisionStatus
		if rec != nil {
			st = rec.RevisionStatus
		}
		r.mu.Unlock()
		if st.Agents >= n {
			return st, nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return st, ctx.Err()
		}
	}
}

// waitConnected waits until n agents are served by sessions begun after
// since (zero: any).
func (r *recorder) waitConnected(ctx context.Context, n int, since time.Time) error {
	for {
		r.mu.Lock()
		c := 0
		for _, t := range r.since {
			if !t.IsZero() && t.After(since) {
				c++
			}
		}
		wake := r.wake
		r.mu.Unlock()
		if c >= n {
			return nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
