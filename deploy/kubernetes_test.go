package deploy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// k8sDir is where the Kubernetes manifests are, relative to this package.
const k8sDir = "kubernetes"

// k8sNamespace holds every namespaced object of the manifests.
const k8sNamespace = "mpfleet"

// mpfleetImages are the repositories `make images` builds; the manifests
// name them without a tag, which the kustomizations' images set.
var mpfleetImages = []string{
	"ghcr.io/mpfleet/mpfleet-controller",
	"ghcr.io/mpfleet/mpfleet-agent",
	"ghcr.io/mpfleet/mpfleetctl",
}

// otherImages are the images from elsewhere the manifests may run, and why.
var otherImages = map[string]string{
	"gcr.io/etcd-development/etcd": "the etcd members of ha/",
}

// rootContainers may run as root, and why: every other container runs with
// runAsNonRoot.
var rootContainers = map[string]string{
	"DaemonSet/mpfleet-agent/agent": "CAP_NET_ADMIN reaches a non-root process only through file capabilities, which need allowPrivilegeEscalation",
	"StatefulSet/etcd/etcd":         "the etcd image's user; its data volumes are root's",
}

// Custom resources have no Go types here: these structs hold the fields the
// manifests may use, so that a strict decode refuses any other.

type cmIssuerRef struct {
	Group string `json:"group,omitempty"`
	Kind  string `json:"kind,omitempty"`
	Name  string `json:"name"`
}

// cmIssuer is a cert-manager Issuer or ClusterIssuer (cert-manager.io/v1):
// a CA issuer.
type cmIssuer struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		CA *struct {
			SecretName string `json:"secretName"`
		} `json:"ca,omitempty"`
	} `json:"spec"`
}

// cmCertificate is a cert-manager Certificate (cert-manager.io/v1).
type cmCertificate struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		SecretName  string   `json:"secretName"`
		CommonName  string   `json:"commonName,omitempty"`
		DNSNames    []string `json:"dnsNames,omitempty"`
		Duration    string   `json:"duration,omitempty"`
		RenewBefore string   `json:"renewBefore,omitempty"`
		PrivateKey  *struct {
			Algorithm      string `json:"algorithm,omitempty"`
			Size           int    `json:"size,omitempty"`
			RotationPolicy string `json:"rotationPolicy,omitempty"`
		} `json:"privateKey,omitempty"`
		Usages    []string    `json:"usages,omitempty"`
		IssuerRef cmIssuerRef `json:"issuerRef"`
	} `json:"spec"`
}

// cmCertificateRequest is a cert-manager CertificateRequest
// (cert-manager.io/v1), as the agents' init container makes them.
type cmCertificateRequest struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		IssuerRef cmIssuerRef `json:"issuerRef"`
		Request   []byte      `json:"request"`
		Duration  string      `json:"duration,omitempty"`
		Usages    []string    `json:"usages,omitempty"`
	} `json:"spec"`
}

// kustomization is a kustomization.yaml (kustomize.config.k8s.io/v1beta1).
type kustomization struct {
	metav1.TypeMeta    `json:",inline"`
	Resources          []string             `json:"resources,omitempty"`
	ConfigMapGenerator []kustomizeGenerator `json:"configMapGenerator,omitempty"`
	SecretGenerator    []kustomizeGenerator `json:"secretGenerator,omitempty"`
	Images             []kustomizeImage     `json:"images,omitempty"`
}

type kustomizeGenerator struct {
	Name      string   `json:"name"`
	Namespace string   `json:"namespace,omitempty"`
	Files     []string `json:"files,omitempty"`
}

type kustomizeImage struct {
	Name    string `json:"name"`
	NewName string `json:"newName,omitempty"`
	NewTag  string `json:"newTag,omitempty"`
	Digest  string `json:"digest,omitempty"`
}

// k8sKind is a kind the manifests may hold: whether it is namespaced, and
// a new value of its Go type.
type k8sKind struct {
	namespaced bool
	new        func() metav1.Object
}

// k8sKinds are the kinds the manifests may hold, by "apiVersion/kind".
var k8sKinds = map[string]k8sKind{
	"v1/Namespace":                                    {false, func() metav1.Object { return new(corev1.Namespace) }},
	"v1/Service":                                      {true, func() metav1.Object { return new(corev1.Service) }},
	"v1/ConfigMap":                                    {true, func() metav1.Object { return new(corev1.ConfigMap) }},
	"v1/Secret":                                       {true, func() metav1.Object { return new(corev1.Secret) }},
	"v1/ServiceAccount":                               {true, func() metav1.Object { return new(corev1.ServiceAccount) }},
	"v1/PersistentVolumeClaim":                        {true, func() metav1.Object { return new(corev1.PersistentVolumeClaim) }},
	"apps/v1/Deployment":                              {true, func() metav1.Object { return new(appsv1.Deployment) }},
	"apps/v1/DaemonSet":                               {true, func() metav1.Object { return new(appsv1.DaemonSet) }},
	"apps/v1/StatefulSet":                             {true, func() metav1.Object { return new(appsv1.StatefulSet) }},
	"rbac.authorization.k8s.io/v1/Role":               {true, func() metav1.Object { return new(rbacv1.Role) }},
	"rbac.authorization.k8s.io/v1/RoleBinding":        {true, func() metav1.Object { return new(rbacv1.RoleBinding) }},
	"rbac.authorization.k8s.io/v1/ClusterRole":        {false, func() metav1.Object { return new(rbacv1.ClusterRole) }},
	"rbac.authorization.k8s.io/v1/ClusterRoleBinding": {false, func() metav1.Object { return new(rbacv1.ClusterRoleBinding) }},
	"policy/v1/PodDisruptionBudget":                   {true, func() metav1.Object { return new(policyv1.PodDisruptionBudget) }},
	"cert-manager.io/v1/Issuer":                       {true, func() metav1.Object { return new(cmIssuer) }},
	"cert-manager.io/v1/ClusterIssuer":                {false, func() metav1.Object { return new(cmIssuer) }},
	"cert-manager.io/v1/Certificate":                  {true, func() metav1.Object { return new(cmCertificate) }},
	"cert-manager.io/v1/CertificateRequest":           {true, func() metav1.Object { return new(cmCertificateRequest) }},
}

// k8sDoc is one decoded document of a manifest file.
type k8sDoc struct {
	file  string // slash-separated, under deploy/kubernetes
	index int    // 1-based, in the file
	kind  string
	obj   metav1.Object
}

func (d k8sDoc) String() string {
	return fmt.Sprintf("%s (document %d): %s %s", d.file, d.index, d.kind, d.obj.GetName())
}

// decodeStrict decodes a YAML document into obj, refusing unknown and
// duplicate fields (sigs.k8s.io/yaml.UnmarshalStrict). encoding/json
// matches field names regardless of case, which the API server does not: a
// field the typed value does not give back under the same name (but an
// empty one) is refused too.
func decodeStrict(doc []byte, obj any) error {
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return err
	}
	var src, back any
	if err := yaml.Unmarshal(doc, &src); err != nil {
		return err
	}
	b, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &back); err != nil {
		return err
	}
	if lost := lostFields(src, back, ""); len(lost) > 0 {
		slices.Sort(lost)
		return fmt.Errorf("fields the API type does not have (mind the case): %s", strings.Join(lost, ", "))
	}
	return nil
}

// lostFields returns the paths of the keys of src, with a value that is not
// empty, that back lacks.
func lostFields(src, back any, at string) []string {
	var lost []string
	switch s := src.(type) {
	case map[string]any:
		b, _ := back.(map[string]any)
		for k, v := range s {
			bv, ok := b[k]
			if !ok {
				if !emptyValue(v) {
					lost = append(lost, at+"."+k)
				}
				continue
			}
			lost = append(lost, lostFields(v, bv, at+"."+k)...)
		}
	case []any:
		b, _ := back.([]any)
		for i, v := range s {
			if i < len(b) {
				lost = append(lost, lostFields(v, b[i], fmt.Sprintf("%s[%d]", at, i))...)
			}
		}
	}
	return lost
}

func emptyValue(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case bool:
		return !x
	case float64:
		return x == 0
	case string:
		return x == ""
	case []any:
		return len(x) == 0
	case map[string]any:
		return len(x) == 0
	}
	return false
}

// splitYAML splits a multi-document YAML file on its "---" lines, leaving
// out documents of nothing but comments and blank lines.
func splitYAML(b []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	content := false
	flush := func() {
		if content {
			docs = append(docs, bytes.Clone(cur.Bytes()))
		}
		cur.Reset()
		content = false
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimRight(line, " \t") == "---" {
			flush()
			continue
		}
		if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "#") {
			content = true
		}
		cur.WriteString(line + "\n")
	}
	flush()
	return docs
}

// k8sTree is everything under deploy/kubernetes, decoded.
type k8sTree struct {
	docs     map[string][]k8sDoc       // manifest files' documents, by file
	configs  map[string]map[string]any // YAML files without a kind (program configs), by file
	kusts    map[string]*kustomization // kustomizations, by directory
	files    map[string][]string       // the plain files of every directory
	raw      map[string][]byte         // every file's content
	broken   map[string]bool           // manifest files with a document that does not decode
	problems []string                  // what is wrong, file by file
	entries  []string                  // kustomizations no other includes: the deployments
	builds   map[string]*k8sBuild      // what each entry deploys
	readme   string                    // README.md
	secrets  map[string]bool           // Secrets the README tells the operator to create
}

// loadK8sTree reads and strictly decodes every file under deploy/kubernetes.
func loadK8sTree(t *testing.T) *k8sTree {
	t.Helper()
	tr := &k8sTree{
		docs: map[string][]k8sDoc{}, configs: map[string]map[string]any{}, kusts: map[string]*kustomization{},
		files: map[string][]string{}, raw: map[string][]byte{}, builds: map[string]*k8sBuild{}, secrets: map[string]bool{},
		broken: map[string]bool{},
	}
	err := filepath.WalkDir(k8sDir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(k8sDir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		tr.raw[rel] = b
		dir := path.Dir(rel)
		tr.files[dir] = append(tr.files[dir], path.Base(rel))
		if ext := path.Ext(rel); ext == ".yaml" || ext == ".yml" {
			tr.decodeFile(rel, b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	tr.readme = string(tr.raw["README.md"])
	for _, m := range regexp.MustCompile(`create secret (?:generic|tls) ([a-z0-9-]+)`).FindAllStringSubmatch(tr.readme, -1) {
		tr.secrets[m[1]] = true
	}
	return tr
}

func (tr *k8sTree) problem(format string, args ...any) {
	tr.problems = append(tr.problems, fmt.Sprintf(format, args...))
}

// decodeFile decodes the documents of one YAML file by their kind.
func (tr *k8sTree) decodeFile(file string, b []byte) {
	docs := splitYAML(b)
	if len(docs) == 0 {
		tr.problem("%s: no YAML document", file)
	}
	for i, doc := range docs {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			tr.problem("%s (document %d): %v", file, i+1, err)
			continue
		}
		switch {
		case tm.Kind == "" && tm.APIVersion == "":
			// A program's settings (agent.yaml), for a ConfigMap
			// generator: checked where a kustomization uses it.
			var cfg map[string]any
			if err := yaml.Unmarshal(doc, &cfg); err != nil || len(docs) != 1 {
				tr.problem("%s: neither a Kubernetes object (no apiVersion and kind) nor a single YAML map of settings: %v", file, err)
				continue
			}
			tr.configs[file] = cfg
		case tm.APIVersion == "kustomize.config.k8s.io/v1beta1" && tm.Kind == "Kustomization":
			k := new(kustomization)
			if err := decodeStrict(doc, k); err != nil {
				tr.problem("%s: Kustomization: %v", file, err)
				continue
			}
			if path.Base(file) != "kustomization.yaml" {
				tr.problem("%s: a Kustomization belongs in kustomization.yaml", file)
				continue
			}
			tr.kusts[path.Dir(file)] = k
		default:
			kind, ok := k8sKinds[tm.APIVersion+"/"+tm.Kind]
			if !ok {
				tr.problem("%s (document %d): unknown kind %q of apiVersion %q: add its type to k8sKinds", file, i+1, tm.Kind, tm.APIVersion)
				tr.broken[file] = true
				continue
			}
			obj := kind.new()
			if err := decodeStrict(doc, obj); err != nil {
				tr.problem("%s (document %d): %s: %v", file, i+1, tm.Kind, err)
				tr.broken[file] = true
				continue
			}
			d := k8sDoc{file: file, index: i + 1, kind: tm.Kind, obj: obj}
			switch ns := obj.GetNamespace(); {
			case obj.GetName() == "":
				tr.problem("%s: no metadata.name", d)
			case kind.namespaced && ns != k8sNamespace:
				tr.problem("%s: in namespace %q, want %q", d, ns, k8sNamespace)
			case !kind.namespaced && ns != "":
				tr.problem("%s: cluster-scoped, but has namespace %q", d, ns)
			}
			tr.docs[file] = append(tr.docs[file], d)
		}
	}
}

// k8sBuild is what one kustomization deploys, with the kustomizations it
// includes: roughly `kubectl kustomize DIR`, without the name suffixes.
type k8sBuild struct {
	dir        string
	docs       []k8sDoc
	configMaps map[string]map[string]string // ConfigMaps, made or generated: name → key → content
	images     []kustomizeImage
}

// checkKustomizations checks that every kustomization lists every file of
// its directory, as a resource or a generator's file, and builds each one
// that no other includes.
func (tr *k8sTree) checkKustomizations() {
	included := map[string]bool{}
	sources := map[string]bool{}
	for dir, files := range tr.files {
		k, ok := tr.kusts[dir]
		hasYAML := slices.ContainsFunc(files, func(f string) bool { return strings.HasSuffix(f, ".yaml") || strings.HasSuffix(f, ".yml") })
		if !ok {
			if hasYAML {
				tr.problem("%s: YAML files but no kustomization.yaml", dir)
			}
			continue
		}
		listed := map[string]bool{"kustomization.yaml": true, "README.md": true}
		for _, r := range k.Resources {
			p := path.Clean(path.Join(dir, r))
			switch {
			case tr.kusts[p] != nil:
				included[p] = true
			case tr.docs[p] != nil || tr.broken[p]:
				if path.Dir(p) == dir {
					listed[path.Base(p)] = true
				}
			default:
				tr.problem("%s: resource %q is neither a manifest file nor a directory with a kustomization.yaml", path.Join(dir, "kustomization.yaml"), r)
			}
		}
		for _, g := range slices.Concat(k.ConfigMapGenerator, k.SecretGenerator) {
			if g.Namespace != k8sNamespace {
				tr.problem("%s: generator %s in namespace %q, want %q", path.Join(dir, "kustomization.yaml"), g.Name, g.Namespace, k8sNamespace)
			}
			for _, f := range g.Files {
				_, src, _ := strings.Cut(f, "=")
				if src == "" {
					src = f
				}
				p := path.Clean(path.Join(dir, src))
				if _, ok := tr.raw[p]; !ok {
					tr.problem("%s: generator %s: no file %s", path.Join(dir, "kustomization.yaml"), g.Name, src)
				}
				if tr.docs[p] != nil {
					tr.problem("%s: generator %s: %s is a manifest, not a generator's file", path.Join(dir, "kustomization.yaml"), g.Name, src)
				}
				sources[p] = true
				if path.Dir(p) == dir {
					listed[path.Base(p)] = true
				}
			}
		}
		for _, f := range files {
			if !listed[f] {
				tr.problem("%s: not in %s (resources or a generator's files)", path.Join(dir, f), path.Join(dir, "kustomization.yaml"))
			}
		}
	}
	for file := range tr.configs {
		if !sources[file] {
			tr.problem("%s: has no apiVersion and kind, and no kustomization generates a ConfigMap from it", file)
		}
	}
	for dir := range tr.kusts {
		if !included[dir] {
			tr.entries = append(tr.entries, dir)
		}
	}
	slices.Sort(tr.entries)
	for _, dir := range tr.entries {
		b := &k8sBuild{dir: dir, configMaps: map[string]map[string]string{}}
		tr.build(b, dir, map[string]bool{})
		tr.builds[dir] = b
	}
}

// build adds what the kustomization in dir deploys to b.
func (tr *k8sTree) build(b *k8sBuild, dir string, seen map[string]bool) {
	if seen[dir] {
		tr.problem("%s: included twice", dir)
		return
	}
	seen[dir] = true
	k := tr.kusts[dir]
	for _, r := range k.Resources {
		p := path.Clean(path.Join(dir, r))
		if tr.kusts[p] != nil {
			tr.build(b, p, seen)
			continue
		}
		for _, d := range tr.docs[p] {
			b.docs = append(b.docs, d)
			if cm, ok := d.obj.(*corev1.ConfigMap); ok {
				b.configMaps[cm.Name] = cm.Data
			}
		}
	}
	for _, g := range k.ConfigMapGenerator {
		data := map[string]string{}
		for _, f := range g.Files {
			key, src, ok := strings.Cut(f, "=")
			if !ok {
				key, src = path.Base(f), f
			}
			data[key] = string(tr.raw[path.Clean(path.Join(dir, src))])
		}
		b.configMaps[g.Name] = data
	}
	b.images = append(b.images, k.Images...)
}

func objectsOf[T any](docs []k8sDoc) []*T {
	var out []*T
	for _, d := range docs {
		if o, ok := any(d.obj).(*T); ok {
			out = append(out, o)
		}
	}
	return out
}

// k8sWorkload is a Deployment, DaemonSet or StatefulSet.
type k8sWorkload struct {
	doc    k8sDoc
	pod    *corev1.PodTemplateSpec
	claims []string // a StatefulSet's volume claim templates
}

func (w k8sWorkload) id(c corev1.Container) string {
	return w.doc.kind + "/" + w.doc.obj.GetName() + "/" + c.Name
}

func workloadsOf(docs []k8sDoc) []k8sWorkload {
	var out []k8sWorkload
	for _, d := range docs {
		switch o := d.obj.(type) {
		case *appsv1.Deployment:
			out = append(out, k8sWorkload{doc: d, pod: &o.Spec.Template})
		case *appsv1.DaemonSet:
			out = append(out, k8sWorkload{doc: d, pod: &o.Spec.Template})
		case *appsv1.StatefulSet:
			w := k8sWorkload{doc: d, pod: &o.Spec.Template}
			for _, c := range o.Spec.VolumeClaimTemplates {
				w.claims = append(w.claims, c.Name)
			}
			out = append(out, w)
		}
	}
	return out
}

// imageRepo splits an image reference into its repository and tag.
func imageRepo(image string) (repo, tag string) {
	repo, _, _ = strings.Cut(image, "@")
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		return repo[:i], repo[i+1:]
	}
	return repo, ""
}

// TestKubernetesManifests decodes every manifest under deploy/kubernetes
// strictly into the Kubernetes API types (custom resources into local types
// of the fields they may use), and checks each kustomization and what it
// deploys: see checkBuild.
func TestKubernetesManifests(t *testing.T) {
	tr := loadK8sTree(t)
	tr.checkKustomizations()
	for _, p := range tr.problems {
		t.Error(p)
	}
	if !slices.Contains(tr.entries, ".") {
		t.Fatalf("deploy/kubernetes/kustomization.yaml is missing, or included by another: the deployments are %q", tr.entries)
	}
	agentConfigs := map[string]map[string]any{}
	for _, dir := range tr.entries {
		t.Run(strings.ReplaceAll(dir, ".", "top"), func(t *testing.T) {
			agentConfigs[dir] = checkBuild(t, tr, tr.builds[dir])
		})
	}
	// agent/hadeploy_test.go parses ha/agent.yaml with the agent's flags;
	// the agents are the same in every deployment.
	for _, dir := range tr.entries[1:] {
		if d := cmp.Diff(agentConfigs[tr.entries[0]], agentConfigs[dir]); d != "" {
			t.Errorf("the agents' settings differ between %s and %s (-+):\n%s", tr.entries[0], dir, d)
		}
	}
}
