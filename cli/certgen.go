package cli

// certgen: the X.509 work of "mpfleetctl certs" — a private CA, the
// controller's server certificate and agents' client certificates, ECDSA
// P-256, from the standard library only.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// The files of a certs directory besides the agents' HOST.pem and
// HOST-key.pem.
const (
	caCertFile     = "ca.pem"
	caKeyFile      = "ca-key.pem"
	serverCertFile = "server.pem"
	serverKeyFile  = "server-key.pem"
)

// backdate is how far before now a certificate becomes valid, so that hosts
// whose clocks are a little behind accept it.
const backdate = time.Hour

// certSpec is a certificate to make.
type certSpec struct {
	commonName string
	ips        []net.IP
	dnsNames   []string
	uris       []*url.URL
	// isCA makes a CA certificate; otherwise usage is its extended key usage.
	isCA  bool
	usage x509.ExtKeyUsage
	// notAfter ends its validity (NotBefore is backdate before now).
	notBefore, notAfter time.Time
}

// keyPair is a certificate and its key, parsed and PEM-encoded.
type keyPair struct {
	cert    *x509.Certificate
	key     crypto.Signer
	certPEM []byte
	keyPEM  []byte
}

// makeCert makes a fresh ECDSA P-256 key and a certificate for spec, signed
// by parent and its key, or self-signed when parent is nil.
func makeCert(spec certSpec, parent *x509.Certificate, parentKey crypto.Signer) (keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return keyPair{}, fmt.Errorf("key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return keyPair{}, fmt.Errorf("serial number: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: spec.commonName},
		NotBefore:    spec.notBefore,
		NotAfter:     spec.notAfter,
		IPAddresses:  spec.ips,
		DNSNames:     spec.dnsNames,
		URIs:         spec.uris,
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	if spec.isCA {
		tmpl.Subject.Organization = []string{"mpfleet"}
		tmpl.KeyUsage |= x509.KeyUsageCertSign | x509.KeyUsageCRLSign
		tmpl.BasicConstraintsValid, tmpl.IsCA, tmpl.MaxPathLenZero = true, true, true
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{spec.usage}
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return keyPair{}, fmt.Errorf("certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return keyPair{}, fmt.Errorf("certificate: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return keyPair{}, fmt.Errorf("key: %w", err)
	}
	return keyPair{
		cert:    cert,
		key:     key,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}),
	}, nil
}

// loadCA reads dir's ca.pem and ca-key.pem and checks that they belong
// together and that the CA is valid at now.
func loadCA(dir string, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	certFile, keyFile := filepath.Join(dir, caCertFile), filepath.Join(dir, caKeyFile)
	cert, err := readParsed(certFile, "CERTIFICATE", x509.ParseCertificate)
	if err != nil {
		return nil, nil, err
	}
	if !cert.IsCA {
		return nil, nil, fmt.Errorf("%s: not a CA certificate", certFile)
	}
	if now.After(cert.NotAfter) {
		return nil, nil, fmt.Errorf("%s: the CA expired at %s", certFile, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	k, err := readParsed(keyFile, "PRIVATE KEY", x509.ParsePKCS8PrivateKey)
	if err != nil {
		return nil, nil, err
	}
	key, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("%s: not a signing key", keyFile)
	}
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(cert.PublicKey) {
		return nil, nil, fmt.Errorf("%s is not the key of %s", keyFile, certFile)
	}
	return cert, key, nil
}

// readPEM returns the contents of the first PEM block of file, which must be
// readParsed reads file's one PEM block of type typ and parses it; a parse
// error names the file.
func readParsed[T any](file, typ string, parse func([]byte) (T, error)) (T, error) {
	b, err := readPEM(file, typ)
	if err != nil {
		var zero T
		return zero, err
	}
	v, err := parse(b)
	if err != nil {
		return v, fmt.Errorf("%s: %w", file, err)
	}
	return v, nil
}

// of type typ.
func readPEM(file, typ string) ([]byte, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s: no such file (run \"mpfleetctl certs init\" first, or give its --dir)", file)
		}
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != typ {
		return nil, fmt.Errorf("%s: no PEM %s block", file, typ)
	}
	return block.Bytes, nil
}

// outFile is a file to write.
type outFile struct {
	path string
	data []byte
	mode fs.FileMode
}

// writeFiles writes files, none of which may exist unless force. Nothing is
// written when one is refused. Each is written to a temporary file beside
// it, with its mode from the start (a forced overwrite also corrects the
// mode), and the files are renamed into place only once all are written: a
// failure to write one leaves the files that were there as they were.
func writeFiles(files []outFile, force bool) error {
	if !force {
		for _, f := range files {
			if _, err := os.Lstat(f.path); err == nil {
				return fmt.Errorf("%s exists: not overwritten (--force replaces it)", f.path)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	tmps := make([]string, len(files))
	defer func() {
		for _, t := range tmps {
			if t != "" {
				_ = os.Remove(t)
			}
		}
	}()
	for i, f := range files {
		tmp, err := writeTempFile(f)
		tmps[i] = tmp
		if err != nil {
			return fmt.Errorf("%s: %w", f.path, err)
		}
	}
	for i, f := range files {
		if err := os.Rename(tmps[i], f.path); err != nil {
			return err
		}
		tmps[i] = ""
	}
	return nil
}

// writeTempFile writes f's data, synced, with f's mode, to a new temporary file
// beside f.path, and returns its name (also on an error, when it was made).
func writeTempFile(f outFile) (string, error) {
	tmp, err := os.CreateTemp(filepath.Dir(f.path), "."+filepath.Base(f.path)+".*")
	if err != nil {
		return "", err
	}
	err = tmp.Chmod(f.mode)
	if err == nil {
		_, err = tmp.Write(f.data)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	return tmp.Name(), err
}
