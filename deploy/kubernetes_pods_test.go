package deploy

// The checks of TestKubernetesManifests on what each deployment deploys.

import (
	"fmt"
	"net"
	"path"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

const (
	agentImage      = "ghcr.io/mpfleet/mpfleet-agent"
	controllerImage = "ghcr.io/mpfleet/mpfleet-controller"
)

// checkBuild checks what one deployment (a kustomization no other
// includes) deploys, and returns its agents' settings:
//   - a Namespace, no two objects of a kind with one name, every reference
//     (ConfigMaps, Secrets, service accounts, volumes, issuers) resolved;
//   - every image mpfleet's (tag from the kustomization) or a pinned one of
//     otherImages;
//   - every pod without an automatic API token, every container with no
//     privilege escalation, a read-only root, no capabilities (but the
//     agent's NET_ADMIN), RuntimeDefault seccomp, and not root (but
//     rootContainers);
//   - every container with liveness and readiness probes over HTTP, and
//     mpfleet's on /healthz and /readyz at the port of its --metrics-listen,
//     named metrics and announced for Prometheus;
//   - every file and directory a program's settings name on a volume of its
//     container;
//   - the agent DaemonSet on every node (tolerating every taint, host
//     network, system-node-critical), its certificate its node's own, from
//     an init container running mpfleetctl certs request (certInitWiring)
//     that alone holds an API token, which may only create and get
//     CertificateRequests; the agents dialing a headless
//     Service over the controller, by a name in the controller's
//     certificate.
func checkBuild(t *testing.T, tr *k8sTree, b *k8sBuild) map[string]any {
	names := map[string]k8sDoc{}
	for _, d := range b.docs {
		key := d.kind + "/" + d.obj.GetName()
		if prev, ok := names[key]; ok {
			t.Errorf("%s: also in %s", d, prev.file)
		}
		names[key] = d
	}
	if _, ok := names["Namespace/"+k8sNamespace]; !ok {
		t.Errorf("no Namespace %s", k8sNamespace)
	}
	issuers := map[string]*cmIssuer{}
	for _, is := range objectsOf[cmIssuer](b.docs) {
		issuers[is.Name] = is
		switch {
		case is.Spec.CA == nil:
			t.Errorf("Issuer %s: not a CA issuer", is.Name)
		case !tr.secrets[is.Spec.CA.SecretName]:
			t.Errorf("Issuer %s: README.md does not tell how to create its CA's Secret %s (kubectl create secret tls %[2]s ...)", is.Name, is.Spec.CA.SecretName)
		}
	}
	certs := map[string]*cmCertificate{}
	for _, c := range objectsOf[cmCertificate](b.docs) {
		certs[c.Spec.SecretName] = c
		if ref := c.Spec.IssuerRef; ref.Kind != "Issuer" || issuers[ref.Name] == nil {
			t.Errorf("Certificate %s: issuer %s %s is not an Issuer here", c.Name, ref.Kind, ref.Name)
		}
	}
	images := map[string]kustomizeImage{}
	for _, im := range b.images {
		images[im.Name] = im
	}

	var agents, controllers []k8sWorkload
	for _, w := range workloadsOf(b.docs) {
		checkPod(t, tr, b, w, names, certs, images)
		for _, c := range w.pod.Spec.Containers {
			switch repo, _ := imageRepo(c.Image); repo {
			case agentImage:
				agents = append(agents, w)
			case controllerImage:
				controllers = append(controllers, w)
			}
		}
	}
	if len(agents) != 1 || agents[0].doc.kind != "DaemonSet" || len(controllers) == 0 {
		var a, c []string
		for _, w := range agents {
			a = append(a, w.doc.String())
		}
		for _, w := range controllers {
			c = append(c, w.doc.String())
		}
		t.Fatalf("want one agent DaemonSet and a controller; have agents in %q, controllers in %q", a, c)
	}
	cfg, host := checkAgents(t, b, agents[0], names, issuers)
	if host == "" {
		return cfg
	}
	for _, w := range controllers {
		c := w.pod.Spec.Containers[slices.IndexFunc(w.pod.Spec.Containers, func(c corev1.Container) bool {
			repo, _ := imageRepo(c.Image)
			return repo == controllerImage
		})]
		ccfg := containerConfig(t, b, w, c)
		vol := volumeAt(w, c, fmt.Sprint(ccfg["tls-cert-file"]))
		if vol == nil || vol.Secret == nil || certs[vol.Secret.SecretName] == nil {
			t.Errorf("%s: tls-cert-file %v is not on the Secret of a cert-manager Certificate", w.doc, ccfg["tls-cert-file"])
			continue
		}
		cert := certs[vol.Secret.SecretName]
		if !slices.Contains(cert.Spec.DNSNames, host) || !slices.Contains(cert.Spec.Usages, "server auth") {
			t.Errorf("%s: the server certificate (Certificate %s) does not name %s, which the agents dial, for server auth: %v %v", w.doc, cert.Name, host, cert.Spec.DNSNames, cert.Spec.Usages)
		}
		if ca := volumeAt(w, c, fmt.Sprint(ccfg["tls-client-ca-file"])); ca != vol {
			t.Errorf("%s: tls-client-ca-file %v is not the ca.crt of the server certificate's Secret, the CA of the agents' certificates", w.doc, ccfg["tls-client-ca-file"])
		}
	}
	return cfg
}

// checkAgents checks the agent DaemonSet; it returns the agents' settings
// and the controller's host name they dial.
func checkAgents(t *testing.T, b *k8sBuild, w k8sWorkload, names map[string]k8sDoc, issuers map[string]*cmIssuer) (map[string]any, string) {
	spec := &w.pod.Spec
	if !spec.HostNetwork || spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("%s: hostNetwork %v, dnsPolicy %q: want the host's network, resolving cluster names (ClusterFirstWithHostNet)", w.doc, spec.HostNetwork, spec.DNSPolicy)
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("%s: priorityClassName %q, want system-node-critical", w.doc, spec.PriorityClassName)
	}
	if !slices.ContainsFunc(spec.Tolerations, func(tl corev1.Toleration) bool {
		return tl.Operator == corev1.TolerationOpExists && tl.Key == "" && tl.Effect == ""
	}) {
		t.Errorf("%s: does not tolerate every taint ({operator: Exists}): %+v", w.doc, spec.Tolerations)
	}
	c := spec.Containers[slices.IndexFunc(spec.Containers, func(c corev1.Container) bool {
		repo, _ := imageRepo(c.Image)
		return repo == agentImage
	})]
	if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == "MPFLEET_AGENT_HOST_ID" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
	}) {
		t.Errorf("%s: the agent's host id (MPFLEET_AGENT_HOST_ID) is not its node's name, the CN of its certificate", w.doc)
	}
	cfg := containerConfig(t, b, w, c)

	// The init container (mpfleetctl certs request) writes the key and
	// certificates into a memory volume, from which the agent reads them.
	certDir, tlsVol, problems := certInitWiring(w, issuers)
	for _, p := range problems {
		t.Error(p)
	}
	for _, k := range []string{"tls-key-file=tls.key", "tls-cert-file=tls.crt", "tls-ca-file=ca.crt"} {
		key, file, _ := strings.Cut(k, "=")
		p := fmt.Sprint(cfg[key])
		if tlsVol == nil || volumeAt(w, c, p) != tlsVol || path.Base(p) != file {
			t.Errorf("%s: agent %s %s is not the %s the init container writes to %s", w.doc, key, p, file, certDir)
		}
	}
	for _, m := range c.VolumeMounts {
		if tlsVol != nil && m.Name == tlsVol.Name && !m.ReadOnly {
			t.Errorf("%s: the agent mounts its certificates writable", w.doc)
		}
	}

	// Its service account may create and read CertificateRequests in the
	// namespace, and nothing else.
	sa := spec.ServiceAccountName
	want := []rbacv1.PolicyRule{{APIGroups: []string{"cert-manager.io"}, Resources: []string{"certificaterequests"}, Verbs: []string{"create", "get"}}}
	bound := 0
	for _, d := range b.docs {
		switch rb := d.obj.(type) {
		case *rbacv1.ClusterRoleBinding:
			if bindsSA(rb.Subjects, sa) {
				t.Errorf("%s: binds the agents' service account %s cluster-wide", d, sa)
			}
		case *rbacv1.RoleBinding:
			if !bindsSA(rb.Subjects, sa) {
				continue
			}
			bound++
			role, ok := names["Role/"+rb.RoleRef.Name]
			if rb.RoleRef.Kind != "Role" || !ok {
				t.Errorf("%s: binds %s %s, not a Role here", d, rb.RoleRef.Kind, rb.RoleRef.Name)
				continue
			}
			rules := role.obj.(*rbacv1.Role).Rules
			for i := range rules {
				slices.Sort(rules[i].Verbs)
			}
			if diff := cmp.Diff(want, rules); diff != "" {
				t.Errorf("%s: the agents may do more or less than create and get certificaterequests (-want +got):\n%s", role, diff)
			}
		}
	}
	if bound == 0 {
		t.Errorf("%s: no RoleBinding lets service account %q create CertificateRequests", w.doc, sa)
	}

	// The agents dial a headless Service over the controller, in the
	// namespace.
	addr := fmt.Sprint(cfg["controller"])
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Errorf("%s: controller %q: %v", w.doc, addr, err)
		return cfg, ""
	}
	svcName, ok := strings.CutSuffix(host, "."+k8sNamespace+".svc.cluster.local")
	d, found := names["Service/"+svcName]
	if !ok || !found {
		t.Errorf("%s: controller %q is not a Service of namespace %s", w.doc, addr, k8sNamespace)
		return cfg, ""
	}
	svc := d.obj.(*corev1.Service)
	if svc.Spec.ClusterIP != corev1.ClusterIPNone || !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return fmt.Sprint(p.Port) == port }) {
		t.Errorf("%s: the agents' Service %s is not headless, or has no port %s", d, svcName, port)
	}
	return cfg, host
}

func bindsSA(subjects []rbacv1.Subject, sa string) bool {
	return slices.ContainsFunc(subjects, func(s rbacv1.Subject) bool {
		return s.Kind == rbacv1.ServiceAccountKind && s.Name == sa && s.Namespace == k8sNamespace
	})
}

// checkPod checks a workload's pod template (see checkBuild).
func checkPod(t *testing.T, tr *k8sTree, b *k8sBuild, w k8sWorkload, names map[string]k8sDoc, certs map[string]*cmCertificate, images map[string]kustomizeImage) {
	spec := &w.pod.Spec
	if a := spec.AutomountServiceAccountToken; a == nil || *a {
		t.Errorf("%s: automountServiceAccountToken is not false (a container that needs the API mounts a projected token of its own)", w.doc)
	}
	if sa := spec.ServiceAccountName; sa != "" && names["ServiceAccount/"+sa].obj == nil {
		t.Errorf("%s: no ServiceAccount %s", w.doc, sa)
	}
	psc := spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	volumes := map[string]*corev1.Volume{}
	for i := range spec.Volumes {
		v := &spec.Volumes[i]
		volumes[v.Name] = v
		switch {
		case v.ConfigMap != nil:
			if _, ok := b.configMaps[v.ConfigMap.Name]; !ok {
				t.Errorf("%s: volume %s: no ConfigMap %s", w.doc, v.Name, v.ConfigMap.Name)
			}
		case v.Secret != nil:
			if n := v.Secret.SecretName; certs[n] == nil && !tr.secrets[n] {
				t.Errorf("%s: volume %s: Secret %s is neither a Certificate's nor one README.md tells how to create (kubectl create secret ... %[3]s)", w.doc, v.Name, n)
			}
		case v.Projected != nil:
			for _, s := range v.Projected.Sources {
				if s.ConfigMap != nil && s.ConfigMap.Name != "kube-root-ca.crt" && b.configMaps[s.ConfigMap.Name] == nil {
					t.Errorf("%s: volume %s: no ConfigMap %s", w.doc, v.Name, s.ConfigMap.Name)
				}
			}
		}
	}
	for _, n := range w.claims {
		volumes[n] = &corev1.Volume{Name: n}
	}
	containers := slices.Concat(spec.InitContainers, spec.Containers)
	for i, c := range containers {
		init := i < len(spec.InitContainers)
		for _, m := range c.VolumeMounts {
			v, ok := volumes[m.Name]
			if !ok {
				t.Errorf("%s: container %s mounts %s, which is no volume", w.doc, c.Name, m.Name)
				continue
			}
			if !init && v.Projected != nil && slices.ContainsFunc(v.Projected.Sources, func(s corev1.VolumeProjection) bool { return s.ServiceAccountToken != nil }) {
				t.Errorf("%s: container %s mounts an API token (volume %s): only an init container needs one", w.doc, c.Name, v.Name)
			}
		}
		checkImage(t, w, c, images)
		checkSecurity(t, w, c, psc)
		if !init {
			checkProbes(t, b, w, c)
		}
	}
}

// checkImage checks that a container runs mpfleet's image, tagged by the
// kustomization, or one of otherImages, pinned.
func checkImage(t *testing.T, w k8sWorkload, c corev1.Container, images map[string]kustomizeImage) {
	repo, tag := imageRepo(c.Image)
	im, set := images[repo]
	switch {
	case slices.Contains(mpfleetImages, repo):
		if tag != "" {
			t.Errorf("%s: container %s: image %s has a tag: the kustomization's images set it", w.doc, c.Name, c.Image)
		}
		if !set || im.NewName != "" || im.NewTag == "" || im.NewTag == "latest" {
			t.Errorf("%s: container %s: the kustomization sets no version tag for %s (images: %+v)", w.doc, c.Name, repo, im)
		}
	case otherImages[repo] != "":
		if (tag == "" || tag == "latest") && (!set || im.NewTag == "" || im.NewTag == "latest") {
			t.Errorf("%s: container %s: image %s is not pinned to a version", w.doc, c.Name, c.Image)
		}
	default:
		t.Errorf("%s: container %s: image %s is neither one of mpfleet's %q nor one of otherImages", w.doc, c.Name, c.Image, mpfleetImages)
	}
}

// checkSecurity checks a container's security context, with the pod's.
func checkSecurity(t *testing.T, w k8sWorkload, c corev1.Container, psc *corev1.PodSecurityContext) {
	sc := c.SecurityContext
	if sc == nil {
		t.Errorf("%s: container %s has no securityContext", w.doc, c.Name)
		return
	}
	id := w.id(c)
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("%s: container %s is privileged", w.doc, c.Name)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s: container %s: allowPrivilegeEscalation is not false", w.doc, c.Name)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("%s: container %s: readOnlyRootFilesystem is not true", w.doc, c.Name)
	}
	var add []corev1.Capability
	if repo, _ := imageRepo(c.Image); repo == agentImage {
		add = []corev1.Capability{"NET_ADMIN"}
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || !slices.Equal(sc.Capabilities.Add, add) {
		t.Errorf("%s: container %s: capabilities %+v, want drop [ALL] and add %v", w.doc, c.Name, sc.Capabilities, add)
	}
	seccomp := sc.SeccompProfile
	if seccomp == nil {
		seccomp = psc.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: container %s: seccomp profile is not RuntimeDefault", w.doc, c.Name)
	}
	nonRoot := sc.RunAsNonRoot
	if nonRoot == nil {
		nonRoot = psc.RunAsNonRoot
	}
	switch why := rootContainers[id]; {
	case (nonRoot == nil || !*nonRoot) && why == "":
		t.Errorf("%s: container %s: runAsNonRoot is not true", w.doc, c.Name)
	case nonRoot != nil && *nonRoot && why != "":
		t.Errorf("%s: container %s runs as non-root: take %s out of rootContainers", w.doc, c.Name, id)
	}
}

// checkProbes checks a container's liveness and readiness probes.
func checkProbes(t *testing.T, b *k8sBuild, w k8sWorkload, c corev1.Container) {
	live, ready := c.LivenessProbe, c.ReadinessProbe
	if live == nil || live.HTTPGet == nil || ready == nil || ready.HTTPGet == nil {
		t.Errorf("%s: container %s: want liveness and readiness probes over HTTP", w.doc, c.Name)
		return
	}
	if repo, _ := imageRepo(c.Image); !slices.Contains(mpfleetImages, repo) {
		return
	}
	if live.HTTPGet.Path != "/healthz" || ready.HTTPGet.Path != "/readyz" {
		t.Errorf("%s: container %s: liveness on %s and readiness on %s, want /healthz and /readyz", w.doc, c.Name, live.HTTPGet.Path, ready.HTTPGet.Path)
	}
	listen := metricsListen(c, containerConfig(t, b, w, c))
	_, port, err := net.SplitHostPort(listen)
	if err != nil {
		t.Errorf("%s: container %s: --metrics-listen %q: %v", w.doc, c.Name, listen, err)
		return
	}
	for _, p := range []*corev1.Probe{live, ready} {
		if got := containerPort(c, p.HTTPGet.Port); got != port || (p.HTTPGet.Scheme != "" && p.HTTPGet.Scheme != corev1.URISchemeHTTP) {
			t.Errorf("%s: container %s: probe %s on port %v (%s), want plain HTTP on %s, the --metrics-listen port", w.doc, c.Name, p.HTTPGet.Path, p.HTTPGet.Port.String(), got, port)
		}
	}
	if got := containerPort(c, intstr.FromString("metrics")); got != port {
		t.Errorf("%s: container %s: port metrics is %q, want %s", w.doc, c.Name, got, port)
	}
	if a := w.pod.Annotations; a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] != port || a["prometheus.io/path"] != "/metrics" {
		t.Errorf("%s: the pod does not announce its metrics (prometheus.io/scrape, port %s, path /metrics): %v", w.doc, port, a)
	}
}

// containerPort returns the number of a container's port, by name or number.
func containerPort(c corev1.Container, p intstr.IntOrString) string {
	if p.Type == intstr.Int {
		return p.String()
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return fmt.Sprint(cp.ContainerPort)
		}
	}
	return ""
}

// flagValue returns the value of a --name flag in args ("--name=v" or
// "--name v").
func flagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
		if a == "--"+name && i+1 < len(args) {
			return args[i+1], true
		}
	}
	return "", false
}

// metricsListen returns a container's --metrics-listen, from its arguments
// or its settings.
func metricsListen(c corev1.Container, cfg map[string]any) string {
	if v, ok := flagValue(slices.Concat(c.Command, c.Args), "metrics-listen"); ok {
		return v
	}
	if v, ok := cfg["metrics-listen"]; ok {
		return fmt.Sprint(v)
	}
	return ""
}

// volumeAt returns the volume a path in a container is on, or nil.
func volumeAt(w k8sWorkload, c corev1.Container, p string) *corev1.Volume {
	var best *corev1.VolumeMount
	for i, m := range c.VolumeMounts {
		if (p == m.MountPath || strings.HasPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/")) && (best == nil || len(m.MountPath) > len(best.MountPath)) {
			best = &c.VolumeMounts[i]
		}
	}
	if best == nil {
		return nil
	}
	for i := range w.pod.Spec.Volumes {
		if w.pod.Spec.Volumes[i].Name == best.Name {
			return &w.pod.Spec.Volumes[i]
		}
	}
	if slices.Contains(w.claims, best.Name) {
		return &corev1.Volume{Name: best.Name}
	}
	return nil
}

// containerConfig returns the settings of an mpfleet container: the YAML
// file its --config names, from the ConfigMap mounted there. Every file and
// directory they name must be on a volume of the container.
func containerConfig(t *testing.T, b *k8sBuild, w k8sWorkload, c corev1.Container) map[string]any {
	t.Helper()
	p, ok := flagValue(slices.Concat(c.Command, c.Args), "config")
	if !ok {
		t.Errorf("%s: container %s has no --config", w.doc, c.Name)
		return nil
	}
	var data string
	for _, m := range c.VolumeMounts {
		rel, ok := strings.CutPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/")
		if v := volumeAt(w, c, p); ok && v != nil && v.Name == m.Name && v.ConfigMap != nil {
			data, ok = b.configMaps[v.ConfigMap.Name][rel]
			if !ok {
				t.Errorf("%s: container %s: --config %s: ConfigMap %s has no %s", w.doc, c.Name, p, v.ConfigMap.Name, rel)
			}
		}
	}
	cfg := map[string]any{}
	if err := yaml.Unmarshal([]byte(data), &cfg); err != nil || len(cfg) == 0 {
		t.Errorf("%s: container %s: --config %s is no ConfigMap's map of settings (%v)", w.doc, c.Name, p, err)
		return nil
	}
	for k, v := range cfg {
		if strings.HasSuffix(k, "-file") || strings.HasSuffix(k, "-dir") {
			if volumeAt(w, c, fmt.Sprint(v)) == nil {
				t.Errorf("%s: container %s: %s %v is on none of its volumes", w.doc, c.Name, k, v)
			}
		}
	}
	return cfg
}
