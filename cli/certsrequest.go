package cli

// certs request: a node's agent certificate from cert-manager, asked for
// from inside a Kubernetes pod: the init container of the agent DaemonSet
// (deploy/kubernetes) runs it.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mpfleet/mpfleet/internal/policy"
)

// The files "certs request" writes into --dir, as the agent's settings in
// deploy/kubernetes name them.
const (
	requestKeyFile  = "tls.key"
	requestCertFile = "tls.crt"
	requestCAFile   = "ca.crt"
)

// requestFileMode is the mode of every file "certs request" writes: the
// owner's and the group's (the pod's fsGroup, through which the agent, as
// another user, reads them), nobody else's.
const requestFileMode = 0o640

// defaultRequestTimeout bounds the wait for the certificate when --timeout
// is not given on the command line.
const defaultRequestTimeout = 2 * time.Minute

// minRequestDuration is the shortest certificate cert-manager issues.
const minRequestDuration = time.Hour

// Environment variables naming the pod that owns the CertificateRequest
// (from the downward API).
const (
	podNameEnv = "POD_NAME"
	podUIDEnv  = "POD_UID"
)

// kubeNameRe is a Kubernetes namespace name (an RFC 1123 label).
var kubeNameRe = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// certsRequestOptions are the flags of certs request.
type certsRequestOptions struct {
	dir, node          string
	issuer, issuerKind string
	namespace          string
	duration, poll     time.Duration
	kubeAPI            string
	tokenFile, caFile  string
	namespaceFile      string
}

func (a *app) certsRequestCommand() *cobra.Command {
	var o certsRequestOptions
	cmd := &cobra.Command{
		Use:   "request --dir DIR --name NODE [--issuer NAME] [--issuer-kind Issuer|ClusterIssuer] [--namespace NS] [--duration DUR] [--timeout DUR]",
		Short: "Get an agent's client certificate from cert-manager, in a Kubernetes pod",
		Long: `certs request gives the agent of a Kubernetes node a client certificate of
its own from cert-manager, as the init container of the agent DaemonSet
(deploy/kubernetes) runs it:

  1. it makes an ECDSA P-256 key and a certificate signing request for
     common name = DNS name = NODE (--name), the agent's host id;
  2. it creates a cert-manager.io/v1 CertificateRequest for it in --namespace
     (generateName mpfleet-agent-NODE-), for the issuer --issuer of kind
     --issuer-kind, usages "digital signature" and "client auth", valid
     --duration; when POD_NAME and POD_UID are set (downward API), the pod
     owns it, and Kubernetes deletes it with the pod;
  3. it reads it every --poll-interval until it is Ready, and fails when it
     is denied, invalid or failed, naming the reason and message, or when
     --timeout (default 2m here) passes first;
  4. it checks that the certificate is for its key, names NODE, is valid
     now and verifies with the CA of status.ca as a client certificate, and
     writes DIR/tls.key, DIR/tls.crt and DIR/ca.crt (mode 0640: the owner's
     and the group's), each replaced whole, all three renamed into place
     only once all are written: a failed request or write changes nothing.

It talks to the API server as the pod's service account, found as
client-go finds it in a pod (KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT,
and the token, CA and namespace under
/var/run/secrets/kubernetes.io/serviceaccount), which needs RBAC verbs
"create" and "get" on certificaterequests (API group cert-manager.io) in
the namespace. The key is written nowhere but in DIR.`,
		Example: `  mpfleetctl certs request --dir /etc/mpfleet/tls --name "$NODE_NAME" --issuer mpfleet-ca
  mpfleetctl certs request --dir /etc/mpfleet/tls --name node-1 --issuer fleet-ca --issuer-kind ClusterIssuer --timeout 5m`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			// --timeout is the global deadline of each call; given on
			// the command line, it bounds the wait for the certificate.
			timeout := defaultRequestTimeout
			if fl := cmd.Flag("timeout"); fl != nil && fl.Changed {
				timeout = a.timeout
			}
			return a.certsRequest(cmd.Context(), o, timeout)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.dir, "dir", "", "existing directory to write tls.key, tls.crt and ca.crt into (required)")
	f.StringVar(&o.node, "name", "", "the node's name: the agent's host id, the certificate's common name and DNS name (required)")
	f.StringVar(&o.issuer, "issuer", "mpfleet-ca", "the cert-manager issuer to ask")
	f.StringVar(&o.issuerKind, "issuer-kind", "Issuer", "the issuer's kind: Issuer (in --namespace) or ClusterIssuer")
	f.StringVar(&o.namespace, "namespace", "", "namespace of the CertificateRequest (default: the pod's, from --kube-namespace-file)")
	f.DurationVar(&o.duration, "duration", 8760*time.Hour, "how long the certificate is valid (at least 1h; the issuer may shorten it)")
	f.DurationVar(&o.poll, "poll-interval", 2*time.Second, "how often to read the CertificateRequest while waiting")
	f.StringVar(&o.kubeAPI, "kube-api", "", "the API server, https://HOST:PORT (default: from KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT)")
	f.StringVar(&o.tokenFile, "kube-token-file", defaultKubeTokenFile, "the service account's bearer token, read again for every call")
	f.StringVar(&o.caFile, "kube-ca-file", defaultKubeCAFile, "PEM CA certificates that verify the API server")
	f.StringVar(&o.namespaceFile, "kube-namespace-file", defaultKubeNSFile, "file holding the pod's namespace, the default of --namespace")
	return cmd
}

// certsRequest runs certs request.
func (a *app) certsRequest(ctx context.Context, o certsRequestOptions, timeout time.Duration) error {
	owner, err := a.checkRequestOptions(&o)
	if err != nil {
		return err
	}
	if err := checkWritableDir(o.dir); err != nil {
		return err
	}
	kc, err := newKubeClient(o.kubeAPI, o.tokenFile, o.caFile)
	if err != nil {
		return err
	}
	defer kc.close()
	if o.namespace == "" {
		if o.namespace, err = readNamespaceFile(o.namespaceFile); err != nil {
			return err
		}
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: o.node},
		DNSNames: []string{o.node},
	}, key)
	if err != nil {
		return fmt.Errorf("certificate signing request: %w", err)
	}
	cr := &certificateRequest{
		APIVersion: certManagerVersion,
		Kind:       "CertificateRequest",
		Metadata: kubeMeta{
			GenerateName: "mpfleet-agent-" + o.node + "-",
			Namespace:    o.namespace,
			Labels:       map[string]string{"app.kubernetes.io/name": "mpfleet-agent"},
		},
		Spec: crSpec{
			IssuerRef: issuerRef{Name: o.issuer, Kind: o.issuerKind, Group: certManagerGroup},
			Request:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}),
			Duration:  formatDuration(o.duration),
			Usages:    []string{"digital signature", "client auth"},
		},
	}
	if owner != nil {
		cr.Metadata.OwnerReferences = []ownerReference{*owner}
	}
	created, err := kc.create(ctx, cr)
	if err != nil {
		return err
	}
	name := created.Metadata.Name
	a.printf("CertificateRequest %s/%s for host %s, issuer %s/%s: waiting until it is issued\n", o.namespace, name, o.node, o.issuerKind, o.issuer)

	issued, err := a.waitIssued(ctx, kc, o, name, timeout)
	if err != nil {
		return err
	}
	leaf, certPEM, caPEM, err := checkIssued(issued.Status, o.node, key, a.now())
	if err != nil {
		return fmt.Errorf("CertificateRequest %s/%s: %w", o.namespace, name, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("key: %w", err)
	}
	files := []outFile{
		{filepath.Join(o.dir, requestKeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), requestFileMode},
		{filepath.Join(o.dir, requestCertFile), certPEM, requestFileMode},
		{filepath.Join(o.dir, requestCAFile), caPEM, requestFileMode},
	}
	if err := writeFiles(files, true); err != nil {
		return err
	}
	a.printf("wrote %s, %s and %s: certificate for host %s from %s/%s, valid until %s\n",
		files[0].path, files[1].path, files[2].path, o.node, o.issuerKind, o.issuer, leaf.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// checkRequestOptions checks the flags and the environment, fills in the
// API server's address, and returns the pod that is to own the request, if
// any.
func (a *app) checkRequestOptions(o *certsRequestOptions) (*ownerReference, error) {
	if o.dir == "" {
		return nil, usagef("certs request: --dir is required (where to write tls.key, tls.crt and ca.crt)")
	}
	var vs policy.Violations
	policy.ValidateHostID(&vs, "--name", o.node)
	if err := vs.Err(); err != nil {
		return nil, usagef("certs request: %v", err)
	}
	switch {
	case strings.TrimSpace(o.issuer) == "":
		return nil, usagef("--issuer: must not be empty")
	case o.issuerKind != "Issuer" && o.issuerKind != "ClusterIssuer":
		return nil, usagef("--issuer-kind %q: want Issuer or ClusterIssuer", o.issuerKind)
	case o.namespace != "" && !kubeNameRe.MatchString(o.namespace):
		return nil, usagef("--namespace %q: not a Kubernetes namespace name", o.namespace)
	case o.duration < minRequestDuration:
		return nil, usagef("--duration %s: must be at least %s", formatDuration(o.duration), formatDuration(minRequestDuration))
	case o.poll <= 0:
		return nil, usagef("--poll-interval %v: must be positive", o.poll)
	}
	if o.kubeAPI == "" {
		host, port := a.getenv(kubeServiceHostEnv), a.getenv(kubeServicePortEnv)
		if host == "" || port == "" {
			return nil, usagef("certs request: %s and %s are not set (not in a Kubernetes pod?): give --kube-api", kubeServiceHostEnv, kubeServicePortEnv)
		}
		o.kubeAPI = "https://" + net.JoinHostPort(host, port)
	}
	pod, uid := a.getenv(podNameEnv), a.getenv(podUIDEnv)
	switch {
	case pod == "" && uid == "":
		return nil, nil
	case pod == "" || uid == "":
		return nil, usagef("certs request: %s=%q and %s=%q: set both (the pod that owns the CertificateRequest) or neither", podNameEnv, pod, podUIDEnv, uid)
	}
	return &ownerReference{APIVersion: "v1", Kind: "Pod", Name: pod, UID: uid}, nil
}

// checkWritableDir checks that dir is a directory files can be made in.
func checkWritableDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("--dir: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("--dir %s: not a directory", dir)
	}
	f, err := os.CreateTemp(dir, ".certs-request-*")
	if err != nil {
		return fmt.Errorf("--dir %s: not writable: %w", dir, err)
	}
	_ = f.Close()
	return os.Remove(f.Name())
}

// readNamespaceFile reads the pod's namespace.
func readNamespaceFile(file string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--kube-namespace-file: %w (or give --namespace)", err)
	}
	ns := strings.TrimSpace(string(b))
	if !kubeNameRe.MatchString(ns) {
		return "", fmt.Errorf("--kube-namespace-file %s: %q is not a Kubernetes namespace name", file, ns)
	}
	return ns, nil
}

// waitIssued reads the CertificateRequest name until it is Ready, fails
// for good, or timeout (0: none) passes. Errors that may pass (network
// errors, HTTP 429 and 5xx) are tried again.
func (a *app) waitIssued(ctx context.Context, kc *kubeClient, o certsRequestOptions, name string, timeout time.Duration) (*certificateRequest, error) {
	wctx, cancel := ctx, context.CancelFunc(func() {})
	if timeout > 0 {
		wctx, cancel = context.WithTimeout(ctx, timeout)
	}
	defer cancel()
	id := o.namespace + "/" + name
	state, lastErr := "no conditions yet", error(nil)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-wctx.Done():
			if err := ctx.Err(); err != nil {
				return nil, fmt.Errorf("CertificateRequest %s: %w", id, err)
			}
			msg := fmt.Sprintf("CertificateRequest %s not issued after %s (%s): is %s/%s ready, and does an approver approve its requests?",
				id, formatDuration(timeout), state, o.issuerKind, o.issuer)
			if lastErr != nil {
				msg += "; the last read failed: " + lastErr.Error()
			}
			return nil, errors.New(msg)
		case <-timer.C:
		}
		cr, err := kc.get(wctx, o.namespace, name)
		switch {
		case err == nil:
			lastErr = nil
			ready, err := requestOutcome(cr.Status)
			if err != nil {
				return nil, fmt.Errorf("CertificateRequest %s was not issued: %w", id, err)
			}
			if ready {
				return cr, nil
			}
			state = describeRequest(cr.Status)
		case wctx.Err() != nil:
			// Cut short by the deadline or a signal: said above.
		case transientKubeError(err):
			lastErr = err
		default:
			return nil, err
		}
		timer.Reset(o.poll)
	}
}

// requestOutcome says whether a CertificateRequest is issued (Ready=True),
// or fails for good: Denied=True, InvalidRequest=True, or Ready with
// reason Denied or Failed.
func requestOutcome(s *crStatus) (bool, error) {
	if c := s.condition("Denied"); c.Status == "True" {
		return false, fmt.Errorf("denied (%s): %s", c.Reason, c.Message)
	}
	if c := s.condition("InvalidRequest"); c.Status == "True" {
		return false, fmt.Errorf("invalid (%s): %s", c.Reason, c.Message)
	}
	c := s.condition("Ready")
	switch {
	case c.Status == "True":
		return true, nil
	case c.Reason == "Denied":
		return false, fmt.Errorf("denied (condition Ready=%s, reason Denied): %s", c.Status, c.Message)
	case c.Status == "False" && c.Reason == "Failed":
		return false, fmt.Errorf("failed (condition Ready=False, reason Failed): %s", c.Message)
	}
	return false, nil
}

// describeRequest says where a pending CertificateRequest is.
func describeRequest(s *crStatus) string {
	c := s.condition("Ready")
	if c.Type == "" {
		return "no Ready condition yet"
	}
	d := fmt.Sprintf("Ready=%s, reason %s", c.Status, c.Reason)
	if c.Message != "" {
		d += ": " + c.Message
	}
	if a := s.condition("Approved"); a.Type == "" {
		d += "; not approved yet"
	}
	return d
}

// checkIssued checks the certificate of an issued CertificateRequest: for
// key, naming node, valid at now, and verifying with the CA of status.ca as
// a client certificate. It returns the certificate, and the certificates
// and the CA re-encoded as PEM.
func checkIssued(s *crStatus, node string, key *ecdsa.PrivateKey, now time.Time) (*x509.Certificate, []byte, []byte, error) {
	chain, err := parseCertsPEM(s.Certificate)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("status.certificate: %w", err)
	}
	if len(s.CA) == 0 {
		return nil, nil, nil, errors.New("no status.ca: the issuer must return its CA (a CA issuer does)")
	}
	cas, err := parseCertsPEM(s.CA)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("status.ca: %w", err)
	}
	leaf := chain[0]
	if !key.PublicKey.Equal(leaf.PublicKey) {
		return nil, nil, nil, errors.New("the issued certificate is not for this key")
	}
	if leaf.Subject.CommonName != node {
		return nil, nil, nil, fmt.Errorf("the issued certificate names %q, want common name %s", leaf.Subject.String(), node)
	}
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return nil, nil, nil, fmt.Errorf("the issued certificate is valid from %s to %s, not now (%s): check the clocks",
			leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range cas {
		roots.AddCert(c)
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, nil, nil, fmt.Errorf("the issued certificate does not verify with the CA of status.ca as a TLS client certificate: %w", err)
	}
	return leaf, encodeCertsPEM(chain), encodeCertsPEM(cas), nil
}

// parseCertsPEM parses PEM certificates: one or more, and nothing else.
func parseCertsPEM(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := b; len(strings.TrimSpace(string(rest))) > 0; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("not PEM")
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("a PEM %q block, want CERTIFICATE", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("empty")
	}
	return certs, nil
}

// encodeCertsPEM encodes certificates as PEM.
func encodeCertsPEM(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}
