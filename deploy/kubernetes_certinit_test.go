package deploy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mpfleet/mpfleet/internal/nstest"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The agents' init container script (kubernetes/base/agent-cert.sh) runs
// here with real sh and openssl against a fake kubectl: this test binary,
// run again with fakeKubectlDir set, which acts as the API server and
// cert-manager for the CertificateRequests the script makes (decoded
// strictly, signed with a CA of its own).

// fakeKubectlDir, in the environment, makes this binary the fake kubectl:
// the directory holds its state across calls.
const fakeKubectlDir = "MPFLEET_TEST_FAKE_KUBECTL_DIR"

// fakeKubectlScenario says what the fake cert-manager does with a request:
// issue (after one Pending read), deny, wrongkey (issue a certificate for
// another key) or pending (never ready).
const fakeKubectlScenario = "MPFLEET_TEST_FAKE_KUBECTL_SCENARIO"

func init() {
	if dir := os.Getenv(fakeKubectlDir); dir != "" {
		if err := fakeKubectl(dir, os.Getenv(fakeKubectlScenario), os.Args[1:], os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "fake kubectl:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// fakeRequest is the fake's record of the one CertificateRequest.
type fakeRequest struct {
	Request    cmCertificateRequest `json:"request"`
	Name       string               `json:"name"`
	Reads      int                  `json:"reads"`
	Conditions []metav1.Condition   `json:"conditions"`
	Cert       []byte               `json:"certificate"`
	CA         []byte               `json:"ca"`
}

func fakeKubectl(dir, scenario string, args []string, stdin io.Reader, stdout io.Writer) error {
	if err := appendFile(filepath.Join(dir, "calls"), strings.Join(args, " ")+"\n"); err != nil {
		return err
	}
	state := filepath.Join(dir, "request.json")
	switch {
	case len(args) == 7 && args[0] == "create" && args[1] == "--namespace" && args[3] == "-o" && args[5] == "-f" && args[6] == "-":
		b, err := io.ReadAll(stdin)
		if err != nil {
			return err
		}
		var r fakeRequest
		if err := decodeStrict(b, &r.Request); err != nil {
			return fmt.Errorf("CertificateRequest: %w", err)
		}
		if err := checkRequest(&r.Request, args[2]); err != nil {
			return err
		}
		r.Name = r.Request.GenerateName + "x7k2p"
		if err := fakeIssue(&r, scenario); err != nil {
			return err
		}
		if err := writeJSON(state, r); err != nil {
			return err
		}
		return printJSONPath(stdout, args[4], r)
	case len(args) == 7 && args[0] == "get" && args[1] == "certificaterequest" && args[3] == "--namespace" && args[5] == "-o":
		var r fakeRequest
		b, err := os.ReadFile(state)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(b, &r); err != nil {
			return err
		}
		if args[2] != r.Name || args[4] != r.Request.Namespace {
			return fmt.Errorf("certificaterequests.cert-manager.io %q not found in namespace %q", args[2], args[4])
		}
		if strings.Contains(args[6], `"Ready")].status`) {
			r.Reads++
			if scenario != "pending" && r.Reads > 1 && r.Cert != nil {
				r.Conditions = []metav1.Condition{{Type: "Ready", Status: "True", Reason: "Issued", Message: "Certificate fetched from issuer successfully"}}
			}
			if err := writeJSON(state, r); err != nil {
				return err
			}
		}
		return printJSONPath(stdout, args[6], r)
	}
	return fmt.Errorf("unexpected arguments %q", args)
}

// checkRequest checks a CertificateRequest as the API server and
// cert-manager's webhook would, and more.
func checkRequest(cr *cmCertificateRequest, ns string) error {
	_, err := parseCSR(cr.Spec.Request)
	switch {
	case cr.APIVersion != "cert-manager.io/v1" || cr.Kind != "CertificateRequest":
		return fmt.Errorf("not a cert-manager.io/v1 CertificateRequest: %s %s", cr.APIVersion, cr.Kind)
	case cr.Namespace != ns || cr.Name != "" || cr.GenerateName == "":
		return fmt.Errorf("metadata: namespace %q (kubectl --namespace %q), name %q, generateName %q", cr.Namespace, ns, cr.Name, cr.GenerateName)
	case len(cr.OwnerReferences) != 1 || cr.OwnerReferences[0].Kind != "Pod" || cr.OwnerReferences[0].APIVersion != "v1" || cr.OwnerReferences[0].UID == "":
		return fmt.Errorf("ownerReferences %+v: want the pod", cr.OwnerReferences)
	case cr.Spec.IssuerRef.Name == "" || cr.Spec.IssuerRef.Group != "cert-manager.io":
		return fmt.Errorf("issuerRef %+v", cr.Spec.IssuerRef)
	case err != nil:
		return fmt.Errorf("spec.request: %w", err)
	}
	if _, err := time.ParseDuration(cr.Spec.Duration); err != nil {
		return fmt.Errorf("spec.duration: %w", err)
	}
	return nil
}

func parseCSR(b []byte) (*x509.CertificateRequest, error) {
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("not a PEM certificate request")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, err
	}
	return csr, csr.CheckSignature()
}

// fakeIssue signs the request with a fresh CA, as the scenario says.
func fakeIssue(r *fakeRequest, scenario string) error {
	switch scenario {
	case "deny":
		r.Conditions = []metav1.Condition{
			{Type: "Approved", Status: "False"},
			{Type: "Denied", Status: "True", Reason: "TestDenied", Message: "denied by the test"},
			{Type: "Ready", Status: "False", Reason: "Denied", Message: "The CertificateRequest was denied by an approval controller"},
		}
		return nil
	case "issue", "wrongkey", "pending":
	default:
		return fmt.Errorf("unknown scenario %q", scenario)
	}
	r.Conditions = []metav1.Condition{{Type: "Ready", Status: "False", Reason: "Pending", Message: "Waiting on certificate issuance"}}
	csr, err := parseCSR(r.Request.Spec.Request)
	if err != nil {
		return err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fake mpfleet CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, BasicConstraintsValid: true, IsCA: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	pub := csr.PublicKey
	if scenario == "wrongkey" {
		other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		pub = &other.PublicKey
	}
	d, err := time.ParseDuration(r.Request.Spec.Duration)
	if err != nil {
		return err
	}
	notAfter := now.Add(d)
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: csr.Subject.CommonName}, DNSNames: csr.DNSNames,
		NotBefore: now.Add(-time.Hour), NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
	if err != nil {
		return err
	}
	r.Cert = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	r.CA = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	return nil
}

// jsonPathRe matches the JSONPath expressions the fake answers.
var jsonPathRe = regexp.MustCompile(`\{\.metadata\.name\}|\{\.status\.(certificate|ca)\}|\{\.status\.conditions\[\?\(@\.type=="(\w+)"\)\]\.(status|reason|message)\}`)

// printJSONPath prints a kubectl "jsonpath=TEMPLATE" of the request.
func printJSONPath(w io.Writer, arg string, r fakeRequest) error {
	tmpl, ok := strings.CutPrefix(arg, "jsonpath=")
	if !ok {
		return fmt.Errorf("output %q: the fake knows only jsonpath", arg)
	}
	out := jsonPathRe.ReplaceAllStringFunc(tmpl, func(m string) string {
		s := jsonPathRe.FindStringSubmatch(m)
		switch {
		case m == "{.metadata.name}":
			return r.Name
		case s[1] == "certificate":
			return base64.StdEncoding.EncodeToString(r.Cert)
		case s[1] == "ca":
			return base64.StdEncoding.EncodeToString(r.CA)
		}
		for _, c := range r.Conditions {
			if c.Type == s[2] {
				return map[string]string{"status": string(c.Status), "reason": c.Reason, "message": c.Message}[s[3]]
			}
		}
		return ""
	})
	if strings.ContainsAny(out, "{}") {
		return fmt.Errorf("jsonpath %q: the fake does not know %q", tmpl, out)
	}
	_, err := io.WriteString(w, out)
	return err
}

func appendFile(p, s string) error {
	f, err := os.OpenFile(p, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(s)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func writeJSON(p string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return os.WriteFile(p, b, 0o600)
}

// certInitRun is one run of the init container's script.
type certInitRun struct {
	err      error
	stderr   string
	certDir  string
	fakeDir  string
	calls    []string
	request  *fakeRequest
	env      map[string]string
	nodeName string
}

// certInitEnv returns the init container of the agent DaemonSet that runs
// agent-cert.sh, and its environment with downward API values filled in.
func certInitEnv(t *testing.T) (corev1.Container, map[string]string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(k8sDir, "base", "agent-daemonset.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	if err := decodeStrict(b, &ds); err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{
		"spec.nodeName": "node-1.example", "metadata.name": "mpfleet-agent-q8t2m",
		"metadata.uid": "0b6cf1c4-7d0e-4c53-9c2e-3f1d0e7a9b11", "metadata.namespace": k8sNamespace,
	}
	for _, c := range ds.Spec.Template.Spec.InitContainers {
		if !slices.Contains(c.Command, "/etc/mpfleet/cert-init/agent-cert.sh") {
			continue
		}
		env := map[string]string{}
		for _, e := range c.Env {
			switch {
			case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
				env[e.Name] = fields[e.ValueFrom.FieldRef.FieldPath]
			default:
				env[e.Name] = e.Value
			}
		}
		return c, env
	}
	t.Fatal("base/agent-daemonset.yaml: no init container runs /etc/mpfleet/cert-init/agent-cert.sh")
	return corev1.Container{}, nil
}

// runCertInit runs agent-cert.sh as the DaemonSet's init container does,
// with the fake kubectl acting as scenario says; change edits its
// environment.
func runCertInit(t *testing.T, scenario string, change func(env map[string]string)) certInitRun {
	t.Helper()
	for _, tool := range []string{"sh", "openssl"} {
		if _, err := exec.LookPath(tool); err != nil {
			nstest.Skip(t, tool+" is not installed (Debian package "+map[string]string{"sh": "dash", "openssl": "openssl"}[tool]+")")
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c, env := certInitEnv(t)
	r := certInitRun{certDir: t.TempDir(), fakeDir: t.TempDir(), env: env}
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "kubectl"), fmt.Appendf(nil, "#!/bin/sh\nexec '%s' \"$@\"\n", self), 0o755); err != nil {
		t.Fatal(err)
	}
	env["CERT_DIR"] = r.certDir
	env["HOME"] = t.TempDir()
	env["POLL_SECONDS"] = "0"
	env["PATH"] = bin + string(os.PathListSeparator) + os.Getenv("PATH")
	env[fakeKubectlDir] = r.fakeDir
	env[fakeKubectlScenario] = scenario
	if change != nil {
		change(env)
	}
	r.nodeName = env["NODE_NAME"]
	script := filepath.Join(k8sDir, "base", "agent-cert.sh")
	args := slices.Clone(c.Command[1:])
	args[slices.Index(args, "/etc/mpfleet/cert-init/agent-cert.sh")] = script
	cmd := exec.Command(c.Command[0], args...)
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	cmd.Stdout = io.Discard
	r.err = cmd.Run()
	r.stderr = stderr.String()
	if b, err := os.ReadFile(filepath.Join(r.fakeDir, "calls")); err == nil {
		r.calls = strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	}
	if b, err := os.ReadFile(filepath.Join(r.fakeDir, "request.json")); err == nil {
		r.request = new(fakeRequest)
		if err := json.Unmarshal(b, r.request); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// noCertificates checks that a failed run left nothing for the agent.
func (r certInitRun) noCertificates(t *testing.T) {
	t.Helper()
	entries, err := os.ReadDir(r.certDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("a failed run left %s in the agent's certificate directory", e.Name())
	}
}

// TestKubernetesCertInitIssued: the init container makes a key, asks for
// a certificate naming its node, waits for it, and leaves the agent a key
// pair it can load and a CA that verifies it as a client certificate, for
// the group alone.
func TestKubernetesCertInitIssued(t *testing.T) {
	r := runCertInit(t, "issue", nil)
	if r.err != nil {
		t.Fatalf("agent-cert.sh: %v\n%s", r.err, r.stderr)
	}
	if r.request == nil {
		t.Fatal("no CertificateRequest was created")
	}
	cr := r.request.Request
	want := []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: r.env["POD_NAME"], UID: "0b6cf1c4-7d0e-4c53-9c2e-3f1d0e7a9b11"}}
	if d := cmp.Diff(want, cr.OwnerReferences); d != "" {
		t.Errorf("the request is not owned by the pod (-want +got):\n%s", d)
	}
	if cr.GenerateName != "mpfleet-agent-"+r.nodeName+"-" || cr.Namespace != k8sNamespace {
		t.Errorf("request generateName %q in namespace %q", cr.GenerateName, cr.Namespace)
	}
	if d := cmp.Diff(cmIssuerRef{Group: "cert-manager.io", Kind: "Issuer", Name: r.env["ISSUER_NAME"]}, cr.Spec.IssuerRef); d != "" {
		t.Errorf("issuerRef (-want +got):\n%s", d)
	}
	if !slices.Equal(cr.Spec.Usages, []string{"digital signature", "client auth"}) || cr.Spec.Duration != r.env["CERT_DURATION"] {
		t.Errorf("usages %q, duration %q; want digital signature and client auth, %s", cr.Spec.Usages, cr.Spec.Duration, r.env["CERT_DURATION"])
	}
	reads := 0
	for _, c := range r.calls {
		if strings.Contains(c, "conditions") {
			reads++
		}
	}
	if reads != 2 {
		t.Errorf("read the request's conditions %d times, want 2 (Pending, then Ready): %q", reads, r.calls)
	}

	key := filepath.Join(r.certDir, "tls.key")
	pair, err := tls.LoadX509KeyPair(filepath.Join(r.certDir, "tls.crt"), key)
	if err != nil {
		t.Fatalf("the agent cannot load its key pair: %v", err)
	}
	cert := pair.Leaf
	if cert.Subject.CommonName != r.nodeName || !slices.Equal(cert.DNSNames, []string{r.nodeName}) {
		t.Errorf("certificate for CN %q, DNS %q; want the node %s", cert.Subject.CommonName, cert.DNSNames, r.nodeName)
	}
	caPEM, err := os.ReadFile(filepath.Join(r.certDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if string(caPEM) != string(r.request.CA) {
		t.Error("ca.crt is not the CA of the request's status.ca")
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the certificate does not verify with ca.crt as a client certificate: %v", err)
	}
	for _, f := range []string{"tls.key", "tls.crt", "ca.crt"} {
		fi, err := os.Stat(filepath.Join(r.certDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o007 != 0 || fi.Mode().Perm()&0o040 == 0 {
			t.Errorf("%s has mode %v: want it readable by the group (the pod's fsGroup) and nobody else", f, fi.Mode().Perm())
		}
	}
	if _, err := os.Stat(filepath.Join(r.certDir, ".request")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the work directory .request is left behind: %v", err)
	}
}

// TestKubernetesCertInitRefused: a request cert-manager denies, one that
// never becomes ready, and a certificate for another key fail the init
// container with a reason and leave the agent nothing; a node name that is
// no host id fails before any request.
func TestKubernetesCertInitRefused(t *testing.T) {
	for _, tc := range []struct {
		name, scenario string
		change         func(map[string]string)
		want           string
		requests       int
	}{
		{"denied", "deny", nil, "was not issued (False/Denied/True/): The CertificateRequest was denied", 1},
		{"never ready", "pending", func(env map[string]string) { env["TIMEOUT_SECONDS"] = "0" }, "not ready after 0s", 1},
		{"another key", "wrongkey", nil, "not for this pod's key", 1},
		{"bad node name", "issue", func(env map[string]string) { env["NODE_NAME"] = "Web_1" }, `NODE_NAME "Web_1": not a valid host id`, 0},
		{"bad issuer kind", "issue", func(env map[string]string) { env["ISSUER_KIND"] = "issuer" }, `ISSUER_KIND "issuer"`, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runCertInit(t, tc.scenario, tc.change)
			if r.err == nil || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("err %v, stderr:\n%s\nwant a failure saying %q", r.err, r.stderr, tc.want)
			}
			if got := len(r.calls); (tc.requests == 0) != (got == 0) {
				t.Errorf("%d kubectl calls: %q", got, r.calls)
			}
			r.noCertificates(t)
		})
	}
}
