package deploy

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mpfleet/mpfleet/internal/nstest"
)

// aptGet runs apt-get non-interactively, waiting for the dpkg lock if
// someone else holds it.
func aptGet(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command("apt-get", append([]string{"-y", "-q", "-o", "DPkg::Lock::Timeout=300", "--no-install-recommends"}, args...)...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("apt-get %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func pkgStatus(t *testing.T, name string) string {
	t.Helper()
	out, _ := exec.Command("dpkg-query", "--showformat=${Status}", "--show", name).Output()
	return string(out)
}

func hasGroup(name string) bool {
	return exec.Command("getent", "group", name).Run() == nil
}

// testInstall installs the packages with apt as an operator does
// (apt-get install ./*.deb), checks what the maintainer scripts did, and
// reinstalls (a configuration file changed by the operator stays), removes
// and purges them. Everything is removed at the end, the group mpfleet too
// if the test made it.
func testInstall(t *testing.T, debs map[string]string) {
	nstest.RequireRoot(t)
	requireTools(t, "apt-get", "dpkg-query", "getent", "groupdel")
	var names []string
	for _, p := range packages {
		names = append(names, p.name)
		if s := pkgStatus(t, p.name); s != "" && !strings.HasPrefix(s, "unknown ") && !strings.HasSuffix(s, " not-installed") {
			nstest.Skip(t, "package "+p.name+" is on this machine already ("+s+"): the test would replace it")
		}
		for _, f := range p.files {
			if _, err := os.Lstat(f.path); err == nil {
				nstest.Skip(t, f.path+" exists and belongs to no package: the test would replace it")
			}
		}
	}
	groupExisted := hasGroup("mpfleet")
	t.Cleanup(func() {
		cmd := exec.Command("dpkg", append([]string{"--purge"}, names...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("clean up: dpkg --purge: %v\n%s", err, out)
		}
		if !groupExisted && hasGroup("mpfleet") {
			if out, err := exec.Command("groupdel", "mpfleet").CombinedOutput(); err != nil {
				t.Errorf("clean up: groupdel mpfleet: %v\n%s", err, out)
			}
		}
	})

	var files []string
	for _, p := range packages {
		files = append(files, debs[p.name])
	}
	aptGet(t, append([]string{"install"}, files...)...)

	for _, p := range packages {
		if s := pkgStatus(t, p.name); s != "install ok installed" {
			t.Errorf("%s: status %q after apt-get install", p.name, s)
		}
		for _, f := range p.files {
			if _, err := os.Stat(f.path); err != nil {
				t.Errorf("%s: %v", p.name, err)
			}
		}
	}
	if !hasGroup("mpfleet") {
		t.Errorf("postinst made no group mpfleet")
	}
	// Enabled on install (started only once configured, by hand).
	for _, unit := range []string{"mpfleet-controller.service", "mpfleet-agent.service"} {
		link := filepath.Join("/etc/systemd/system/multi-user.target.wants", unit)
		if target, err := os.Readlink(link); err != nil || target != "/lib/systemd/system/"+unit {
			t.Errorf("%s: readlink %s = %q, %v; want it enabled, /lib/systemd/system/%s", unit, link, target, err, unit)
		}
	}
	// The installed units, with their binaries now in place, verify clean.
	if analyze, err := exec.LookPath("systemd-analyze"); err == nil {
		verifyUnits(t, analyze, "/lib/systemd/system/mpfleet-controller.service", "/lib/systemd/system/mpfleet-agent.service")
	} else if nstest.InCI() {
		t.Errorf("systemd-analyze: %v", err)
	}
	for _, bin := range []string{"mpfleet-controller", "mpfleet-agent", "mpfleetctl"} {
		out, _ := exec.Command("/usr/bin/"+bin, "--help").CombinedOutput()
		if !bytes.Contains(out, []byte(bin)) {
			t.Errorf("/usr/bin/%s --help does not name it:\n%s", bin, out)
		}
	}

	// An operator's change to a configuration file survives a reinstall
	// (and an upgrade: dpkg asks only when the package's own copy changed).
	const conf = "/etc/mpfleet/agent.yaml"
	changed := append(readFile(t, conf), "# changed by the operator\n"...)
	if err := os.WriteFile(conf, changed, 0o644); err != nil {
		t.Fatal(err)
	}
	aptGet(t, append([]string{"install", "--reinstall"}, files...)...)
	if got := readFile(t, conf); !bytes.Equal(got, changed) {
		t.Errorf("%s after a reinstall:\n%s\nwant the operator's:\n%s", conf, got, changed)
	}

	// Remove keeps the configuration and masks the units; purge removes
	// both and forgets the enablement.
	aptGet(t, append([]string{"remove"}, names...)...)
	if _, err := os.Stat(conf); err != nil {
		t.Errorf("remove: %v; want the configuration kept", err)
	}
	for _, unit := range []string{"mpfleet-controller.service", "mpfleet-agent.service"} {
		if target, err := os.Readlink("/etc/systemd/system/" + unit); err != nil || target != "/dev/null" {
			t.Errorf("remove: %s is not masked: readlink = %q, %v", unit, target, err)
		}
	}
	// apt knows only the removed packages that left configuration behind.
	var withConf []string
	for _, p := range packages {
		if len(p.conffiles) > 0 {
			withConf = append(withConf, p.name)
		}
	}
	aptGet(t, append([]string{"purge"}, withConf...)...)
	for _, p := range packages {
		if s := pkgStatus(t, p.name); s != "" && !strings.HasSuffix(s, " not-installed") {
			t.Errorf("%s: status %q after purge", p.name, s)
		}
	}
	var left []string
	for _, p := range packages {
		for _, f := range p.files {
			left = append(left, f.path)
		}
	}
	for _, unit := range []string{"mpfleet-controller.service", "mpfleet-agent.service"} {
		left = append(left, "/etc/systemd/system/"+unit, "/etc/systemd/system/multi-user.target.wants/"+unit)
	}
	left = slices.DeleteFunc(left, func(p string) bool {
		_, err := os.Lstat(p)
		return err != nil
	})
	if len(left) > 0 {
		t.Errorf("purge left %s", strings.Join(left, ", "))
	}
	if !hasGroup("mpfleet") {
		t.Errorf("purge removed the group mpfleet; want it kept (files may belong to it)")
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
