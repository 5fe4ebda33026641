package deploy

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestPackageVersion(t *testing.T) {
	requireTools(t, "bash", "git", "dpkg")
	for _, tc := range []struct{ describe, want string }{
		{"v1.2.3", "1.2.3"},
		{"1.2.3", "1.2.3"},
		{"v1.2.3-rc.1", "1.2.3~rc.1"},
		{"v1.2.3-4-gabc1234", "1.2.3+git20250102.abc1234"},
		{"v1.2.3-rc1-4-gabc1234", "1.2.3~rc1+git20250102.abc1234"},
		{"v1.2.3-dirty", "1.2.3+dirty"},
		{"v1.2.3-4-gabc1234-dirty", "1.2.3+git20250102.abc1234.dirty"},
		{"abc1234", "0.0.0~git20250102.abc1234"},
		// An abbreviated hash that starts like a version is a hash.
		{"3e52933", "0.0.0~git20250102.3e52933"},
		{"3e52933-dirty", "0.0.0~git20250102.3e52933.dirty"},
	} {
		out, err := exec.Command("packaging/version.sh", tc.describe, "20250102").CombinedOutput()
		if err != nil {
			t.Errorf("version.sh %s: %v\n%s", tc.describe, err, out)
			continue
		}
		if got := strings.TrimSpace(string(out)); got != tc.want {
			t.Errorf("version.sh %s = %q, want %q", tc.describe, got, tc.want)
		}
	}
	for _, bad := range []string{"v1.2_3", "v1.2.3;rm -rf", "release", "v", "abc"} {
		out, err := exec.Command("packaging/version.sh", bad, "20250102").CombinedOutput()
		if err == nil {
			t.Errorf("version.sh %q = %q, want an error", bad, out)
		} else if !strings.Contains(string(out), bad) {
			t.Errorf("version.sh %q: error %q does not name the input", bad, out)
		}
	}
	if out, err := exec.Command("packaging/version.sh", "v1.2.3", "2025-01-02").CombinedOutput(); err == nil {
		t.Errorf("version.sh with date 2025-01-02 = %q, want an error", out)
	}
	// The order apt upgrades in: untagged builds before the first release,
	// release candidates before their release, later commits after it.
	order := []string{"0.0.0~git20250101.fff0000", "0.0.0~git20250102.abc1234", "0.1.0", "1.2.3~rc.1", "1.2.3", "1.2.3+dirty", "1.2.3+git20250102.abc1234", "1.2.4"}
	for i := 1; i < len(order); i++ {
		if err := exec.Command("dpkg", "--compare-versions", order[i-1], "lt", order[i]).Run(); err != nil {
			t.Errorf("dpkg: %s is not before %s", order[i-1], order[i])
		}
	}
	// This checkout's own version is one too.
	out, err := exec.Command("packaging/version.sh").CombinedOutput()
	if err != nil {
		t.Fatalf("version.sh: %v\n%s", err, out)
	}
	if err := exec.Command("dpkg", "--validate-version", strings.TrimSpace(string(out))).Run(); err != nil {
		t.Errorf("version.sh = %q: not a Debian version", out)
	}
}

// pkgFile is a file a package must hold, with its mode, and the source in
// the repository it must equal ("" for a built binary).
type pkgFile struct {
	path string
	mode int64
	src  string
}

// packages is what each package holds and marks as configuration.
var packages = []struct {
	name      string
	files     []pkgFile
	conffiles []string
	service   bool
}{
	{
		name: "mpfleet-controller",
		files: []pkgFile{
			{"/usr/bin/mpfleet-controller", 0o755, ""},
			{"/lib/systemd/system/mpfleet-controller.service", 0o644, "deploy/systemd/mpfleet-controller.service"},
			{"/usr/lib/sysusers.d/mpfleet-controller.conf", 0o644, "deploy/packaging/mpfleet.sysusers"},
			{"/etc/mpfleet/controller.yaml", 0o644, "deploy/config/controller.yaml"},
			{"/etc/mpfleet/tokens.yaml", 0o644, "deploy/config/tokens.yaml"},
			{"/usr/share/doc/mpfleet-controller/copyright", 0o644, "deploy/packaging/copyright"},
			{"/usr/share/doc/mpfleet-controller/changelog.gz", 0o644, ""},
			{"/usr/share/lintian/overrides/mpfleet-controller", 0o644, "deploy/packaging/lintian/mpfleet-controller"},
		},
		conffiles: []string{"/etc/mpfleet/controller.yaml", "/etc/mpfleet/tokens.yaml"},
		service:   true,
	},
	{
		name: "mpfleet-agent",
		files: []pkgFile{
			{"/usr/bin/mpfleet-agent", 0o755, ""},
			{"/lib/systemd/system/mpfleet-agent.service", 0o644, "deploy/systemd/mpfleet-agent.service"},
			{"/usr/lib/sysusers.d/mpfleet-agent.conf", 0o644, "deploy/packaging/mpfleet.sysusers"},
			{"/etc/mpfleet/agent.yaml", 0o644, "deploy/config/agent.yaml"},
			{"/usr/share/doc/mpfleet-agent/copyright", 0o644, "deploy/packaging/copyright"},
			{"/usr/share/doc/mpfleet-agent/changelog.gz", 0o644, ""},
			{"/usr/share/lintian/overrides/mpfleet-agent", 0o644, "deploy/packaging/lintian/mpfleet-agent"},
		},
		conffiles: []string{"/etc/mpfleet/agent.yaml"},
		service:   true,
	},
	{
		name: "mpfleetctl",
		files: []pkgFile{
			{"/usr/bin/mpfleetctl", 0o755, ""},
			{"/usr/share/doc/mpfleetctl/copyright", 0o644, "deploy/packaging/copyright"},
			{"/usr/share/doc/mpfleetctl/changelog.gz", 0o644, ""},
			{"/usr/share/lintian/overrides/mpfleetctl", 0o644, "deploy/packaging/lintian/mpfleetctl"},
		},
	},
}

// TestPackages builds the packages with make package, which lints them
// (lintian: no error, every warning fixed or overridden with its reason),
// checks what they hold, then installs, reinstalls, removes and purges them
// with apt, as an operator would.
func TestPackages(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the programs and the packages: not in -short")
	}
	requireTools(t, "make", "go", "git", "dpkg-deb", "lintian")
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	dist := t.TempDir()
	out, err := exec.Command("packaging/version.sh").Output()
	if err != nil {
		t.Fatalf("version.sh: %v", err)
	}
	version := strings.TrimSpace(string(out))
	arch := goEnv(t, "GOARCH")

	cmd := exec.Command("make", "--no-print-directory", "-C", root, "package", "DIST="+dist, "PACKAGE_VERSION="+version)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make package: %v\n%s", err, out)
	} else {
		t.Logf("make package:\n%s", out)
	}

	debs := map[string]string{}
	for _, p := range packages {
		deb := filepath.Join(dist, p.name+"_"+version+"_"+arch+".deb")
		debs[p.name] = deb
		t.Run("contents/"+p.name, func(t *testing.T) {
			checkPackage(t, root, filepath.Join(dist, "bin"), deb, p.name, version, arch, p.files, p.conffiles, p.service)
		})
	}
	t.Run("hardened-agent", func(t *testing.T) {
		testHardenedAgent(t, root, filepath.Join(dist, "bin"))
	})
	t.Run("observability", func(t *testing.T) {
		testObservability(t, root, filepath.Join(dist, "bin"))
	})
	t.Run("install", func(t *testing.T) {
		testInstall(t, debs)
	})
}

func goEnv(t *testing.T, key string) string {
	t.Helper()
	out, err := exec.Command("go", "env", key).Output()
	if err != nil {
		t.Fatalf("go env %s: %v", key, err)
	}
	return strings.TrimSpace(string(out))
}

func checkPackage(t *testing.T, root, bin, deb, name, version, arch string, files []pkgFile, conffiles []string, service bool) {
	fields, err := exec.Command("dpkg-deb", "--showformat=${Package} ${Version} ${Architecture} ${Depends}", "--show", deb).Output()
	if err != nil {
		t.Fatalf("dpkg-deb --show %s: %v", deb, err)
	}
	// No dependency: the programs use no shared library.
	if got, want := string(fields), name+" "+version+" "+arch+" "; got != want {
		t.Errorf("%s: package, version, architecture, depends %q, want %q", deb, got, want)
	}

	contents := fsysContents(t, deb)
	for _, f := range files {
		c, ok := contents["."+f.path]
		if !ok {
			t.Errorf("%s: no %s", deb, f.path)
			continue
		}
		if c.hdr.Uname != "root" || c.hdr.Gname != "root" || c.hdr.Mode&0o7777 != f.mode {
			t.Errorf("%s: %s is %s:%s %o, want root:root %o", deb, f.path, c.hdr.Uname, c.hdr.Gname, c.hdr.Mode&0o7777, f.mode)
		}
		switch {
		case f.src != "":
			src, err := os.ReadFile(filepath.Join(root, f.src))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(c.data, src) {
				t.Errorf("%s: %s differs from %s", deb, f.path, f.src)
			}
		case strings.HasPrefix(f.path, "/usr/bin/"):
			built := filepath.Join(bin, filepath.Base(f.path))
			if st, err := os.Stat(built); err != nil || st.Size() != c.hdr.Size {
				t.Errorf("%s: %s is not %s as built (%v)", deb, f.path, built, err)
			}
			checkBinary(t, built)
		}
	}
	var paths []string
	for p, c := range contents {
		if c.hdr.Typeflag == tar.TypeReg {
			paths = append(paths, strings.TrimPrefix(p, "."))
		}
	}
	var want []string
	for _, f := range files {
		want = append(want, f.path)
	}
	if diff := cmp.Diff(sorted(want), sorted(paths)); diff != "" {
		t.Errorf("%s: files (-want +got):\n%s", deb, diff)
	}

	got, err := exec.Command("dpkg-deb", "--info", deb, "conffiles").Output()
	if err != nil && len(conffiles) > 0 {
		t.Fatalf("dpkg-deb --info %s conffiles: %v", deb, err)
	}
	if diff := cmp.Diff(sorted(conffiles), sorted(strings.Fields(string(got))), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("%s: conffiles (-want +got):\n%s", deb, diff)
	}

	for _, script := range []string{"postinst", "prerm", "postrm"} {
		got, err := exec.Command("dpkg-deb", "--info", deb, script).Output()
		src := filepath.Join(root, "deploy/packaging/scripts", script)
		switch {
		case !service && err == nil:
			t.Errorf("%s: has a %s, want none", deb, script)
		case service && err != nil:
			t.Errorf("%s: no %s: %v", deb, script, err)
		case service:
			want, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s: %s differs from %s", deb, script, src)
			}
		}
	}
}

// checkBinary checks that a program is a position-independent executable
// that needs no shared library, as lintian and the missing Depends assume.
func checkBinary(t *testing.T, path string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Errorf("%s: %v", path, err)
		return
	}
	defer f.Close()
	if f.Type != elf.ET_DYN {
		t.Errorf("%s: ELF type %v, want ET_DYN (position-independent)", path, f.Type)
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		t.Errorf("%s: %v", path, err)
	}
	if len(libs) > 0 {
		t.Errorf("%s: needs shared libraries %v, want none", path, libs)
	}
}

type tarEntry struct {
	hdr  *tar.Header
	data []byte
}

// fsysContents returns the files of a package by path ("./usr/bin/..."),
// with the data of those below 1 MiB (not the programs).
func fsysContents(t *testing.T, deb string) map[string]tarEntry {
	t.Helper()
	cmd := exec.Command("dpkg-deb", "--fsys-tarfile", deb)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("dpkg-deb --fsys-tarfile %s: %v", deb, err)
	}
	entries := map[string]tarEntry{}
	tr := tar.NewReader(out)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", deb, err)
		}
		var data []byte
		if hdr.Size < 1<<20 {
			if data, err = io.ReadAll(tr); err != nil {
				t.Fatalf("%s: %s: %v", deb, hdr.Name, err)
			}
		}
		entries[hdr.Name] = tarEntry{hdr, data}
	}
	if _, err := io.Copy(io.Discard, out); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("dpkg-deb --fsys-tarfile %s: %v", deb, err)
	}
	return entries
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
