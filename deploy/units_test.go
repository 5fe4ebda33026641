package deploy

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mpfleet/mpfleet/internal/nstest"
)

// units are the shipped units and the highest `systemd-analyze security`
// exposure each may have (0 is best, 10 worst): the controller needs no
// privilege at all, the agent CAP_NET_ADMIN.
var units = []struct {
	file        string
	maxExposure float64
}{
	{"systemd/mpfleet-controller.service", 2.5},
	{"systemd/mpfleet-agent.service", 4.5},
}

// requireSystemdAnalyze returns the path of systemd-analyze, skipping (or
// under CI failing) the test when it is missing or older than 252, the
// first with `security --offline`.
func requireSystemdAnalyze(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("systemd-analyze")
	if err != nil {
		nstest.Skip(t, "systemd-analyze is not installed (Debian package systemd)")
	}
	out, err := exec.Command(p, "--version").Output()
	if err != nil {
		t.Fatalf("systemd-analyze --version: %v", err)
	}
	m := regexp.MustCompile(`^systemd (\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze --version: no version in %q", out)
	}
	if v, _ := strconv.Atoi(string(m[1])); v < 252 {
		nstest.Skip(t, "systemd-analyze "+string(m[1])+" has no security --offline (252 or later)")
	}
	return p
}

var exposureRe = regexp.MustCompile(`(?m)^→ Overall exposure level for (\S+): (\d+\.\d+) `)

// exposure runs `systemd-analyze security --offline` on a unit file and
// returns its overall exposure and the full report.
func exposure(t *testing.T, analyze, file string) (float64, string) {
	t.Helper()
	cmd := exec.Command(analyze, "security", "--offline=true", "--no-pager", file)
	cmd.Env = append(os.Environ(), "SYSTEMD_COLORS=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security %s: %v\n%s", file, err, out)
	}
	m := exposureRe.FindSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze security %s: no overall exposure in:\n%s", file, out)
	}
	if string(m[1]) != filepath.Base(file) {
		t.Fatalf("systemd-analyze security %s: analysed %s", file, m[1])
	}
	v, err := strconv.ParseFloat(string(m[2]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v, string(out)
}

func TestUnitExposure(t *testing.T) {
	analyze := requireSystemdAnalyze(t)
	for _, u := range units {
		t.Run(filepath.Base(u.file), func(t *testing.T) {
			v, report := exposure(t, analyze, u.file)
			t.Logf("%s: overall exposure %.1f (at most %.1f)", u.file, v, u.maxExposure)
			if v > u.maxExposure {
				t.Errorf("%s: overall exposure %.1f, want at most %.1f:\n%s", u.file, v, u.maxExposure, report)
			}
		})
	}
}

// TestUnitExposureMeasures checks that the exposure really is measured from
// the unit: the same unit without its hardening scores far worse.
func TestUnitExposureMeasures(t *testing.T) {
	analyze := requireSystemdAnalyze(t)
	b, err := os.ReadFile("systemd/mpfleet-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	inService := false
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "[") {
			inService = line == "[Service]"
		}
		if inService && strings.Contains(line, "=") && !strings.HasPrefix(line, "#") &&
			!strings.HasPrefix(line, "ExecStart=") && !strings.HasPrefix(line, "Type=") {
			continue
		}
		kept = append(kept, line)
	}
	bare := filepath.Join(t.TempDir(), "mpfleet-agent.service")
	if err := os.WriteFile(bare, []byte(strings.Join(kept, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	hardened, _ := exposure(t, analyze, "systemd/mpfleet-agent.service")
	unhardened, report := exposure(t, analyze, bare)
	if unhardened < 9 || hardened >= unhardened {
		t.Fatalf("exposure of the agent unit %.1f, without its [Service] settings %.1f: want the latter at least 9:\n%s", hardened, unhardened, report)
	}
}

// TestUnitVerify runs `systemd-analyze verify` on the units. The binaries
// are at /usr/bin only once the packages are installed: until then, that
// one complaint is expected (TestPackages verifies the installed units with
// their binaries).
func TestUnitVerify(t *testing.T) {
	analyze := requireSystemdAnalyze(t)
	for _, u := range units {
		t.Run(filepath.Base(u.file), func(t *testing.T) {
			verifyUnits(t, analyze, u.file)
		})
	}
}

// verifyUnits runs `systemd-analyze verify` on files and fails on any
// complaint but that a unit's /usr/bin binary is missing when it is.
func verifyUnits(t *testing.T, analyze string, files ...string) {
	t.Helper()
	cmd := exec.Command(analyze, append([]string{"verify", "--no-pager"}, files...)...)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("systemd-analyze verify: %v", err)
	}
	missingBin := regexp.MustCompile(`^\S+\.service: Command (/usr/bin/mpfleet-[a-z]+) is not executable: No such file or directory$`)
	var complaints []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line == "" {
			continue
		}
		if m := missingBin.FindStringSubmatch(line); m != nil {
			if _, err := os.Stat(m[1]); errors.Is(err, os.ErrNotExist) {
				t.Logf("expected while not installed: %s", line)
				continue
			}
		}
		complaints = append(complaints, line)
	}
	if len(complaints) > 0 {
		t.Errorf("systemd-analyze verify %s:\n%s", strings.Join(files, " "), strings.Join(complaints, "\n"))
	}
	if err != nil && len(strings.TrimSpace(string(out))) == 0 {
		t.Errorf("systemd-analyze verify %s failed (%v) without a word", strings.Join(files, " "), err)
	}
}

// serviceSettings returns the [Service] settings of a unit file, each key's
// values in order.
func serviceSettings(t *testing.T, file string) map[string][]string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	settings := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = line
		case section == "[Service]":
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: not a setting: %q", file, line)
			}
			settings[k] = append(settings[k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return settings
}

// TestUnitPrivileges pins what each service may do, beyond the score: the
// controller no capability at all, the agent CAP_NET_ADMIN and nothing else,
// both as a transient user, and the agent able to write the MPTCP sysctls
// and to open netlink sockets.
func TestUnitPrivileges(t *testing.T) {
	want := map[string]map[string][]string{
		"systemd/mpfleet-controller.service": {
			"ExecStart":               {"/usr/bin/mpfleet-controller --config /etc/mpfleet/controller.yaml"},
			"DynamicUser":             {"yes"},
			"SupplementaryGroups":     {"mpfleet"},
			"CapabilityBoundingSet":   {""},
			"AmbientCapabilities":     {""},
			"StateDirectory":          {"mpfleet"},
			"RestrictAddressFamilies": {"AF_UNIX AF_INET AF_INET6"},
			"ProtectKernelTunables":   {"yes"},
			// Go reads the listen backlog from
			// /proc/sys/net/core/somaxconn: 128 without it.
			"ProcSubset": nil,
		},
		"systemd/mpfleet-agent.service": {
			"ExecStart":             {"/usr/bin/mpfleet-agent --config /etc/mpfleet/agent.yaml"},
			"DynamicUser":           {"yes"},
			"SupplementaryGroups":   {"mpfleet"},
			"CapabilityBoundingSet": {"CAP_NET_ADMIN"},
			"AmbientCapabilities":   {"CAP_NET_ADMIN"},
			"StateDirectory":        {"mpfleet-agent"},
			// Netlink for the kernel, TCP and MPTCP (AF_INET*) for the
			// controller and probes.
			"RestrictAddressFamilies": {"AF_UNIX AF_INET AF_INET6 AF_NETLINK"},
			"ProtectKernelTunables":   {"yes"},
			"ReadWritePaths":          {"-/proc/sys/net/mptcp"},
			// A user namespace would take CAP_NET_ADMIN away from the
			// host's network namespace.
			"PrivateUsers": nil,
			// /proc/sys/net/mptcp must stay visible.
			"ProcSubset": nil,
		},
	}
	for file, keys := range want {
		got := serviceSettings(t, file)
		for k, v := range keys {
			if diff := cmp.Diff(v, got[k]); diff != "" {
				t.Errorf("%s: %s= (-want +got):\n%s", file, k, diff)
			}
		}
		for _, k := range []string{"NoNewPrivileges", "ProtectSystem", "PrivateDevices", "PrivateTmp", "ProtectHome", "RestrictNamespaces", "MemoryDenyWriteExecute"} {
			if !slices.ContainsFunc(got[k], func(v string) bool { return v == "yes" || v == "strict" }) {
				t.Errorf("%s: %s=%q, want it on", file, k, got[k])
			}
		}
	}
}

// requireTools skips (or under CI fails) the test unless every program is on
// PATH.
func requireTools(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			nstest.Skip(t, n+" is not installed (make deps installs what the tests need)")
		}
	}
}
