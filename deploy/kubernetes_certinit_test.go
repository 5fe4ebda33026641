package deploy

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// The agents' init container runs `mpfleetctl certs request` in mpfleetctl's
// image. The command itself is tested in cli, against a fake API server;
// there TestCertsRequestDaemonSet also runs the command line of
// base/agent-daemonset.yaml. Here: that the DaemonSet gives the command what
// it expects (its flags, environment and volumes).

const (
	mpfleetctlImage = "ghcr.io/mpfleet/mpfleetctl"
	// mpfleetctlBinary is the image's entrypoint (deploy/image).
	mpfleetctlBinary = "/usr/bin/mpfleetctl"
	// serviceAccountDir is where certs request finds the service account's
	// token, the API server's CA and the namespace by default.
	serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"
)

// certInitFlags are the flags of certs request the DaemonSet may give; the
// --kube-* and --namespace flags keep their in-pod defaults.
var certInitFlags = []string{"dir", "name", "issuer", "issuer-kind", "duration", "timeout"}

// certInitWiring checks the init container of the agent DaemonSet w that
// runs certs request: its image and command, its flags, its environment
// (the node's name, the pod's name and uid from the downward API), and its
// volumes (a memory emptyDir for the certificates, the service account's
// token, CA and namespace where certs request looks for them). It returns
// the certificates' directory and volume, and what is wrong.
func certInitWiring(w k8sWorkload, issuers map[string]*cmIssuer) (string, *corev1.Volume, []string) {
	var problems []string
	bad := func(format string, args ...any) {
		problems = append(problems, fmt.Sprintf("%s: init container cert: ", w.doc)+fmt.Sprintf(format, args...))
	}
	spec := &w.pod.Spec
	i := slices.IndexFunc(spec.InitContainers, func(c corev1.Container) bool {
		return slices.Equal(c.Command[:min(3, len(c.Command))], []string{mpfleetctlBinary, "certs", "request"})
	})
	if i < 0 {
		return "", nil, []string{fmt.Sprintf("%s: no init container runs %s certs request", w.doc, mpfleetctlBinary)}
	}
	c := spec.InitContainers[i]
	if repo, _ := imageRepo(c.Image); repo != mpfleetctlImage {
		bad("image %s, want %s, whose entrypoint is %s", c.Image, mpfleetctlImage, mpfleetctlBinary)
	}
	if len(c.Args) > 0 {
		bad("args %q: give every flag in command", c.Args)
	}
	flags := map[string]string{}
	for j := 3; j < len(c.Command); j++ {
		name, value, ok := strings.Cut(strings.TrimPrefix(c.Command[j], "--"), "=")
		if !strings.HasPrefix(c.Command[j], "--") || !slices.Contains(certInitFlags, name) {
			bad("%q is not one of the flags %q", c.Command[j], certInitFlags)
			continue
		}
		if !ok && j+1 < len(c.Command) {
			j++
			value = c.Command[j]
		}
		flags[name] = value
	}
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
			env[e.Name] = "fieldRef " + e.ValueFrom.FieldRef.FieldPath
		default:
			env[e.Name] = e.Value
		}
	}
	if flags["name"] != "$(NODE_NAME)" || env["NODE_NAME"] != "fieldRef spec.nodeName" {
		bad("--name %q, NODE_NAME %q: want --name=$(NODE_NAME), NODE_NAME from spec.nodeName (the agent's host id)", flags["name"], env["NODE_NAME"])
	}
	if env["POD_NAME"] != "fieldRef metadata.name" || env["POD_UID"] != "fieldRef metadata.uid" {
		bad("POD_NAME %q, POD_UID %q: want them from metadata.name and metadata.uid (the pod owns its CertificateRequest)", env["POD_NAME"], env["POD_UID"])
	}
	if kind := flags["issuer-kind"]; issuers[flags["issuer"]] == nil || (kind != "" && kind != "Issuer") {
		bad("--issuer %q --issuer-kind %q is not an Issuer here", flags["issuer"], kind)
	}
	for _, f := range []string{"duration", "timeout"} {
		if v, ok := flags[f]; ok {
			if d, err := time.ParseDuration(v); err != nil || d < time.Minute {
				bad("--%s %q: want a duration of a minute or more", f, v)
			}
		}
	}

	// The certificates: in memory, written by the init container, read by
	// the agent.
	dir := flags["dir"]
	vol := volumeAt(w, c, dir+"/tls.key")
	switch {
	case dir == "" || vol == nil || vol.EmptyDir == nil:
		bad("--dir %q is not on an emptyDir volume", dir)
		vol = nil
	case vol.EmptyDir.Medium != corev1.StorageMediumMemory:
		bad("the agent's key is in volume %s, which is not in memory (emptyDir medium Memory)", vol.Name)
	}
	for _, m := range c.VolumeMounts {
		if vol != nil && m.Name == vol.Name && m.ReadOnly {
			bad("mounts %s read-only: it writes the certificates there", vol.Name)
		}
	}

	// The service account: token, CA and namespace, as certs request
	// expects them by default.
	sa := volumeAt(w, c, serviceAccountDir+"/token")
	want := map[string]string{"token": "serviceAccountToken", "ca.crt": "configMap kube-root-ca.crt ca.crt", "namespace": "fieldRef metadata.namespace"}
	got := map[string]string{}
	if sa != nil && sa.Projected != nil {
		for _, s := range sa.Projected.Sources {
			switch {
			case s.ServiceAccountToken != nil:
				got[s.ServiceAccountToken.Path] = "serviceAccountToken"
			case s.ConfigMap != nil:
				for _, it := range s.ConfigMap.Items {
					got[it.Path] = "configMap " + s.ConfigMap.Name + " " + it.Key
				}
			case s.DownwardAPI != nil:
				for _, it := range s.DownwardAPI.Items {
					if it.FieldRef != nil {
						got[it.Path] = "fieldRef " + it.FieldRef.FieldPath
					}
				}
			}
		}
	}
	if !mountedAt(c, sa, serviceAccountDir) || fmt.Sprint(got) != fmt.Sprint(want) {
		bad("%s is not a projected volume of the service account's token, kube-root-ca.crt's ca.crt and the namespace: %v", serviceAccountDir, got)
	}
	return dir, vol, problems
}

// mountedAt reports whether c mounts v exactly at p.
func mountedAt(c corev1.Container, v *corev1.Volume, p string) bool {
	return v != nil && slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == v.Name && m.MountPath == p })
}

// TestKubernetesCertInit: the agent DaemonSet's init container runs
// mpfleetctl certs request, wired as it expects; and the check notices a
// DaemonSet that is not.
func TestKubernetesCertInit(t *testing.T) {
	tr := loadK8sTree(t)
	tr.checkKustomizations()
	b := tr.builds["."]
	if b == nil {
		t.Fatal("no build of deploy/kubernetes")
	}
	issuers := map[string]*cmIssuer{}
	for _, is := range objectsOf[cmIssuer](b.docs) {
		issuers[is.Name] = is
	}
	var ds *appsv1.DaemonSet
	var doc k8sDoc
	for _, d := range b.docs {
		if o, ok := d.obj.(*appsv1.DaemonSet); ok {
			ds, doc = o, d
		}
	}
	if ds == nil {
		t.Fatal("no DaemonSet in deploy/kubernetes")
	}
	dir, vol, problems := certInitWiring(k8sWorkload{doc: doc, pod: &ds.Spec.Template}, issuers)
	for _, p := range problems {
		t.Error(p)
	}
	if dir != "/etc/mpfleet/tls" || vol == nil || vol.Name != "tls" {
		t.Errorf("certificates in %q on %v, want /etc/mpfleet/tls on the volume tls", dir, vol)
	}

	initC := func(s *corev1.PodSpec) *corev1.Container { return &s.InitContainers[0] }
	for _, tc := range []struct {
		name   string
		change func(s *corev1.PodSpec)
		want   string
	}{
		{"another image", func(s *corev1.PodSpec) { initC(s).Image = "registry.example.net/mpfleet-cert-init:1" }, "image registry.example.net/mpfleet-cert-init:1"},
		{"a script", func(s *corev1.PodSpec) { initC(s).Command = []string{"sh", "/etc/mpfleet/cert-init/agent-cert.sh"} }, "no init container runs /usr/bin/mpfleetctl certs request"},
		{"fixed name", func(s *corev1.PodSpec) {
			c := initC(s)
			c.Command[slices.Index(c.Command, "--name=$(NODE_NAME)")] = "--name=node-1"
		}, `--name "node-1"`},
		{"no pod uid", func(s *corev1.PodSpec) {
			c := initC(s)
			c.Env = slices.DeleteFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "POD_UID" })
		}, `POD_UID ""`},
		{"unknown issuer", func(s *corev1.PodSpec) {
			c := initC(s)
			c.Command[slices.Index(c.Command, "--issuer=mpfleet-ca")] = "--issuer=other"
		}, `--issuer "other"`},
		{"a flag it lacks", func(s *corev1.PodSpec) { c := initC(s); c.Command = append(c.Command, "--cert-dir=/tls") }, `"--cert-dir=/tls" is not one of the flags`},
		{"the API server given", func(s *corev1.PodSpec) {
			c := initC(s)
			c.Command = append(c.Command, "--kube-api", "https://198.18.0.1:6443")
		}, `"--kube-api" is not one of the flags`},
		{"key on disk", func(s *corev1.PodSpec) {
			for i := range s.Volumes {
				if s.Volumes[i].Name == "tls" {
					s.Volumes[i].EmptyDir.Medium = ""
				}
			}
		}, "not in memory"},
		{"no token", func(s *corev1.PodSpec) {
			c := initC(s)
			c.VolumeMounts = slices.DeleteFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == serviceAccountDir })
		}, serviceAccountDir + " is not a projected volume"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cp := ds.DeepCopy()
			tc.change(&cp.Spec.Template.Spec)
			_, _, problems := certInitWiring(k8sWorkload{doc: doc, pod: &cp.Spec.Template}, issuers)
			if !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, tc.want) }) {
				t.Errorf("problems %q, want one saying %q", problems, tc.want)
			}
		})
	}
}
