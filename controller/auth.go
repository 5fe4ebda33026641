package controller

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/mpfleet/mpfleet/internal/policy"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/yaml"
)

// Role is what a caller may do.
type Role int

func (r Role) String() string {
	switch r {
	case RoleNone:
		return "none"
	case RoleViewer:
		return "viewer"
	case RoleOperator:
		return "operator"
	case RoleAdmin:
		return "admin"
	case RoleAgent:
		return "agent"
	}
	return "unknown"
}

// Roles, each including the ones before it except RoleAgent, which may only
// use AgentService.Connect (and only as its own host).
const (
	RoleNone Role = iota
	RoleViewer
	RoleOperator
	RoleAdmin
	RoleAgent
)

func parseRole(s string) (Role, error) {
	switch s {
	case "viewer":
		return RoleViewer, nil
	case "operator":
		return RoleOperator, nil
	case "admin":
		return RoleAdmin, nil
	case "agent":
		return RoleAgent, nil
	}
	return RoleNone, fmt.Errorf("unknown role %q (want viewer, operator, admin or agent)", s)
}

// TokenEntry is one bearer token in the tokens file. Give the token's SHA-256
// (hex) rather than the token itself so the file holds no secret. An agent
// token is bound to one host: it may speak AgentService as that host only.
type TokenEntry struct {
	Name        string `json:"name"`
	Role        string `json:"role"`
	TokenSHA256 string `json:"tokenSHA256"`
	Host        string `json:"host,omitempty"`
	// Expires, if set, ends the token: calls with it are refused and its
	// open streams closed (RFC 3339, e.g. 2027-01-31T00:00:00Z).
	Expires *time.Time `json:"expires,omitempty"`
	// Labels, for an agent token, are bound to its host: they choose its
	// group unless an operator labelled the host.
	Labels map[string]string `json:"labels,omitempty"`
}

type tokenSet struct {
	entries []tokenEntry
}

type tokenEntry struct {
	name    string
	role    Role
	sum     []byte
	host    string            // agent tokens: the host id they speak for
	labels  map[string]string // agent tokens: labels bound to the host
	expires time.Time         // zero: never
}

func (e tokenEntry) expired(now time.Time) bool { return !e.expires.IsZero() && !now.Before(e.expires) }

// loadTokens reads a tokens file: a YAML list of TokenEntry.
func loadTokens(path string) (*tokenSet, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokens file: %w", err)
	}
	var raw []TokenEntry
	if err := yaml.UnmarshalStrict(b, &raw); err != nil {
		return nil, fmt.Errorf("tokens file %s: %w", path, err)
	}
	ts := &tokenSet{}
	for i, e := range raw {
		r, err := parseRole(e.Role)
		if err != nil {
			return nil, fmt.Errorf("tokens file %s: entry %d (%s): %w", path, i, e.Name, err)
		}
		sum, err := hex.DecodeString(e.TokenSHA256)
		if err != nil || len(sum) != sha256.Size {
			return nil, fmt.Errorf("tokens file %s: entry %d (%s): tokenSHA256 must be 64 hex digits", path, i, e.Name)
		}
		if e.Name == "" {
			return nil, fmt.Errorf("tokens file %s: entry %d: name is required", path, i)
		}
		switch {
		case r == RoleAgent && !policy.ValidHostID(e.Host):
			return nil, fmt.Errorf("tokens file %s: entry %d (%s): an agent token is bound to one host: give host (a host id), not %q; there is no shared agent token", path, i, e.Name, e.Host)
		case r != RoleAgent && (e.Host != "" || len(e.Labels) > 0):
			return nil, fmt.Errorf("tokens file %s: entry %d (%s): host and labels are only for role agent", path, i, e.Name)
		}
		var vs policy.Violations
		policy.ValidateLabels(&vs, "labels", e.Labels)
		if err := vs.Err(); err != nil {
			return nil, fmt.Errorf("tokens file %s: entry %d (%s): %w", path, i, e.Name, err)
		}
		te := tokenEntry{name: e.Name, role: r, sum: sum, host: e.Host, labels: e.Labels}
		if e.Expires != nil {
			te.expires = *e.Expires
		}
		ts.entries = append(ts.entries, te)
	}
	return ts, nil
}

func (ts *tokenSet) lookup(token string) (tokenEntry, bool) {
	sum := sha256.Sum256([]byte(token))
	return ts.bySum(sum[:])
}

func (ts *tokenSet) bySum(sum []byte) (tokenEntry, bool) {
	for _, e := range ts.entries {
		if subtle.ConstantTimeCompare(sum, e.sum) == 1 {
			return e, true
		}
	}
	return tokenEntry{}, false
}

// Caller is who made a request.
type Caller struct {
	Actor     string
	Role      Role
	Peer      string
	RequestID string
	// Hosts are the host ids an agent credential may speak for: a
	// certificate's common name and DNS names, or an agent token's host.
	Hosts []string
	// Labels are the labels bound in an agent credential: a certificate's
	// URI SANs "mpfleet:label:KEY=VALUE", or an agent token's labels.
	Labels map[string]string
	// Anonymous is true when the controller authenticates nobody
	// (development on loopback): every call is allowed.
	Anonymous bool

	tokenSum []byte              // the bearer token's sum, if one
	chain    []*x509.Certificate // the verified client certificate chain, if one
}

// mayBeHost reports whether the caller may speak AgentService as host id.
func (c Caller) mayBeHost(id string) bool {
	return c.Anonymous || slices.Contains(c.Hosts, id)
}

type callerKey struct{}

func callerFrom(ctx context.Context) Caller {
	c, _ := ctx.Value(callerKey{}).(Caller)
	return c
}

// authenticator identifies callers. With no tokens and no client CA every
// caller is "anonymous" with the admin role: that is only allowed on loopback
// (see Run). Its credentials come from a credStore, which reloads them.
type authenticator struct {
	creds *credStore
}

func (a *authenticator) tokens() *tokenSet {
	if a.creds == nil {
		return nil
	}
	return a.creds.tokens.Load()
}

func (a *authenticator) mtls() bool {
	if a.creds == nil {
		return false
	}
	cfg := a.creds.tls.Load()
	return cfg != nil && cfg.ClientCAs != nil
}

// methodRoles is the authorization table: the role each method of the API
// needs. A method missing here is denied to everyone (TestAuthorizationTable
// fails when a method of mpfleet.v1 has no entry). Viewer < operator <
// admin; agent credentials may call AgentService.Connect and nothing else,
// and nothing else may call it.
var methodRoles = map[string]Role{
	"/mpfleet.v1.GroupService/CreateGroup":         RoleOperator,
	"/mpfleet.v1.GroupService/GetGroup":            RoleViewer,
	"/mpfleet.v1.GroupService/ListGroups":          RoleViewer,
	"/mpfleet.v1.GroupService/UpdateGroup":         RoleOperator,
	"/mpfleet.v1.GroupService/DeleteGroup":         RoleAdmin,
	"/mpfleet.v1.GroupService/ListPolicyRevisions": RoleViewer,
	"/mpfleet.v1.GroupService/GetPolicyRevision":   RoleViewer,

	"/mpfleet.v1.HostService/GetHost":    RoleViewer,
	"/mpfleet.v1.HostService/ListHosts":  RoleViewer,
	"/mpfleet.v1.HostService/WatchHosts": RoleViewer,
	"/mpfleet.v1.HostService/PlanPolicy": RoleViewer,
	"/mpfleet.v1.HostService/DeleteHost": RoleAdmin,
	"/mpfleet.v1.HostService/UpdateHost": RoleOperator,

	"/mpfleet.v1.RolloutService/CreateRollout": RoleOperator,
	"/mpfleet.v1.RolloutService/GetRollout":    RoleViewer,
	"/mpfleet.v1.RolloutService/ListRollouts":  RoleViewer,
	"/mpfleet.v1.RolloutService/PauseRollout":  RoleOperator,
	"/mpfleet.v1.RolloutService/ResumeRollout": RoleOperator,
	"/mpfleet.v1.RolloutService/CancelRollout": RoleOperator,
	"/mpfleet.v1.RolloutService/WatchRollout":  RoleViewer,

	"/mpfleet.v1.AuditService/ListAuditEvents":  RoleViewer,
	"/mpfleet.v1.AuditService/WatchAuditEvents": RoleViewer,
	"/mpfleet.v1.AuditService/VerifyAuditLog":   RoleViewer,

	"/mpfleet.v1.AgentService/Connect": RoleAgent,

	"/mpfleet.v1.VersionService/GetVersion": RoleViewer,
}

// roleUnknown is what a method missing from the table needs: nobody has it.
const roleUnknown Role = -1

// minRole is the role a method needs: the table's, none for health and
// reflection (grpcurl and probes need no credentials), and roleUnknown for
// anything else.
func minRole(fullMethod string) Role {
	if r, ok := methodRoles[fullMethod]; ok {
		return r
	}
	svc, _, _ := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	if strings.HasPrefix(svc, "grpc.health.") || strings.HasPrefix(svc, "grpc.reflection.") {
		return RoleNone
	}
	return roleUnknown
}

func allowed(have, need Role) bool {
	switch {
	case need == RoleNone:
		return true
	case need == roleUnknown:
		return false
	case need == RoleAgent || have == RoleAgent:
		return have == need
	}
	return have >= need
}

func (a *authenticator) identify(ctx context.Context, fullMethod string) (context.Context, error) {
	c := Caller{}
	if p, ok := peer.FromContext(ctx); ok {
		c.Peer = p.Addr.String()
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if ids := md.Get("x-request-id"); len(ids) > 0 && len(ids[0]) <= 128 {
		c.RequestID = ids[0]
	} else {
		c.RequestID = uuid.NewString()
	}
	_ = grpc.SetHeader(ctx, metadata.Pairs("x-request-id", c.RequestID))

	tokens := a.tokens()
	switch {
	case tokens == nil && !a.mtls():
		c.Actor, c.Role, c.Anonymous = "anonymous", RoleAdmin, true
	default:
		if auth := md.Get("authorization"); len(auth) > 0 && tokens != nil {
			tok, ok := strings.CutPrefix(auth[0], "Bearer ")
			if !ok {
				return ctx, status.Error(codes.Unauthenticated, "authorization metadata must be \"Bearer TOKEN\"")
			}
			e, ok := tokens.lookup(strings.TrimSpace(tok))
			if !ok {
				return ctx, status.Error(codes.Unauthenticated, "unknown bearer token")
			}
			if e.expired(time.Now()) {
				return ctx, status.Errorf(codes.Unauthenticated, "token %q: %v at %s", e.name, errExpired, e.expires.Format(time.RFC3339))
			}
			sum := sha256.Sum256([]byte(strings.TrimSpace(tok)))
			c.tokenSum = sum[:]
			c.Actor, c.Role = e.name, e.role
			if e.role == RoleAgent {
				c.Actor, c.Hosts, c.Labels = "agent:"+e.host, []string{e.host}, e.labels
			}
		} else if cn, names, chain := clientCertNames(ctx); cn != "" {
			c.chain = chain
			c.Labels = certLabels(chain[0])
			// A verified client certificate identifies an agent, bound to
			// the hosts it names.
			c.Actor, c.Role = "cert:"+cn, RoleAgent
			for _, n := range append([]string{cn}, names...) {
				if policy.ValidHostID(n) && !slices.Contains(c.Hosts, n) {
					c.Hosts = append(c.Hosts, n)
				}
			}
		}
	}
	need := minRole(fullMethod)
	if need != RoleNone && c.Actor == "" {
		return ctx, status.Error(codes.Unauthenticated, "no credentials: send a bearer token or a client certificate")
	}
	if !c.Anonymous && !allowed(c.Role, need) {
		return ctx, status.Errorf(codes.PermissionDenied, "%s (role %s) may not call %s", c.Actor, c.Role, fullMethod)
	}
	return context.WithValue(ctx, callerKey{}, c), nil
}

// LabelURIPrefix starts the URI SANs that bind labels in an agent's
// certificate: "mpfleet:label:role=web".
const LabelURIPrefix = "mpfleet:label:"

// certLabels returns the labels a certificate binds; ones that are not valid
// labels are left out.
func certLabels(c *x509.Certificate) map[string]string {
	var out map[string]string
	for _, u := range c.URIs {
		kv, ok := strings.CutPrefix(u.String(), LabelURIPrefix)
		if !ok {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		var vs policy.Violations
		policy.ValidateLabels(&vs, "label", map[string]string{k: v})
		if !ok || len(vs) > 0 {
			continue
		}
		if out == nil {
			out = map[string]string{}
		}
		out[k] = v
	}
	return out
}

// clientCertNames returns the common name and DNS names of the caller's
// verified client certificate, and its verified chain.
func clientCertNames(ctx context.Context) (string, []string, []*x509.Certificate) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", nil, nil
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.PeerCertificates) == 0 {
		return "", nil, nil
	}
	c := ti.State.PeerCertificates[0]
	return c.Subject.CommonName, c.DNSNames, ti.State.VerifiedChains[0]
}

func (a *authenticator) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	ctx, err := a.identify(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return h(ctx, req)
}

type wrappedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (w wrappedStream) Context() context.Context { return w.ctx }

func (a *authenticator) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	ctx, err := a.identify(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	if a.creds != nil {
		// A stream lives as long as the credential that opened it.
		c := callerFrom(ctx)
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		defer a.creds.track(&openStream{cancel: cancel, token: c.tokenSum, chain: c.chain, actor: c.Actor})()
	}
	return h(srv, wrappedStream{ss, ctx})
}
