package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/mpfleet/mpfleet/internal/transport"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// defaultPort is the controller's port when --controller names none.
const defaultPort = "7400"

// useTLS reports whether TLS is asked for, explicitly or through a TLS flag.
func (a *app) useTLS() bool {
	return a.tls || !a.tlsInfo().Empty()
}

// tlsInfo is the TLS files and server name the flags give.
func (a *app) tlsInfo() transport.TLSInfo {
	return transport.TLSInfo{
		CertFile: a.certFile, KeyFile: a.keyFile, TrustedCAFile: a.caFile, ServerName: a.serverName,
		CALabel: "--ca-file", KeyPairLabel: "--cert-file/--key-file",
	}
}

// target is a parsed --controller value.
type target struct {
	dial     string // what grpc.NewClient gets
	host     string // host part, for TLS server name and messages
	loopback bool   // a loopback address or a Unix socket
}

// parseController parses --controller: host:port, host (port 7400),
// [v6addr]:port, or unix:/path for a local socket.
func parseController(s string) (target, error) {
	if s == "" {
		return target{}, usagef("--controller: empty address")
	}
	if strings.HasPrefix(s, "unix:") || strings.HasPrefix(s, "unix-abstract:") {
		return target{dial: s, host: "localhost", loopback: true}, nil
	}
	s = strings.TrimPrefix(s, "dns:///")
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		// No port: a bare host name or address.
		host, port = strings.Trim(s, "[]"), defaultPort
	}
	if n, err := strconv.ParseUint(port, 10, 16); host == "" || strings.ContainsAny(host, "/ ") || err != nil || n == 0 {
		return target{}, usagef("--controller %q: want host:port", s)
	}
	return target{
		dial:     net.JoinHostPort(host, port),
		host:     host,
		loopback: transport.IsLoopback(host),
	}, nil
}

// client returns the connection to the controller, opening it on first use.
func (a *app) client() (*grpc.ClientConn, error) {
	if a.conn != nil {
		return a.conn, nil
	}
	t, err := parseController(a.controller)
	if err != nil {
		return nil, err
	}
	useTLS := a.useTLS()
	if !useTLS && !t.loopback && !a.insecure {
		return nil, refusef("controller %s is not a loopback address: use --tls (with --ca-file for a private CA), or --insecure to send plaintext anyway", t.dial)
	}
	if a.token != "" && !useTLS && !t.loopback {
		return nil, refusef("refusing to send the token in plaintext to %s: use --tls", t.dial)
	}
	creds := insecure.NewCredentials()
	if useTLS {
		info := a.tlsInfo()
		if info.ServerName == "" {
			info.ServerName = t.host
		}
		cfg, err := info.ClientConfig()
		if err != nil {
			return nil, err
		}
		creds = credentials.NewTLS(cfg)
	}
	conn, err := grpc.NewClient(t.dial,
		grpc.WithTransportCredentials(creds),
		grpc.WithUserAgent("mpfleetctl"),
		grpc.WithChainUnaryInterceptor(a.unaryMetadata),
		grpc.WithChainStreamInterceptor(a.streamMetadata),
	)
	if err != nil {
		return nil, fmt.Errorf("controller %s: %w", t.dial, err)
	}
	a.conn = conn
	return conn, nil
}

// outgoing adds the per-call metadata: a fresh x-request-id and the bearer
// token.
func (a *app) outgoing(ctx context.Context) context.Context {
	kv := []string{"x-request-id", newRequestID()}
	if a.token != "" {
		kv = append(kv, "authorization", "Bearer "+a.token)
	}
	return metadata.AppendToOutgoingContext(ctx, kv...)
}

func (a *app) unaryMetadata(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return invoker(a.outgoing(ctx), method, req, reply, cc, opts...)
}

func (a *app) streamMetadata(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return streamer(a.outgoing(ctx), desc, cc, method, opts...)
}

// newRequestID returns 16 random bytes in hex.
func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

// callCtx returns the context of one unary call, bounded by --timeout.
func (a *app) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if a.timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, a.timeout)
}
