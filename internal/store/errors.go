package store

import "errors"

// Error classes of the store. Callers wrap them with the identifier
// (fmt.Errorf("group %q: %w", id, ErrNotFound)) and the API converts them to
// gRPC status codes at its edge.
var (
	// ErrNotFound: the resource does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: a resource with that name exists.
	ErrAlreadyExists = errors.New("already exists")
	// ErrConflict: the resource changed since the etag the caller holds.
	ErrConflict = errors.New("etag mismatch: the resource changed since it was read")
	// ErrContention: too many concurrent writers; retry later.
	ErrContention = errors.New("too much write contention")
	// ErrNotLeader: a leader-only write found this replica no longer leads.
	ErrNotLeader = errors.New("this controller replica is no longer the leader")
	// ErrFailedPrecondition: the system is not in a state the call needs
	// (a rollout runs).
	ErrFailedPrecondition = errors.New("failed precondition")
	// ErrCorrupt: a stored value does not decode.
	ErrCorrupt = errors.New("stored value is corrupt")
	// ErrUnavailable: etcd did not answer (down, partitioned, no leader,
	// or no answer within the request timeout); retry later.
	ErrUnavailable = errors.New("etcd is unreachable")
	// ErrNoSpace: etcd is out of space (its NOSPACE alarm is raised) and
	// refuses writes until space is freed and the alarm disarmed.
	ErrNoSpace = errors.New("etcd is out of space (NOSPACE alarm)")
)
