package cli

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"maps"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"
)

// "certs request" against a fake Kubernetes API server (there is no
// cluster here): an HTTPS server that checks the bearer token, decodes the
// CertificateRequest it is sent strictly into the Kubernetes API's types,
// and plays cert-manager, signing the request with a CA of its own once it
// has been read readyAfter times. The command's crypto is all real.

// fakeCR is a cert-manager.io/v1 CertificateRequest with the Kubernetes
// API's metadata types, and the spec fields the command may send.
type fakeCR struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		IssuerRef struct {
			Name  string `json:"name"`
			Kind  string `json:"kind"`
			Group string `json:"group"`
		} `json:"issuerRef"`
		Request  []byte   `json:"request"`
		Duration string   `json:"duration"`
		Usages   []string `json:"usages"`
	} `json:"spec"`
	Status *struct {
		Conditions  []metav1.Condition `json:"conditions,omitempty"`
		Certificate []byte             `json:"certificate,omitempty"`
		CA          []byte             `json:"ca,omitempty"`
	} `json:"status,omitempty"`
}

// fakeKubeAPI is the API server and cert-manager.
type fakeKubeAPI struct {
	t        *testing.T
	srv      *httptest.Server
	caPEM    []byte
	ca       *x509.Certificate
	caKey    *ecdsa.PrivateKey
	scenario string // issue, deny, deny-ready, fail, invalid, pending, wrongkey, expired, flaky, forbidden
	// readyAfter is the read at which the request is decided.
	readyAfter int
	// rotate, when set, is the token file: at the first read the fake
	// writes a new token there and refuses the old one from then on.
	rotate string

	mu      sync.Mutex
	token   string
	created *fakeCR
	csr     *x509.CertificateRequest
	posts   int
	reads   int
}

func newFakeKubeAPI(t *testing.T, scenario string, readyAfter int) *fakeKubeAPI {
	t.Helper()
	f := &fakeKubeAPI{t: t, scenario: scenario, readyAfter: readyAfter, token: "token-1"}
	var err error
	f.caKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fake mpfleet CA"},
		NotBefore: testNow.Add(-24 * time.Hour), NotAfter: testNow.AddDate(2, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &f.caKey.PublicKey, f.caKey)
	if err != nil {
		t.Fatal(err)
	}
	if f.ca, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	f.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	f.srv = httptest.NewTLSServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

const (
	fakeNamespace = "mpfleet"
	fakeCRPath    = "/apis/cert-manager.io/v1/namespaces/" + fakeNamespace + "/certificaterequests"
	fakeCRName    = "mpfleet-agent-node-1.example-x7k2p"
)

// fakeKubeState is what the fake has seen.
type fakeKubeState struct {
	token        string
	created      *fakeCR
	csr          *x509.CertificateRequest
	posts, reads int
}

func (f *fakeKubeAPI) snapshot() fakeKubeState {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fakeKubeState{token: f.token, created: f.created, csr: f.csr, posts: f.posts, reads: f.reads}
}

// rotateToken makes the fake rotate the token in file at the first read.
func (f *fakeKubeAPI) rotateToken(file string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rotate = file
}

// kubeStatusReply answers an error as the API server does: a v1 Status.
func kubeStatusReply(w http.ResponseWriter, code int, reason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"kind": "Status", "apiVersion": "v1", "metadata": map[string]any{},
		"status": "Failure", "message": msg, "reason": reason, "code": code,
	})
}

func (f *fakeKubeAPI) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.Header.Get("Authorization") != "Bearer "+f.token {
		kubeStatusReply(w, http.StatusUnauthorized, "Unauthorized", "Unauthorized")
		return
	}
	switch {
	case r.Method == http.MethodPost && r.URL.Path == fakeCRPath:
		f.posts++
		if f.scenario == "forbidden" {
			kubeStatusReply(w, http.StatusForbidden, "Forbidden", `certificaterequests.cert-manager.io is forbidden: User "system:serviceaccount:mpfleet:mpfleet-agent" cannot create resource "certificaterequests" in API group "cert-manager.io" in the namespace "mpfleet"`)
			return
		}
		cr, csr, err := decodeFakeCR(r)
		if err != nil {
			f.t.Errorf("POST %s: %v", r.URL.Path, err)
			kubeStatusReply(w, http.StatusUnprocessableEntity, "Invalid", err.Error())
			return
		}
		f.created, f.csr = cr, csr
		answer := *cr
		answer.Name, answer.UID, answer.CreationTimestamp = cr.GenerateName+"x7k2p", types.UID("6f0f3c1e-0b8a-4c3e-9a55-0e1d2c3b4a59"), metav1.NewTime(testNow)
		f.reply(w, http.StatusCreated, &answer)
	case r.Method == http.MethodGet && r.URL.Path == fakeCRPath+"/"+fakeCRName && f.created != nil:
		f.reads++
		if f.rotate != "" && f.reads == 1 {
			f.token = "token-2"
			if err := os.WriteFile(f.rotate, []byte(f.token+"\n"), 0o600); err != nil {
				f.t.Error(err)
			}
		}
		if f.scenario == "flaky" && f.reads == 1 {
			kubeStatusReply(w, http.StatusServiceUnavailable, "ServiceUnavailable", "the server is currently unable to handle the request")
			return
		}
		answer := *f.created
		answer.Name = fakeCRName
		f.decide(&answer)
		f.reply(w, http.StatusOK, &answer)
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, fakeCRPath+"/"):
		kubeStatusReply(w, http.StatusNotFound, "NotFound", fmt.Sprintf("certificaterequests.cert-manager.io %q not found", r.URL.Path))
	default:
		f.t.Errorf("unexpected %s %s", r.Method, r.URL.Path)
		kubeStatusReply(w, http.StatusNotFound, "NotFound", "the server could not find the requested resource")
	}
}

func (f *fakeKubeAPI) reply(w http.ResponseWriter, code int, cr *fakeCR) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	if err := json.NewEncoder(w).Encode(cr); err != nil {
		f.t.Error(err)
	}
}

// decodeFakeCR decodes a POSTed CertificateRequest strictly: no field the
// API types lack, none in another case, and a CSR with a valid signature.
func decodeFakeCR(r *http.Request) (*fakeCR, *x509.CertificateRequest, error) {
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		return nil, nil, fmt.Errorf("Content-Type %q", ct)
	}
	var body bytes.Buffer
	if _, err := body.ReadFrom(r.Body); err != nil {
		return nil, nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(body.Bytes()))
	dec.DisallowUnknownFields()
	cr := new(fakeCR)
	if err := dec.Decode(cr); err != nil {
		return nil, nil, err
	}
	var src, back any
	if err := json.Unmarshal(body.Bytes(), &src); err != nil {
		return nil, nil, err
	}
	b, err := json.Marshal(cr)
	if err != nil {
		return nil, nil, err
	}
	if err := json.Unmarshal(b, &back); err != nil {
		return nil, nil, err
	}
	if lost := lostKeys(src, back, ""); len(lost) > 0 {
		return nil, nil, fmt.Errorf("fields the API types do not have (mind the case): %q", lost)
	}
	block, _ := pem.Decode(cr.Spec.Request)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, nil, fmt.Errorf("spec.request %q: not a PEM certificate request", cr.Spec.Request)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, nil, err
	}
	return cr, csr, csr.CheckSignature()
}

// lostKeys returns the paths of src's keys that back lacks.
func lostKeys(src, back any, at string) []string {
	var lost []string
	switch s := src.(type) {
	case map[string]any:
		b, _ := back.(map[string]any)
		for k, v := range s {
			bv, ok := b[k]
			if !ok {
				lost = append(lost, at+"."+k)
				continue
			}
			lost = append(lost, lostKeys(v, bv, at+"."+k)...)
		}
	case []any:
		b, _ := back.([]any)
		for i, v := range s {
			if i < len(b) {
				lost = append(lost, lostKeys(v, b[i], fmt.Sprintf("%s[%d]", at, i))...)
			}
		}
	}
	return lost
}

// decide sets a read request's status as cert-manager would by now.
func (f *fakeKubeAPI) decide(cr *fakeCR) {
	cr.Status = new(struct {
		Conditions  []metav1.Condition `json:"conditions,omitempty"`
		Certificate []byte             `json:"certificate,omitempty"`
		CA          []byte             `json:"ca,omitempty"`
	})
	approved := metav1.Condition{Type: "Approved", Status: "True", Reason: "cert-manager.io", Message: "Certificate request has been approved by cert-manager.io"}
	if f.reads < f.readyAfter || f.scenario == "pending" {
		cr.Status.Conditions = []metav1.Condition{approved, {Type: "Ready", Status: "False", Reason: "Pending", Message: "Waiting on certificate issuance"}}
		return
	}
	switch f.scenario {
	case "deny":
		cr.Status.Conditions = []metav1.Condition{
			{Type: "Denied", Status: "True", Reason: "policy.cert-manager.io", Message: "no policy allows this request"},
			{Type: "Ready", Status: "False", Reason: "Denied", Message: "The CertificateRequest was denied by an approval controller"},
		}
		return
	case "deny-ready": // an approver that sets no Denied condition
		cr.Status.Conditions = []metav1.Condition{{Type: "Ready", Status: "False", Reason: "Denied", Message: "The CertificateRequest was denied by an approval controller"}}
		return
	case "fail":
		cr.Status.Conditions = []metav1.Condition{approved, {Type: "Ready", Status: "False", Reason: "Failed", Message: "Referenced issuer does not have a Ready status condition"}}
		return
	case "invalid":
		cr.Status.Conditions = []metav1.Condition{{Type: "InvalidRequest", Status: "True", Reason: "UnsupportedIssuer", Message: "issuer type not supported"}}
		return
	}
	pub := f.csr.PublicKey
	if f.scenario == "wrongkey" {
		other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			f.t.Fatal(err)
		}
		pub = &other.PublicKey
	}
	d, err := time.ParseDuration(cr.Spec.Duration)
	if err != nil {
		f.t.Errorf("spec.duration %q: %v", cr.Spec.Duration, err)
	}
	notBefore, notAfter := testNow.Add(-time.Hour), testNow.Add(d)
	if f.scenario == "expired" {
		notBefore, notAfter = testNow.Add(-48*time.Hour), testNow.Add(-time.Hour)
	}
	if notAfter.After(f.ca.NotAfter) {
		notAfter = f.ca.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: f.csr.Subject.CommonName}, DNSNames: f.csr.DNSNames,
		NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, f.ca, pub, f.caKey)
	if err != nil {
		f.t.Fatal(err)
	}
	cr.Status.Conditions = []metav1.Condition{approved, {Type: "Ready", Status: "True", Reason: "Issued", Message: "Certificate fetched from issuer successfully"}}
	cr.Status.Certificate = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	cr.Status.CA = f.caPEM
}

// certsRequestRun is a run of certs request against a fake.
type certsRequestRun struct {
	result
	dir, tokenFile string
	env            map[string]string
}

// runCertsRequest runs certs request against f as the DaemonSet's init
// container would: the API server from the environment, the pod's name and
// uid set, the service account's files in a directory of their own.
func runCertsRequest(t *testing.T, f *fakeKubeAPI, change func(env map[string]string, args []string) []string) certsRequestRun {
	t.Helper()
	sa := t.TempDir()
	u, err := url.Parse(f.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"token":     f.token + "\n",
		"ca.crt":    string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw})),
		"namespace": fakeNamespace,
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(sa, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	run := certsRequestRun{dir: t.TempDir(), tokenFile: filepath.Join(sa, "token"), env: map[string]string{
		"KUBERNETES_SERVICE_HOST": u.Hostname(), "KUBERNETES_SERVICE_PORT": u.Port(),
		"POD_NAME": "mpfleet-agent-q8t2m", "POD_UID": "0b6cf1c4-7d0e-4c53-9c2e-3f1d0e7a9b11",
	}}
	args := []string{
		"certs", "request", "--dir", run.dir, "--name", "node-1.example", "--poll-interval", "5ms",
		"--kube-token-file", run.tokenFile, "--kube-ca-file", filepath.Join(sa, "ca.crt"),
		"--kube-namespace-file", filepath.Join(sa, "namespace"),
	}
	if change != nil {
		args = change(run.env, args)
	}
	run.result = runCLI(t, "", run.env, args...)
	return run
}

// files returns the names in the run's --dir.
func (r certsRequestRun) files(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir(r.dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestCertsRequestIssued: certs request asks for a certificate naming its
// node, owned by the pod, for the issuer, usages and duration given; waits
// until it is issued, reading the token file again for every call; and
// leaves a key pair the agent loads and the CA that verifies it, readable
// by the owner and group alone.
func TestCertsRequestIssued(t *testing.T) {
	f := newFakeKubeAPI(t, "issue", 3)
	r := runCertsRequest(t, f, nil)
	if r.err != nil {
		t.Fatalf("certs request: %v\n%s", r.err, r.stderr)
	}
	got := f.snapshot()
	if got.created == nil || got.posts != 1 || got.reads != 3 {
		t.Fatalf("%d requests created, read %d times; want 1, read 3 times (Pending twice, then Ready)", got.posts, got.reads)
	}
	cr, csr := got.created, got.csr
	if cr.APIVersion != "cert-manager.io/v1" || cr.Kind != "CertificateRequest" || cr.Namespace != fakeNamespace ||
		cr.Name != "" || cr.GenerateName != "mpfleet-agent-node-1.example-" {
		t.Errorf("request %s %s, namespace %q, name %q, generateName %q", cr.APIVersion, cr.Kind, cr.Namespace, cr.Name, cr.GenerateName)
	}
	wantOwner := []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: "mpfleet-agent-q8t2m", UID: "0b6cf1c4-7d0e-4c53-9c2e-3f1d0e7a9b11"}}
	if d := cmp.Diff(wantOwner, cr.OwnerReferences); d != "" {
		t.Errorf("the request is not owned by the pod (-want +got):\n%s", d)
	}
	if d := cmp.Diff(map[string]string{"app.kubernetes.io/name": "mpfleet-agent"}, cr.Labels); d != "" {
		t.Errorf("labels (-want +got):\n%s", d)
	}
	ref := cr.Spec.IssuerRef
	if ref.Name != "mpfleet-ca" || ref.Kind != "Issuer" || ref.Group != "cert-manager.io" {
		t.Errorf("issuerRef %+v, want Issuer mpfleet-ca of group cert-manager.io", ref)
	}
	if !slices.Equal(cr.Spec.Usages, []string{"digital signature", "client auth"}) || cr.Spec.Duration != "8760h" {
		t.Errorf("usages %q, duration %q; want digital signature and client auth, 8760h", cr.Spec.Usages, cr.Spec.Duration)
	}
	if csr.Subject.CommonName != "node-1.example" || !slices.Equal(csr.DNSNames, []string{"node-1.example"}) ||
		csr.PublicKeyAlgorithm != x509.ECDSA || csr.PublicKey.(*ecdsa.PublicKey).Curve != elliptic.P256() {
		t.Errorf("CSR for CN %q, DNS names %q, key %v", csr.Subject.CommonName, csr.DNSNames, csr.PublicKeyAlgorithm)
	}

	if got := r.files(t); !slices.Equal(got, []string{"ca.crt", "tls.crt", "tls.key"}) {
		t.Errorf("--dir holds %q, want ca.crt, tls.crt and tls.key alone", got)
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(r.dir, "tls.crt"), filepath.Join(r.dir, "tls.key"))
	if err != nil {
		t.Fatalf("the agent cannot load its key pair: %v", err)
	}
	if !pair.Leaf.PublicKey.(*ecdsa.PublicKey).Equal(csr.PublicKey) || pair.Leaf.Subject.CommonName != "node-1.example" {
		t.Errorf("tls.crt: CN %q, or not the CSR's key", pair.Leaf.Subject.CommonName)
	}
	caPEM, err := os.ReadFile(filepath.Join(r.dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(caPEM, f.caPEM) {
		t.Errorf("ca.crt is not the CA of status.ca:\n%s", caPEM)
	}
	for _, name := range []string{"tls.key", "tls.crt", "ca.crt"} {
		fi, err := os.Stat(filepath.Join(r.dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o640 {
			t.Errorf("%s: mode %v, want 0640 (the pod's fsGroup reads it)", name, fi.Mode().Perm())
		}
	}
	for _, want := range []string{"CertificateRequest mpfleet/" + fakeCRName + " for host node-1.example, issuer Issuer/mpfleet-ca", "valid until 2026-11-25T12:00:00Z"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, r.stdout)
		}
	}

	// Again, over the files of the first run, with a token that kubelet
	// rotates while the command waits, a ClusterIssuer and a duration.
	f2 := newFakeKubeAPI(t, "issue", 2)
	old, err := os.ReadFile(filepath.Join(r.dir, "tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	r2 := runCertsRequest(t, f2, func(_ map[string]string, args []string) []string {
		f2.rotateToken(args[slices.Index(args, "--kube-token-file")+1])
		args[slices.Index(args, "--dir")+1] = r.dir
		return append(args, "--issuer", "fleet-ca", "--issuer-kind", "ClusterIssuer", "--duration", "720h", "--namespace", fakeNamespace)
	})
	if r2.err != nil {
		t.Fatalf("second run: %v\n%s", r2.err, r2.stderr)
	}
	got2 := f2.snapshot()
	if got2.reads != 2 || got2.token != "token-2" {
		t.Errorf("second run: %d reads, token %q; want 2 reads, the second with the rotated token", got2.reads, got2.token)
	}
	if ref := got2.created.Spec.IssuerRef; ref.Name != "fleet-ca" || ref.Kind != "ClusterIssuer" || got2.created.Spec.Duration != "720h" {
		t.Errorf("second run: issuerRef %+v, duration %q", ref, got2.created.Spec.Duration)
	}
	if now, err := os.ReadFile(filepath.Join(r.dir, "tls.key")); err != nil || bytes.Equal(now, old) {
		t.Errorf("second run did not replace tls.key (%v)", err)
	}
	if got := r.files(t); !slices.Equal(got, []string{"ca.crt", "tls.crt", "tls.key"}) {
		t.Errorf("after the second run --dir holds %q", got)
	}
}

// TestCertsRequestRetriesTransient: an API server answering 503 while the
// command waits is asked again.
func TestCertsRequestRetriesTransient(t *testing.T) {
	f := newFakeKubeAPI(t, "flaky", 2)
	r := runCertsRequest(t, f, nil)
	if reads := f.snapshot().reads; r.err != nil || reads != 2 {
		t.Fatalf("exit %d after %d reads: %s; want success on the second read", r.code(), reads, r.stderr)
	}
}

// TestCertsRequestRefused: a request that is denied, invalid, failed or
// not issued in time, a certificate that is not for the key or not valid,
// and an API server that refuses the service account fail with one line
// saying why, and write nothing; bad flags and a missing token or API
// server fail before any request.
func TestCertsRequestRefused(t *testing.T) {
	for _, tc := range []struct {
		name, scenario string
		change         func(env map[string]string, args []string) []string
		code           int
		want           string
		posts          int
	}{
		{"denied", "deny", nil, 1, "was not issued: denied (policy.cert-manager.io): no policy allows this request", 1},
		{"denied, by Ready alone", "deny-ready", nil, 1, "was not issued: denied (condition Ready=False, reason Denied): The CertificateRequest was denied by an approval controller", 1},
		{"failed", "fail", nil, 1, "was not issued: failed (condition Ready=False, reason Failed): Referenced issuer does not have a Ready status condition", 1},
		{"invalid", "invalid", nil, 1, "was not issued: invalid (UnsupportedIssuer): issuer type not supported", 1},
		{"timeout", "pending", func(_ map[string]string, args []string) []string {
			return append(args, "--timeout", "200ms")
		}, 1, "not issued after 200ms (Ready=False, reason Pending: Waiting on certificate issuance): is Issuer/mpfleet-ca ready", 1},
		{"another key", "wrongkey", nil, 1, "the issued certificate is not for this key", 1},
		{"expired", "expired", nil, 1, "not now (2025-11-25T12:00:00Z): check the clocks", 1},
		{"forbidden", "forbidden", nil, 1, `HTTP 403 (Forbidden): certificaterequests.cert-manager.io is forbidden: User "system:serviceaccount:mpfleet:mpfleet-agent" cannot create resource "certificaterequests" in API group "cert-manager.io" in the namespace "mpfleet"; the service account needs RBAC verb "create" on resource "certificaterequests" of API group cert-manager.io`, 1},
		{"bad node name", "issue", func(_ map[string]string, args []string) []string {
			args[slices.Index(args, "--name")+1] = "Node_1"
			return args
		}, 2, `--name: "Node_1" is not a valid host id`, 0},
		{"bad issuer kind", "issue", func(_ map[string]string, args []string) []string {
			return append(args, "--issuer-kind", "issuer")
		}, 2, `--issuer-kind "issuer": want Issuer or ClusterIssuer`, 0},
		{"short duration", "issue", func(_ map[string]string, args []string) []string {
			return append(args, "--duration", "10m")
		}, 2, "--duration 10m: must be at least 1h", 0},
		{"pod uid alone", "issue", func(env map[string]string, args []string) []string {
			delete(env, "POD_NAME")
			return args
		}, 2, `POD_NAME="" and POD_UID="0b6cf1c4-7d0e-4c53-9c2e-3f1d0e7a9b11": set both`, 0},
		{"not in a pod", "issue", func(env map[string]string, args []string) []string {
			delete(env, "KUBERNETES_SERVICE_HOST")
			return args
		}, 2, "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set (not in a Kubernetes pod?): give --kube-api", 0},
		{"plaintext API", "issue", func(_ map[string]string, args []string) []string {
			return append(args, "--kube-api", "http://127.0.0.1:6443")
		}, 2, `--kube-api "http://127.0.0.1:6443": want https://HOST[:PORT]`, 0},
		{"token file missing", "issue", func(_ map[string]string, args []string) []string {
			i := slices.Index(args, "--kube-token-file") + 1
			args[i] += ".missing"
			return args
		}, 1, "token.missing: no such file or directory (is this a pod with a service account token mounted?", 0},
		{"no dir", "issue", func(_ map[string]string, args []string) []string {
			i := slices.Index(args, "--dir") + 1
			args[i] = filepath.Join(args[i], "none")
			return args
		}, 1, "--dir: stat ", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeKubeAPI(t, tc.scenario, 2)
			r := runCertsRequest(t, f, tc.change)
			if r.code() != tc.code || !strings.Contains(r.stderr, tc.want) || strings.Count(r.stderr, "\n") != 1 {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", r.code(), r.stderr, tc.code, tc.want)
			}
			if posts := f.snapshot().posts; posts != tc.posts {
				t.Errorf("%d CertificateRequests created, want %d", posts, tc.posts)
			}
			if _, err := os.Stat(r.dir); err == nil {
				if got := r.files(t); len(got) > 0 {
					t.Errorf("a failed run left %q in --dir", got)
				}
			}
		})
	}
}

// TestCertsRequestDaemonSet runs the command line of the agent DaemonSet's
// init container (deploy/kubernetes/base/agent-daemonset.yaml), with its
// environment from the downward API, against the fake: the manifest's
// flags are the command's, and what it asks for is the node's certificate,
// owned by the pod. Only the paths are the test's: --dir, and the service
// account's files the command would find in the pod.
func TestCertsRequestDaemonSet(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "deploy", "kubernetes", "base", "agent-daemonset.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	if err := yaml.UnmarshalStrict(b, &ds); err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(ds.Spec.Template.Spec.InitContainers, func(c corev1.Container) bool {
		return len(c.Command) > 3 && c.Command[0] == "/usr/bin/mpfleetctl" && c.Command[1] == "certs" && c.Command[2] == "request"
	})
	if i < 0 {
		t.Fatal("agent-daemonset.yaml: no init container runs /usr/bin/mpfleetctl certs request")
	}
	c := ds.Spec.Template.Spec.InitContainers[i]
	fields := map[string]string{"spec.nodeName": "node-1.example", "metadata.name": "mpfleet-agent-q8t2m", "metadata.uid": "0b6cf1c4-7d0e-4c53-9c2e-3f1d0e7a9b11"}
	podEnv := map[string]string{}
	for _, e := range c.Env {
		podEnv[e.Name] = e.Value
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			podEnv[e.Name] = fields[e.ValueFrom.FieldRef.FieldPath]
		}
	}
	// Kubernetes expands $(VAR) in a container's command from its env.
	expand := regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	f := newFakeKubeAPI(t, "issue", 2)
	r := runCertsRequest(t, f, func(env map[string]string, args []string) []string {
		dir := args[slices.Index(args, "--dir")+1]
		kube := args[slices.Index(args, "--poll-interval"):]
		delete(env, "POD_NAME")
		delete(env, "POD_UID")
		maps.Copy(env, podEnv)
		var cmd []string
		for _, a := range c.Command[1:] {
			a = expand.ReplaceAllStringFunc(a, func(m string) string { return podEnv[m[2:len(m)-1]] })
			if strings.HasPrefix(a, "--dir=") {
				a = "--dir=" + dir
			}
			cmd = append(cmd, a)
		}
		return append(cmd, kube...)
	})
	if r.err != nil {
		t.Fatalf("mpfleetctl %q: %v\n%s", c.Command[1:], r.err, r.stderr)
	}
	cr := f.snapshot().created
	want := []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: "mpfleet-agent-q8t2m", UID: "0b6cf1c4-7d0e-4c53-9c2e-3f1d0e7a9b11"}}
	if d := cmp.Diff(want, cr.OwnerReferences); d != "" || cr.GenerateName != "mpfleet-agent-node-1.example-" {
		t.Errorf("generateName %q; owner (-want +got):\n%s", cr.GenerateName, d)
	}
	if ref := cr.Spec.IssuerRef; ref.Name != "mpfleet-ca" || ref.Kind != "Issuer" || cr.Spec.Duration != "8760h" {
		t.Errorf("issuerRef %+v, duration %q; want Issuer mpfleet-ca, 8760h", ref, cr.Spec.Duration)
	}
	if got := r.files(t); !slices.Equal(got, []string{"ca.crt", "tls.crt", "tls.key"}) {
		t.Errorf("--dir holds %q", got)
	}
}
