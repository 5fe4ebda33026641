package cli

import (
	"crypto/x509"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mpfleet/mpfleet/internal/policy"
)

// labelURIPrefix starts the URI SANs that bind labels in an agent's
// certificate, "mpfleet:label:role=web": controller.LabelURIPrefix, which
// the controller reads (a test checks they agree).
const labelURIPrefix = "mpfleet:label:"

// maxDays bounds --days and --ca-days (a hundred years).
const maxDays = 36500

// dnsNameRe is a DNS name a server certificate may carry.
var dnsNameRe = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)

func (a *app) certsCommand() *cobra.Command {
	return parentCommand(&cobra.Command{
		Use:   "certs",
		Short: "Make a private CA and the controller's and agents' certificates",
		Long: `certs makes what mutual TLS between the controller and its agents needs,
without openssl: "certs init" a private CA and the controller's server
certificate, "certs issue" a client certificate for each agent, naming its host
id (which the controller checks against the agent's hello) and binding its
labels (which choose its group), and, in a Kubernetes pod, "certs request" a
node's agent certificate from cert-manager.

Keys are ECDSA P-256. init and issue write them readable by their owner only
(0600) and overwrite no file unless --force; request writes its files for the
owner and the group (0640: the agent reads them through the pod's fsGroup),
replacing them. Keep ca-key.pem off the hosts: only "certs issue" needs it.

Client certificates identify agents only: mpfleetctl itself authenticates
with a bearer token (--token), over TLS verified with ca.pem (--ca-file).`,
		Example: `  mpfleetctl certs init --dir pki --server-ip 198.18.0.1 --server-name ctl.example
  mpfleetctl certs issue --dir pki web-1 --label role=web
  mpfleetctl certs request --dir /etc/mpfleet/tls --name "$NODE_NAME"`,
	}, "command", a.certsInitCommand(), a.certsIssueCommand(), a.certsRequestCommand())
}

func (a *app) certsInitCommand() *cobra.Command {
	var (
		dir, caName  string
		ips, names   []string
		caDays, days int
		force        bool
	)
	cmd := &cobra.Command{
		Use:   "init --dir DIR --server-ip IP [--server-name NAME]",
		Short: "Make a private CA and the controller's certificate",
		Long: `certs init writes, into --dir (made if missing, mode 0700):

  ca.pem           the CA certificate: give it to the controller
                   (--tls-client-ca-file), the agents (--tls-ca-file) and
                   mpfleetctl (--ca-file)
  ca-key.pem       the CA's key, for "certs issue"
  server.pem       the controller's certificate (--tls-cert-file), valid for
                   every --server-ip and --server-name
  server-key.pem   its key (--tls-key-file)

Give each address and name agents and mpfleetctl dial the controller by;
a client that dials another is refused.`,
		Example: `  mpfleetctl certs init --dir pki --server-ip 198.18.0.1
  mpfleetctl certs init --dir pki --server-ip 198.18.0.1 --server-ip 2001:db8::1 --server-name ctl.example`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(*cobra.Command, []string) error {
			if dir == "" {
				return usagef("certs init: --dir is required (where to write the CA and the controller's certificate)")
			}
			spec, err := serverSpec(ips, names)
			if err != nil {
				return err
			}
			if err := checkDays("--ca-days", caDays); err != nil {
				return err
			}
			if err := checkDays("--days", days); err != nil {
				return err
			}
			if strings.TrimSpace(caName) == "" {
				return usagef("--ca-name: must not be empty")
			}
			now := time.Now()
			ca, err := makeCert(certSpec{commonName: caName, isCA: true, notBefore: now.Add(-backdate), notAfter: now.AddDate(0, 0, caDays)}, nil, nil)
			if err != nil {
				return fmt.Errorf("CA: %w", err)
			}
			spec.notBefore, spec.notAfter = now.Add(-backdate), leafNotAfter(now, days, ca.cert)
			srv, err := makeCert(spec, ca.cert, ca.key)
			if err != nil {
				return fmt.Errorf("server certificate: %w", err)
			}
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			files := []outFile{
				{filepath.Join(dir, caCertFile), ca.certPEM, 0o644},
				{filepath.Join(dir, caKeyFile), ca.keyPEM, 0o600},
				{filepath.Join(dir, serverCertFile), srv.certPEM, 0o644},
				{filepath.Join(dir, serverKeyFile), srv.keyPEM, 0o600},
			}
			if err := writeFiles(files, force); err != nil {
				return err
			}
			a.printf("wrote %s: CA %q, valid until %s\n", files[0].path, caName, day(ca.cert.NotAfter))
			a.printf("wrote %s: the CA's key, for \"certs issue\"; keep it off the hosts\n", files[1].path)
			a.printf("wrote %s: the controller's certificate for %s, valid until %s\n", files[2].path, strings.Join(certNames(srv.cert), ", "), day(srv.cert.NotAfter))
			a.printf("wrote %s: its key\n", files[3].path)
			a.printf("controller flags: --tls-cert-file %s --tls-key-file %s --tls-client-ca-file %s\n", files[2].path, files[3].path, files[0].path)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "directory to write the files into (required)")
	f.StringArrayVar(&ips, "server-ip", nil, "an IP address the controller is dialed at (repeat for several)")
	f.StringArrayVar(&names, "server-name", nil, "a DNS name the controller is dialed by (repeat for several)")
	f.StringVar(&caName, "ca-name", "mpfleet CA", "the CA's common name")
	f.IntVar(&caDays, "ca-days", 3650, "days the CA is valid")
	f.IntVar(&days, "days", 365, "days the controller's certificate is valid (at most as long as the CA)")
	f.BoolVar(&force, "force", false, "overwrite existing files")
	return cmd
}

func (a *app) certsIssueCommand() *cobra.Command {
	var (
		dir    string
		labels map[string]string
		days   int
		force  bool
	)
	cmd := &cobra.Command{
		Use:   "issue --dir DIR HOST [--label KEY=VALUE]...",
		Short: "Make an agent's client certificate",
		Long: `certs issue writes HOST.pem and HOST-key.pem into --dir: a client certificate
for the agent of host HOST, signed by the CA "certs init" made there. HOST
is the host id (lower-case letters, digits, '-' and '.'), the certificate's
common name and DNS name: the controller lets the agent speak as that host
and no other. Each --label is bound in the certificate (a URI name
mpfleet:label:KEY=VALUE) and chooses the host's group until an operator
labels the host.

Give the agent --host-id HOST --tls-ca-file ca.pem --tls-cert-file HOST.pem
--tls-key-file HOST-key.pem.`,
		Example: `  mpfleetctl certs issue --dir pki web-1
  mpfleetctl certs issue --dir pki web-2 --label role=web --label zone=a`,
		Args: exactArgs(1, "HOST"),
		RunE: func(_ *cobra.Command, args []string) error {
			host := args[0]
			if dir == "" {
				return usagef("certs issue: --dir is required (where certs init wrote the CA)")
			}
			var vs policy.Violations
			policy.ValidateHostID(&vs, "HOST", host)
			policy.ValidateLabels(&vs, "--label", labels)
			if err := vs.Err(); err != nil {
				return usagef("certs issue: %v", err)
			}
			if host == "ca" || host == "server" {
				return usagef("certs issue: host %q: its files would replace the CA's or the controller's %s.pem; issue it into another --dir", host, host)
			}
			if err := checkDays("--days", days); err != nil {
				return err
			}
			now := time.Now()
			caCert, caKey, err := loadCA(dir, now)
			if err != nil {
				return err
			}
			spec := certSpec{
				commonName: host, dnsNames: []string{host}, usage: x509.ExtKeyUsageClientAuth,
				notBefore: now.Add(-backdate), notAfter: leafNotAfter(now, days, caCert),
			}
			for _, k := range slices.Sorted(maps.Keys(labels)) {
				u, err := url.Parse(labelURIPrefix + k + "=" + labels[k])
				if err != nil {
					return usagef("--label %s=%s: %v", k, labels[k], err)
				}
				spec.uris = append(spec.uris, u)
			}
			kp, err := makeCert(spec, caCert, caKey)
			if err != nil {
				return fmt.Errorf("certificate for %s: %w", host, err)
			}
			files := []outFile{
				{filepath.Join(dir, host+".pem"), kp.certPEM, 0o644},
				{filepath.Join(dir, host+"-key.pem"), kp.keyPEM, 0o600},
			}
			if err := writeFiles(files, force); err != nil {
				return err
			}
			bound := ""
			if len(labels) > 0 {
				bound = " with labels " + formatLabels(labels)
			}
			a.printf("wrote %s: agent certificate for host %s%s, valid until %s\n", files[0].path, host, bound, day(kp.cert.NotAfter))
			a.printf("wrote %s: its key\n", files[1].path)
			a.printf("agent flags: --host-id %s --tls-ca-file %s --tls-cert-file %s --tls-key-file %s\n",
				host, filepath.Join(dir, caCertFile), files[0].path, files[1].path)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "directory of the CA (certs init's), where the files are written (required)")
	f.StringToStringVar(&labels, "label", nil, "a label KEY=VALUE bound in the certificate (repeat for several)")
	f.IntVar(&days, "days", 365, "days the certificate is valid (at most as long as the CA)")
	f.BoolVar(&force, "force", false, "overwrite existing files")
	return cmd
}

// serverSpec is the controller's certificate for the --server-ip and
// --server-name values: its common name the first name, else the first
// address.
func serverSpec(ips, names []string) (certSpec, error) {
	if len(ips) == 0 && len(names) == 0 {
		return certSpec{}, usagef("certs init: give the controller's address (--server-ip) or name (--server-name), as agents and mpfleetctl dial it")
	}
	spec := certSpec{usage: x509.ExtKeyUsageServerAuth}
	for _, s := range ips {
		ip, err := netip.ParseAddr(s)
		if err != nil || ip.Zone() != "" {
			return certSpec{}, usagef("--server-ip %q: not an IP address", s)
		}
		spec.ips = append(spec.ips, net.IP(ip.Unmap().AsSlice()))
	}
	for _, n := range names {
		if _, err := netip.ParseAddr(n); err == nil {
			return certSpec{}, usagef("--server-name %q: an address; give it with --server-ip", n)
		}
		if len(n) > 253 || !dnsNameRe.MatchString(n) {
			return certSpec{}, usagef("--server-name %q: not a DNS name", n)
		}
		spec.dnsNames = append(spec.dnsNames, strings.ToLower(n))
	}
	if len(spec.dnsNames) > 0 {
		spec.commonName = spec.dnsNames[0]
	} else {
		spec.commonName = spec.ips[0].String()
	}
	return spec, nil
}

// checkDays checks a validity flag.
func checkDays(flag string, days int) error {
	if days < 1 || days > maxDays {
		return usagef("%s %d: must be 1 to %d", flag, days, maxDays)
	}
	return nil
}

// leafNotAfter is the end of a certificate valid for days from now, but not
// past its CA's end.
func leafNotAfter(now time.Time, days int, ca *x509.Certificate) time.Time {
	t := now.AddDate(0, 0, days)
	if t.After(ca.NotAfter) {
		return ca.NotAfter
	}
	return t
}

// certNames are the addresses and names a certificate is valid for.
func certNames(c *x509.Certificate) []string {
	var out []string
	for _, ip := range c.IPAddresses {
		out = append(out, ip.String())
	}
	return append(out, c.DNSNames...)
}

// day is t as a UTC date.
func day(t time.Time) string { return t.UTC().Format(time.DateOnly) }
