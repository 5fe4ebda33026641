// Package policy holds the multipath policy model: validation of groups and
// policies as the API receives them, defaults, and rendering of a policy against
// a host's interfaces into the kernel configuration the agent applies.
package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"path"
	"regexp"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/route"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// Kernel and range limits enforced by validation.
const (
	// MaxLimit is the largest subflows / add_addr_accepted the kernel accepts.
	MaxLimit = mptcp.MaxLimit
	// MaxEndpointRules bounds the endpoint rules of one policy.
	MaxEndpointRules = 32
	// MaxGatewayOverrides bounds routing.gateways.
	MaxGatewayOverrides = 32
	// MaxDescription bounds a group's description, in bytes.
	MaxDescription = 1024
	// MaxLabels bounds a selector's labels.
	MaxLabels = 32

	// minRangeWidth is one table and one priority per possible endpoint.
	// (The default ranges are route.DefaultRange, see RoutingRange.)
	minRangeWidth = mptcp.MaxEndpoints
	// maxSeconds bounds the jiffies-based sysctls (INT_MAX milliseconds).
	maxSeconds = 2147483
)

// FieldViolation names one invalid field of a request and says what is wrong.
type FieldViolation struct {
	Field       string // path from the request root, e.g. "group.policy.limits.subflows"
	Description string
}

func (v FieldViolation) String() string { return v.Field + ": " + v.Description }

// Violations collects field violations.
type Violations []FieldViolation

func (vs *Violations) add(field, format string, args ...any) {
	*vs = append(*vs, FieldViolation{Field: field, Description: fmt.Sprintf(format, args...)})
}

// Err returns nil when there are no violations, else an *InvalidError.
func (vs Violations) Err() error {
	if len(vs) == 0 {
		return nil
	}
	return &InvalidError{Violations: vs}
}

// InvalidError reports invalid input, field by field.
type InvalidError struct {
	Violations Violations
}

func (e *InvalidError) Error() string {
	parts := make([]string, len(e.Violations))
	for i, v := range e.Violations {
		parts[i] = v.String()
	}
	return "invalid argument: " + strings.Join(parts, "; ")
}

var (
	groupIDRe    = regexp.MustCompile(`^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$`)
	hostIDRe     = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$`)
	labelKeyRe   = regexp.MustCompile(`^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$`)
	labelValueRe = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$`)
	sysctlNameRe = regexp.MustCompile(`^[a-z0-9_]{1,32}$`)
)

// ValidateGroupID checks a group id ("web", not "groups/web").
func ValidateGroupID(vs *Violations, field, id string) {
	if id == "" {
		vs.add(field, "is required")
		return
	}
	if !groupIDRe.MatchString(id) {
		vs.add(field, "%q is not a valid group id: use 1-63 lower-case letters, digits and '-', starting with a letter and not ending with '-'", id)
	}
}

// ValidHostID reports whether id is a host id ("web-1", not "hosts/web-1"):
// what the controller accepts from agents and in names, and what an agent
// accepts as its own.
func ValidHostID(id string) bool { return hostIDRe.MatchString(id) }

// ValidateHostID checks a host id (see ValidHostID).
func ValidateHostID(vs *Violations, field, id string) {
	switch {
	case id == "":
		vs.add(field, "is required")
	case !ValidHostID(id):
		vs.add(field, "%q is not a valid host id: use 1-253 lower-case letters, digits, '-' and '.', starting and ending with a letter or digit", id)
	}
}

// GroupIDFromName returns the id of "groups/{id}", recording a violation on
// field if name is not of that form.
func GroupIDFromName(vs *Violations, field, name string) string {
	id, ok := strings.CutPrefix(name, "groups/")
	if !ok || strings.Contains(id, "/") {
		if name == "" {
			vs.add(field, "is required")
		} else {
			vs.add(field, "%q is not a group name of the form groups/{group}", name)
		}
		return ""
	}
	ValidateGroupID(vs, field, id)
	return id
}

// ValidateLabels checks label keys and values (Kubernetes label syntax).
func ValidateLabels(vs *Violations, field string, labels map[string]string) {
	if len(labels) > MaxLabels {
		vs.add(field, "has %d labels; at most %d are allowed", len(labels), MaxLabels)
	}
	for _, k := range sortedKeys(labels) {
		if !labelKeyRe.MatchString(k) {
			vs.add(field+"["+quote(k)+"]", "%q is not a valid label key", k)
		}
		if v := labels[k]; !labelValueRe.MatchString(v) {
			vs.add(field+"["+quote(k)+"]", "%q is not a valid label value: at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric", v)
		}
	}
}

// ValidateGroup checks the mutable fields of a group; field is the path of
// the group in the request (e.g. "group").
func ValidateGroup(vs *Violations, field string, g *pb.Group) {
	if g == nil {
		vs.add(field, "is required")
		return
	}
	if len(g.GetDescription()) > MaxDescription {
		vs.add(field+".description", "is %d bytes; at most %d are allowed", len(g.GetDescription()), MaxDescription)
	}
	ValidateLabels(vs, field+".selector.match_labels", g.GetSelector().GetMatchLabels())
	ValidatePolicy(vs, field+".policy", g.GetPolicy())
	ValidateStrategy(vs, field+".rollout_strategy", g.GetRolloutStrategy())
}

// ValidatePolicy checks a multipath policy against what the kernel accepts.
// A nil policy is valid (it manages nothing but endpoints and limits, which
// it leaves empty at the kernel defaults).
func ValidatePolicy(vs *Violations, field string, p *pb.MultipathPolicy) {
	if p == nil {
		return
	}
	if l := p.GetLimits(); l != nil {
		if l.Subflows != nil && l.GetSubflows() > MaxLimit {
			vs.add(field+".limits.subflows", "is %d; must be at most %d (kernel maximum)", l.GetSubflows(), MaxLimit)
		}
		if l.AddAddrAccepted != nil && l.GetAddAddrAccepted() > MaxLimit {
			vs.add(field+".limits.add_addr_accepted", "is %d; must be at most %d (kernel maximum)", l.GetAddAddrAccepted(), MaxLimit)
		}
	}
	if n := len(p.GetEndpoints()); n > MaxEndpointRules {
		vs.add(field+".endpoints", "has %d rules; at most %d are allowed", n, MaxEndpointRules)
	}
	for i, r := range p.GetEndpoints() {
		validateEndpointRule(vs, fmt.Sprintf("%s.endpoints[%d]", field, i), r)
	}
	validateRouting(vs, field+".routing", p.GetRouting())
	validateSysctls(vs, field+".sysctls", p.GetSysctls())
	validateProbes(vs, field+".probes", p.GetProbes())
}

func validateEndpointRule(vs *Violations, field string, r *pb.EndpointRule) {
	if r.GetInterface() == "" && r.GetCidr() == "" {
		vs.add(field, "must select addresses by interface, cidr or both")
	}
	if r.GetInterface() != "" {
		validateGlob(vs, field+".interface", r.GetInterface())
	}
	if c := r.GetCidr(); c != "" {
		pfx, err := netip.ParsePrefix(c)
		switch {
		case err != nil:
			vs.add(field+".cidr", "%q is not a CIDR prefix (e.g. 198.18.0.0/15 or 2001:db8::/32)", c)
		case pfx.Masked() != pfx:
			vs.add(field+".cidr", "%q has host bits set; did you mean %s?", c, pfx.Masked())
		case r.GetFamily() == pb.AddressFamily_ADDRESS_FAMILY_IPV4 && !pfx.Addr().Is4():
			vs.add(field+".family", "is IPV4 but cidr %s is IPv6", pfx)
		case r.GetFamily() == pb.AddressFamily_ADDRESS_FAMILY_IPV6 && pfx.Addr().Is4():
			vs.add(field+".family", "is IPV6 but cidr %s is IPv4", pfx)
		}
	}
	if _, ok := pb.AddressFamily_name[int32(r.GetFamily())]; !ok {
		vs.add(field+".family", "unknown address family %d", int32(r.GetFamily()))
	}
	seen := map[pb.EndpointFlag]bool{}
	for j, f := range r.GetFlags() {
		ff := fmt.Sprintf("%s.flags[%d]", field, j)
		switch {
		case f == pb.EndpointFlag_ENDPOINT_FLAG_UNSPECIFIED:
			vs.add(ff, "ENDPOINT_FLAG_UNSPECIFIED is not a flag")
		case pb.EndpointFlag_name[int32(f)] == "":
			vs.add(ff, "unknown endpoint flag %d", int32(f))
		case seen[f]:
			vs.add(ff, "%s is given twice", f)
		}
		seen[f] = true
	}
	if r.GetPort() > 65535 {
		vs.add(field+".port", "is %d; must be at most 65535", r.GetPort())
	} else {
		validateEndpointFlags(vs, field, FlagsFromProto(r.GetFlags()), uint16(r.GetPort()))
	}
}

// validateEndpointFlags refuses the flags and port that the kernel refuses
// on an endpoint. Which those are is mptcp.Endpoint.Validate's to say: every
// agent checks its endpoints with it (reconcile.HostConfig.Validate) before
// it adds one, and here it is asked about a stand-in address with the rule's
// flags and port, so that what the API accepts every agent can add. The
// violation is the port's when the flags alone would do.
func validateEndpointFlags(vs *Violations, field string, f mptcp.Flags, port uint16) {
	e := mptcp.Endpoint{Addr: netip.AddrFrom4([4]byte{198, 18, 0, 1}), Flags: f}
	if e.Validate() != nil {
		vs.add(field+".flags", "%s: the kernel refuses this combination (FULLMESH cannot be combined with SIGNAL)", flagNames(f))
		return
	}
	e.Port = port
	if e.Validate() != nil {
		vs.add(field+".port", "is %d with flags %s: the kernel takes a port only on a SIGNAL endpoint without SUBFLOW", port, flagNames(f))
	}
}

// flagNames renders kernel endpoint flags by their API names: "SIGNAL,
// SUBFLOW", or "none".
func flagNames(f mptcp.Flags) string {
	var names []string
	for _, pf := range FlagsToProto(f) {
		names = append(names, strings.TrimPrefix(pf.String(), "ENDPOINT_FLAG_"))
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

func validateGlob(vs *Violations, field, pattern string) {
	if len(pattern) > 64 {
		vs.add(field, "is %d bytes; at most 64 are allowed", len(pattern))
		return
	}
	if _, err := path.Match(pattern, ""); err != nil {
		vs.add(field, "%q is not a valid interface pattern: %v", pattern, err)
	}
	if strings.ContainsAny(pattern, "/ \t\n") {
		vs.add(field, "%q contains '/' or whitespace, which no interface name has", pattern)
	}
}

// givenRange checks the <what>_min and <what>_max of a range in field: both
// given (0 is unset; zeroIs says what else 0 is) or neither, and in order. It
// reports whether the range is given and in order, for the caller's checks.
func givenRange(vs *Violations, field, what string, lo, hi uint32, zeroIs string) bool {
	switch {
	case (lo == 0) != (hi == 0):
		vs.add(field+"."+what+"_min", "%s_min and %s_max must be given together (0 is unset, and %s)", what, what, zeroIs)
	case lo > hi:
		vs.add(field+"."+what+"_min", "is %d, above %s_max %d", lo, what, hi)
	default:
		return lo != 0
	}
	return false
}

func validateRouting(vs *Violations, field string, r *pb.Routing) {
	if r == nil {
		return
	}
	before := len(*vs)
	// The kernel's reserved tables and rule priorities are refused through
	// route.TablesReserved and route.PrioritiesReserved, the rules
	// route.Range.Validate applies on every agent: what is accepted here,
	// every agent can apply. 0 is "unset" on the wire, so table 0 and
	// priority 0 can only come as a half-given range.
	if tmin, tmax := r.GetTableMin(), r.GetTableMax(); givenRange(vs, field, "table", tmin, tmax, "table 0 is reserved") {
		switch {
		case route.TablesReserved(tmin, tmax):
			vs.add(field+".table_min", "range %d-%d includes a reserved table (253 default, 254 main, 255 local)", tmin, tmax)
		case tmax-tmin+1 < minRangeWidth:
			vs.add(field+".table_max", "range %d-%d holds %d tables; at least %d are needed (one per endpoint)", tmin, tmax, tmax-tmin+1, minRangeWidth)
		case tmax == 0xFFFFFFFF:
			vs.add(field+".table_max", "must be below 4294967295")
		}
	}
	if pmin, pmax := r.GetPriorityMin(), r.GetPriorityMax(); givenRange(vs, field, "priority", pmin, pmax, "priority 0 is the local table's rule") {
		switch {
		case route.PrioritiesReserved(pmin, pmax):
			vs.add(field+".priority_max", "is %d; must be below %d (the main table's rule; %d is the default table's)", pmax, route.PriorityMain, route.PriorityDefault)
		case pmax-pmin+1 < minRangeWidth:
			vs.add(field+".priority_max", "range %d-%d holds %d priorities; at least %d are needed (one per endpoint)", pmin, pmax, pmax-pmin+1, minRangeWidth)
		}
	}
	if len(*vs) == before {
		// What every agent checks of the range it is given: a range the
		// rules above let through must pass it too.
		tmin, tmax, pmin, pmax := RoutingRange(r)
		rng := route.Range{TableMin: tmin, TableMax: tmax, PriorityMin: pmin, PriorityMax: pmax}
		if err := rng.Validate(); err != nil {
			vs.add(field, "%v", err)
		}
	}
	if n := len(r.GetGateways()); n > MaxGatewayOverrides {
		vs.add(field+".gateways", "has %d entries; at most %d are allowed", n, MaxGatewayOverrides)
	}
	for i, g := range r.GetGateways() {
		gf := fmt.Sprintf("%s.gateways[%d]", field, i)
		if g.GetInterface() == "" {
			vs.add(gf+".interface", "is required")
		} else {
			validateGlob(vs, gf+".interface", g.GetInterface())
		}
		switch {
		case g.GetGateway() != "" && g.GetHostIndex() != 0:
			vs.add(gf+".host_index", "is set with gateway %q; give one of gateway and host_index", g.GetGateway())
		case g.GetHostIndex() != 0:
			// Any non-zero index is valid: one outside a host's prefix
			// yields no gateway there, reported by the host.
		default:
			if a, err := netip.ParseAddr(g.GetGateway()); err != nil || a.Zone() != "" {
				if g.GetGateway() == "" {
					vs.add(gf+".gateway", "is required unless host_index is given")
				} else {
					vs.add(gf+".gateway", "%q is not an IP address", g.GetGateway())
				}
			} else if a.Is4In6() {
				vs.add(gf+".gateway", "%s is an IPv4-mapped IPv6 address; write the IPv4 address %s", a, a.Unmap())
			} else if why := notAGateway(a); why != "" {
				vs.add(gf+".gateway", "%s cannot be a gateway: %s", a, why)
			}
		}
	}
}

// MaxReason bounds the reason given with a change, in bytes.
const MaxReason = 1024

// ValidateReason checks the reason given with a change: at most MaxReason
// bytes of UTF-8 text without control characters (it is stored in the
// audit log and printed on terminals).
func ValidateReason(vs *Violations, field, reason string) {
	switch {
	case len(reason) > MaxReason:
		vs.add(field, "is %d bytes; at most %d are allowed", len(reason), MaxReason)
	case !utf8.ValidString(reason):
		vs.add(field, "is not valid UTF-8")
	case strings.IndexFunc(reason, unicode.IsControl) >= 0:
		vs.add(field, "contains a control character (newlines and terminal escapes are refused)")
	}
}

// ValidateStrategy checks a rollout strategy (nil is valid: the defaults).
func ValidateStrategy(vs *Violations, field string, s *pb.RolloutStrategy) {
	if s == nil {
		return
	}
	for _, c := range []struct {
		name string
		v    int32
		max  int32
	}{
		{"canary_count", s.GetCanaryCount(), 1 << 20}, {"canary_percent", s.GetCanaryPercent(), 100},
		{"batch_size", s.GetBatchSize(), 1 << 20}, {"batch_percent", s.GetBatchPercent(), 100},
		{"max_failures", s.GetMaxFailures(), 1 << 20},
	} {
		if c.v < 0 || c.v > c.max {
			vs.add(field+"."+c.name, "is %d; must be 0 to %d", c.v, c.max)
		}
	}
	for _, d := range []struct {
		name     string
		v        interface{ AsDuration() time.Duration }
		set      bool
		min, max time.Duration
	}{
		{"step_timeout", s.GetStepTimeout(), s.StepTimeout != nil, time.Second, 24 * time.Hour},
		{"bake_time", s.GetBakeTime(), s.BakeTime != nil, 0, 24 * time.Hour},
	} {
		if !d.set {
			continue
		}
		if v := d.v.AsDuration(); v < d.min || v > d.max {
			vs.add(field+"."+d.name, "is %v; must be %v to %v", v, d.min, d.max)
		}
	}
}

// Probe limits and defaults.
const (
	// MaxProbes bounds policy.probes.
	MaxProbes = 4
	// DefaultProbeInterval and DefaultProbeTimeout apply to a probe that
	// does not set them.
	DefaultProbeInterval = 5 * time.Second
	DefaultProbeTimeout  = 3 * time.Second
	// MinProbeInterval .. MaxProbeInterval bound a probe's interval, and
	// MinProbeTimeout its timeout (at most its interval).
	MinProbeInterval = 100 * time.Millisecond
	MaxProbeInterval = time.Hour
	MinProbeTimeout  = 10 * time.Millisecond
)

func validateProbes(vs *Violations, field string, ps []*pb.Probe) {
	if len(ps) > MaxProbes {
		vs.add(field, "has %d probes; at most %d are allowed", len(ps), MaxProbes)
	}
	seen := map[netip.AddrPort]bool{}
	for i, p := range ps {
		pf := fmt.Sprintf("%s[%d]", field, i)
		if p == nil {
			vs.add(pf, "is empty")
			continue
		}
		ap, err := ParseProbeAddress(p.GetAddress())
		switch {
		case err != nil:
			vs.add(pf+".address", "%v", err)
		case seen[ap]:
			vs.add(pf+".address", "%s is given twice", ap)
		}
		seen[ap] = true
		for _, d := range []struct {
			name string
			v    interface {
				CheckValid() error
				AsDuration() time.Duration
			}
			set bool
		}{{"interval", p.GetInterval(), p.Interval != nil}, {"timeout", p.GetTimeout(), p.Timeout != nil}} {
			if d.set {
				if err := d.v.CheckValid(); err != nil {
					vs.add(pf+"."+d.name, "is not a valid duration: %v", err)
				}
			}
		}
		iv, to := ProbeTimes(p)
		if p.Interval != nil && (iv < MinProbeInterval || iv > MaxProbeInterval) {
			vs.add(pf+".interval", "is %v; must be %v to %v", iv, MinProbeInterval, MaxProbeInterval)
		}
		if p.Timeout != nil && to < MinProbeTimeout {
			vs.add(pf+".timeout", "is %v; must be at least %v", to, MinProbeTimeout)
		} else if to > iv {
			vs.add(pf+".timeout", "is %v, longer than the interval %v", to, iv)
		}
	}
}

// ParseProbeAddress parses a probe target: "IP:port" or "[IPv6]:port", an IP
// literal (no host name: agents do not resolve names) that can be connected
// to, and a port 1-65535.
func ParseProbeAddress(s string) (netip.AddrPort, error) {
	if s == "" {
		return netip.AddrPort{}, errors.New("is required: IP:port or [IPv6]:port of an MPTCP listener")
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not IP:port or [IPv6]:port (an IP literal; host names are not resolved)", s)
	}
	a := ap.Addr()
	switch {
	case ap.Port() == 0:
		return netip.AddrPort{}, fmt.Errorf("%q has port 0; want 1-65535", s)
	case a.Zone() != "" || a.Is4In6():
		return netip.AddrPort{}, fmt.Errorf("%q: use a plain IPv4 or IPv6 address, without zone or IPv4-mapped form", s)
	case a.IsUnspecified() || a.IsMulticast() || a.IsLinkLocalUnicast():
		return netip.AddrPort{}, fmt.Errorf("%q: %s cannot be a probe target", s, a)
	}
	return ap, nil
}

// ProbeTimes returns a probe's interval and timeout, with the defaults for
// unset ones (a default timeout longer than a short interval is the
// interval).
func ProbeTimes(p *pb.Probe) (interval, timeout time.Duration) {
	interval, timeout = DefaultProbeInterval, DefaultProbeTimeout
	if p.GetInterval() != nil {
		interval = p.GetInterval().AsDuration()
	}
	if p.GetTimeout() != nil {
		timeout = p.GetTimeout().AsDuration()
	} else if timeout > interval {
		timeout = interval
	}
	return interval, timeout
}

func validateSysctls(vs *Violations, field string, s *pb.Sysctls) {
	if s == nil {
		return
	}
	if s.Scheduler != nil && !sysctlNameRe.MatchString(s.GetScheduler()) {
		vs.add(field+".scheduler", "%q is not a scheduler name (lower-case letters, digits, '_')", s.GetScheduler())
	}
	if s.PathManager != nil && !sysctlNameRe.MatchString(s.GetPathManager()) {
		vs.add(field+".path_manager", "%q is not a path manager name (lower-case letters, digits, '_')", s.GetPathManager())
	}
	for _, c := range []struct {
		name string
		v    *uint32
	}{
		{"add_addr_timeout", s.AddAddrTimeout},
		{"blackhole_timeout", s.BlackholeTimeout},
		{"close_timeout", s.CloseTimeout},
		{"stale_loss_cnt", s.StaleLossCnt},
	} {
		if c.v != nil && *c.v > maxSeconds {
			vs.add(field+"."+c.name, "is %d; must be at most %d", *c.v, maxSeconds)
		}
	}
}

// RoutingRange returns the routing table and rule-priority ranges of r, with
// the defaults (route.DefaultRange, the agents' too) for unset ones.
func RoutingRange(r *pb.Routing) (tableMin, tableMax, prioMin, prioMax uint32) {
	d := route.DefaultRange
	tableMin, tableMax = d.TableMin, d.TableMax
	prioMin, prioMax = d.PriorityMin, d.PriorityMax
	if r.GetTableMin() != 0 {
		tableMin, tableMax = r.GetTableMin(), r.GetTableMax()
	}
	if r.GetPriorityMin() != 0 {
		prioMin, prioMax = r.GetPriorityMin(), r.GetPriorityMax()
	}
	return
}
