// Package routenl manages mpfleet's policy-routing rules and routes of one
// network namespace over rtnetlink (a Manager), inside an owned route.Range
// and carrying route.Protocol. The rules, routes and ranges it takes and
// returns are package route's.
package routenl

import (
	"fmt"

	"github.com/mpfleet/mpfleet/internal/route"
)

// Options configure Open.
type Options struct {
	// NetNS is a file descriptor of the network namespace to work in (as from
	// netns.GetFromName); 0 means the caller's current one.
	NetNS int
	// Range is the owned range; the zero Range means DefaultRange.
	Range route.Range
}

// OpError is a kernel (or range) error with the operation that caused it.
// It unwraps to the cause, so errors.Is(err, os.ErrExist),
// errors.Is(err, os.ErrNotExist) and errors.Is(err, ErrOutOfRange) work.
type OpError struct {
	Op  string // e.g. "add rule 7100: from 198.18.1.2 lookup 7100"
	Err error
}

// Error renders "route: OP: CAUSE".
func (e *OpError) Error() string { return fmt.Sprintf("route: %s: %v", e.Op, e.Err) }

// Unwrap returns the cause.
func (e *OpError) Unwrap() error { return e.Err }

func opErr(op string, err error) error {
	if err == nil {
		return nil
	}
	return &OpError{Op: op, Err: err}
}

func (o *Options) rangeOrDefault() (route.Range, error) {
	r := route.DefaultRange
	if o != nil && o.Range != (route.Range{}) {
		r = o.Range
	}
	if err := r.Validate(); err != nil {
		return route.Range{}, err
	}
	return r, nil
}

// Dump is what the kernel holds inside a Range: mpfleet's own rules and
// routes, and the foreign ones (see ForeignRule, ForeignRoute), each sorted.
type Dump struct {
	Rules         []route.Rule
	Routes        []route.Route
	ForeignRules  []route.ForeignRule
	ForeignRoutes []route.ForeignRoute
}
