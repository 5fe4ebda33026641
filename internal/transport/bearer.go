package transport

import "context"

// Bearer is gRPC per-call credentials that send "authorization: Bearer
// Token" with every call. With Secure, gRPC refuses to send them over a
// connection without transport security.
type Bearer struct {
	Token  string
	Secure bool
}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (b Bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.Token}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials.
func (b Bearer) RequireTransportSecurity() bool { return b.Secure }
