package cli

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	mpcontroller "github.com/mpfleet/mpfleet/controller"
)

// readCert parses the PEM certificate in file.
func readCert(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("%s: no PEM certificate", file)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return c
}

// mustRun runs mpfleetctl and fails the test unless it succeeds.
func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	r := runCLI(t, "", nil, args...)
	if r.err != nil {
		t.Fatalf("mpfleetctl %s: %v\n%s", strings.Join(args, " "), r.err, r.stderr)
	}
	return r.stdout
}

// within reports whether got is want, give or take a minute.
func within(got, want time.Time) bool {
	d := got.Sub(want)
	return d > -time.Minute && d < time.Minute
}

// TestCertsInitIssue: certs init makes a 10-year CA and a 1-year server
// certificate for the addresses and names given, certs issue an agent's
// client certificate naming its host id (common name and DNS name) and
// binding its labels as the controller reads them; keys are 0600, and
// each certificate verifies against the CA for its use.
func TestCertsInitIssue(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	now := time.Now()
	out := mustRun(t, "certs", "init", "--dir", dir, "--server-ip", "198.18.0.1", "--server-ip", "2001:db8::1", "--server-name", "Ctl.Example")
	for _, want := range []string{"ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "--tls-client-ca-file " + filepath.Join(dir, "ca.pem")} {
		if !strings.Contains(out, want) {
			t.Errorf("certs init output lacks %q:\n%s", want, out)
		}
	}
	out = mustRun(t, "certs", "issue", "--dir", dir, "web-1", "--label", "role=web", "--label", "zone=a", "--days", "30")
	if !strings.Contains(out, "--host-id web-1 --tls-ca-file "+filepath.Join(dir, "ca.pem")) {
		t.Errorf("certs issue output:\n%s", out)
	}

	for file, want := range map[string]os.FileMode{
		"ca.pem": 0o644, "ca-key.pem": 0o600, "server.pem": 0o644, "server-key.pem": 0o600, "web-1.pem": 0o644, "web-1-key.pem": 0o600,
	} {
		fi, err := os.Stat(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", file, fi.Mode().Perm(), want)
		}
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("the new directory: %v, %v; want mode 0700", fi.Mode(), err)
	}

	ca := readCert(t, filepath.Join(dir, "ca.pem"))
	if !ca.IsCA || !ca.MaxPathLenZero || ca.Subject.CommonName != "mpfleet CA" || !within(ca.NotAfter, now.AddDate(0, 0, 3650)) {
		t.Errorf("CA: IsCA %v, CN %q, NotAfter %v", ca.IsCA, ca.Subject.CommonName, ca.NotAfter)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)

	srv := readCert(t, filepath.Join(dir, "server.pem"))
	var ips []string
	for _, ip := range srv.IPAddresses {
		ips = append(ips, ip.String())
	}
	if diff := cmp.Diff([]string{"198.18.0.1", "2001:db8::1"}, ips); diff != "" || !slices.Equal(srv.DNSNames, []string{"ctl.example"}) || srv.Subject.CommonName != "ctl.example" {
		t.Errorf("server certificate: IPs (-want +got) %s, DNS names %v, CN %q", diff, srv.DNSNames, srv.Subject.CommonName)
	}
	if !within(srv.NotAfter, now.AddDate(0, 0, 365)) || !within(srv.NotBefore, now.Add(-time.Hour)) {
		t.Errorf("server certificate valid %v to %v, want an hour ago to a year from now", srv.NotBefore, srv.NotAfter)
	}
	for _, name := range []string{"198.18.0.1", "2001:db8::1", "ctl.example"} {
		if _, err := srv.Verify(x509.VerifyOptions{Roots: roots, DNSName: name, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("server certificate for %s: %v", name, err)
		}
	}
	if _, err := srv.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("the server certificate is also a client certificate")
	}

	agent := readCert(t, filepath.Join(dir, "web-1.pem"))
	var uris []string
	for _, u := range agent.URIs {
		uris = append(uris, u.String())
	}
	if agent.Subject.CommonName != "web-1" || !slices.Equal(agent.DNSNames, []string{"web-1"}) ||
		!slices.Equal(uris, []string{mpcontroller.LabelURIPrefix + "role=web", mpcontroller.LabelURIPrefix + "zone=a"}) {
		t.Errorf("agent certificate: CN %q, DNS names %v, URIs %v", agent.Subject.CommonName, agent.DNSNames, uris)
	}
	if !within(agent.NotAfter, now.AddDate(0, 0, 30)) {
		t.Errorf("agent certificate (--days 30) valid until %v", agent.NotAfter)
	}
	if _, err := agent.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("agent certificate as a client certificate: %v", err)
	}
	for _, pair := range [][2]string{{"server.pem", "server-key.pem"}, {"web-1.pem", "web-1-key.pem"}} {
		if _, err := tls.LoadX509KeyPair(filepath.Join(dir, pair[0]), filepath.Join(dir, pair[1])); err != nil {
			t.Errorf("%s and %s: %v", pair[0], pair[1], err)
		}
	}

	// A leaf does not outlive its CA.
	short := filepath.Join(t.TempDir(), "short")
	mustRun(t, "certs", "init", "--dir", short, "--server-ip", "198.18.0.1", "--ca-days", "10", "--days", "400")
	if c, s := readCert(t, filepath.Join(short, "ca.pem")), readCert(t, filepath.Join(short, "server.pem")); !s.NotAfter.Equal(c.NotAfter) {
		t.Errorf("server certificate valid until %v, past its CA's %v", s.NotAfter, c.NotAfter)
	}
}

// TestCertsRefusals: bad input is a usage error naming the flag or
// argument, an existing file is not overwritten without --force; either
// way nothing is written.
func TestCertsRefusals(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, "certs", "init", "--dir", dir, "--server-ip", "127.0.0.1")
	snapshot := func() map[string]string {
		t.Helper()
		m := map[string]string{}
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			m[e.Name()] = string(b)
		}
		return m
	}
	before := snapshot()
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"init without --dir", []string{"certs", "init", "--server-ip", "127.0.0.1"}, 2, "--dir is required"},
		{"init without address", []string{"certs", "init", "--dir", dir}, 2, "--server-ip"},
		{"init bad address", []string{"certs", "init", "--dir", dir, "--server-ip", "198.18.0.300"}, 2, `--server-ip "198.18.0.300": not an IP address`},
		{"init address as name", []string{"certs", "init", "--dir", dir, "--server-name", "198.18.0.1"}, 2, "give it with --server-ip"},
		{"init bad name", []string{"certs", "init", "--dir", dir, "--server-name", "ctl_1.example"}, 2, `--server-name "ctl_1.example": not a DNS name`},
		{"init bad days", []string{"certs", "init", "--dir", dir, "--server-ip", "127.0.0.1", "--days", "0"}, 2, "--days 0: must be 1 to 36500"},
		{"init bad CA days", []string{"certs", "init", "--dir", dir, "--server-ip", "127.0.0.1", "--ca-days", "99999"}, 2, "--ca-days 99999"},
		{"init over an existing CA", []string{"certs", "init", "--dir", dir, "--server-ip", "127.0.0.1"}, 1, "ca.pem exists: not overwritten (--force replaces it)"},
		{"issue bad host id", []string{"certs", "issue", "--dir", dir, "Web_1"}, 2, `HOST: "Web_1" is not a valid host id`},
		{"issue as the CA", []string{"certs", "issue", "--dir", dir, "ca"}, 2, `host "ca": its files would replace`},
		{"issue bad label", []string{"certs", "issue", "--dir", dir, "web-1", "--label", "role=a b"}, 2, `--label["role"]`},
		{"issue without host", []string{"certs", "issue", "--dir", dir}, 2, "want HOST"},
		{"issue bad days", []string{"certs", "issue", "--dir", dir, "web-1", "--days", "-1"}, 2, "--days -1"},
		{"issue without a CA", []string{"certs", "issue", "--dir", filepath.Join(dir, "none"), "web-1"}, 1, `no such file (run "mpfleetctl certs init" first`},
		{"certs without a command", []string{"certs"}, 2, "missing command (one of: init, issue, request)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, "", nil, tc.args...)
			if r.code() != tc.code || !strings.Contains(r.stderr, tc.want) || strings.Count(r.stderr, "\n") != 1 {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", r.code(), r.stderr, tc.code, tc.want)
			}
			if diff := cmp.Diff(before, snapshot()); diff != "" {
				t.Errorf("files changed (-before +after):\n%s", diff)
			}
		})
	}

	// An agent's files are not overwritten either, then --force replaces
	// them, and a key loosened by hand is 0600 again.
	mustRun(t, "certs", "issue", "--dir", dir, "web-1")
	first := snapshot()
	if r := runCLI(t, "", nil, "certs", "issue", "--dir", dir, "web-1"); r.code() != 1 || !strings.Contains(r.stderr, "web-1.pem exists") {
		t.Errorf("issuing web-1 again: exit %d, %q", r.code(), r.stderr)
	}
	if diff := cmp.Diff(first, snapshot()); diff != "" {
		t.Errorf("refused issue changed files:\n%s", diff)
	}
	key := filepath.Join(dir, "web-1-key.pem")
	if err := os.Chmod(key, 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "certs", "issue", "--dir", dir, "web-1", "--force")
	if after := snapshot(); after["web-1.pem"] == first["web-1.pem"] || after["web-1-key.pem"] == first["web-1-key.pem"] || after["ca.pem"] != first["ca.pem"] {
		t.Error("--force did not replace web-1's files, or changed the CA")
	}
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key after --force: %v, %v; want 0600", fi.Mode(), err)
	}
	if ents, _ := os.ReadDir(dir); slices.ContainsFunc(ents, func(e os.DirEntry) bool { return strings.HasPrefix(e.Name(), ".") }) {
		t.Errorf("temporary files left behind: %v", ents)
	}
}

// TestCertsLabelPrefix: certs issue binds labels as the controller reads
// them.
func TestCertsLabelPrefix(t *testing.T) {
	if labelURIPrefix != mpcontroller.LabelURIPrefix {
		t.Errorf("labelURIPrefix %q, the controller reads %q", labelURIPrefix, mpcontroller.LabelURIPrefix)
	}
}

// TestCertsCAMismatch: a CA key that is not the CA certificate's is
// refused before anything is issued.
func TestCertsCAMismatch(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	mustRun(t, "certs", "init", "--dir", a, "--server-ip", "127.0.0.1")
	mustRun(t, "certs", "init", "--dir", b, "--server-ip", "127.0.0.1")
	other, err := os.ReadFile(filepath.Join(b, "ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(a, "ca-key.pem"), other, 0o600); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, "", nil, "certs", "issue", "--dir", a, "web-1")
	if r.code() != 1 || !strings.Contains(r.stderr, "ca-key.pem is not the key of") {
		t.Errorf("mismatched CA key: exit %d, %q", r.code(), r.stderr)
	}
	if _, err := os.Stat(filepath.Join(a, "web-1.pem")); err == nil {
		t.Error("web-1.pem written with a mismatched CA key")
	}
}
