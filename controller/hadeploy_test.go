package controller

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/config"
	yaml "go.yaml.in/yaml/v3"
)

// deployPath is the path of a file under deploy/.
func deployPath(parts ...string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(append([]string{filepath.Dir(file), "..", "deploy"}, parts...)...)
}

// parseConfig parses a controller config file with the real flags.
func parseConfig(t *testing.T, path string) Flags {
	t.Helper()
	var f Flags
	fs := flagSet(&f)
	if err := fs.Parse([]string{"--config", path}); err != nil {
		t.Fatal(err)
	}
	if err := config.Apply(fs, "MPFLEET_CONTROLLER_TEST_", "config"); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if err := checkDrainFlags(f); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return f
}

// envFile reads KEY=VALUE lines, skipping comments.
func envFile(t *testing.T, path string) map[string]string {
	t.Helper()
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: %q is not KEY=VALUE", path, line)
		}
		env[k] = v
	}
	return env
}

// TestDeploySystemdHA: the systemd HA example's controller config parses
// with the real flags and names the three etcd members of its env files;
// the two replicas have their own names; the unit waits longer than the
// drain.
func TestDeploySystemdHA(t *testing.T) {
	f := parseConfig(t, deployPath("systemd", "ha", "controller.yaml"))
	var want []string
	for i := 1; i <= 3; i++ {
		env := envFile(t, deployPath("systemd", "ha", fmt.Sprintf("etcd-%d.env", i)))
		if env["ETCD_NAME"] != fmt.Sprintf("etcd-%d", i) || env["ETCD_IP"] == "" {
			t.Fatalf("etcd-%d.env: %v", i, env)
		}
		want = append(want, "https://"+env["ETCD_IP"]+":2379")
	}
	if !slices.Equal(f.EtcdEndpoints, want) {
		t.Errorf("etcd-endpoints %v, want the members %v", f.EtcdEndpoints, want)
	}
	names := map[string]bool{}
	for _, r := range []string{"ctl-a", "ctl-b"} {
		n := envFile(t, deployPath("systemd", "ha", r+".env"))["MPFLEET_CONTROLLER_REPLICA_NAME"]
		if n == "" || names[n] {
			t.Errorf("%s.env: replica name %q, want one of its own", r, n)
		}
		names[n] = true
	}
	unit, err := os.ReadFile(deployPath("systemd", "mpfleet-controller.service"))
	if err != nil {
		t.Fatal(err)
	}
	var stop time.Duration
	for line := range strings.Lines(string(unit)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "TimeoutStopSec="); ok {
			if stop, err = time.ParseDuration(v); err != nil {
				t.Fatal(err)
			}
		}
	}
	if stop <= f.DrainTimeout {
		t.Errorf("the unit's TimeoutStopSec %v is not above drain-timeout %v", stop, f.DrainTimeout)
	}
}

// k8sObject is what the test reads of a Kubernetes object.
type k8sObject struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name      string `yaml:"name"`
		Namespace string `yaml:"namespace"`
	} `yaml:"metadata"`
	Data map[string]string `yaml:"data"`
	Spec struct {
		Replicas    int            `yaml:"replicas"`
		ServiceName string         `yaml:"serviceName"`
		ClusterIP   string         `yaml:"clusterIP"`
		Selector    map[string]any `yaml:"selector"`
		Template    k8sPodTemplate `yaml:"template"`
	} `yaml:"spec"`
}

type k8sPodTemplate struct {
	Metadata struct {
		Labels map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Spec struct {
		TerminationGracePeriodSeconds int `yaml:"terminationGracePeriodSeconds"`
		Containers                    []struct {
			Args []string `yaml:"args"`
		} `yaml:"containers"`
	} `yaml:"spec"`
}

// k8sObjects decodes every document of a manifest file.
func k8sObjects(t *testing.T, path string) map[string]k8sObject {
	t.Helper()
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	objs := map[string]k8sObject{}
	dec := yaml.NewDecoder(fh)
	for {
		var o k8sObject
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			return objs
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if o.Metadata.Namespace != "mpfleet" {
			t.Errorf("%s: %s %s in namespace %q, want mpfleet", path, o.Kind, o.Metadata.Name, o.Metadata.Namespace)
		}
		objs[o.Kind+"/"+o.Metadata.Name] = o
	}
}

// TestDeployKubernetesHA: three etcd members, two or more controller
// replicas whose config (the real flags) names exactly those members, a
// grace period above the drain, and a headless Service over the replicas
// for the agents.
func TestDeployKubernetesHA(t *testing.T) {
	etcd := k8sObjects(t, deployPath("kubernetes", "ha", "etcd.yaml"))
	sts, ok := etcd["StatefulSet/etcd"]
	if !ok || sts.Spec.Replicas != 3 {
		t.Fatalf("etcd.yaml: StatefulSet etcd %+v, want 3 replicas", sts.Spec)
	}
	if svc := etcd["Service/"+sts.Spec.ServiceName]; svc.Spec.ClusterIP != "None" {
		t.Errorf("etcd.yaml: the StatefulSet's service %q is not headless", sts.Spec.ServiceName)
	}
	var members []string
	for i := range sts.Spec.Replicas {
		members = append(members, fmt.Sprintf("https://%s-%d.%s.mpfleet.svc:2379", sts.Metadata.Name, i, sts.Spec.ServiceName))
	}

	ctl := k8sObjects(t, deployPath("kubernetes", "ha", "controller.yaml"))
	dep, ok := ctl["Deployment/mpfleet-controller"]
	if !ok || dep.Spec.Replicas < 2 {
		t.Fatalf("controller.yaml: Deployment mpfleet-controller %+v, want 2 or more replicas", dep.Spec)
	}
	cm, ok := ctl["ConfigMap/mpfleet-controller"]
	if !ok || cm.Data["controller.yaml"] == "" {
		t.Fatal("controller.yaml: no ConfigMap mpfleet-controller with controller.yaml")
	}
	path := filepath.Join(t.TempDir(), "controller.yaml")
	if err := os.WriteFile(path, []byte(cm.Data["controller.yaml"]), 0o600); err != nil {
		t.Fatal(err)
	}
	f := parseConfig(t, path)
	if !slices.Equal(f.EtcdEndpoints, members) {
		t.Errorf("etcd-endpoints %v, want the StatefulSet's members %v", f.EtcdEndpoints, members)
	}
	if f.TLSCertFile == "" || (f.TLSClientCAFile == "" && f.TokensFile == "") || f.AuditKeyFile == "" {
		t.Errorf("replicas without TLS, authentication or a shared audit key: %+v", f)
	}
	grace := time.Duration(dep.Spec.Template.Spec.TerminationGracePeriodSeconds) * time.Second
	if grace <= f.DrainTimeout {
		t.Errorf("terminationGracePeriodSeconds %v is not above drain-timeout %v", grace, f.DrainTimeout)
	}
	if c := dep.Spec.Template.Spec.Containers; len(c) != 1 || !slices.Contains(c[0].Args, "/etc/mpfleet/config/controller.yaml") {
		t.Errorf("controller container args %+v, want --config of the ConfigMap", c)
	}
	agents, ok := ctl["Service/mpfleet-controller-agents"]
	if !ok || agents.Spec.ClusterIP != "None" || agents.Spec.Selector["app"] != dep.Spec.Template.Metadata.Labels["app"] {
		t.Errorf("no headless Service mpfleet-controller-agents over the replicas: %+v", agents.Spec)
	}
}
