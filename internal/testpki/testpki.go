// Package testpki makes throwaway X.509 certificates and bearer tokens for
// tests and the demo: a private CA, server certificates with IP and DNS
// subject alternative names, and client certificates whose common name is
// the identity they prove (an agent's host id). Keys are ECDSA P-256, made
// fresh in memory; nothing here is for production use.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// lifetime is how long issued certificates are valid; NotBefore is an hour
// back so that clocks a little apart agree.
const lifetime = 24 * time.Hour

// CA is a private certificate authority.
type CA struct {
	Cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// PEM is the CA certificate, PEM-encoded, for a trust bundle.
	PEM []byte
}

// NewCA makes a CA with a fresh key, named name.
func NewCA(name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("testpki: CA key: %w", err)
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"mpfleet test"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("testpki: CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("testpki: CA certificate: %w", err)
	}
	return &CA{Cert: cert, key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// Leaf says what certificate Issue makes.
type Leaf struct {
	// CommonName is the subject's common name: for a client certificate,
	// the identity it proves (mpfleet agents: the host id).
	CommonName string
	// IPs and DNSNames are the subject alternative names a server
	// certificate is valid for.
	IPs      []netip.Addr
	DNSNames []string
	// Server and Client select the extended key usages. Neither means
	// both.
	Server, Client bool
	// Labels are bound in the certificate as URI SANs
	// "mpfleet:label:KEY=VALUE" (an agent's group-choosing labels).
	Labels map[string]string
}

// Issue makes a key and a certificate for l signed by the CA, and returns
// both PEM-encoded.
func (ca *CA) Issue(l Leaf) (certPEM, keyPEM []byte, err error) {
	if l.CommonName == "" {
		return nil, nil, errors.New("testpki: a certificate needs a common name")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("testpki: key: %w", err)
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, nil, err
	}
	usage := []x509.ExtKeyUsage{}
	if l.Server || !l.Client {
		usage = append(usage, x509.ExtKeyUsageServerAuth)
	}
	if l.Client || !l.Server {
		usage = append(usage, x509.ExtKeyUsageClientAuth)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: l.CommonName},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(lifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  usage,
		DNSNames:     l.DNSNames,
	}
	for _, a := range l.IPs {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(a.AsSlice()))
	}
	for _, k := range slices.Sorted(maps.Keys(l.Labels)) {
		u, err := url.Parse("mpfleet:label:" + k + "=" + l.Labels[k])
		if err != nil {
			return nil, nil, fmt.Errorf("testpki: label %s: %w", k, err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("testpki: certificate for %s: %w", l.CommonName, err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("testpki: key for %s: %w", l.CommonName, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// WriteCA writes the CA certificate to dir/ca.pem and returns the path.
func (ca *CA) WriteCA(dir string) (string, error) {
	p := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(p, ca.PEM, 0o644); err != nil {
		return "", fmt.Errorf("testpki: %w", err)
	}
	return p, nil
}

// WriteLeaf issues l and writes dir/NAME.pem and dir/NAME-key.pem (the
// key readable by its owner only), returning both paths.
func (ca *CA) WriteLeaf(dir, name string, l Leaf) (certFile, keyFile string, err error) {
	c, k, err := ca.Issue(l)
	if err != nil {
		return "", "", err
	}
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	if err := os.WriteFile(certFile, c, 0o644); err != nil {
		return "", "", fmt.Errorf("testpki: %w", err)
	}
	if err := os.WriteFile(keyFile, k, 0o600); err != nil {
		return "", "", fmt.Errorf("testpki: %w", err)
	}
	return certFile, keyFile, nil
}

// Token returns a fresh random bearer token and its SHA-256 in hex, the
// form a tokens file holds.
func Token() (token, sha256Hex string, err error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", fmt.Errorf("testpki: token: %w", err)
	}
	token = base64.RawURLEncoding.EncodeToString(b[:])
	sum := sha256.Sum256([]byte(token))
	return token, hex.EncodeToString(sum[:]), nil
}

func serialNumber() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("testpki: serial number: %w", err)
	}
	return n, nil
}
