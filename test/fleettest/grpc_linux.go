package fleettest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/mpfleet/mpfleet/internal/transport"
	"github.com/mpfleet/mpfleet/test/lab"
)

// CAPool returns a certificate pool holding the fleet's CA.
func (f *Fleet) CAPool() (*x509.CertPool, error) {
	pem, err := os.ReadFile(f.PKI.CA)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no certificate", f.PKI.CA)
	}
	return pool, nil
}

// OperatorConn opens a gRPC connection to the controller as the operator
// (TLS with the fleet's CA and the bearer token), dialled from inside the
// namespace of h. The caller closes it.
func (f *Fleet) OperatorConn(h lab.Host) (*grpc.ClientConn, error) {
	return f.conn(h, nil, grpc.WithPerRPCCredentials(transport.Bearer{Token: f.PKI.Token, Secure: true}))
}

// AgentConn opens a gRPC connection to the controller with the agent
// certificate of h (mutual TLS), dialled from inside the namespace of h:
// what a forged or broken agent on that host could do. The caller closes
// it.
func (f *Fleet) AgentConn(h lab.Host) (*grpc.ClientConn, error) {
	kp, ok := f.PKI.Agents[h]
	if !ok {
		return nil, fmt.Errorf("fleettest: no agent certificate for %s", h)
	}
	cert, err := tls.LoadX509KeyPair(kp.Cert, kp.Key)
	if err != nil {
		return nil, err
	}
	return f.conn(h, []tls.Certificate{cert})
}

// conn opens a gRPC connection to the controller from inside the namespace
// of h, trusting the fleet's CA and presenting certs.
func (f *Fleet) conn(h lab.Host, certs []tls.Certificate, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	pool, err := f.CAPool()
	if err != nil {
		return nil, err
	}
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		var c net.Conn
		err := f.Lab.Do(h, func() (err error) {
			var d net.Dialer
			c, err = d.DialContext(ctx, "tcp", addr)
			return err
		})
		return c, err
	}
	return grpc.NewClient("passthrough:///"+f.ControllerAddr(), append([]grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, Certificates: certs, MinVersion: tls.VersionTLS12})),
		grpc.WithContextDialer(dial),
	}, opts...)...)
}
