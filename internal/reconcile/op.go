package reconcile

import (
	"fmt"
	"strings"

	"github.com/mpfleet/mpfleet/internal/mptcp"
	"github.com/mpfleet/mpfleet/internal/route"
)

// Kind is what an Op does.
type Kind string

// The kinds of Op.
const (
	SetSysctl        Kind = "set-sysctl"         // Sysctl, Value (Old: the value replaced)
	SetLimits        Kind = "set-limits"         // Limits (OldLimits: those replaced)
	DelEndpoint      Kind = "del-endpoint"       // Endpoint (deleted by its ID; the rest restores it)
	AddEndpoint      Kind = "add-endpoint"       // Endpoint, with its ID
	SetEndpointFlags Kind = "set-endpoint-flags" // Endpoint (with its current flags), Flags (the new ones)
	AddRule          Kind = "add-rule"           // Rule
	DelRule          Kind = "del-rule"           // Rule
	AddRoute         Kind = "add-route"          // Route
	DelRoute         Kind = "del-route"          // Route
	// SetRuleProtocol and SetRouteProtocol re-make a rule or route the
	// kernel holds with OldProtocol with Protocol: how one that an agent
	// made before route.Protocol is adopted (and, in an undo, given back).
	SetRuleProtocol  Kind = "set-rule-protocol"  // Rule, Protocol, OldProtocol
	SetRouteProtocol Kind = "set-route-protocol" // Route, Protocol, OldProtocol
)

// Op is one change to the kernel. It is a plain value: it marshals to JSON
// for the API and its String is the dry-run view.
type Op struct {
	Kind Kind `json:"kind"`

	Sysctl string `json:"sysctl,omitempty"`
	Value  string `json:"value,omitempty"`
	Old    string `json:"old,omitempty"`

	Limits    *mptcp.Limits `json:"limits,omitempty"`
	OldLimits *mptcp.Limits `json:"old_limits,omitempty"`

	Endpoint *mptcp.Endpoint `json:"endpoint,omitempty"`
	Flags    mptcp.Flags     `json:"flags,omitempty"`

	Rule  *route.Rule  `json:"rule,omitempty"`
	Route *route.Route `json:"route,omitempty"`
	// Protocol and OldProtocol are the routing protocols of a
	// SetRuleProtocol or SetRouteProtocol: the new one, and the one the
	// entry has.
	Protocol    route.Proto `json:"protocol,omitempty"`
	OldProtocol route.Proto `json:"old_protocol,omitempty"`

	// Dev names the interface of an endpoint or route, for display only.
	Dev string `json:"dev,omitempty"`
}

// String renders op for people: "+" adds, "-" deletes, "~" changes in place,
// e.g. "+ endpoint 198.18.1.2 id 1 subflow dev veth1".
func (op Op) String() string {
	if op.Check() != nil {
		return fmt.Sprintf("? %s (malformed)", op.Kind)
	}
	switch op.Kind {
	case SetSysctl:
		s := fmt.Sprintf("~ sysctl %s = %s", op.Sysctl, op.Value)
		if op.Old != "" {
			s += " (was " + op.Old + ")"
		}
		return s
	case SetLimits:
		s := "~ " + limitsString(*op.Limits)
		if op.OldLimits != nil {
			s += " (was " + strings.TrimPrefix(limitsString(*op.OldLimits), "limits ") + ")"
		}
		return s
	case AddEndpoint, DelEndpoint:
		return sign(op.Kind) + " endpoint " + endpointString(*op.Endpoint, op.Dev)
	case SetEndpointFlags:
		e := *op.Endpoint
		return fmt.Sprintf("~ endpoint %s id %d flags %s (was %s)", e.Addr, e.ID, flagsString(op.Flags), flagsString(e.Flags))
	case AddRule, DelRule:
		return sign(op.Kind) + " rule " + op.Rule.String()
	case AddRoute, DelRoute:
		return sign(op.Kind) + " route " + op.Route.Format(op.Dev)
	case SetRuleProtocol:
		return fmt.Sprintf("~ rule %s proto %v (was %v)", op.Rule, op.Protocol, op.OldProtocol)
	case SetRouteProtocol:
		return fmt.Sprintf("~ route %s proto %v (was %v)", op.Route.Format(op.Dev), op.Protocol, op.OldProtocol)
	}
	return fmt.Sprintf("? %s (malformed)", op.Kind)
}

// payload names what an op of each kind carries besides its kind: "limits"
// (Op.Limits), "endpoint", "rule" or "route" ("": only values).
var payload = map[Kind]string{
	SetSysctl: "", SetLimits: "limits",
	AddEndpoint: "endpoint", DelEndpoint: "endpoint", SetEndpointFlags: "endpoint",
	AddRule: "rule", DelRule: "rule", SetRuleProtocol: "rule",
	AddRoute: "route", DelRoute: "route", SetRouteProtocol: "route",
}

// Check reports, wrapping ErrInvalid, an op of an unknown kind or without
// what its kind needs (the endpoint of an endpoint op, say). A Kernel checks
// an op before it touches anything.
func (op Op) Check() error {
	need, ok := payload[op.Kind]
	if !ok {
		return fmt.Errorf("op kind %q: %w", op.Kind, ErrInvalid)
	}
	switch {
	case need == "limits" && op.Limits == nil, need == "endpoint" && op.Endpoint == nil,
		need == "rule" && op.Rule == nil, need == "route" && op.Route == nil:
		return fmt.Errorf("%s op without its %s: %w", op.Kind, need, ErrInvalid)
	}
	return nil
}

func sign(k Kind) string {
	if strings.HasPrefix(string(k), "add-") {
		return "+"
	}
	return "-"
}

func flagsString(f mptcp.Flags) string {
	if f == 0 {
		return "none"
	}
	return f.String()
}

// Inverse returns the op that undoes op, from what op records of the state it
// replaces (Old, OldLimits, the endpoint's current flags).
func (op Op) Inverse() (Op, error) {
	inv := op
	switch op.Kind {
	case SetSysctl:
		if op.Old == "" {
			return Op{}, fmt.Errorf("%v: the old value is unknown: %w", op, ErrInvalid)
		}
		inv.Value, inv.Old = op.Old, op.Value
	case SetLimits:
		if op.Limits == nil || op.OldLimits == nil {
			return Op{}, fmt.Errorf("%v: the old limits are unknown: %w", op, ErrInvalid)
		}
		inv.Limits, inv.OldLimits = op.OldLimits, op.Limits
	case SetEndpointFlags:
		if op.Endpoint == nil {
			return Op{}, fmt.Errorf("%v: no endpoint: %w", op, ErrInvalid)
		}
		e := *op.Endpoint
		e.Flags, inv.Flags = op.Flags, op.Endpoint.Flags
		inv.Endpoint = &e
	case AddEndpoint, DelEndpoint, AddRule, DelRule, AddRoute, DelRoute:
		inv.Kind = opposite[op.Kind]
	case SetRuleProtocol, SetRouteProtocol:
		inv.Protocol, inv.OldProtocol = op.OldProtocol, op.Protocol
	default:
		return Op{}, fmt.Errorf("op kind %q: %w", op.Kind, ErrInvalid)
	}
	return inv, nil
}

// opposite is the kind of op that undoes an add or delete.
var opposite = map[Kind]Kind{
	AddEndpoint: DelEndpoint, DelEndpoint: AddEndpoint,
	AddRule: DelRule, DelRule: AddRule,
	AddRoute: DelRoute, DelRoute: AddRoute,
}

// Ops is an ordered plan: apply them in order.
type Ops []Op

// String renders the plan one op a line, or "no changes".
func (ops Ops) String() string {
	if len(ops) == 0 {
		return "no changes\n"
	}
	var b strings.Builder
	for _, op := range ops {
		b.WriteString(op.String() + "\n")
	}
	return b.String()
}
