// Package transport holds what mpfleet's programs share about their
// connections: TLS configurations built from certificate, key and CA files
// (TLSInfo, after etcd's client/pkg/transport), for servers and clients
// alike, a client's that follows its files as they change (ClientReloader),
// and the loopback check that decides where plaintext is allowed.
package transport

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// MinVersion is the oldest TLS version any mpfleet endpoint speaks.
const MinVersion = tls.VersionTLS12

// TLSInfo names the files of one end's TLS configuration. A server gets
// ServerConfig, a client ClientConfig; both read the files anew on every
// call, so a caller that reloads calls again.
type TLSInfo struct {
	// CertFile and KeyFile are this end's certificate and key (PEM): a
	// server's certificate, or a client's for mutual TLS. Either both or
	// neither.
	CertFile, KeyFile string
	// TrustedCAFile is a CA bundle (PEM): a client verifies the server's
	// certificate against it (empty: the system roots), a server verifies
	// client certificates (empty: it asks for none).
	TrustedCAFile string
	// ClientAuth is what a server with a TrustedCAFile demands of clients:
	// the zero value verifies a certificate if one is given
	// (tls.VerifyClientCertIfGiven), tls.RequireAndVerifyClientCert demands
	// one.
	ClientAuth tls.ClientAuthType
	// ServerName is the name a client verifies the server's certificate
	// against (empty: the host it dials).
	ServerName string

	// CALabel and KeyPairLabel name the files in errors, typically the
	// flags that gave them (default "CA file" and "key pair").
	CALabel, KeyPairLabel string
}

// Empty reports whether no file and no server name is given: no TLS.
func (i TLSInfo) Empty() bool {
	return i.CertFile == "" && i.KeyFile == "" && i.TrustedCAFile == "" && i.ServerName == ""
}

// ServerConfig returns a server's configuration: its certificate and, with
// a TrustedCAFile, the verification of client certificates.
func (i TLSInfo) ServerConfig() (*tls.Config, error) {
	if i.CertFile == "" || i.KeyFile == "" {
		return nil, fmt.Errorf("%s: a server needs a certificate and a key", i.keyPairLabel())
	}
	cert, err := i.keyPair()
	if err != nil {
		return nil, err
	}
	c := &tls.Config{MinVersion: MinVersion, Certificates: []tls.Certificate{cert}}
	if i.TrustedCAFile != "" {
		if c.ClientCAs, err = i.pool(); err != nil {
			return nil, err
		}
		c.ClientAuth = i.ClientAuth
		if c.ClientAuth == tls.NoClientCert {
			c.ClientAuth = tls.VerifyClientCertIfGiven
		}
	}
	return c, nil
}

// ClientConfig returns a client's configuration: the roots to verify the
// server with, the name to verify it under and, for mutual TLS, the
// client's certificate.
func (i TLSInfo) ClientConfig() (*tls.Config, error) {
	if (i.CertFile == "") != (i.KeyFile == "") {
		return nil, fmt.Errorf("%s: a certificate and a key go together", i.keyPairLabel())
	}
	c := &tls.Config{MinVersion: MinVersion, ServerName: i.ServerName}
	if i.TrustedCAFile != "" {
		pool, err := i.pool()
		if err != nil {
			return nil, err
		}
		c.RootCAs = pool
	}
	if i.CertFile != "" {
		cert, err := i.keyPair()
		if err != nil {
			return nil, err
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// DynamicServerConfig returns a server configuration whose every handshake
// takes the configuration current returns at that moment, so that
// certificates and client CAs reload without a restart.
func DynamicServerConfig(current func() *tls.Config) *tls.Config {
	return &tls.Config{
		MinVersion: MinVersion,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return current(), nil
		},
	}
}

// LoadCertPool reads a CA bundle (PEM). label names the file in errors.
func LoadCertPool(label, path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", label, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s %s: no PEM certificates", label, path)
	}
	return pool, nil
}

func (i TLSInfo) pool() (*x509.CertPool, error) {
	label := i.CALabel
	if label == "" {
		label = "CA file"
	}
	return LoadCertPool(label, i.TrustedCAFile)
}

func (i TLSInfo) keyPair() (tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(i.CertFile, i.KeyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%s: %w", i.keyPairLabel(), err)
	}
	return cert, nil
}

func (i TLSInfo) keyPairLabel() string {
	if i.KeyPairLabel == "" {
		return "key pair"
	}
	return i.KeyPairLabel
}
