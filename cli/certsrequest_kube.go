package cli

// certsrequest_kube: the little of the Kubernetes API "certs request"
// needs, over HTTPS with the pod's service account, without client-go:
// create and get one cert-manager CertificateRequest.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// The in-cluster defaults, as client-go's rest.InClusterConfig has them.
const (
	serviceAccountDir     = "/var/run/secrets/kubernetes.io/serviceaccount"
	defaultKubeTokenFile  = serviceAccountDir + "/token"
	defaultKubeCAFile     = serviceAccountDir + "/ca.crt"
	defaultKubeNSFile     = serviceAccountDir + "/namespace"
	kubeServiceHostEnv    = "KUBERNETES_SERVICE_HOST"
	kubeServicePortEnv    = "KUBERNETES_SERVICE_PORT"
	kubeRequestTimeout    = 30 * time.Second
	kubeMaxResponseLength = 4 << 20
)

// cert-manager's API group and the resource "certs request" uses.
const (
	certManagerGroup   = "cert-manager.io"
	certManagerVersion = certManagerGroup + "/v1"
	certRequests       = "certificaterequests"
)

// certificateRequest is a cert-manager.io/v1 CertificateRequest: the fields
// "certs request" writes and reads.
type certificateRequest struct {
	APIVersion string    `json:"apiVersion"`
	Kind       string    `json:"kind"`
	Metadata   kubeMeta  `json:"metadata"`
	Spec       crSpec    `json:"spec"`
	Status     *crStatus `json:"status,omitempty"`
}

// kubeMeta is an object's metadata.
type kubeMeta struct {
	Name            string            `json:"name,omitempty"`
	GenerateName    string            `json:"generateName,omitempty"`
	Namespace       string            `json:"namespace,omitempty"`
	Labels          map[string]string `json:"labels,omitempty"`
	OwnerReferences []ownerReference  `json:"ownerReferences,omitempty"`
}

// ownerReference makes an object garbage of its owner's deletion.
type ownerReference struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Name       string `json:"name"`
	UID        string `json:"uid"`
}

// crSpec is a CertificateRequest's spec.
type crSpec struct {
	IssuerRef issuerRef `json:"issuerRef"`
	Request   []byte    `json:"request"` // a PEM CSR, base64 in JSON
	Duration  string    `json:"duration,omitempty"`
	Usages    []string  `json:"usages,omitempty"`
}

// issuerRef names a cert-manager issuer.
type issuerRef struct {
	Name  string `json:"name"`
	Kind  string `json:"kind"`
	Group string `json:"group"`
}

// crStatus is a CertificateRequest's status.
type crStatus struct {
	Conditions  []crCondition `json:"conditions,omitempty"`
	Certificate []byte        `json:"certificate,omitempty"` // PEM, base64 in JSON
	CA          []byte        `json:"ca,omitempty"`          // PEM, base64 in JSON
}

// crCondition is one of a CertificateRequest's conditions: Ready, Approved,
// Denied, InvalidRequest.
type crCondition struct {
	Type    string `json:"type"`
	Status  string `json:"status"`
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
}

// condition returns the condition of type typ, or the zero condition.
func (s *crStatus) condition(typ string) crCondition {
	if s != nil {
		for _, c := range s.Conditions {
			if c.Type == typ {
				return c
			}
		}
	}
	return crCondition{}
}

// kubeStatus is the Status object the API server answers an error with.
type kubeStatus struct {
	Kind    string `json:"kind"`
	Message string `json:"message"`
	Reason  string `json:"reason"`
}

// kubeClient calls the Kubernetes API server with a service account's
// token, which it reads again for every call (kubelet rotates projected
// tokens while the pod runs).
type kubeClient struct {
	base      *url.URL
	tokenFile string
	http      *http.Client
}

// newKubeClient returns a client of the API server at api (https://host:port)
// that verifies it with the CA certificates in caFile and authenticates with
// the token in tokenFile, which must be there now.
func newKubeClient(api, tokenFile, caFile string) (*kubeClient, error) {
	u, err := url.Parse(api)
	if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return nil, usagef("--kube-api %q: want https://HOST[:PORT], the API server (a token is never sent in plaintext)", api)
	}
	u.Path = ""
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("--kube-ca-file: %w%s", err, inPodHint(err))
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--kube-ca-file %s: no PEM certificate", caFile)
	}
	k := &kubeClient{
		base:      u,
		tokenFile: tokenFile,
		http: &http.Client{Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
			TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout: 10 * time.Second,
			ForceAttemptHTTP2:   true,
		}},
	}
	if _, err := k.token(); err != nil {
		return nil, err
	}
	return k, nil
}

// close releases the client's idle connections.
func (k *kubeClient) close() { k.http.CloseIdleConnections() }

// token reads the bearer token.
func (k *kubeClient) token() (string, error) {
	b, err := os.ReadFile(k.tokenFile)
	if err != nil {
		return "", fmt.Errorf("--kube-token-file: %w%s", err, inPodHint(err))
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" || strings.ContainsAny(tok, " \t\r\n") {
		return "", fmt.Errorf("--kube-token-file %s: no bearer token in it", k.tokenFile)
	}
	return tok, nil
}

// inPodHint explains a missing service account file.
func inPodHint(err error) string {
	if errors.Is(err, fs.ErrNotExist) {
		return " (is this a pod with a service account token mounted? give --kube-token-file, --kube-ca-file and --kube-api otherwise)"
	}
	return ""
}

// kubeOp is one call: its RBAC verb, and the object's namespace and name
// ("" to create).
type kubeOp struct {
	verb      string // create or get
	namespace string
	name      string
}

func (op kubeOp) String() string {
	s := op.verb + " " + certRequests + "." + certManagerGroup
	if op.name != "" {
		s += fmt.Sprintf(" %q", op.name)
	}
	return s + fmt.Sprintf(" in namespace %q", op.namespace)
}

// kubeAPIError is an error answer of the API server.
type kubeAPIError struct {
	op      kubeOp
	code    int
	reason  string // the Status's reason: Forbidden, NotFound, …
	message string
}

func (e *kubeAPIError) Error() string {
	what := fmt.Sprintf("kubernetes API: %s: HTTP %d", e.op, e.code)
	if e.reason != "" {
		what += " (" + e.reason + ")"
	}
	if e.message != "" {
		what += ": " + e.message
	}
	switch {
	case e.code == http.StatusForbidden:
		what += fmt.Sprintf("; the service account needs RBAC verb %q on resource %q of API group %s in namespace %q (deploy/kubernetes: Role mpfleet-agent-cert)",
			e.op.verb, certRequests, certManagerGroup, e.op.namespace)
	case e.code == http.StatusUnauthorized:
		what += "; the service account token was refused (expired, or of another cluster?)"
	case e.code == http.StatusNotFound && e.op.verb == "create":
		what += "; is cert-manager installed, and the namespace there?"
	}
	return what
}

// transient reports whether the call may succeed when made again.
func (e *kubeAPIError) transient() bool {
	return e.code == http.StatusTooManyRequests || e.code >= 500
}

// transientKubeError reports whether err, of a call made while ctx was
// live, may pass when the call is made again: an answer of 429 or 5xx, or a
// network error.
func transientKubeError(err error) bool {
	var ae *kubeAPIError
	if errors.As(err, &ae) {
		return ae.transient()
	}
	var ue *url.Error
	var ce *tls.CertificateVerificationError
	return errors.As(err, &ue) && !errors.As(err, &ce)
}

// certificateRequestPath is the API path of the namespace's
// CertificateRequests, or of one.
func certificateRequestPath(namespace, name string) string {
	p := "/apis/" + certManagerVersion + "/namespaces/" + url.PathEscape(namespace) + "/" + certRequests
	if name != "" {
		p += "/" + url.PathEscape(name)
	}
	return p
}

// create creates cr in its namespace and returns it as created (named).
func (k *kubeClient) create(ctx context.Context, cr *certificateRequest) (*certificateRequest, error) {
	body, err := json.Marshal(cr)
	if err != nil {
		return nil, err
	}
	op := kubeOp{verb: "create", namespace: cr.Metadata.Namespace}
	var out certificateRequest
	if err := k.do(ctx, op, http.MethodPost, certificateRequestPath(op.namespace, ""), body, http.StatusCreated, &out); err != nil {
		return nil, err
	}
	if out.Metadata.Name == "" {
		return nil, fmt.Errorf("kubernetes API: %s: the answer names no CertificateRequest", op)
	}
	return &out, nil
}

// get reads the CertificateRequest name.
func (k *kubeClient) get(ctx context.Context, namespace, name string) (*certificateRequest, error) {
	op := kubeOp{verb: "get", namespace: namespace, name: name}
	var out certificateRequest
	if err := k.do(ctx, op, http.MethodGet, certificateRequestPath(namespace, name), nil, http.StatusOK, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// do makes one call and decodes an answer of status want into out.
func (k *kubeClient) do(ctx context.Context, op kubeOp, method, path string, body []byte, want int, out any) error {
	tok, err := k.token()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, kubeRequestTimeout)
	defer cancel()
	u := *k.base
	u.Path = path
	req, err := http.NewRequestWithContext(ctx, method, u.String(), bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := k.http.Do(req)
	if err != nil {
		return fmt.Errorf("kubernetes API: %s: %w", op, err)
	}
	defer func() { _ = resp.Body.Close() }() // read to the end or dropped
	b, err := io.ReadAll(io.LimitReader(resp.Body, kubeMaxResponseLength+1))
	if err != nil {
		return fmt.Errorf("kubernetes API: %s: reading the answer: %w", op, err)
	}
	if len(b) > kubeMaxResponseLength {
		return fmt.Errorf("kubernetes API: %s: answer longer than %d bytes", op, kubeMaxResponseLength)
	}
	if resp.StatusCode != want {
		ae := &kubeAPIError{op: op, code: resp.StatusCode}
		var st kubeStatus
		if json.Unmarshal(b, &st) == nil && st.Kind == "Status" {
			ae.reason, ae.message = st.Reason, st.Message
		} else {
			ae.message = strings.TrimSpace(string(b[:min(len(b), 200)]))
		}
		return ae
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("kubernetes API: %s: the answer is no CertificateRequest: %w", op, err)
	}
	return nil
}
