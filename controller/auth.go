package controller

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"os"
	"strings"

	"github.com/google/uuid"
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

// Roles, each including the ones before it except RoleAgent, which may only
// use AgentService.
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
// (hex) rather than the token itself so the file holds no secret.
type TokenEntry struct {
	Name        string `json:"name"`
	Role        string `json:"role"`
	TokenSHA256 string `json:"tokenSHA256"`
}

type tokenSet struct {
	entries []tokenEntry
}

type tokenEntry struct {
	name string
	role Role
	sum  []byte
}

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
		ts.entries = append(ts.entries, tokenEntry{name: e.Name, role: r, sum: sum})
	}
	return ts, nil
}

func (ts *tokenSet) lookup(token string) (tokenEntry, bool) {
	sum := sha256.Sum256([]byte(token))
	for _, e := range ts.entries {
		if subtle.ConstantTimeCompare(sum[:], e.sum) == 1 {
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
}

type callerKey struct{}

func callerFrom(ctx context.Context) Caller {
	c, _ := ctx.Value(callerKey{}).(Caller)
	return c
}

// authenticator identifies callers. With no tokens and no client CA every
// caller is "anonymous" with the admin role: that is only allowed on loopback
// (see Run).
type authenticator struct {
	tokens *tokenSet // nil: no bearer tokens
	mtls   bool      // client certificates verified against a CA
}

// minRole is the role each method needs.
func minRole(fullMethod string) Role {
	svc, method, _ := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	switch {
	case svc == "mpfleet.v1.AgentService":
		return RoleAgent
	case strings.HasPrefix(svc, "grpc.health.") || strings.HasPrefix(svc, "grpc.reflection."):
		return RoleNone
	case strings.HasPrefix(method, "Get"), strings.HasPrefix(method, "List"),
		strings.HasPrefix(method, "Watch"), strings.HasPrefix(method, "Verify"),
		method == "PlanPolicy":
		return RoleViewer
	case svc == "mpfleet.v1.GroupService" && strings.HasPrefix(method, "Delete"):
		return RoleAdmin
	default:
		return RoleOperator
	}
}

func allowed(have, need Role) bool {
	if need == RoleNone {
		return true
	}
	if need == RoleAgent || have == RoleAgent {
		return have == RoleAgent || have == RoleAdmin
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

	switch {
	case a.tokens == nil && !a.mtls:
		c.Actor, c.Role = "anonymous", RoleAdmin
	default:
		if auth := md.Get("authorization"); len(auth) > 0 && a.tokens != nil {
			tok, ok := strings.CutPrefix(auth[0], "Bearer ")
			if !ok {
				return ctx, status.Error(codes.Unauthenticated, "authorization metadata must be \"Bearer TOKEN\"")
			}
			e, ok := a.tokens.lookup(strings.TrimSpace(tok))
			if !ok {
				return ctx, status.Error(codes.Unauthenticated, "unknown bearer token")
			}
			c.Actor, c.Role = e.name, e.role
		} else if cn := clientCertName(ctx); cn != "" {
			// A verified client certificate identifies an agent.
			c.Actor, c.Role = "cert:"+cn, RoleAgent
		}
	}
	need := minRole(fullMethod)
	if need != RoleNone && c.Actor == "" {
		return ctx, status.Error(codes.Unauthenticated, "no credentials: send a bearer token or a client certificate")
	}
	if !allowed(c.Role, need) {
		return ctx, status.Errorf(codes.PermissionDenied, "%s may not call %s", c.Actor, fullMethod)
	}
	return context.WithValue(ctx, callerKey{}, c), nil
}

func clientCertName(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ""
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.PeerCertificates) == 0 {
		return ""
	}
	return ti.State.PeerCertificates[0].Subject.CommonName
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
	return h(srv, wrappedStream{ss, ctx})
}
