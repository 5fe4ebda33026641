// Package reconcile brings one host's kernel to its desired MPTCP state: it
// reads the state (State), computes an ordered list of operations from desired
// and actual (Plan, a pure function that also serves dry runs and the
// controller's PlanPolicy), and applies them through a small Kernel seam with
// an undo journal, so that a failed apply leaves the kernel as it was.
//
// What mpfleet owns on a host: every MPTCP endpoint and the limits once a
// policy applies; only the sysctls the desired state names; only the rules
// and routes inside its route.Range that carry its routing protocol,
// route.Protocol. A rule or route inside the range without it is foreign
// (State.Foreign, State.ForeignRoutes): never changed or deleted, kept apart
// from (AvoidForeign, and Plan's ErrConflict) and reported (Conflicts),
// except that what an agent made before route.Protocol is adopted when it is
// exactly what is desired (see foreign.go).
package reconcile

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/route"
)

// SysctlEnabled is the sysctl behind HostConfig.Enabled.
const SysctlEnabled = "net.mptcp.enabled"

// ErrInvalid is wrapped by every error about a desired HostConfig the kernel
// could not take; Plan returns it before anything is touched.
var ErrInvalid = errors.New("invalid host config")

// ErrConflict is wrapped when the desired state needs a table or a rule
// priority that a foreign rule or route holds; see AvoidForeign. It matches
// route.ErrConflict.
var ErrConflict = fmt.Errorf("reconcile: %w", route.ErrConflict)

// ErrUnsupported is wrapped when the desired state needs something the
// host's kernel lacks (a sysctl it does not have). It matches
// errors.ErrUnsupported.
var ErrUnsupported = fmt.Errorf("not supported by this kernel: %w", errors.ErrUnsupported)

// HostConfig is the desired kernel state of one host (one network namespace).
// A nil or empty field is not managed, except Endpoints, Rules and Routes:
// the endpoints, and the rules and routes inside the owned range, are owned
// outright, so an empty list means "none".
type HostConfig struct {
	// Enabled is net.mptcp.enabled.
	Enabled *bool `json:"enabled,omitempty"`
	// Limits are the in-kernel path manager's limits.
	Limits *mptcp.Limits `json:"limits,omitempty"`
	// Endpoints are all the namespace's MPTCP endpoints, at most
	// mptcp.MaxEndpoints. ID 0 lets the planner choose: it keeps the ID of
	// an existing endpoint with the same address, else takes the lowest free
	// one, visiting endpoints in address order.
	Endpoints []mptcp.Endpoint `json:"endpoints,omitempty"`
	// Sysctls maps full sysctl names ("net.mptcp.scheduler") to values. Only
	// the named ones are owned. SysctlEnabled belongs in Enabled.
	Sysctls map[string]string `json:"sysctls,omitempty"`
	// Rules and Routes are all the policy routing inside Range.
	Rules  []route.Rule  `json:"rules,omitempty"`
	Routes []route.Route `json:"routes,omitempty"`
	// Range is the owned table and priority range; zero means
	// route.DefaultRange.
	Range route.Range `json:"range,omitzero"`
}

// SysctlNames returns the sysctl names c manages, sorted; pass them to
// Kernel.Read.
func (c HostConfig) SysctlNames() []string {
	return slices.Sorted(maps.Keys(c.Sysctls))
}

// OwnedRange returns c.Range, or route.DefaultRange when it is zero.
func (c HostConfig) OwnedRange() route.Range {
	if c.Range == (route.Range{}) {
		return route.DefaultRange
	}
	return c.Range
}

// sysctlName is the form of an owned sysctl's name: mpfleet manages the
// net.mptcp ones.
var sysctlName = regexp.MustCompile(`^net\.mptcp\.[a-z0-9_]+$`)

// Validate reports, wrapping ErrInvalid and naming the field, what in c the
// kernel would refuse.
func (c HostConfig) Validate() error {
	rng := c.OwnedRange()
	if err := rng.Validate(); err != nil {
		return fmt.Errorf("range: %w: %w", ErrInvalid, err)
	}
	if l := c.Limits; l != nil {
		if l.Subflows > mptcp.MaxLimit || l.AddAddrAccepted > mptcp.MaxLimit {
			return fmt.Errorf("limits: subflows %d add_addr_accepted %d: the kernel maximum is %d: %w", l.Subflows, l.AddAddrAccepted, mptcp.MaxLimit, ErrInvalid)
		}
	}
	if n := len(c.Endpoints); n > mptcp.MaxEndpoints {
		return fmt.Errorf("endpoints: %d given, a namespace holds at most %d: %w (%w)", n, mptcp.MaxEndpoints, ErrInvalid, mptcp.ErrTooManyEndpoints)
	}
	addrs := map[netip.Addr]int{}
	ids := map[uint8]int{}
	for i, e := range c.Endpoints {
		if err := validateEndpoint(e); err != nil {
			return fmt.Errorf("endpoints[%d]: %w", i, err)
		}
		if j, dup := addrs[e.Addr]; dup {
			return fmt.Errorf("endpoints[%d]: address %s already in endpoints[%d]: %w", i, e.Addr, j, ErrInvalid)
		}
		addrs[e.Addr] = i
		if e.ID != 0 {
			if j, dup := ids[e.ID]; dup {
				return fmt.Errorf("endpoints[%d]: id %d already in endpoints[%d]: %w", i, e.ID, j, ErrInvalid)
			}
			ids[e.ID] = i
		}
	}
	for _, name := range c.SysctlNames() {
		switch {
		case name == SysctlEnabled:
			return fmt.Errorf("sysctls[%q]: set it through enabled: %w", name, ErrInvalid)
		case !sysctlName.MatchString(name):
			return fmt.Errorf("sysctls[%q]: not a net.mptcp.<name> sysctl: %w", name, ErrInvalid)
		case normValue(c.Sysctls[name]) == "":
			return fmt.Errorf("sysctls[%q]: empty value: %w", name, ErrInvalid)
		}
	}
	rules := map[route.Rule]int{}
	for i, r := range c.Rules {
		if err := rng.CheckRule(r); err != nil {
			return fmt.Errorf("rules[%d]: %w: %w", i, ErrInvalid, err)
		}
		r = r.Canonical()
		if j, dup := rules[r]; dup {
			return fmt.Errorf("rules[%d]: same as rules[%d]: %w", i, j, ErrInvalid)
		}
		rules[r] = i
	}
	keys := map[route.Key]int{}
	for i, r := range c.Routes {
		if err := rng.CheckRoute(r); err != nil {
			return fmt.Errorf("routes[%d]: %w: %w", i, ErrInvalid, err)
		}
		if j, dup := keys[r.Key()]; dup {
			return fmt.Errorf("routes[%d]: table %d already has a route to %v in routes[%d]: %w", i, r.Table, r.Dst, j, ErrInvalid)
		}
		keys[r.Key()] = i
	}
	return nil
}

// mutableFlags are the flags SET_FLAGS changes in place.
const mutableFlags = mptcp.MutableFlags

// validateEndpoint applies the kernel's ADD_ADDR checks (net/mptcp/pm_kernel.c)
// as mptcp.Endpoint.Validate states them: the one rule for flags and port that
// policy.ValidatePolicy asks too, so that what the API accepts every agent adds.
func validateEndpoint(e mptcp.Endpoint) error {
	if err := e.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

// State is the kernel state of one host as read back: the same shape as
// HostConfig, holding all endpoints and the limits, only mpfleet's own rules
// and routes (inside the range, carrying route.Protocol), and only the
// sysctls that were asked for (one the kernel lacks is absent from Sysctls).
type State struct {
	Enabled   *bool             `json:"enabled,omitempty"`
	Limits    *mptcp.Limits     `json:"limits,omitempty"`
	Endpoints []mptcp.Endpoint  `json:"endpoints,omitempty"`
	Sysctls   map[string]string `json:"sysctls,omitempty"`
	Rules     []route.Rule      `json:"rules,omitempty"`
	Routes    []route.Route     `json:"routes,omitempty"`
	// Foreign and ForeignRoutes are the rules and routes inside the range
	// that mpfleet did not make. Plan never deletes or changes them (but
	// adopts legacy ones it wants, see foreign.go).
	Foreign       []route.ForeignRule  `json:"foreign,omitempty"`
	ForeignRoutes []route.ForeignRoute `json:"foreign_routes,omitempty"`
	// Links names the namespace's interfaces by index; Plan uses it only to
	// show names in Op.String.
	Links map[int]string `json:"links,omitempty"`
}

// String renders s as stable text, one item a line, in a fixed order
// (interfaces as "if<index>"), so that tests can compare states.
func (s State) String() string {
	var b strings.Builder
	if s.Enabled != nil {
		fmt.Fprintf(&b, "sysctl %s = %s\n", SysctlEnabled, boolValue(*s.Enabled))
	}
	for _, name := range slices.Sorted(maps.Keys(s.Sysctls)) {
		if name == SysctlEnabled && s.Enabled != nil {
			continue
		}
		fmt.Fprintf(&b, "sysctl %s = %s\n", name, normValue(s.Sysctls[name]))
	}
	if s.Limits != nil {
		b.WriteString(limitsString(*s.Limits) + "\n")
	}
	eps := slices.Clone(s.Endpoints)
	slices.SortFunc(eps, compareEndpoints)
	for _, e := range eps {
		b.WriteString("endpoint " + endpointString(e, "") + "\n")
	}
	b.WriteString(route.Render(s.Rules, s.Routes))
	fr := slices.Clone(s.Foreign)
	route.SortForeignRules(fr)
	for _, f := range fr {
		b.WriteString("foreign rule " + f.String() + "\n")
	}
	ft := slices.Clone(s.ForeignRoutes)
	route.SortForeignRoutes(ft)
	for _, f := range ft {
		b.WriteString("foreign route " + f.String() + "\n")
	}
	return b.String()
}

func boolValue(v bool) string {
	if v {
		return "1"
	}
	return "0"
}

// normValue is how sysctl values compare: surrounding and repeated white
// space do not count (the kernel separates list values with tabs).
func normValue(v string) string { return strings.Join(strings.Fields(v), " ") }

func limitsString(l mptcp.Limits) string {
	return fmt.Sprintf("limits subflows %d add_addr_accepted %d", l.Subflows, l.AddAddrAccepted)
}

// endpointString renders e as `ip mptcp endpoint show` does.
func endpointString(e mptcp.Endpoint, dev string) string {
	var b strings.Builder
	b.WriteString(e.Addr.String())
	if e.Port != 0 {
		b.WriteString(" port " + strconv.Itoa(int(e.Port)))
	}
	b.WriteString(" id " + strconv.Itoa(int(e.ID)))
	if f := e.Flags.String(); f != "" {
		b.WriteString(" " + f)
	}
	if e.IfIndex != 0 {
		if dev == "" {
			dev = "if" + strconv.Itoa(e.IfIndex)
		}
		b.WriteString(" dev " + dev)
	}
	return b.String()
}

// compareEndpoints orders endpoints by ID, then address.
func compareEndpoints(a, b mptcp.Endpoint) int {
	return cmp.Or(cmp.Compare(a.ID, b.ID), a.Addr.Compare(b.Addr))
}

// WithoutUnsupported returns c without the sysctls that actual shows the
// kernel lacks (net.mptcp.enabled included), and their full names, sorted.
// A host applies what it can of its desired state and reports the rest: Plan
// refuses a config that names a sysctl the kernel lacks.
func (c HostConfig) WithoutUnsupported(actual State) (HostConfig, []string) {
	var lacks []string
	if c.Enabled != nil && actual.Enabled == nil {
		lacks = append(lacks, SysctlEnabled)
		c.Enabled = nil
	}
	for _, name := range c.SysctlNames() {
		if _, ok := actual.Sysctls[name]; !ok {
			lacks = append(lacks, name)
		}
	}
	if len(lacks) == 0 {
		return c, nil
	}
	if len(c.Sysctls) > 0 {
		s := maps.Clone(c.Sysctls)
		for _, name := range lacks {
			delete(s, name)
		}
		if len(s) == 0 {
			s = nil
		}
		c.Sysctls = s
	}
	slices.Sort(lacks)
	return c, lacks
}
