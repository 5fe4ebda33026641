package transport

import (
	"context"
	"errors"
	"net"

	"google.golang.org/grpc/credentials"
)

// reloadingCreds are a ClientReloader's gRPC transport credentials: each
// handshake is that of gRPC's TLS credentials for the configuration in
// force at that moment.
type reloadingCreds struct{ r *ClientReloader }

func (c *reloadingCreds) ClientHandshake(ctx context.Context, authority string, rawConn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	_, creds := c.r.current()
	return creds.ClientHandshake(ctx, authority, rawConn)
}

func (c *reloadingCreds) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("transport: a client's reloading TLS credentials cannot serve")
}

// Info is that of gRPC's TLS credentials in force, with the TLSInfo's
// ServerName, which gRPC sends as the authority and ClientHandshake
// verifies the server's certificate against.
func (c *reloadingCreds) Info() credentials.ProtocolInfo {
	c.r.mu.Lock()
	defer c.r.mu.Unlock()
	return c.r.creds.Info()
}

func (c *reloadingCreds) Clone() credentials.TransportCredentials {
	return &reloadingCreds{r: c.r}
}

// OverrideServerName implements the deprecated method of
// credentials.TransportCredentials: the name is TLSInfo.ServerName.
func (c *reloadingCreds) OverrideServerName(string) error {
	return errors.New("transport: the server name of reloading TLS credentials is TLSInfo.ServerName")
}
